#!/usr/bin/env bash
# Soak run (BENCHMARKS.md, "Soak run"; not in CI): the release agent records while short TCP
# connections are opened between lab pods at SOAK_RATE new flows/s (default 5 000) for
# SOAK_SECONDS (default 3 600). Every SOAK_SAMPLE seconds (default 60) one CSV line: agent RSS
# and peak RSS, database size, flows stored (the drains table), connections generated, loss
# counters. At the end: whether memory stayed flat (max RSS of the last quarter of the samples
# vs the first quarter, within SOAK_RSS_SLACK, default 1.10) and connections recorded vs made.
# Each connection is its own 5-tuple within SOAK_PORTS x 64 512 source ports per client pod, so
# a pair comes back only after minutes (longer than TIME_WAIT and than a drain interval), and the
# agent runs with --per-connection so that each is its own flow and row: at its defaults a
# client's connections to one port are one row per interval, which would soak nothing.
# Needs root. Env: SOAK_SECONDS, SOAK_RATE, SOAK_SAMPLE, SOAK_CLIENTS (2), SOAK_PORTS (16),
# SOAK_CSV (default target/soak/soak-<UTC time>.csv), SOAK_AGENT_ARGS (agent flags, default
# --per-connection; "" for the agent's defaults),
# SOAK_DEPLOYED (1: identity from the lab's manifests and the API on, as the DaemonSet runs it),
# SOAK_SCOPE (root: the agent at the cgroup v2 root, as deployed, the default; lab: only the
# lab's cgroup slice, so other work on a shared machine stays out), SOAK_PORT_BASE (9100: the
# server ports are SOAK_PORT_BASE..+SOAK_PORTS-1), FLOWPOL_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
need_root soak
SECS=${SOAK_SECONDS:-3600}
RATE=${SOAK_RATE:-5000}
SAMPLE=${SOAK_SAMPLE:-60}
CLIENTS=${SOAK_CLIENTS:-2}
PORTS=${SOAK_PORTS:-16}
SLACK=${SOAK_RSS_SLACK:-1.10}
SCOPE=${SOAK_SCOPE:-root}
BASE=${SOAK_PORT_BASE:-9100}
mkdir -p target/soak
CSV=${SOAK_CSV:-target/soak/soak-$(date -u +%Y%m%dT%H%M%SZ).csv}
[ -x "$BIN" ] || { echo "soak: $BIN missing: run 'make build'" >&2; exit 1; }
cargo build -q --release -p flowpol --example bench_conn

