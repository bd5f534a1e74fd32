#!/usr/bin/env bash
# Agent API benchmarks (see BENCHMARKS.md):
#  1. flows/s served and latency of /api/v1/flows while ~10 000 flows/s are recorded
#     (synthetic recorder on the agent's write path, no eBPF; any user);
#  2. RSS of the real agent (eBPF, --listen) after a drain of 100 000 live flows (root only).
# Env: SECONDS_API (20; 0 skips part 1), CLIENTS_API (2), NO_LISTEN=1, BENCH_RESULTS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# SECONDS_API=0 or SKIP_PART1=1: only part 2. FLOWPOL_BIN=path: measure that agent binary.
if [ "${SECONDS_API:-20}" != 0 ] && [ "${SKIP_PART1:-0}" != 1 ]; then
  cargo build -q --release -p flowpol --example bench_api
  target/release/examples/bench_api --seconds "${SECONDS_API:-20}" --clients "${CLIENTS_API:-2}" | tee "$work/part1.txt"
  result api.served_flows_per_s "$(sed -nE 's/^served ([0-9]+) flows\/s.*/\1/p' "$work/part1.txt")" flows/s -
  result api.p99_latency "$(sed -nE 's/^served .* p99 ([0-9.]+) ms.*/\1/p' "$work/part1.txt")" ms -
fi

if [ "$(id -u)" != 0 ]; then
  echo "agent RSS with 100 000 flows: NOT MEASURED (needs root: eBPF); run with sudo" >&2
  result agent.rss_100k_live_flows - MiB "<=64"
  rm -rf "$work"
  exit 0
fi
build_flowpol bench-api
ns="fpapi-bench-$$"
agent=""
cleanup() {
  [ -n "$agent" ] && kill -TERM "$agent" 2>/dev/null && wait "$agent" 2>/dev/null || true
  ip netns del "$ns" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
head -c24 /dev/urandom | base64 > "$work/token"
ip netns add "$ns"
ip -n "$ns" link set lo up
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# NO_LISTEN=1: the same agent without the HTTP API, to tell the API's share of memory apart.
listen=(--listen "127.0.0.1:$port" --token-file "$work/token")
[ "${NO_LISTEN:-0}" = 1 ] && listen=()
"$BIN" agent --db "$work/flows.db" --interval 20s --flow-map-entries 262144 "${listen[@]}" 2> "$work/agent.log" &
agent=$!
for _ in $(seq 100); do grep -q "capture attached" "$work/agent.log" && break; sleep 0.2; done
grep -q "capture attached" "$work/agent.log" || { cat "$work/agent.log"; exit 1; }
rss() { awk -v k="$1" '$1==k {print $2}' "/proc/$agent/status"; }
echo "agent idle: VmRSS $(rss VmRSS:) KiB, VmHWM $(rss VmHWM:) KiB; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
# (Both local sockets of a flow hold a map entry: 200 000 entries for 100 000 flows.)
# 100 000 distinct UDP flows inside the namespace: 4 source addresses x 25 000 source ports to one
# receiver that reads them all (so the kernel drops nothing).
ip netns exec "$ns" python3 - <<'PY'
import socket, threading
r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
r.bind(("127.0.0.1", 9999))
got = [0]
def reader():
    r.settimeout(2)
    try:
        while True:
            r.recv(64); got[0] += 1
    except socket.timeout:
        pass
t = threading.Thread(target=reader); t.start()
sent = 0
for a in range(2, 6):
    for p in range(10000, 35000):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((f"127.0.0.{a}", p))
        s.sendto(b"x", ("127.0.0.1", 9999))
        s.close(); sent += 1
t.join()
print(f"sent {sent} UDP flows, received {got[0]}")
PY
# Wait for the drain that holds them, and its write.
sleep 25
rss_after=$(rss VmRSS:); rss_peak=$(rss VmHWM:)
echo "agent after draining 100 000 live flows: VmRSS $rss_after KiB, peak VmHWM $rss_peak KiB; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
grep -o 'records=[0-9]*' "$work/agent.log" | tail -3 || true
[ "${NO_LISTEN:-0}" = 1 ] || t=$(curl -s -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $(cat "$work/token")" \
  "http://127.0.0.1:$port/api/v1/flows?protocol=UDP&limit=10000")
[ "${NO_LISTEN:-0}" = 1 ] || echo "one page of 10 000 rows from the agent: ${t} s"
kill -TERM "$agent"; wait "$agent" || true; agent=""
rows=$(sqlite3 "file:$work/flows.db?mode=ro" "select count(*) from flows where protocol = 17")
echo "UDP rows stored: $rows"
grep -E "capture loss|flow_map_full" "$work/agent.log" | head -3 || true
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k/1024}'; }
result agent.rss_100k_live_flows "$(mib "$rss_after")" MiB "<=64"
result agent.peak_rss_100k_live_flows "$(mib "$rss_peak")" MiB "<=64"
result agent.flows_stored_of_100k "$rows" flows ">=100000"
