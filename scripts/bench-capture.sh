#!/usr/bin/env bash
# Capture benchmarks (figures in BENCHMARKS.md):
#  1. mean eBPF program cost per packet: kernel.bpf_stats_enabled=1, run_time_ns / run_cnt
#     of each program, as logged by the agent when it stops; the drop program's cost also with
#     --drop-netns (the namespace filter on);
#  2. TCP throughput between two network namespaces without and with the agent
#     attached, alternating in one run (iperf3), as a ratio (ROUNDS=0 skips it: scripts/bench.sh
#     measures throughput between lab pods instead, scripts/bench-pods.sh);
#  3. the socket programs' cost by stage, from a `return 1` floor to the production programs,
#     with BPF_PROG_TEST_RUN and with bpf_stats on 200-byte UDP over loopback
#     (examples/capture_prog_cost.rs);
#  4. the tc program's cost (bpf_stats): 200-byte UDP forwarded by a router namespace whose
#     interfaces the agent, running in that namespace, watches with --tc-interfaces.
# Env: ROUNDS (default 3), SECONDS_PER_RUN (default 5), FLOWPOL_BIN, BENCH_RESULTS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

ROUNDS=${ROUNDS:-3}
DUR=${SECONDS_PER_RUN:-5}
need_root bench-capture
need_flowpol bench-capture
command -v iperf3 >/dev/null || { echo "bench-capture: iperf3 missing: run 'make setup'" >&2; exit 1; }

ID="fpcb$$"; HUB="${ID}h"; A="${ID}a"; B="${ID}b"; R="${ID}r"; RA="${ID}c"; RB="${ID}d"
WORK=$(mktemp -d /tmp/flowpol-bench.XXXXXX)
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
AGENT_PID=""; SERVER_PID=""; TC_SERVER_PID=""; AGENT_ARGS=()
cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  [ -n "$TC_SERVER_PID" ] && kill "$TC_SERVER_PID" 2>/dev/null && wait "$TC_SERVER_PID" 2>/dev/null
  for ns in "$A" "$B" "$HUB" "$R" "$RA" "$RB"; do ip netns del "$ns" 2>/dev/null; done
  sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM # run the EXIT cleanup once, then stop

ip netns add "$HUB"; ip netns add "$A"; ip netns add "$B"
ip -n "$HUB" link add br0 type bridge && ip -n "$HUB" link set br0 up
i=1
for ns in "$A" "$B"; do
  ip -n "$HUB" link add "p$i" type veth peer name eth0 netns "$ns"
  ip -n "$HUB" link set "p$i" master br0 up
  ip -n "$ns" addr add "10.214.9.$i/24" dev eth0
  ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
  i=$((i + 1))
done
ip netns exec "$B" iperf3 -s -B 10.214.9.2 -p 5201 >/dev/null 2>&1 &
SERVER_PID=$!
sleep 0.5

gbps() {
  ip netns exec "$A" iperf3 -c 10.214.9.2 -p 5201 -t "$DUR" -J |
    jq '.end.sum_received.bits_per_second / 1e9'
}

# start_agent [PREFIX...]: the agent, run through PREFIX (e.g. nsenter into a namespace).
start_agent() {
  "$@" "$BIN" agent --json-out /dev/null --interval 5s "${AGENT_ARGS[@]}" 2> "$WORK/agent.log" &
  AGENT_PID=$!
  for _ in $(seq 100); do grep -q "capture attached" "$WORK/agent.log" && return; sleep 0.1; done
  cat "$WORK/agent.log" >&2; exit 1
}
stop_agent() {
  kill -TERM "$AGENT_PID"; wait "$AGENT_PID"; AGENT_PID=""
  sed 's/\x1b\[[0-9;]*m//g' "$WORK/agent.log" >> "$WORK/agent-all.log"
}

sysctl -qw kernel.bpf_stats_enabled=1
base=(); with=()
for r in $(seq 1 "$ROUNDS"); do
  b=$(gbps); base+=("$b")
  start_agent; w=$(gbps); stop_agent; with+=("$w")
  printf 'round %d: without agent %.2f Gbit/s, with agent %.2f Gbit/s\n' "$r" "$b" "$w"
done
prog_stats() {
  agent_prog_stats "$1" | awk '{printf "  %-16s %12d runs  %7.1f ns/run\n", $1, $2, $3}'
}
if [ "$ROUNDS" -gt 0 ]; then
  mb=$(mean "${base[@]}"); mw=$(mean "${with[@]}")
  echo
  echo "TCP throughput between two namespaces, $ROUNDS x ${DUR}s each, alternating:"
  result netns.tcp_throughput.without_agent "$mb" Gbit/s -
  result netns.tcp_throughput.with_agent "$mw" Gbit/s -
  result netns.tcp_throughput.ratio "$(awk -v a="$mw" -v b="$mb" 'BEGIN {printf "%.3f", a/b}')" ratio ">=0.97"
  echo
  echo "eBPF program cost during the TCP rounds (bpf_stats; a run is often a GSO aggregate):"
  prog_stats "$WORK/agent-all.log"
