#!/usr/bin/env bash
# `make demo`: run the Task API scenario in the lab with the agent watching, print what was
# observed (each flow `ns/workload → ns/workload:port/proto` with counts, drops and unanswered
# flows with their reason), then tear the lab down. Needs root (network namespaces, eBPF).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${FLOWPOL_BIN:-target/release/flowpol}
SCENARIO=${SCENARIO:-deploy/examples/task-api}
if [ "$(id -u)" != 0 ]; then
  echo "the demo builds network namespaces and loads eBPF: run it as root (sudo make demo)" >&2
  exit 1
fi
[ -x "$BIN" ] || { echo "missing $BIN: run \`make build\` first" >&2; exit 1; }
DB=$(mktemp -d)/flows.db
echo "== flowpol lab run --scenario $SCENARIO (flow database: $DB)"
"$BIN" lab run --scenario "$SCENARIO" --lab demo --db "$DB"
