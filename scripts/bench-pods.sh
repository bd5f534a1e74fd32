#!/usr/bin/env bash
# Traffic between lab pods (`flowpol lab`) with and without the agent (see BENCHMARKS.md),
# bpf_stats off:
#  1. TCP throughput (iperf3) from a client pod to a server pod, without the agent, with
#     `flowpol agent`, and with the bare cgroup hooks only (`examples/hook_hold.rs`: programs
#     that return 1, no agent), in ROUNDS rounds whose order rotates, as a ratio of the means
#     (target >= 0.97);
#  2. connection rate (bench_conn, short connections flat-out, 8 threads): one client run,
#     under which the agent and the bare hooks are switched on and off in CONN_CYCLES cycles of
#     windows `without, agent, without, hooks`; each agent window's rate over the mean of the
#     two `without` windows around it, averaged (target >= 0.95), with its 95 % interval;
#  then one more pass with the agent and bpf_stats on for program cost, and the CPU share of
#  the capture (perf);
#  3. a connection storm: every client pod opens connections flat-out for STORM_SECONDS with the
#     agent recording, each connection on its own 5-tuple; the connections the agent recorded for
#     those pods and ports (the `connections` of their rows) are compared with those opened
#     (completed + SYN retransmissions, target 100 %), next to the agent's loss counters
#     (capture_losses table and its exit log).
# eBPF program cost per run (bpf_stats) is reported for the lab TCP traffic and for the storm.
# Needs root. Env: LAB_CPUS (a CPU list: the pods' processes pinned there, bench-lib.sh),
# ROUNDS (10; 0: the storm only), SECONDS_PER_RUN (5: each throughput run and each
# connection-rate window), WARMUP (5: seconds of connections before the first window, and
# before the measured seconds of the program-cost and CPU-share passes, uncounted),
# CONN_CYCLES (30), CONN_SETTLE (1: seconds between the agent or the hooks attaching and their
# window), THROUGHPUT (1; 0: no throughput rounds), CONN_RATE (1; 0: no connection-rate run),
# STORM_SECONDS (30), STORM_CLIENTS (2),
# STORM_THREADS (8 per client pod), STORM_AGENT_ARGS (extra `flowpol agent` flags, e.g.
# "--flow-map-entries 262144"), STORM_DEPLOYED (1: the storm's agent also resolves identity from
# the lab's manifests and serves the API, as the DaemonSet runs it), STORM_SCOPE (root: the agent at the cgroup v2 root, as deployed,
# the default; lab: only the lab's cgroup slice), FLOWPOL_BIN, BENCH_RESULTS (scripts/bench-lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
need_root bench-pods
ROUNDS=${ROUNDS:-10}
DUR=${SECONDS_PER_RUN:-5}
WARMUP=${WARMUP:-5}
CONN_CYCLES=${CONN_CYCLES:-30}
CONN_SETTLE=${CONN_SETTLE:-1}
THROUGHPUT=${THROUGHPUT:-1}
CONN_RATE=${CONN_RATE:-1}
[ "$THROUGHPUT" = 1 ] || [ "$CONN_RATE" = 1 ] || { echo "bench-pods: THROUGHPUT=0 and CONN_RATE=0 leave the rounds nothing to measure" >&2; exit 2; }
[[ "$CONN_CYCLES" =~ ^[1-9][0-9]*$ ]] || { echo "bench-pods: CONN_CYCLES=$CONN_CYCLES: want a whole number >= 1" >&2; exit 2; }
[[ "$CONN_SETTLE" =~ ^[0-9]+(\.[0-9]+)?$ ]] || { echo "bench-pods: CONN_SETTLE=$CONN_SETTLE: want seconds (e.g. 1 or 0.5)" >&2; exit 2; }
STORM_SECONDS=${STORM_SECONDS:-30}
CLIENTS=${STORM_CLIENTS:-2}
STORM_THREADS=${STORM_THREADS:-8}
need_flowpol bench-pods
command -v iperf3 >/dev/null || { echo "bench-pods: iperf3 missing: run 'make setup'" >&2; exit 1; }
cargo build -q --release -p flowpol --example bench_conn --example hook_hold

