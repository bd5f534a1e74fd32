#!/usr/bin/env bash
# Compares variants of the socket programs on real traffic between lab pods (BENCHMARKS.md,
# "Program variants on lab traffic"). OBJECTS="NAME:PATH ..." names eBPF object files (the
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
seen=" none "
for item in $OBJECTS; do
  case $seen in *" ${item%%:*} "*) echo "bench-objects: name '${item%%:*}' is taken (names are unique; 'none' is the run without programs)" >&2; exit 2 ;; esac
  seen="$seen${item%%:*} "
  case $item in
    *:built-in) ;;
    *:*) [ -r "${item#*:}" ] || { echo "bench-objects: object ${item#*:} (${item%%:*}) is not a readable file" >&2; exit 2; } ;;
    *) echo "bench-objects: '$item' is not NAME:PATH" >&2; exit 2 ;;
  esac
done
ROUNDS=${ROUNDS:-10}
DUR=${SECONDS_PER_RUN:-5}
WARMUP=${WARMUP:-2}
need_flowpol bench-objects
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

conns() { lab_conn_rate "$SERVER_IP" 9000 "$DUR" "$WARMUP"; }
# run NAME PATH|built-in|none: one connection-rate run; prints `NAME rate run_time_ns runs`.
run() {
  if [ "$2" = none ]; then echo "$1 $(conns) 0 0"; return; fi
  local object=()
  [ "$2" = built-in ] || object=(env FLOWPOL_BPF_OBJECT="$2")
  coproc HOOK { exec "${object[@]}" "$HOLD" flow_egress flow_ingress; }
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

# The summary: each round's lines are its configurations, "none" among them.
per_round() { # per_round NAME: NAME's rate over its round's rate without programs, a line a round
  awk -v name="$1" -v per="$CONFIGS" '
    { rate[NR] = $2; who[NR] = $1 }
    END {
      for (r = 0; r * per < NR; r++) {
        base = 0; mine = 0
        for (i = 1; i <= per; i++) { if (who[r * per + i] == "none") base = rate[r * per + i]; if (who[r * per + i] == name) mine = rate[r * per + i] }
        if (base > 0) printf "%.4f\n", mine / base
      }
    }' "$WORK/runs"
}
CONFIGS=$#
mean_rate() { awk -v o="$1" '$1 == o {s += $2; n++} END {printf "%.0f", s / n}' "$WORK/runs"; }
printf '%-16s %12s %8s %24s %20s\n' object "conn/s" ratio "round ratio mean +- 95%" "ns/run (bpf_stats)"
none_mean=$(mean_rate none)
printf '%-16s %12s %8s %24s %20s\n' none "$none_mean" 1 - -
for item in $OBJECTS; do
  name=${item%%:*}
  rate=$(mean_rate "$name")
  ns=$(awk -v o="$name" '$1 == o {t += $3; c += $4} END {printf "%.1f", (c > 0 ? t / c : 0)}' "$WORK/runs")
  mapfile -t ratios < <(per_round "$name")
  printf '%-16s %12s %8s %24s %20s\n' "$name" "$rate" \
    "$(awk -v a="$rate" -v b="$none_mean" 'BEGIN {printf "%.3f", a / b}')" \
    "$(mean "${ratios[@]}") +- $(ci95 "${ratios[@]}")" "$ns"
done
