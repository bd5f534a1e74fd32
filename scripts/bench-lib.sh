# Sourced by scripts/bench-*.sh and scripts/soak.sh: shared helpers.
#
# result NAME VALUE UNIT TARGET prints a figure and, when BENCH_RESULTS names a file (set by
# scripts/bench.sh), appends it there as one line `NAME VALUE UNIT TARGET` for the summary
# (scripts/bench-summary.sh). TARGET is `>=N`, `<=N` or `-` (no target); VALUE is a number or
# `-` when it could not be measured. Names and units contain no spaces.
result() {
  local name=$1 value=$2 unit=$3 target=${4:--}
  printf '  %-44s %12s %-10s target %s\n' "$name" "$value" "$unit" "$target"
  if [ -n "${BENCH_RESULTS:-}" ]; then
    printf '%s %s %s %s\n' "$name" "$value" "$unit" "$target" >> "$BENCH_RESULTS"
  fi
}

# The binaries the benchmarks run (FLOWPOL_BIN: another flowpol binary).
BIN=${FLOWPOL_BIN:-target/release/flowpol}
CONN=target/release/examples/bench_conn
HOLD=target/release/examples/hook_hold

# need_flowpol WHAT: exit 1 naming the fix when $BIN is not built.
need_flowpol() {
  [ -x "$BIN" ] && return
  if [ -n "${FLOWPOL_BIN:-}" ]; then
    echo "$1: FLOWPOL_BIN=$BIN is not an executable file" >&2
  else
    echo "$1: $BIN missing: run 'make build'" >&2
  fi
  exit 1
}

# build_flowpol WHAT: the workspace's flowpol built when missing; FLOWPOL_BIN, another binary,
# is never built here, only checked (need_flowpol).
build_flowpol() {
  if [ -z "${FLOWPOL_BIN:-}" ]; then
    [ -x "$BIN" ] || cargo build -q --release -p flowpol --bin flowpol
  else
    need_flowpol "$1"
  fi
}

# mean VALUES...: their mean (3 decimals). spread VALUES...: "lowest-highest".
mean() { printf '%s\n' "$@" | awk '{s+=$1} END {printf "%.3f", s/NR}'; }
spread() { printf '%s\n' "$@" | sort -n | awk '{v[NR]=$1} END {printf "%s-%s", v[1], v[NR]}'; }
# ci95 VALUES...: half-width of a 95 % interval for their mean (Student t, n - 1 degrees of
# freedom; "n/a" below two values): how far run-to-run noise (large on a 2-core VM) leaves a
# ratio of per-round means uncertain.
ci95() {
  printf '%s\n' "$@" | awk '{x[NR]=$1; s+=$1} END {
    n=NR; if (n < 2) {print "n/a"; exit}
    m=s/n; for (i=1;i<=n;i++) v+=(x[i]-m)^2; sd=sqrt(v/(n-1))
    split("12.71 4.30 3.18 2.78 2.57 2.45 2.36 2.31 2.26 2.23 2.20 2.18 2.16 2.14 2.13 2.12 2.11 2.10 2.09 2.09 2.08 2.07 2.07 2.06 2.06 2.06 2.05 2.05 2.05 2.04", t, " ")
    q=(n-1 <= 30 ? t[n-1] : 2.0); printf "%.3f", q*sd/sqrt(n)}'
}

# need_root WHAT: exit 1 with a clear message when not root.
need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$1: needs root (eBPF, network namespaces, cgroups): run it with sudo" >&2
    exit 1
  fi
}

# cgroup2_mount: where cgroup v2 is mounted (hybrid hosts mount it under /sys/fs/cgroup/unified).
cgroup2_mount() { awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts; }

# ip_hex A.B.C.D: the 4-byte blob the store writes for an IPv4 address, as SQLite hex.
ip_hex() { local IFS=.; set -- $1; printf "%02X%02X%02X%02X" "$1" "$2" "$3" "$4"; }

# The first N client pods' addresses as an SQL list of blobs (the flows table's src_ip).
client_ips_sql() {
  local srcs="" i
  for i in $(seq 0 $(($1 - 1))); do srcs="$srcs${srcs:+,}X'$(ip_hex "$(pod client "$i" ip)")'"; done
  echo "$srcs"
}

