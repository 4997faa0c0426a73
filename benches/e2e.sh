#!/usr/bin/env bash
# End-to-end benchmark: pgbench directly, through PgBouncer and through pgsluice, against one
# PostgreSQL started here, in one run. Within a round every workload runs on every target in
# turn (A B A B), rounds repeat, and the summary gives medians and ratios. Reports tps, p50/p99
# latency (pgbench --log, sampled), the proxy's CPU microseconds per transaction
# (utime+stime from /proc/PID/stat) and the proxies' RSS.
#
#   benches/e2e.sh                                   # 8 s per run, 3 rounds, every workload
#   ONLY="select-only simple,tpcb-like simple" ROUNDS=5 benches/e2e.sh
#   MODES=transaction DURATION=15 benches/e2e.sh
#   BASELINE=/path/to/older/pgsluice benches/e2e.sh  # A/B two pgsluice builds in one run
#   PGBOUNCER2=/path/to/newer/pgbouncer benches/e2e.sh
#   COUNT=1 benches/e2e.sh                           # + syscalls, context switches per txn
#   PROFILE=/tmp/prof benches/e2e.sh                 # + perf record of each proxy per run
#
# Needs PostgreSQL's server binaries and pgbench; PgBouncer (Debian's `pgbouncer`, or
# PGBOUNCER=/path) is measured when present. Auth is md5 on both hops (the `-C scram` workload
# uses SCRAM-SHA-256 from client to proxy), pool size 20, 20 clients, 2 pgbench threads.
set -euo pipefail
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-20}
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-3}
POOL=${POOL:-20}
MODES=${MODES:-transaction session}
ONLY=${ONLY:-}
SAMPLING=${SAMPLING:-0.1}   # share of transactions logged for the latency percentiles
COUNT=${COUNT:-0}
PROFILE=${PROFILE:-}
BASELINE=${BASELINE:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
PGBOUNCER2=${PGBOUNCER2:-}
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

start_targets

RESULTS="$WORK/results.tsv"
: > "$RESULTS"

# run target mode workload pgbench-args...
run() {
  local target=$1 mode=$2 workload=$3; shift 3
  local port pid db user=bench before after out tps txns failed cpu p50 p99 stat_pid="" perf_pid=""
  port=${TX_PORT[$target]}; [ "$mode" = session ] && port=${SE_PORT[$target]}
  pid=${PID[$target]}
  db=${DBNAME[$target]}
  [ "$mode" = session ] && [ "$db" = bench_tx ] && db=bench_se
  [ "$workload" = "select-only -C scram" ] && user=bench_scram
  local tag="$target.$mode.$(echo "$workload" | tr ' ' '_')"
  rm -f "$WORK"/lat.*
  if [ "$COUNT" = 1 ] && [ -n "$pid" ]; then
    perf stat -x, -e raw_syscalls:sys_enter,context-switches -p "$pid" -o "$WORK/stat" >/dev/null 2>&1 &
    stat_pid=$!
  fi
  if [ -n "$PROFILE" ] && [ -n "$pid" ]; then
    # cpu-clock sampling: works without access to the PMU.
    perf record -e cpu-clock -F 4999 -g -p "$pid" -o "$PROFILE.$tag" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  before=$(cpu_ticks "$pid"); local ubefore; ubefore=$(user_ticks "$pid")
  out=$(cd "$WORK" && PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U "$user" -n \
    -T "$DURATION" -c "$CLIENTS" -j 2 --log --log-prefix=lat --sampling-rate="$SAMPLING" "$@" "$db" 2>&1) || true
  after=$(cpu_ticks "$pid"); local uafter; uafter=$(user_ticks "$pid")
  [ -n "$stat_pid" ] && { kill -INT "$stat_pid"; wait "$stat_pid" || true; }
  [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  if [ -z "$txns" ] || [ "$txns" = 0 ]; then
    echo "pgbench failed on $tag:" >&2; echo "$out" | tail -5 >&2
    return
  fi
  cpu=-
  [ -n "$pid" ] && cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  # pgbench log: field 3 is the transaction's latency in microseconds.
  read -r p50 p99 < <(cat "$WORK"/lat.* 2>/dev/null | awk '{print $3}' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit }
      i = int(NR * 0.99) + 1; if (i > NR) i = NR
      printf "%.3f %.3f\n", v[int(NR * 0.50) + 1] / 1000, v[i] / 1000 }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$mode" "$target" "$tps" "$p50" "$p99" "$cpu" "${failed:-0}" >> "$RESULTS"
  local extra=""
  [ -n "$pid" ] && extra=$(awk -v t=$((uafter - ubefore)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "  (user %.1f)", t * 1e6 / hz / n }')
  if [ -n "$stat_pid" ]; then
    extra=$(awk -F, -v n="$txns" '$3 ~ /sys_enter/ { s = $1 / n } $3 ~ /context-switches/ { c = $1 / n }
      END { printf "  syscalls/txn %.2f, switches/txn %.2f", s, c }' "$WORK/stat")$extra
  fi
  printf '  %-24s %-11s %-10s tps %9.0f  p50 %6s  p99 %6s ms  cpu %6s us/txn  failed %s%s\n' \
    "$workload" "$mode" "$target" "$tps" "$p50" "$p99" "$cpu" "${failed:-0}" "$extra" >&2
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "# PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'); pgbouncer $( [ -x "$PGBOUNCER" ] && version "$PGBOUNCER" || echo absent)${PGBOUNCER2:+; pgbouncer2 $(version "$PGBOUNCER2")}; pgsluice $(version "$SLUICE")"
echo "# pgbench ${DURATION}s x $ROUNDS rounds, $CLIENTS clients, -j 2, scale $SCALE, pool $POOL, md5"
WORKLOADS=(
  "select-only simple|-S -M simple"
  "select-only extended|-S -M extended"
  "select-only prepared|-S -M prepared"
  "tpcb-like simple|-M simple"
  "tpcb-like extended|-M extended"
  "tpcb-like prepared|-M prepared"
  "select-only -C|-S -C"
  "select-only -C scram|-S -C"
)
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  for mode in $MODES; do
    for w in "${WORKLOADS[@]}"; do
      workload=${w%%|*}
      if [ -n "$ONLY" ] && ! [[ ",$ONLY," == *",$workload,"* ]]; then continue; fi
      # Connection-per-transaction is a transaction-mode workload.
      [[ "$workload" == *-C* ]] && [ "$mode" = session ] && continue
      # shellcheck disable=SC2206
      args=(${w#*|})
      for target in "${TARGETS[@]}"; do
        run "$target" "$mode" "$workload" "${args[@]}"
      done
    done
  done
done

echo
echo "| workload | mode | target | tps | p50 ms | p99 ms | proxy CPU us/txn | CPU vs pgbouncer | tps vs direct | failed |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"
# Medians per (workload, mode, target), then ratios against PgBouncer's CPU and direct's tps.
awk -F'\t' '
  function median(key,   n, i, j, a, t) {
    n = split(vals[key], a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    k = $1 SUBSEP $2 SUBSEP $3
    if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    for (f = 4; f <= 8; f++) vals[k SUBSEP f] = vals[k SUBSEP f] " " $f
  }
  END {
    for (i = 1; i <= n; i++) {
      split(order[i], p, SUBSEP)
      d = p[1] SUBSEP p[2] SUBSEP "direct"; b = p[1] SUBSEP p[2] SUBSEP "pgbouncer"
      tps = median(order[i] SUBSEP 4); cpu = median(order[i] SUBSEP 7)
      dt = (d in seen) ? median(d SUBSEP 4) : 0
      bc = (b in seen) ? median(b SUBSEP 7) : 0
      cr = (p[3] != "direct" && bc > 0) ? sprintf("%.2f", cpu / bc) : "-"
      tr = (p[3] != "direct" && dt > 0) ? sprintf("%.2f", tps / dt) : "-"
      printf "| %s | %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %d |\n", p[1], p[2], p[3], tps,
        median(order[i] SUBSEP 5), median(order[i] SUBSEP 6), p[3] == "direct" ? "-" : sprintf("%.1f", cpu), cr, tr, median(order[i] SUBSEP 8)
    }
  }' "$RESULTS"
echo
for t in "${TARGETS[@]}"; do
  [ -n "${PID[$t]}" ] && echo "$t RSS at end: $(awk '/VmRSS/ {print $2, $3}' "/proc/${PID[$t]}/status")"
done
