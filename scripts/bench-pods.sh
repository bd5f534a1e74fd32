#!/usr/bin/env bash
# Traffic between lab pods (`flowpol lab`) with and without the agent (see BENCHMARKS.md):
#  1. TCP throughput (iperf3) and connection rate (bench_conn, short connections flat-out)
#     from a client pod to a server pod, without and with `flowpol agent`, alternating in one
#     run, as ratios (targets >= 0.97 and >= 0.95);
#  2. a connection storm: every client pod opens connections flat-out for STORM_SECONDS with the
#     agent recording, each connection on its own 5-tuple; the completed connections are compared
#     with the distinct TCP flows the agent stored for those pods and ports (target 100 %), next
#     to the agent's loss counters (capture_losses table and its exit log).
# eBPF program cost per run (bpf_stats) is reported for the lab TCP rounds and for the storm.
# Needs root. Env: ROUNDS (3), SECONDS_PER_RUN (5), STORM_SECONDS (30), STORM_CLIENTS (2),
# STORM_THREADS (8 per client pod), STORM_AGENT_ARGS (extra `flowpol agent` flags, e.g.
# "--flow-map-entries 262144"), STORM_SCOPE (root: the agent at the cgroup v2 root, as deployed,
# the default; lab: only the lab's cgroup slice), FLOWPOL_BIN, BENCH_RESULTS (scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
need_root bench-pods
BIN=${FLOWPOL_BIN:-target/release/flowpol}
CONN=target/release/examples/bench_conn
ROUNDS=${ROUNDS:-3}
DUR=${SECONDS_PER_RUN:-5}
STORM_SECONDS=${STORM_SECONDS:-30}
CLIENTS=${STORM_CLIENTS:-2}
STORM_THREADS=${STORM_THREADS:-8}
[ -x "$BIN" ] || { echo "bench-pods: $BIN missing: run 'make build'" >&2; exit 1; }
command -v iperf3 >/dev/null || { echo "bench-pods: iperf3 missing: run 'make setup'" >&2; exit 1; }
cargo build -q --release -p flowpol --example bench_conn

LAB="bp$$"
WORK=$(mktemp -d /tmp/flowpol-bench-pods.XXXXXX)
export FLOWPOL_LOG=${FLOWPOL_LOG:-info}
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
AGENT_PID=""
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  # `lab down` kills the pods' cgroups, with the servers this script placed in them.
  "$BIN" lab down --lab "$LAB" >/dev/null 2>&1
  sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT cleanup once, then stop

lab_pods_up "$BIN" "$LAB" "$WORK" "$CLIENTS"
SERVER_IP=$(pod server 0 ip)
CLIENT_IP=$(pod client 0 ip)
echo "lab $LAB: client pod $CLIENT_IP -> server pod $SERVER_IP"
in_pod server 0 iperf3 -s -B "$SERVER_IP" -p 5201 > "$WORK/iperf3-server.log" 2>&1 &
in_pod server 0 "$CONN" server --listen "$SERVER_IP" --ports 9000 > "$WORK/conn-rate.log" 2>&1 &
in_pod server 0 "$CONN" server --listen "$SERVER_IP" --ports 9100-9107 --threads 2 > "$WORK/conn-storm.log" 2>&1 &
sleep 1

start_agent() { # start_agent LOG [flags...]
  local log=$1; shift
  "$BIN" agent "$@" 2> "$log" &
  AGENT_PID=$!
  for _ in $(seq 150); do grep -q "capture attached" "$log" && return; sleep 0.1; done
  cat "$log" >&2; exit 1
}
stop_agent() { kill -TERM "$AGENT_PID"; wait "$AGENT_PID" || true; AGENT_PID=""; }

gbps() {
  in_pod client 0 iperf3 -c "$SERVER_IP" -p 5201 -t "$DUR" -J | jq '.end.sum_received.bits_per_second / 1e9'
}
conns() { # connections/s, flat-out, 8 threads, kernel-chosen source ports
  in_pod client 0 "$CONN" client --server "$SERVER_IP" --ports 9000 --seconds "$DUR" --threads 8 |
    sed -E 's/.* rate=([0-9]+).*/\1/'
}

sysctl -qw kernel.bpf_stats_enabled=1
# ROUNDS=0: the storm only.
if [ "$ROUNDS" -gt 0 ]; then
  : > "$WORK/agent-rounds.log"
  tb=(); tw=(); cb=(); cw=()
  echo "alternating rounds of ${DUR}s (without agent, then with):"
  for r in $(seq 1 "$ROUNDS"); do
    b=$(gbps); c=$(conns)
    start_agent "$WORK/agent.log" --db "$WORK/rounds.db"
    w=$(gbps); d=$(conns)
    stop_agent; cat "$WORK/agent.log" >> "$WORK/agent-rounds.log"
    tb+=("$b"); tw+=("$w"); cb+=("$c"); cw+=("$d")
    printf 'round %d: throughput %.2f / %.2f Gbit/s, connections %s / %s per s\n' "$r" "$b" "$w" "$c" "$d"
  done
  mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.3f", s/NR}'; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0 ? a/b : 0)}'; }
  mtb=$(mean "${tb[@]}"); mtw=$(mean "${tw[@]}"); mcb=$(mean "${cb[@]}"); mcw=$(mean "${cw[@]}")
  echo "lab pods, $ROUNDS x ${DUR}s alternating:"
  result pods.tcp_throughput.without_agent "$mtb" Gbit/s -
  result pods.tcp_throughput.with_agent "$mtw" Gbit/s -
  result pods.tcp_throughput.ratio "$(ratio "$mtw" "$mtb")" ratio ">=0.97"
  result pods.conn_rate.without_agent "$(printf %.0f "$mcb")" conn/s -
  result pods.conn_rate.with_agent "$(printf %.0f "$mcw")" conn/s -
  result pods.conn_rate.ratio "$(ratio "$mcw" "$mcb")" ratio ">=0.95"
  echo "eBPF program cost during those rounds (TCP streams: a run is often a GSO aggregate):"
  agent_prog_stats "$WORK/agent-rounds.log" | while read -r p n ns; do
    result "prog.$p.ns_per_run.lab_tcp_rounds" "$ns" ns/run "<=100"
  done
