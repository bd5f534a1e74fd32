# flowpol: the two commands that matter are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build demo test lint unit privileged bench fuzz fmt clean

## Install what a fresh machine lacks (idempotent): apt packages, nightly rust-src, bpf-linker.
setup:
	@bash scripts/setup.sh

build: setup
	$(CARGO) build --release --bin flowpol

## The main job: build, run the lab, print what was observed.
demo: build
	@bash scripts/demo.sh

fmt:
	$(CARGO) fmt --all

lint: setup
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --exclude flowpol-ebpf --all-targets -- -D warnings
	$(CARGO) clippy -p flowpol --no-default-features --all-targets -- -D warnings
	# The CLI without the agent builds off Linux too (stable Rust, no eBPF toolchain).
	$(CARGO) check -p flowpol --no-default-features --lib --bins --target x86_64-pc-windows-gnu

## The whole suite. Privileged tests (eBPF, network namespaces) need root; they
## are skipped, loudly, only when not root and CI is unset.
test: lint
	@bash scripts/test.sh

bench: build
	@bash scripts/bench.sh

## The cargo-fuzz targets from the corpus in fuzz/corpus: fixed runs and seed (FUZZ_SECONDS=N explores).
fuzz: setup
	@bash scripts/fuzz.sh

clean:
	$(CARGO) clean
