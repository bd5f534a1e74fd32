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

# Recommend least-privilege policies from what was just observed (the scenario's manifests as
# cluster state), checked by the engine; the summary goes to stderr, the policies to stdout.
MANIFESTS=()
for f in "$SCENARIO"/*.yaml; do
  case "$(basename "$f")" in traffic.yaml|lab.yaml) ;; *) MANIFESTS+=("$f") ;; esac
done
echo
echo "== flowpol recommend --db $DB --manifests ${MANIFESTS[*]}"
"$BIN" recommend --db "$DB" --manifests "${MANIFESTS[@]}"

# Audit a hand-written policy set with three classic mistakes against the same flows.
BROKEN=${BROKEN:-deploy/broken-policies/task-api}
if [ -d "$BROKEN" ]; then
  echo
  echo "== flowpol audit --db $DB --policies $BROKEN"
  echo "   mistakes: DNS forgotten (taskapi/egress), a cross-namespace peer as two OR peers"
  echo "   (postgres/allow-task-api), the Service port 80 in place of the pod port 8080 (taskapi/allow-gateway)"
  set +e
  "$BIN" audit --db "$DB" --policies "$BROKEN"
  status=$?
  set -e
  echo "(audit exit status $status: 1 = some observed flow would be denied)"
fi