LAB="bp$$"
WORK=$(mktemp -d /tmp/flowpol-bench-pods.XXXXXX)
export FLOWPOL_LOG=${FLOWPOL_LOG:-info}
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
AGENT_PID=""
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "${HOOK_PID:-}" ] && kill "$HOOK_PID" 2>/dev/null
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
# CPU the agent has used (utime + stime in clock ticks, /proc/PID/stat fields 14, 15).
agent_cpu_ticks() { awk '{print $14 + $15}' "/proc/$AGENT_PID/stat"; }

gbps() {
  [ "$THROUGHPUT" = 1 ] || { echo 0; return; }
  in_pod client 0 iperf3 -c "$SERVER_IP" -p 5201 -t "$DUR" -J | jq '.end.sum_received.bits_per_second / 1e9'
}
conns() { # connections/s after the warm-up (lab_conn_rate)
  [ "$CONN_RATE" = 1 ] || { echo 0; return; }
  lab_conn_rate "$SERVER_IP" 9000 "$DUR" "$WARMUP"
}

# ROUNDS=0: the storm only.
if [ "$ROUNDS" -gt 0 ]; then
  # The ratios are measured with bpf_stats off, as on a production node: with it on the kernel
  # reads the clock twice around every program run (~75 ns a run here, see BENCHMARKS.md), a
  # cost the agent does not have. Program cost is measured in its own pass below.
  sysctl -qw kernel.bpf_stats_enabled=0
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (b > 0 ? a/b : 0)}'; }
  # The hooks alone: programs that only return 1 at the same two cgroup hooks, no agent. What
  # any cgroup_skb capture costs before it does anything (the floor under the agent's ratio).
  hooks_on() {
    coproc HOOK { "$HOLD"; }
    local line; read -r line <&"${HOOK[0]}" || { echo "hook_hold failed" >&2; exit 1; }
  }
  hooks_off() { exec {HOOK[1]}>&-; wait "$HOOK_PID" || true; }
fi
if [ "$ROUNDS" -gt 0 ] && [ "$THROUGHPUT" = 1 ]; then
  tb=(); tw=(); th=(); rt=(); rht=()
  without() { b=$(gbps); }
  with() { start_agent "$WORK/agent.log" --db "$WORK/rounds.db"; w=$(gbps); stop_agent; }
  hook() { hooks_on; h=$(gbps); hooks_off; }
  echo "throughput: rounds of ${DUR}s each without the agent, with it, and with the bare hooks"
  echo "only, the order rotating every round so that drift on the machine hits all three alike:"
  for r in $(seq 1 "$ROUNDS"); do
    case $((r % 3)) in
      1) without; with; hook ;;
      2) with; hook; without ;;
      0) hook; without; with ;;
    esac
    tb+=("$b"); tw+=("$w"); th+=("$h")
    rt+=("$(ratio "$w" "$b")"); rht+=("$(ratio "$h" "$b")")
    printf 'round %d: throughput %.2f / %.2f / %.2f Gbit/s (without / agent / hooks)\n' "$r" "$b" "$w" "$h"
  done
  mtb=$(mean "${tb[@]}"); mtw=$(mean "${tw[@]}"); mth=$(mean "${th[@]}")
  echo "lab pods, $ROUNDS rounds of ${DUR}s (per-round ratios $(spread "${rt[@]}")):"
  result pods.tcp_throughput.without_agent "$mtb" Gbit/s -
  result pods.tcp_throughput.with_agent "$mtw" Gbit/s -
  result pods.tcp_throughput.ratio "$(ratio "$mtw" "$mtb")" ratio ">=0.97"
  result pods.tcp_throughput.round_ratio_mean "$(mean "${rt[@]}")" ratio -
  result pods.tcp_throughput.round_ratio_ci95 "$(ci95 "${rt[@]}")" "+-ratio" -
  result pods.tcp_throughput.hooks_only "$mth" Gbit/s -
  result pods.tcp_throughput.hooks_only_ratio "$(ratio "$mth" "$mtb")" ratio -
