#!/usr/bin/env bash
# Identity benchmark: lookups/s on 10 000 pods with 100 000 IP intervals, and memory (see BENCHMARKS.md).
# Env: BENCH_RESULTS (scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo build -q --release -p flowpol --example bench_identity
target/release/examples/bench_identity --db "$dir/identity-bench.db" | tee "$dir/out.txt"
result identity.enrich_flows_per_s "$(sed -nE 's/^enrich: .* = ([0-9]+) flows\/s.*/\1/p' "$dir/out.txt")" flows/s -
