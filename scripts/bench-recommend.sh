#!/usr/bin/env bash
# recommend / audit / connectivity benchmark (see BENCHMARKS.md): for each cluster size in PODS
# (default 10000), a synthetic database of PODS pods (10 per Deployment) and ROWS flow rows
# (default 10 000 000; DISTINCT 5-tuples among them, default 200 000) written through the store
# API, then the release `flowpol recommend`, `flowpol audit` (of the recommended policies) and
# `flowpol connectivity` (cluster + recommended policies) timed with /usr/bin/time (wall, peak RSS).
# Quick run: ROWS=1000000. Growth: PODS="1000 10000". BENCH_DIR=dir keeps the files.
# Env: BENCH_RESULTS (see scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
ROWS=${ROWS:-10000000}
DISTINCT=${DISTINCT:-200000}
PODS=${PODS:-10000}
ROOT=${BENCH_DIR:-$(mktemp -d)}
[ -n "${BENCH_DIR:-}" ] || trap 'rm -rf "$ROOT"' EXIT
cargo build -q --release -p flowpol --example bench_recommend
build_flowpol bench-recommend
# measure WHAT PODS TARGET_S TARGET_MIB CMD...: runs CMD (stdout to $DIR/WHAT.out) under
# /usr/bin/time; records its wall time and peak RSS.
measure() {
  local what=$1 pods=$2 ts=$3 tm=$4; shift 4
  local st=0
  /usr/bin/time -o "$DIR/$what.time" -f "%e %U %S %M" "$@" > "$DIR/$what.out" 2> "$DIR/$what.err" || st=$?
  read -r wall user sys kib < <(tail -1 "$DIR/$what.time")
  echo "$what, $pods pods: $wall s wall ($user s user, $sys s system), peak RSS $kib KiB, exit $st"
  result "$what.${pods}pods.wall" "$wall" s "$ts"
  result "$what.${pods}pods.peak_rss" "$(awk -v k="$kib" 'BEGIN {printf "%.0f", k/1024}')" MiB "$tm"
}
for pods in $PODS; do
  DIR="$ROOT/p$pods"
  mkdir -p "$DIR"
  target/release/examples/bench_recommend --dir "$DIR" --rows "$ROWS" --distinct "$DISTINCT" \
    --workloads $((pods / 10))
  echo "database: $(du -h "$DIR/flows.db" | cut -f1), $ROWS rows, $DISTINCT distinct flows, $pods pods"
  # Targets: recommend and audit <= 10 s and <= 1 GiB on 10 000 pods and 10 000 000 rows;
  # connectivity <= 5 s for 1 000 workloads (the 10 000-pod cluster).
  ts=-; tm=-; tc=-
  if [ "$pods" -ge 10000 ] && [ "$ROWS" -ge 10000000 ]; then ts="<=10"; tm="<=1024"; fi
  [ "$pods" -ge 10000 ] && tc="<=5"
  measure recommend "$pods" "$ts" "$tm" "$BIN" recommend --db "$DIR/flows.db" --manifests "$DIR/cluster.yaml"
  cp "$DIR/recommend.out" "$DIR/recommended.yaml"
  echo "policies: $(grep -c '^kind: NetworkPolicy' "$DIR/recommended.yaml")"
  measure audit "$pods" "$ts" "$tm" "$BIN" audit --db "$DIR/flows.db" --policies "$DIR/recommended.yaml" \
    --manifests "$DIR/cluster.yaml"
  tail -1 "$DIR/audit.out"
  measure connectivity "$pods" "$tc" - "$BIN" connectivity --manifests "$DIR/cluster.yaml" "$DIR/recommended.yaml"
  echo "connectivity lines: $(wc -l < "$DIR/connectivity.out")"
  # The database is the big part; the next size writes its own.
  [ -n "${BENCH_DIR:-}" ] || rm -f "$DIR/flows.db"*
done