LAB="soak$$"
WORK=$(mktemp -d /tmp/flowpol-soak.XXXXXX)
AGENT_PID=""; CLIENT_PIDS=()
cleanup() {
  set +e
  for p in "${CLIENT_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  "$BIN" lab down --lab "$LAB" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT cleanup once, then stop

lab_pods_up "$BIN" "$LAB" "$WORK" "$CLIENTS"
SERVER_IP=$(pod server 0 ip)
LAST_PORT=$((BASE + PORTS - 1))
in_pod server 0 "$CONN" server --listen "$SERVER_IP" --ports "$BASE-$LAST_PORT" --threads 2 > "$WORK/server.log" 2>&1 &
sleep 1

scope=$(scope_args "$SCOPE")
deployed=()
if [ "${SOAK_DEPLOYED:-0}" = 1 ]; then
  mapfile -t deployed < <(deployed_agent_args "$WORK" "$LAB")
  echo "soak: agent as deployed: identity from the lab's manifests, API on ${deployed[3]}"
fi
# shellcheck disable=SC2086
"$BIN" agent --db "$WORK/soak.db" $scope "${deployed[@]}" ${SOAK_AGENT_ARGS---per-connection} 2> "$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 150); do grep -q "capture attached" "$WORK/agent.log" && break; sleep 0.1; done
grep -q "capture attached" "$WORK/agent.log" || { cat "$WORK/agent.log" >&2; exit 1; }
echo "soak: agent pid $AGENT_PID, $RATE new flows/s from $CLIENTS client pods to $SERVER_IP:$BASE-$LAST_PORT for ${SECS}s, agent scope $SCOPE; CSV $CSV"

for i in $(seq 0 $((CLIENTS - 1))); do
  in_pod client "$i" "$CONN" client --server "$SERVER_IP" --ports "$BASE-$LAST_PORT" --seconds "$SECS" \
    --threads 4 --bind "$(pod client "$i" ip)" --unique --wrap --rate $((RATE / CLIENTS)) \
    --progress "$WORK/progress-$i" > "$WORK/client-$i.out" &
  CLIENT_PIDS+=($!)
done

status_kib() { awk -v k="$1" '$1 == k {print $2}' "/proc/$AGENT_PID/status"; }
q() { sqlite3 -cmd ".timeout 5000" "file:$WORK/soak.db?mode=ro" "$1" 2>/dev/null || echo "?"; }
generated() { cat "$WORK"/progress-* 2>/dev/null | awk '{c+=$1; f+=$2} END {print c+0, f+0}'; }
echo "elapsed_s,rss_kib,peak_rss_kib,db_bytes,flows_stored,connections_completed,connections_failed,loss_total,losses" > "$CSV"
sample() {
  local t=$1 gen losses
  gen=$(generated)
  losses=$(q "SELECT group_concat(counter || '=' || total, ' ') FROM (SELECT counter, sum(delta) AS total FROM capture_losses GROUP BY counter)")
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" "$(status_kib VmRSS:)" "$(status_kib VmHWM:)" \
    "$(cat "$WORK"/soak.db* 2>/dev/null | wc -c)" "$(q "SELECT coalesce(sum(flow_count), 0) FROM drains")" \
    "${gen% *}" "${gen#* }" "$(q "SELECT coalesce(sum(delta), 0) FROM capture_losses")" "${losses:-}" |
    tee -a "$CSV"
}
start=$(date +%s)
next=$SAMPLE
while :; do
  now=$(( $(date +%s) - start ))
  if [ "$now" -ge "$next" ]; then sample "$now"; next=$((next + SAMPLE)); fi
  alive=0
  for p in "${CLIENT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  [ "$alive" = 1 ] || break
  kill -0 "$AGENT_PID" 2>/dev/null || { echo "soak: the agent exited early:" >&2; tail -20 "$WORK/agent.log" >&2; exit 1; }
  sleep 1
done
for p in "${CLIENT_PIDS[@]}"; do wait "$p" || true; done
CLIENT_PIDS=()
sleep 6 # one drain interval (default 5 s) so the last connections are written
sample "$(( $(date +%s) - start ))"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""
cat "$WORK"/client-*.out
completed=$(sum_field completed "$WORK"/client-*.out)
failed=$(sum_field failed "$WORK"/client-*.out)
srcs=$(client_ips_sql "$CLIENTS")
# A connection's SYN is counted in exactly one stored row (the interval that saw it open): its
# own row with --per-connection, its client's aggregated row at the agent's defaults.
stored=$(sqlite3 "file:$WORK/soak.db?mode=ro" "SELECT coalesce(sum(connections), 0) FROM flows
  WHERE protocol = 6 AND verdict != 'dropped' AND dst_ip = X'$(ip_hex "$SERVER_IP")'
  AND dst_port BETWEEN $BASE AND $LAST_PORT AND src_ip IN ($srcs)")
losses=$(sqlite3 "file:$WORK/soak.db?mode=ro" "SELECT counter || '=' || sum(delta) FROM capture_losses GROUP BY counter" | tr '\n' ' ')
echo
echo "soak summary ($(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg)):"
# Memory: max RSS of the first and last quarter of the samples (CSV rows).
tail -n +2 "$CSV" | awk -F, -v slack="$SLACK" '
  {rss[NR] = $2; n = NR}
  END {
    q = int(n / 4); if (q < 1) q = 1
    for (i = 1; i <= q; i++) if (rss[i] > first) first = rss[i]
    for (i = n - q + 1; i <= n; i++) if (rss[i] > last) last = rss[i]
    printf "  memory: first-quarter max RSS %.1f MiB, last-quarter max RSS %.1f MiB (%d samples): %s\n",
      first / 1024, last / 1024, n, (last <= first * slack ? "FLAT (within " slack "x)" : "GREW (over " slack "x)")
  }'
echo "  connections: $completed completed, $failed failed, in ${SECS}s = $(( (completed + failed) / SECS )) per s offered $RATE/s"
awk -v s="$stored" -v c="$completed" 'BEGIN {printf "  connections recorded (the SYNs their rows count, clients -> server ports): %d of %d completed = %.2f %%\n", s, c, (c > 0 ? 100 * s / c : 0)}'
echo "  loss counters in the database: ${losses:-none}"
# From ` drains=` on: `.*(drains=)` matched the last `drains=`, the one of `early_drains=`.
echo "  agent at exit: $(sed 's/\x1b\[[0-9;]*m//g' "$WORK/agent.log" | grep "capture detached" | sed -E 's/^.*( drains=)/\1/; s/^ //' || echo '?')"
echo "  CSV: $CSV"