fi
if [ "$ROUNDS" -gt 0 ] && [ "$CONN_RATE" = 1 ]; then
  # The connection rate drifts by several per cent over seconds with nothing changing (a
  # 2-core VM; BENCHMARKS.md), more than the cost measured. So one client run connects
  # flat-out throughout, recording its count every 100 ms (--timeline), while this script
  # switches the capture on and off under it: CONN_CYCLES cycles of DUR-second windows
  # `without, agent, without, hooks`, and a last `without`. Each agent (hooks) window is
  # compared with the mean of the two `without` windows around it, a few seconds away.
  # An agent window opens CONN_SETTLE s after the agent attached (its start-up, a one-time
  # cost, stays outside) and lasts DUR s, one drain interval (5 s): one periodic drain with
  # its SQLite write falls inside. The agent stops right after, outside any window.
  tl=$WORK/conn.timeline; marks=$WORK/conn.marks; stopfile=$WORK/conn.stop
  : > "$marks"
  lab_conn_client "$SERVER_IP" 9000 --seconds 1000000 --timeline "$tl" --stop-file "$stopfile" \
    > "$WORK/conn-client.out" &
  client_pid=$!
  window() { # window STATE: DUR seconds marked as STATE
    local from to; from=$(date +%s.%N); sleep "$DUR"; to=$(date +%s.%N)
    echo "$1 $from $to" >> "$marks"
  }
  sleep "$WARMUP"
  dr=()
  echo "connection rate: one ${CONN_CYCLES}-cycle run, windows of ${DUR}s: without, agent, without, hooks"
  for _ in $(seq 1 "$CONN_CYCLES"); do
    window without
    start_agent "$WORK/agent.log" --db "$WORK/rounds.db"
    sleep "$CONN_SETTLE"; window agent; stop_agent
    # Periodic drains while it ran (its exit line counts the final one at exit too).
    dr+=("$(($(log_field "$WORK/agent.log" "capture detached" drains) - 1))")
    window without
    hooks_on; sleep "$CONN_SETTLE"; window hooks; hooks_off
  done
  window without
  touch "$stopfile"; wait "$client_pid"
  [ "$(wc -l < "$tl")" -gt 1 ] || { echo "bench-pods: the client wrote no timeline" >&2; cat "$WORK/conn-client.out" >&2; exit 1; }
  window_rates "$tl" "$marks" > "$WORK/conn.rates"
  state_rates() { awk -v s="$1" '$1 == s {print $2}' "$WORK/conn.rates"; }
  mapfile -t cb < <(state_rates without); mapfile -t cw < <(state_rates agent); mapfile -t ch < <(state_rates hooks)
  mapfile -t rc < <(sandwich_ratios agent < "$WORK/conn.rates")
  mapfile -t rhc < <(sandwich_ratios hooks < "$WORK/conn.rates")
  awk '{printf "%s%s %.0f", (NR > 1 ? ", " : "  windows (conn/s): "), $1, $2} END {print ""}' "$WORK/conn.rates" | fold -s -w 100
  echo "lab pods, ${#rc[@]} agent and ${#rhc[@]} hooks windows of ${DUR}s (ratios to the windows around them: agent $(spread "${rc[@]}"), hooks $(spread "${rhc[@]}")):"
  result pods.conn_rate.without_agent "$(printf %.0f "$(mean "${cb[@]}")")" conn/s -
  result pods.conn_rate.with_agent "$(printf %.0f "$(mean "${cw[@]}")")" conn/s -
  result pods.conn_rate.ratio "$(mean "${rc[@]}")" ratio ">=0.95"
  result pods.conn_rate.ratio_ci95 "$(ci95 "${rc[@]}")" "+-ratio" -
  result pods.conn_rate.ratio_of_means "$(ratio "$(mean "${cw[@]}")" "$(mean "${cb[@]}")")" ratio -
  result pods.conn_rate.windows "${#rc[@]}" windows -
  result pods.conn_rate.agent_drains_per_window "$(mean "${dr[@]}")" drains -
  result pods.conn_rate.hooks_only "$(printf %.0f "$(mean "${ch[@]}")")" conn/s -
  result pods.conn_rate.hooks_only_ratio "$(mean "${rhc[@]}")" ratio -
  result pods.conn_rate.hooks_only_ratio_ci95 "$(ci95 "${rhc[@]}")" "+-ratio" -
