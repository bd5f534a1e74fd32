#!/usr/bin/env bash
# Storage benchmark: SQLite ingest rows/s, queries and retention (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p flowpol --no-default-features --example bench_ingest -- --rows 1000000 --ingest-only