fi

# The storm: agent recording with its default settings (plus STORM_AGENT_ARGS).
echo "connection storm: $CLIENTS client pods x $STORM_THREADS threads flat-out for ${STORM_SECONDS}s, agent recording"
scope=$(scope_args "${STORM_SCOPE:-root}")
# shellcheck disable=SC2086
start_agent "$WORK/agent-storm.log" --db "$WORK/storm.db" $scope ${STORM_AGENT_ARGS:-}
# CPU the agent gets during the storm (utime + stime in clock ticks, /proc/PID/stat fields 14, 15).
agent_cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }
cpu_before=$(agent_cpu_ticks); storm_started=$(date +%s.%N)
pids=()
for i in $(seq 0 $((CLIENTS - 1))); do
  in_pod client "$i" "$CONN" client --server "$SERVER_IP" --ports 9100-9107 --seconds "$STORM_SECONDS" \
    --threads "$STORM_THREADS" --bind "$(pod client "$i" ip)" --unique > "$WORK/storm-client-$i.out" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cpu_after=$(agent_cpu_ticks); storm_ended=$(date +%s.%N)
sleep 1
stop_agent
cat "$WORK"/storm-client-*.out
completed=$(cat "$WORK"/storm-client-*.out | sed -E 's/.*completed=([0-9]+).*/\1/' | awk '{s+=$1} END {print s+0}')
failed=$(cat "$WORK"/storm-client-*.out | sed -E 's/.*failed=([0-9]+).*/\1/' | awk '{s+=$1} END {print s+0}')
secs=$(cat "$WORK"/storm-client-*.out | sed -E 's/.*seconds=([0-9.]+).*/\1/' | sort -n | tail -1)
min1=$(cat "$WORK"/storm-client-*.out | sed -E 's/.*min_1s=([0-9]+).*/\1/' | awk '{s+=$1} END {print s+0}')
srcs=""
for i in $(seq 0 $((CLIENTS - 1))); do srcs="$srcs${srcs:+,}X'$(ip_hex "$(pod client "$i" ip)")'"; done
stored=$(sqlite3 "file:$WORK/storm.db?mode=ro" "SELECT count(*) FROM (SELECT DISTINCT src_ip, src_port, dst_port
  FROM flows WHERE protocol = 6 AND dst_ip = X'$(ip_hex "$SERVER_IP")' AND dst_port BETWEEN 9100 AND 9107
  AND src_ip IN ($srcs))")
losses=$(sqlite3 "file:$WORK/storm.db?mode=ro" "SELECT counter || '=' || sum(delta) FROM capture_losses GROUP BY counter" | tr '\n' ' ')
exit_counters=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/agent-storm.log" | grep "capture detached" | sed -E 's/.*counters=//' || true)
result storm.rate_sustained "$(awk -v c="$completed" -v s="$secs" 'BEGIN {printf "%.0f", c/s}')" conn/s -
result storm.rate_slowest_second "$min1" conn/s -
result storm.connections_completed "$completed" conn -
result storm.connections_failed "$failed" conn -
result storm.flows_stored "$stored" flows -
result storm.recorded_share "$(awk -v s="$stored" -v c="$completed" 'BEGIN {printf "%.2f", (c > 0 ? 100*s/c : 0)}')" % ">=100"
agent_cpu=$(awk -v a="$cpu_before" -v b="$cpu_after" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / t}')
result storm.agent_cpu_seconds "$agent_cpu" s -
result storm.agent_cpu_share "$(awk -v c="$agent_cpu" -v a="$storm_started" -v b="$storm_ended" 'BEGIN {printf "%.1f", 100 * c / (b - a)}')" %core -
early=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/agent-storm.log" | grep "capture detached" | sed -E 's/.*early_drains=([0-9]+).*/\1/' || true)
drains=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/agent-storm.log" | grep "capture detached" | sed -E 's/.* drains=([0-9]+).*/\1/' || true)
result storm.drains "${drains:-?}" drains -
result storm.early_drains "${early:-?}" drains -
for l in $losses; do result "storm.loss.${l%%=*}" "${l#*=}" count -; done
[ -n "$losses" ] || result storm.loss.total 0 count -
echo "agent loss counters stored in the database: ${losses:-none}"
echo "agent counters at exit: ${exit_counters:-?}"
if [ "$stored" -lt "$completed" ]; then
  echo "shortfall: $((completed - stored)) connections not stored. The loss counters count packets:"
  echo "  flow_map_full = packets that found the kernel flow map full (each sent to the overflow ring"
  echo "  buffer instead), ringbuf_full = of those, packets the ring buffer had no room for: a flow"
  echo "  none of whose packets got a map entry or a ring buffer slot is not stored. Bigger maps:"
  echo "  STORM_AGENT_ARGS=\"--flow-map-entries 262144\"; a shorter drain: --interval 1s."
fi
agent_prog_stats "$WORK/agent-storm.log" | while read -r p n ns; do
  result "prog.$p.ns_per_run.storm" "$ns" ns/run "<=100"
done