fi
if [ "$ROUNDS" -gt 0 ]; then
  # Low-noise view of the same cost: while the client drives TRAFFIC flat-out with the agent
  # recording (bpf_stats off), the share of the machine's busy CPU that the capture takes:
  # the agent process (/proc/PID/stat) plus the kernel's side of the programs (perf samples in
  # the programs, the cgroup hook and the flow-map helpers they call). If the lab is CPU-bound,
  # the rate with the agent is at best (1 - that share) of the rate without.
  busy() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8}' /proc/stat; }
  capture_cpu_share() { # capture_cpu_share FIGURE_PREFIX WHAT TRAFFIC_COMMAND...
    local prefix=$1 what=$2; shift 2
    start_agent "$WORK/agent.log" --db "$WORK/rounds.db"
    # Sampled over the measured window only (after the warm-up), like the rounds.
    "$@" > /dev/null &
    local traffic_pid=$!
    sleep "$WARMUP"
    local a0 b0 a1 b1
    a0=$(agent_cpu_ticks); b0=$(busy)
    perf record -a -F 499 -o "$WORK/perf.data" -- sleep "$DUR" > /dev/null 2>&1 || true
    a1=$(agent_cpu_ticks); b1=$(busy)
    wait "$traffic_pid" || true
    stop_agent
    # Program-side symbols only: the agent's own syscalls are in its ticks already.
    local prog_share agent_share
    prog_share=$(perf report -i "$WORK/perf.data" --sort sym -g none -F overhead,sym 2>/dev/null |
      awk '!/^#/ && NF >= 3 {
        p = $1; sub(/%/, "", p); s = $NF
        if (s ~ /^(pv_native_safe_halt|default_idle|default_idle_call|cpuidle_idle_call|do_idle|native_safe_halt)$/) idle += p
        else { busy += p
          if (s ~ /^bpf_prog_/ || s ~ /^(__cgroup_bpf_run_filter_skb|__bpf_prog_run_save_cb|__bpf_prog_enter_recur|__bpf_prog_exit_recur|bpf_trace_run[0-9]|htab_map_hash|__htab_map_lookup_elem|htab_map_update_elem_in_place|htab_percpu_map_update_elem|__htab_percpu_map_update_elem|pcpu_freelist_pop|alloc_htab_elem|lookup_nulls_elem_raw|bpf_skb_cgroup_id|bpf_probe_read_kernel|bpf_ringbuf_output|bpf_jiffies64|bpf_ktime_get_ns|bpf_ktime_get_coarse_ns)$/) prog += p }
      } END { printf "%.2f", (busy > 0 ? 100 * prog / busy : 0) }')
    agent_share=$(awk -v a=$((a1 - a0)) -v b=$((b1 - b0)) 'BEGIN {printf "%.2f", (b > 0 ? 100 * a / b : 0)}')
    echo "share of the busy CPU while $what with the agent (perf -a and /proc, ${DUR}s):"
    result "$prefix.cpu_share.programs" "$prog_share" % -
    result "$prefix.cpu_share.agent" "$agent_share" % -
    result "$prefix.cpu_bound_ratio" "$(awk -v p="$prog_share" -v a="$agent_share" 'BEGIN {printf "%.3f", 1 - (p + a) / 100}')" ratio -
  }
  if command -v perf >/dev/null; then
    if [ "$CONN_RATE" = 1 ]; then
      capture_cpu_share pods.conn_rate "connecting flat-out" conns
    fi
    if [ "$THROUGHPUT" = 1 ]; then
      capture_cpu_share pods.tcp_throughput "streaming (iperf3)" \
        in_pod client 0 iperf3 -c "$SERVER_IP" -p 5201 -t $((WARMUP + DUR))
    fi
  else
    echo "perf missing: the CPU share of the capture is not measured"
  fi
  echo "eBPF program cost: one more round of the same traffic with the agent and bpf_stats on"
  echo "(TCP streams: a run is often a GSO aggregate):"
  sysctl -qw kernel.bpf_stats_enabled=1
  start_agent "$WORK/agent.log" --db "$WORK/rounds.db"
  gbps > /dev/null; conns > /dev/null
  stop_agent
  agent_prog_stats "$WORK/agent.log" | while read -r p n ns; do
    result "prog.$p.ns_per_run.lab_tcp_rounds" "$ns" ns/run "<=100"
  done