# lab_conn_client SERVER_IP PORT FLAGS...: the benchmarks' connection load, from the first client
# pod to SERVER_IP:PORT (a `bench_conn server` there), 8 threads flat-out, kernel-chosen source
# ports; FLAGS: the run's other `bench_conn client` flags.
lab_conn_client() {
  local server=$1 port=$2; shift 2
  in_pod client 0 "$CONN" client --server "$server" --ports "$port" --threads 8 "$@"
}

# lab_conn_rate SERVER_IP PORT SECONDS WARMUP: connections/s of that load, counted after WARMUP
# seconds of uncounted connections.
lab_conn_rate() {
  lab_conn_client "$1" "$2" --seconds "$3" --warmup "$4" | sed -E 's/(^|.* )rate=([0-9]+).*/\2/'
}

# agent_prog_stats LOG: `program runs ns_per_run` per eBPF program from the agent's exit log
# lines (`program stats`, kernel.bpf_stats_enabled=1), summed over the runs in LOG.
agent_prog_stats() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | { grep "program stats" || true; } |
    sed -E 's/.*program="?([a-z_0-9]+)"?.*run_count=([0-9]+).*run_time_ns=([0-9]+).*/\1 \2 \3/' |
    awk '{c[$1]+=$2; t[$1]+=$3} END {for (p in c) if (c[p] > 0) printf "%s %d %.1f\n", p, c[p], t[p]/c[p]}' | sort
}

# lab_pods_up BIN LAB DIR CLIENTS: `flowpol lab up` of a namespace `bench` with one `server` pod
# and CLIENTS `client` pods (state under DIR, FLOWPOL_LAB_DIR set here); then `pod` and `in_pod`
# below read its plan. The caller runs `"$BIN" lab down --lab "$LAB"` on exit.
lab_pods_up() {
  local bin=$1 lab=$2 dir=$3 clients=$4
  export FLOWPOL_LAB_DIR="$dir/state"
  mkdir -p "$dir/scenario"
  cat > "$dir/scenario/app.yaml" <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: server, namespace: bench}
spec:
  replicas: 1
  selector: {matchLabels: {app: server}}
  template:
    metadata: {labels: {app: server}}
    spec:
      containers: [{name: server, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: bench}
spec:
  replicas: $clients
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: client}]
YAML
  "$bin" lab up --scenario "$dir/scenario" --lab "$lab" > "$dir/lab-up.log" 2>&1 ||
    { cat "$dir/lab-up.log" >&2; return 1; }
  LAB_PLAN="$FLOWPOL_LAB_DIR/$lab/plan.json"
  LAB_CG2=$(cgroup2_mount)
  # The node netns tracks every connection (its nftables NAT) and keeps a closed one in TIME_WAIT
  # for 120 s, so with nf_conntrack_max (262 144 here) the lab itself would cap sustained new
  # connections at ~2 200/s ("nf_conntrack: table full"). 1 s keeps the agent the thing measured.
  ip netns exec "$(jq -r .node_netns "$LAB_PLAN")" sysctl -qw net.netfilter.nf_conntrack_tcp_timeout_time_wait=1
}
# pod WORKLOAD INDEX FIELD: netns | ip | cgroup (the first container's) of one replica.
pod() {
  jq -r --arg w "$1" --argjson i "$2" --arg f "$3" '
    [.pods[] | select(.namespace == "bench" and .workload == $w)][$i] |
    if $f == "ip" then .ips[0] elif $f == "cgroup" then .containers[0].cgroup else .[$f] end' "$LAB_PLAN"
}
# in_pod WORKLOAD INDEX CMD...: CMD inside the pod's netns and its container's cgroup (so
# `lab down` kills it with the pod).
# LAB_CPUS (a taskset CPU list, e.g. 1): the pods' processes run on those CPUs only, so that
# where the scheduler puts client and server threads stops moving the rate between runs.
in_pod() {
  local ns cg pin=(); ns=$(pod "$1" "$2" netns); cg=$(pod "$1" "$2" cgroup); shift 2
  [ -z "${LAB_CPUS:-}" ] || pin=(taskset -c "$LAB_CPUS")
  sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$LAB_CG2/$cg" "${pin[@]}" ip netns exec "$ns" "$@"
}

