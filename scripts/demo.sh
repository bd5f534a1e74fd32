#!/usr/bin/env bash
# flowpol demo: two "pods" (network namespaces on a bridge), the real agent
# capturing with eBPF, real TCP/UDP/ICMP traffic over IPv4 and IPv6, a policy drop
# (nftables) and a connection to an address nobody answers; then the recorded flows.
# Everything it creates is removed on exit, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${FLOWPOL_BIN:-target/release/flowpol}
[ "$(id -u)" = 0 ] || { echo "demo: needs root (eBPF, network namespaces): run 'sudo make demo'" >&2; exit 1; }
[ -x "$BIN" ] || { echo "demo: $BIN missing: run 'make build' first" >&2; exit 1; }

ID="fpcd$$"
HUB="${ID}h"; A="${ID}a"; B="${ID}b"
WORK=$(mktemp -d /tmp/flowpol-demo.XXXXXX)
DB="$WORK/flows.db"
AGENT_PID=""
PIDS=()

cleanup() {
  set +e
  [ -n "$AGENT_PID" ] && kill -TERM "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  for ns in "$A" "$B" "$HUB"; do ip netns del "$ns" 2>/dev/null; done
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

say() { printf '\n== %s\n' "$*"; }

say "lab: namespaces $A (client) and $B (server) on a bridge in $HUB"
ip netns add "$HUB"; ip netns add "$A"; ip netns add "$B"
ip -n "$HUB" link add br0 type bridge && ip -n "$HUB" link set br0 up
i=1
for ns in "$A" "$B"; do
  ip -n "$HUB" link add "p$i" type veth peer name eth0 netns "$ns"
  ip -n "$HUB" link set "p$i" master br0 up
  ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_dad=0
  ip -n "$ns" addr add "10.213.7.$i/24" dev eth0
  ip -n "$ns" addr add "fd7d:213:7::$i/64" dev eth0 nodad
  ip -n "$ns" link set eth0 up; ip -n "$ns" link set lo up
  i=$((i + 1))
done
A4=10.213.7.1; B4=10.213.7.2; A6=fd7d:213:7::1; B6=fd7d:213:7::2; SILENT=10.213.7.99

# The server's "network policy": nothing may reach TCP 9999.
ip netns exec "$B" nft -f - <<EOF
table inet fpcdemo {
  chain input {
    type filter hook input priority 0; policy accept;
    tcp dport 9999 drop
  }
}
EOF

say "agent: $BIN agent --db $DB --interval 2s"
"$BIN" agent --db "$DB" --interval 2s --syn-timeout 2s 2> "$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 50); do grep -q "capture attached" "$WORK/agent.log" && break; sleep 0.1; done
grep -q "capture attached" "$WORK/agent.log" || { cat "$WORK/agent.log" >&2; exit 1; }

say "traffic"
ip netns exec "$B" iperf3 -s -D -p 5201 -B "$B4" --logfile "$WORK/iperf-s4.log"
ip netns exec "$B" iperf3 -s -D -p 5202 -B "$B6" --logfile "$WORK/iperf-s6.log"
sleep 0.5
echo "- TCP  $A4 -> $B4:5201 (iperf3, 2 s)"
ip netns exec "$A" iperf3 -c "$B4" -p 5201 -t 2 >/dev/null
echo "- UDP  $A4 -> $B4:5201 (iperf3 -u, 1 s, 1 Mbit/s)"
ip netns exec "$A" iperf3 -c "$B4" -p 5201 -u -b 1M -t 1 >/dev/null
echo "- TCP  $A6 -> $B6:5202 (iperf3 over IPv6, 1 s)"
ip netns exec "$A" iperf3 -c "$B6" -p 5202 -t 1 >/dev/null
echo "- ICMP ping $A4 -> $B4, ICMPv6 ping $B6 -> $A6"
ip netns exec "$A" ping -c 3 -i 0.2 -q "$B4" >/dev/null
ip netns exec "$B" ping -6 -c 2 -i 0.2 -q "$A6" >/dev/null
echo "- TCP  $A4 -> $B4:9999 (dropped by nftables in $B)"
ip netns exec "$A" timeout 2 bash -c "echo > /dev/tcp/$B4/9999" 2>/dev/null || true
echo "- TCP  $A4 -> $SILENT:80 (nobody owns that address)"
ip netns exec "$A" timeout 2 bash -c "echo > /dev/tcp/$SILENT/80" 2>/dev/null || true
for p in $(ip netns pids "$B"); do kill "$p" 2>/dev/null || true; done

say "stopping the agent (SIGTERM: final drain, detach)"
kill -TERM "$AGENT_PID"; wait "$AGENT_PID"; AGENT_PID=""
grep -E "capture detached|program stats" "$WORK/agent.log" | sed 's/\x1b\[[0-9;]*m//g' || true

say "recorded flows between the demo addresses"
"$BIN" flows --db "$DB" | awk 'NR == 1 || /10\.213\.7\.|fd7d:213:7::/'
