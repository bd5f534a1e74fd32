#!/usr/bin/env bash
# Agent API benchmark: flows/s served and p99 latency of /api/v1/flows while ~10 000 flows/s are
# recorded (synthetic recorder, no eBPF), and RSS with 100 000 flows (see BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q --release -p flowpol --no-default-features --example bench_api -- --seconds "${SECONDS_API:-20}" --clients "${CLIENTS_API:-2}"
