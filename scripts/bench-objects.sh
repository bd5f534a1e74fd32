#!/usr/bin/env bash
# Compares variants of the socket programs on real traffic between lab pods (BENCHMARKS.md,
# "Comparing program variants"). OBJECTS="NAME:PATH ..." names eBPF object files (the
# `flowpol` object a build leaves in target/release/build/flowpol-*/out/; `NAME:built-in` for
# the one built into hook_hold). Each round runs `examples/bench_conn.rs` (8 threads, short
# connections flat-out) from a client pod to the server pod without programs and with each
# object's `flow_egress` / `flow_ingress` held at the cgroup v2 root by `examples/hook_hold.rs`
# (no agent: nothing drains the maps, which a connection workload of aggregated clients does
# not fill), the order rotating every round. bpf_stats is on throughout, so every
# configuration pays its ~75 ns a run alike, and the held programs' run time per run is read
# from their /proc/PID/fdinfo.
# Prints per object: mean connections/s, the ratio to the rounds without programs, the mean
# and 95 % half-width of the per-round ratios, and ns per program run.
# Needs root. Env: OBJECTS (required), ROUNDS (10), SECONDS_PER_RUN (5), WARMUP (2), FLOWPOL_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
need_root bench-objects
[ -n "${OBJECTS:-}" ] || { echo "bench-objects: set OBJECTS=\"NAME:PATH ...\" (eBPF object files to compare)" >&2; exit 2; }
for item in $OBJECTS; do
  case $item in
    *:built-in) ;;
    *:*) [ -r "${item#*:}" ] || { echo "bench-objects: object ${item#*:} (${item%%:*}) is not a readable file" >&2; exit 2; } ;;
    *) echo "bench-objects: '$item' is not NAME:PATH" >&2; exit 2 ;;
  esac
done
BIN=${FLOWPOL_BIN:-target/release/flowpol}
CONN=target/release/examples/bench_conn
HOLD=target/release/examples/hook_hold
ROUNDS=${ROUNDS:-10}
DUR=${SECONDS_PER_RUN:-5}
WARMUP=${WARMUP:-2}
[ -x "$BIN" ] || { echo "bench-objects: $BIN missing: run 'make build'" >&2; exit 1; }
cargo build -q --release -p flowpol --example bench_conn --example hook_hold

LAB="bo$$"
WORK=$(mktemp -d /tmp/flowpol-bench-objects.XXXXXX)
STATS_BEFORE=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  set +e
  [ -n "${HOOK_PID:-}" ] && kill "$HOOK_PID" 2>/dev/null
  "$BIN" lab down --lab "$LAB" >/dev/null 2>&1
  sysctl -qw kernel.bpf_stats_enabled="$STATS_BEFORE"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

lab_pods_up "$BIN" "$LAB" "$WORK" 1
SERVER_IP=$(pod server 0 ip)
in_pod server 0 "$CONN" server --listen "$SERVER_IP" --ports 9000 > "$WORK/conn.log" 2>&1 &
sleep 1
sysctl -qw kernel.bpf_stats_enabled=1

conns() {
  in_pod client 0 "$CONN" client --server "$SERVER_IP" --ports 9000 --seconds "$DUR" --threads 8 \
    --warmup "$WARMUP" | sed -E 's/(^|.* )rate=([0-9]+).*/\2/'
}
# run NAME PATH|built-in|none: one connection-rate run; prints `NAME rate run_time_ns runs`.
run() {
  if [ "$2" = none ]; then echo "$1 $(conns) 0 0"; return; fi
  if [ "$2" = built-in ]; then
    coproc HOOK { exec "$HOLD" flow_egress flow_ingress; }
  else
    coproc HOOK { FLOWPOL_BPF_OBJECT=$2 exec "$HOLD" flow_egress flow_ingress; }
  fi
  local line
  read -r line <&"${HOOK[0]}" || { echo "bench-objects: hook_hold failed for $2" >&2; exit 1; }
  local rate stats
  rate=$(conns)
  # The held programs' bpf_stats: run_time_ns and run_cnt of each program fd.
  stats=$(cat "/proc/$HOOK_PID"/fdinfo/* 2>/dev/null |
    awk '/^run_time_ns:/ {t += $2} /^run_cnt:/ {c += $2} END {printf "%d %d", t, c}')
  echo "$1 $rate $stats"
  exec {HOOK[1]}>&-; wait "$HOOK_PID" || true
}

set -- none:none $OBJECTS
echo "lab $LAB: $ROUNDS rounds of ${DUR}s (after ${WARMUP}s of warm-up) per configuration: $*"
for r in $(seq 1 "$ROUNDS"); do
  k=$(( (r - 1) % $# )); items=("$@")
  for item in "${items[@]:$k}" "${items[@]:0:$k}"; do
    run "${item%%:*}" "${item#*:}" | tee -a "$WORK/runs"
  done
done

echo "object                mean conn/s   ratio   round ratio mean +- 95%   ns/run (bpf_stats)"
awk -v rounds="$ROUNDS" -v n="$#" '
  { name[NR] = $1; rate[NR] = $2; t[$1] += $3; c[$1] += $4; sum[$1] += $2; cnt[$1]++ }
  END {
    split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13 2.12 2.11 2.10 2.09 2.09 2.08 2.07 2.07 2.06 2.06 2.06 2.05 2.05 2.05 2.04", tq, " ")
    for (r = 0; r < rounds; r++) {
      base = 0
      for (i = 1; i <= n; i++) if (name[r * n + i] == "none") base = rate[r * n + i]
      for (i = 1; i <= n; i++) { o = name[r * n + i]; if (o != "none" && base > 0) { x[o, ++m[o]] = rate[r * n + i] / base } }
    }
    for (o in cnt) {
      if (o == "none") { printf "%-20s %12.0f %7s %26s %20s\n", o, sum[o] / cnt[o], "1", "-", "-"; continue }
      s = 0; for (i = 1; i <= m[o]; i++) s += x[o, i]; mean = s / m[o]
      v = 0; for (i = 1; i <= m[o]; i++) v += (x[o, i] - mean) ^ 2
      half = (m[o] > 1) ? (m[o] - 1 <= 30 ? tq[m[o] - 1] : 2.0) * sqrt(v / (m[o] - 1)) / sqrt(m[o]) : 0
      printf "%-20s %12.0f %7.3f %18.3f +- %.3f %20.1f\n", o, sum[o] / cnt[o], (sum[o] / cnt[o]) / (sum["none"] / cnt["none"]), mean, half, (c[o] > 0 ? t[o] / c[o] : 0)
    }
  }' "$WORK/runs"
