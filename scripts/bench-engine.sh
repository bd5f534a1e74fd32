#!/usr/bin/env bash
# NetworkPolicy engine benchmarks: verdicts/s (10 000 pods, 1 000 policies) and
# `connectivity` for 1 000 workloads (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p flowpol-recommender --example bench_verdicts
cargo run -q --release -p flowpol-recommender --example bench_connectivity
