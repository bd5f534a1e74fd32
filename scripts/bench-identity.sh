#!/usr/bin/env bash
# Identity benchmark: lookups/s on 10 000 pods with 100 000 IP intervals, and memory (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
db=$(mktemp -d)/identity-bench.db
trap 'rm -rf "$(dirname "$db")"' EXIT
cargo run -q --release -p flowpol --no-default-features --example bench_identity -- --db "$db"
