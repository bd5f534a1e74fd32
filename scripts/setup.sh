#!/usr/bin/env bash
# Idempotent machine setup for flowpol: everything a fresh machine lacks to build,
# test and run the lab. Safe to run repeatedly; each step checks before acting.
set -euo pipefail

log() { printf '[setup] %s\n' "$*" >&2; }
need_root() { [ "$(id -u)" = 0 ]; }

# --- Debian packages -------------------------------------------------------
APT_PKGS=(nftables iproute2 iperf3 procps iputils-ping)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if need_root; then
    log "installing apt packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "WARNING: missing apt packages (${missing[*]}) and not root; privileged features need them"
  fi
fi

# --- Rust nightly + rust-src (eBPF build-std) -----------------------------------
if ! rustup toolchain list | grep -q '^nightly'; then
  log "installing nightly toolchain"
  rustup toolchain install nightly --profile minimal
fi
if ! rustup component list --toolchain nightly --installed | grep -q '^rust-src'; then
  log "adding rust-src to nightly"
  rustup component add rust-src --toolchain nightly
fi

# --- bpf-linker on nightly's own LLVM ------------------------------------------
if ! command -v bpf-linker >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/bpf-linker" ]; then
  sysroot=$(rustc +nightly --print sysroot)
  llvm_so=$(ls "$sysroot"/lib/libLLVM.so.*-nightly 2>/dev/null | head -n1 || true)
  if [ -z "$llvm_so" ]; then
    log "ERROR: no libLLVM.so.*-nightly under $sysroot/lib; cannot build bpf-linker"
    exit 1
  fi
  prefix="${FLOWPOL_LLVM_PREFIX:-$HOME/.cache/flowpol/llvm-prefix}"
  mkdir -p "$prefix/lib"
  ln -sf "$llvm_so" "$prefix/lib/libLLVM.so"
  log "building bpf-linker against $llvm_so (several minutes, once)"
  LLVM_PREFIX="$prefix" cargo install bpf-linker --version '^0.13' --locked \
    --no-default-features --features llvm-22
fi

# --- tracefs (drop tracepoints) --------------------------------------------------
if need_root && [ ! -e /sys/kernel/tracing/events ] && [ ! -e /sys/kernel/debug/tracing/events ]; then
  log "mounting tracefs"
  mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null || true
fi

log "ok"