# syn_retrans WORKLOAD INDEX: the SYNs the pod's network namespace has sent again so far
# (TcpExt TCPSynRetrans): a retransmitted SYN is counted in a flow's `connections` too.
syn_retrans() {
  in_pod "$1" "$2" cat /proc/net/netstat | awk '/^TcpExt:/ {
    if (!seen) { for (i = 1; i <= NF; i++) col[$i] = i; seen = 1 } else print $col["TCPSynRetrans"] }'
}

# scope_args SCOPE: the agent flags for SCOPE `root` (attached at the cgroup v2 root, as deployed:
# it sees every process on the machine) or `lab` (only the lab's cgroup slice, where in_pod puts
# the load: other work on a shared machine does not fill its maps).
scope_args() {
  case $1 in
    root) ;;
    lab) echo "--cgroup $LAB_CG2/$(jq -r .cgroup_root "$LAB_PLAN")" ;;
    *) echo "scope $1: want root or lab" >&2; return 1 ;;
  esac
}

# deployed_agent_args DIR LAB: the agent flags that make it run as the DaemonSet does, for a lab
# (after lab_pods_up): identity from the lab's own manifests and the API on a loopback port,
# with a token written to DIR/token. Prints one flag or value per line (read with mapfile).
deployed_agent_args() {
  local dir=$1 lab=$2
  (umask 077; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/token")
  printf '%s\n' --manifests "$FLOWPOL_LAB_DIR/$lab/cluster.yaml" \
    --listen "127.0.0.1:$((20000 + $$ % 20000))" --token-file "$dir/token"
}

# log_field LOG EVENT FIELD: the number FIELD has on the agent log line of EVENT (e.g. "capture
# detached" drains), colour codes stripped; empty when there is no such line.
log_field() {
  sed 's/\x1b\[[0-9;]*m//g' "$1" | grep "$2" | sed -E "s/(^|.* )$3=([0-9]+).*/\2/" || true
}
# sum_field FIELD FILE...: FIELD of `bench_conn client` output lines, summed over the files.
sum_field() {
  local field=$1; shift
  sed -E "s/(^|.* )$field=([0-9]+).*/\2/" "$@" | awk '{s+=$1} END {print s+0}'
}

# window_rates TIMELINE MARKS: the rate of each marked window of one `bench_conn --timeline`
# run. TIMELINE: `UNIX_SECONDS COMPLETED` lines (every 100 ms); MARKS: `STATE FROM TO` lines
# (wall-clock seconds, in order). Prints `STATE RATE` per window, the completed count at FROM and
# TO read by linear interpolation between the samples around them.
window_rates() {
  awk 'FNR == NR { t[++n] = $1; c[n] = $2; next }
    function at(x,   lo, hi, mid) {
      if (x <= t[1]) return c[1]
      if (x >= t[n]) return c[n]
      lo = 1; hi = n
      while (hi - lo > 1) { mid = int((lo + hi) / 2); if (t[mid] <= x) lo = mid; else hi = mid }
      return c[lo] + (c[hi] - c[lo]) * (x - t[lo]) / (t[hi] - t[lo])
    }
    { printf "%s %.1f\n", $1, (at($3) - at($2)) / ($3 - $2) }' "$1" "$2"
}

# sandwich_ratios STATE < WINDOW_RATES: for each STATE window between two `without` windows, its
# rate over the mean of those two (`window_rates` output on stdin), one per line: a ratio whose
# reference brackets it in time, so that drift of the machine's speed over seconds cancels.
sandwich_ratios() {
  awk -v want="$1" '{ s[NR] = $1; r[NR] = $2 } END {
    for (i = 2; i < NR; i++)
      if (s[i] == want && s[i-1] == "without" && s[i+1] == "without" && r[i-1] + r[i+1] > 0)
        printf "%.4f\n", r[i] / ((r[i-1] + r[i+1]) / 2) }'
}
