#!/usr/bin/env bash
# recommend / audit benchmark (see BENCHMARKS.md): a synthetic database of 10 000 pods,
# 1 000 workloads and ROWS flow rows (default 10 000 000) written through the store API, then
# the release `flowpol recommend` and `flowpol audit` timed with /usr/bin/time (wall, peak RSS).
# ROWS and DISTINCT (5-tuples among them) can be lowered for a quick run.
set -euo pipefail
cd "$(dirname "$0")/.."
ROWS=${ROWS:-10000000}
DISTINCT=${DISTINCT:-200000}
DIR=${BENCH_DIR:-$(mktemp -d)}
cargo build -q --release -p flowpol --no-default-features --bin flowpol --example bench_recommend
BIN=target/release/flowpol
target/release/examples/bench_recommend --dir "$DIR" --rows "$ROWS" --distinct "$DISTINCT"
echo "database: $(du -h "$DIR/flows.db" | cut -f1)"
measure() {
  local what=$1; shift
  /usr/bin/time -f "$what: %e s wall, %U s user, %S s system, peak RSS %M KiB" "$@"
}
measure recommend "$BIN" recommend --db "$DIR/flows.db" --manifests "$DIR/cluster.yaml" \
  > "$DIR/recommended.yaml" 2> >(grep -v '^#   ' | grep -v '^# warning' >&2)
echo "policies: $(grep -c '^kind: NetworkPolicy' "$DIR/recommended.yaml")"
set +e
measure audit "$BIN" audit --db "$DIR/flows.db" --policies "$DIR/recommended.yaml" \
  --manifests "$DIR/cluster.yaml" | tail -1
set -e
[ -n "${BENCH_DIR:-}" ] || rm -rf "$DIR"