fi

sysctl -qw kernel.bpf_stats_enabled=1
# The storm: agent recording with its default settings (plus STORM_AGENT_ARGS).
echo "connection storm: $CLIENTS client pods x $STORM_THREADS threads flat-out for ${STORM_SECONDS}s, agent recording"
scope=$(scope_args "${STORM_SCOPE:-root}")
deployed=()
if [ "${STORM_DEPLOYED:-0}" = 1 ]; then
  mapfile -t deployed < <(deployed_agent_args "$WORK" "$LAB")
  echo "agent as deployed: identity from the lab's manifests, API on ${deployed[3]}"
fi
# shellcheck disable=SC2086
start_agent "$WORK/agent-storm.log" --db "$WORK/storm.db" $scope "${deployed[@]}" ${STORM_AGENT_ARGS:-}
clients_syn_retrans() { # the client pods' SYN retransmissions so far, summed
  local sum=0 i
  for i in $(seq 0 $((CLIENTS - 1))); do sum=$((sum + $(syn_retrans client "$i"))); done
  echo "$sum"
}
retrans_before=$(clients_syn_retrans)
cpu_before=$(agent_cpu_ticks); storm_started=$(date +%s.%N)
pids=()
for i in $(seq 0 $((CLIENTS - 1))); do
  in_pod client "$i" "$CONN" client --server "$SERVER_IP" --ports 9100-9107 --seconds "$STORM_SECONDS" \
    --threads "$STORM_THREADS" --bind "$(pod client "$i" ip)" --unique > "$WORK/storm-client-$i.out" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
cpu_after=$(agent_cpu_ticks); storm_ended=$(date +%s.%N)
retrans=$(($(clients_syn_retrans) - retrans_before))
sleep 1
stop_agent
cat "$WORK"/storm-client-*.out
completed=$(sum_field completed "$WORK"/storm-client-*.out)
failed=$(sum_field failed "$WORK"/storm-client-*.out)
secs=$(cat "$WORK"/storm-client-*.out | sed -E 's/.*seconds=([0-9.]+).*/\1/' | sort -n | tail -1)
min1=$(sum_field min_1s "$WORK"/storm-client-*.out)
srcs=$(client_ips_sql "$CLIENTS")
# The storm's rows: a client's connections to one port are one row per interval (its ephemeral
# port 0), each row counting the SYNs it covers. Every completed connection sent a SYN, some sent
# it again, a failed attempt may have sent one (refused) or not (no free tuple): nothing is lost
# when completed + retransmissions <= recorded <= that + failed.
storm_rows="FROM flows WHERE protocol = 6 AND verdict != 'dropped' AND dst_ip = X'$(ip_hex "$SERVER_IP")'
  AND dst_port BETWEEN 9100 AND 9107 AND src_ip IN ($srcs)"
