#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each from its corpus in the repo
# (fuzz/corpus/<target>). New inputs go to a scratch folder, so the repo stays
# clean; a crash fails the run and leaves its input in fuzz/artifacts/<target>/.
#
# Default (the test suite): a fixed seed and a fixed number of runs per target,
# so every run replays the same inputs and CI fails only on a real regression.
#   FUZZ_SECONDS=N     explore N s per target with a random seed instead
#   FUZZ_TARGETS="manifest_loader ..." (default: all)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-}"
# About 15 s each on a busy 2-core machine (dev build with AddressSanitizer).
runs_for() {
  case "$1" in
    api_query) echo 300000 ;;
    flow_record) echo 250000 ;;
    manifest_loader) echo 3000 ;;
    traffic_yaml) echo 2500 ;;
    *) echo 10000 ;;
  esac
}
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build --dev
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  mkdir -p "$scratch/$t"
  if [ -n "$seconds" ]; then
    limit=(-max_total_time="$seconds")
    echo "[fuzz] $t for ${seconds}s from corpus/$t" >&2
  else
    limit=(-runs="$(runs_for "$t")" -seed=1)
    echo "[fuzz] $t: $(runs_for "$t") runs, seed 1, from corpus/$t" >&2
  fi
  status=0
  cargo +nightly fuzz run --dev "$t" "$scratch/$t" "corpus/$t" -- \
    "${limit[@]}" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$scratch/$t.log" >&2 || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$scratch/$t.log" >&2
    echo "[fuzz] $t FAILED (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "[fuzz] ok: $targets" >&2
