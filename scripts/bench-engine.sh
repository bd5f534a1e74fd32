#!/usr/bin/env bash
# NetworkPolicy engine benchmarks: verdicts/s (10 000 pods, 1 000 policies) and
# `connectivity` for 1 000 workloads (see BENCHMARKS.md). Env: BENCH_RESULTS (scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo build -q --release -p flowpol-recommender --example bench_verdicts --example bench_connectivity
target/release/examples/bench_verdicts | tee "$out"
result engine.verdicts_per_core_s "$(sed -nE 's/.* = ([0-9]+) verdicts\/s per core.*/\1/p' "$out")" verdicts/s ">=1000000"
target/release/examples/bench_connectivity | tee "$out"
# The example leaves its manifests for the CLI command it prints; the benchmark removes them.
dir=$(sed -nE 's/.*--manifests (.*) > \/dev\/null$/\1/p' "$out")
case $dir in */flowpol-bench-connectivity-*) rm -rf "$dir" ;; esac