read -r rows stored < <(sqlite3 -separator ' ' "file:$WORK/storm.db?mode=ro" \
  "SELECT count(*), coalesce(sum(connections), 0) $storm_rows")
opened=$((completed + retrans))
if [ "${STORM_DEPLOYED:-0}" = 1 ]; then
  resolved=$(sqlite3 "file:$WORK/storm.db?mode=ro" "SELECT printf('%.2f', 100.0 *
    coalesce(avg(src_identity IS NOT NULL AND dst_identity IS NOT NULL), 0)) $storm_rows")
  result storm.rows_with_both_pods_resolved "$resolved" % -
fi
losses=$(sqlite3 "file:$WORK/storm.db?mode=ro" "SELECT counter || '=' || sum(delta) FROM capture_losses GROUP BY counter" | tr '\n' ' ')
exit_counters=$(sed 's/\x1b\[[0-9;]*m//g' "$WORK/agent-storm.log" | grep "capture detached" | sed -E 's/.*counters=//' || true)
result storm.rate_sustained "$(awk -v c="$completed" -v s="$secs" 'BEGIN {printf "%.0f", c/s}')" conn/s -
result storm.rate_slowest_second "$min1" conn/s -
result storm.connections_completed "$completed" conn -
result storm.connections_failed "$failed" conn -
result storm.syn_retransmissions "$retrans" SYNs -
result storm.connections_recorded "$stored" conn -
result storm.flow_rows "$rows" rows -
result storm.recorded_share "$(awk -v s="$stored" -v c="$opened" 'BEGIN {printf "%.2f", (c > 0 ? 100*s/c : 0)}')" % ">=100"
[ "$stored" -le $((opened + failed)) ] ||
  echo "storm: $stored connections recorded, more than the $((opened + failed)) attempts: counted twice?"
agent_cpu=$(awk -v a="$cpu_before" -v b="$cpu_after" -v t="$(getconf CLK_TCK)" 'BEGIN {printf "%.1f", (b - a) / t}')
result storm.agent_cpu_seconds "$agent_cpu" s -
result storm.agent_cpu_share "$(awk -v c="$agent_cpu" -v a="$storm_started" -v b="$storm_ended" 'BEGIN {printf "%.1f", 100 * c / (b - a)}')" %core -
early=$(log_field "$WORK/agent-storm.log" "capture detached" early_drains)
drains=$(log_field "$WORK/agent-storm.log" "capture detached" drains)
result storm.drains "${drains:-?}" drains -
result storm.early_drains "${early:-?}" drains -
# The kernel memory of the agent's maps at its settings (memlock accounting, its attach line):
# outside its RSS, and per-CPU maps grow with the node's CPUs.
kmap=$(log_field "$WORK/agent-storm.log" "capture attached" kernel_map_bytes)
result storm.agent_kernel_map_memory "$(awk -v b="${kmap:-0}" 'BEGIN {printf "%.1f", b / 1048576}')" MiB -
for l in $losses; do result "storm.loss.${l%%=*}" "${l#*=}" count -; done
[ -n "$losses" ] || result storm.loss.total 0 count -
echo "agent loss counters stored in the database: ${losses:-none}"
echo "agent counters at exit: ${exit_counters:-?}"
if [ "$stored" -lt "$opened" ]; then
  echo "shortfall: $((opened - stored)) connections not stored. The loss counters count packets:"
  echo "  flow_map_full = packets that found the kernel flow map full (each sent to the overflow ring"
  echo "  buffer instead), ringbuf_full = of those, packets the ring buffer had no room for: a flow"
  echo "  none of whose packets got a map entry or a ring buffer slot is not stored. Bigger maps:"
  echo "  STORM_AGENT_ARGS=\"--flow-map-entries 262144\"; a shorter drain: --interval 1s."
fi
agent_prog_stats "$WORK/agent-storm.log" | while read -r p n ns; do
  result "prog.$p.ns_per_run.storm" "$ns" ns/run "<=100"
done