fi

# One packet per run: small UDP datagrams (no GSO), agent attached. B's receive buffer
# overflows, so drop_kfree_skb runs on drops too. udp200_flood: one such run, its agent's
# log in agent-all.log.
udp200_flood() {
  : > "$WORK/agent-all.log"
  start_agent
  ip netns exec "$A" iperf3 -c 10.214.9.2 -p 5201 -u -b 0 -l 200 -t "$DUR" >/dev/null
  stop_agent
}
udp200_flood
echo
echo "eBPF program cost with 200-byte UDP datagrams for ${DUR}s (one packet per run; bpf_stats):"
prog_stats "$WORK/agent-all.log"
agent_prog_stats "$WORK/agent-all.log" | while read -r p n ns; do
  result "prog.$p.ns_per_packet.udp200" "$ns" ns/pkt "<=100"
done
# The same flood with the drop program told to keep B's namespace only (--drop-netns): what
# following each drop to its namespace costs (the receive-buffer drops above are all in B).
AGENT_ARGS=(--drop-netns "/run/netns/$B")
udp200_flood
AGENT_ARGS=()
agent_prog_stats "$WORK/agent-all.log" | while read -r p n ns; do
  if [ "$p" = drop_kfree_skb ]; then result "prog.$p.ns_per_packet.udp200_drop_netns" "$ns" ns/pkt -; fi
done
echo
echo "socket programs by stage (examples/capture_prog_cost.rs: test-run, then bpf_stats on loopback UDP):"
cargo build -q --release -p flowpol --example capture_prog_cost
target/release/examples/capture_prog_cost | tee "$WORK/test-run.txt"
# Lines "  NAME  N ns/run ...": the first block is test-run (with each program's machine code
# size, "B bytes of machine code"), the second bpf_stats.
awk '/^BPF_PROG_TEST_RUN/ {m="test_run"} /^bpf_stats/ {m="loopback_udp200"}
     /ns\/run/ {print m, $1, $2, ($5 == "bytes" ? $4 : "-")}' "$WORK/test-run.txt" |
  while read -r m p ns jited; do
    target="<=100"; case $p in bench_*) target=-;; esac
    result "prog.$p.ns_per_packet.$m" "$ns" ns/pkt "$target"
    [ "$jited" = - ] || result "prog.$p.machine_code" "$jited" bytes -
  done

# The tc program: RA -> router R -> RB, 200-byte UDP forwarded by R; the agent runs in R's network
# namespace (nsenter: same mounts, so it finds cgroup v2) and attaches flow_tc to R's two interfaces.
ip netns add "$R"; ip netns add "$RA"; ip netns add "$RB"
ip netns exec "$R" sysctl -qw net.ipv4.ip_forward=1
i=1
for ns in "$RA" "$RB"; do
  ip -n "$R" link add "${ID}x$i" type veth peer name eth0 netns "$ns"
  ip -n "$R" addr add "10.214.$((9 + i)).254/24" dev "${ID}x$i"
  ip -n "$R" link set "${ID}x$i" up
  ip -n "$ns" addr add "10.214.$((9 + i)).1/24" dev eth0
  ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "10.214.$((9 + i)).254"
  i=$((i + 1))
done
ip netns exec "$RB" iperf3 -s -B 10.214.11.1 -p 5202 >/dev/null 2>&1 &
TC_SERVER_PID=$!
sleep 0.5
: > "$WORK/agent-all.log"
AGENT_ARGS=(--tc-interfaces "${ID}x*")
start_agent nsenter --net="/run/netns/$R"
ip netns exec "$RA" iperf3 -c 10.214.11.1 -p 5202 -u -b 0 -l 200 -t "$DUR" >/dev/null
stop_agent
kill "$TC_SERVER_PID" 2>/dev/null; wait "$TC_SERVER_PID" 2>/dev/null || true; TC_SERVER_PID=""
echo
echo "tc program cost with 200-byte UDP forwarded through a router namespace for ${DUR}s (bpf_stats):"
prog_stats "$WORK/agent-all.log"
agent_prog_stats "$WORK/agent-all.log" | while read -r p n ns; do
  [ "$p" = flow_tc ] && result "prog.flow_tc.ns_per_packet.forwarded_udp200" "$ns" ns/pkt "<=100"
done
