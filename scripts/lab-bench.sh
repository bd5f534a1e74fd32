#!/usr/bin/env bash
# Lab benchmark: `flowpol lab up`/`down` time for 10 and 100 pods, and the connection rate the
# lab sustains (one client pod, TCP through kube-dns + Service DNAT, and straight to pod IPs).
# Needs root. Usage: scripts/lab-bench.sh [path/to/flowpol]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-target/release/flowpol}
[ -x "$BIN" ] || { echo "build first: cargo build --release -p flowpol" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "the lab needs root" >&2; exit 1; }
WORK=$(mktemp -d)
export FLOWPOL_LAB_DIR="$WORK/state" FLOWPOL_LOG=warn
trap '"$BIN" lab down --lab bench >/dev/null 2>&1 || true; rm -rf "$WORK"' EXIT

CLIENTS=4
scenario() { # $1 = total pods (kube-dns and $CLIENTS clients included), $2 = connections
  local dir="$WORK/s$1" web=$(( $1 - 1 - CLIENTS ))
  mkdir -p "$dir"
  cat > "$dir/app.yaml" <<YAML
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: bench}
spec:
  replicas: $web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, ports: [{name: http, containerPort: 8080}]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: bench}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: client, namespace: bench}
spec:
  replicas: $CLIENTS
  selector: {matchLabels: {app: client}}
  template:
    metadata: {labels: {app: client}}
    spec:
      containers: [{name: client}]
YAML
  cat > "$dir/traffic.yaml" <<YAML
connections:
  - from: bench/client
    to: {service: bench/web}
    port: 80
    count: $(( $2 / CLIENTS ))
YAML
  cat > "$dir.direct-traffic" <<YAML
connections:
  - from: bench/client
    to: {workload: bench/web}
    port: 8080
    count: $(( $2 / CLIENTS / web ))
YAML
  echo "$dir"
}

secs() {
  local s=$EPOCHREALTIME
  "$@" >/dev/null || { echo "failed: $*" >&2; exit 1; }
  echo "$EPOCHREALTIME - $s" | bc
}

printf "%-6s %-10s %-10s\n" pods "up (s)" "down (s)"
for n in 10 100; do
  dir=$(scenario $n 2000)
  for run in 1 2 3; do
    up=$(secs "$BIN" lab up --scenario "$dir" --lab bench)
    down=$(secs "$BIN" lab down --lab bench)
    printf "%-6s %-10.3f %-10.3f\n" "$n" "$up" "$down"
  done
done

dir=$(scenario 10 2000)
"$BIN" lab up --scenario "$dir" --lab bench >/dev/null
t=$(secs "$BIN" lab traffic --scenario "$dir" --lab bench)
echo "service (DNS lookup + ClusterIP DNAT) connections, $CLIENTS clients in parallel: 2000 in ${t}s = $(echo "2000 / $t" | bc) conn/s"
cp "$dir.direct-traffic" "$dir/traffic.yaml"
t=$(secs "$BIN" lab traffic --scenario "$dir" --lab bench)
echo "direct pod-IP connections, $CLIENTS clients in parallel: 2000 in ${t}s = $(echo "2000 / $t" | bc) conn/s"
"$BIN" lab down --lab bench >/dev/null
