#!/usr/bin/env bash
# All benchmarks (`make bench`). Each area has its own script (scripts/bench-<area>.sh); figures go to BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
for b in scripts/bench-*.sh; do
  echo "### $b"
  bash "$b"
  echo
done
