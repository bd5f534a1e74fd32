#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each briefly from its corpus in the
# repo (fuzz/corpus/<target>). New inputs go to a scratch folder, so the
# repo stays clean; a crash fails the run and leaves its input in
# fuzz/artifacts/<target>/.
#   FUZZ_SECONDS=20 (per target)   FUZZ_TARGETS="manifest_loader ..." (default: all)
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${FUZZ_SECONDS:-20}"
targets="${FUZZ_TARGETS:-$(cargo +nightly fuzz list)}"
cargo +nightly fuzz build --dev
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for t in $targets; do
  mkdir -p "$scratch/$t"
  echo "[fuzz] $t for ${seconds}s from corpus/$t" >&2
  status=0
  cargo +nightly fuzz run --dev "$t" "$scratch/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
    >"$scratch/$t.log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs)' "$scratch/$t.log" >&2 || true
  if [ "$status" != 0 ]; then
    tail -n 60 "$scratch/$t.log" >&2
    echo "[fuzz] $t FAILED (exit $status); the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
done
echo "[fuzz] ok: $targets" >&2
