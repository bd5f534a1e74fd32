#!/usr/bin/env bash
# Prints the summary table of a results file (lines `NAME VALUE UNIT TARGET`, written through
# `result` in scripts/bench-lib.sh): each figure next to its target and whether it is met.
# Usage: scripts/bench-summary.sh RESULTS_FILE
set -euo pipefail
[ -f "${1:-}" ] || { echo "usage: $0 RESULTS_FILE (lines: NAME VALUE UNIT TARGET)" >&2; exit 2; }
awk '
  function verdict(v, t,   op, n) {
    if (t == "-" || t == "") return "-"
    if (v == "-" || v !~ /^-?[0-9.]+$/) return "NOT MEASURED"
    op = substr(t, 1, 2); n = substr(t, 3) + 0
    if (op == ">=") return (v + 0 >= n) ? "met" : "NOT MET"
    if (op == "<=") return (v + 0 <= n) ? "met" : "NOT MET"
    return "?"
  }
  NF >= 3 {
    name[NR] = $1; val[NR] = $2; unit[NR] = $3; tgt[NR] = (NF >= 4 ? $4 : "-"); n = NR
    v = verdict($2, tgt[NR]); ver[NR] = v
    if (v == "met") met++; else if (v != "-") notmet++
  }
  END {
    printf "%-46s %14s %-8s %-8s %s\n", "figure", "value", "unit", "target", "status"
    for (i = 1; i <= n; i++) if (i in name)
      printf "%-46s %14s %-8s %-8s %s\n", name[i], val[i], unit[i], tgt[i], ver[i]
    printf "targets met: %d, not met or not measured: %d\n", met + 0, notmet + 0
  }' "$1"
