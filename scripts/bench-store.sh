#!/usr/bin/env bash
# Storage benchmark: SQLite ingest rows/s, queries and retention (see BENCHMARKS.md).
# Env: INGEST_ROWS (default 1 000 000), BENCH_RESULTS (see scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo build -q --release -p flowpol --example bench_ingest
target/release/examples/bench_ingest --rows "${INGEST_ROWS:-1000000}" --ingest-only | tee "$out"
result store.ingest_rows_per_s "$(sed -nE 's/^ingest: .* = ([0-9]+) rows\/s.*/\1/p' "$out")" rows/s ">=200000"
result store.ingest_rows_per_cpu_s "$(sed -nE 's/^ingest CPU: .* = ([0-9]+) rows per CPU-second.*/\1/p' "$out")" rows/cpu-s -
