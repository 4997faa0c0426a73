#!/usr/bin/env bash
# End-to-end benchmark: pgbench directly, through PgBouncer 1.25.2 (what users compare
# against; built once from ../shared/peers), Debian's PgBouncer 1.18 and pgsluice, against one
# PostgreSQL started here, in one run. Within a round every workload runs on every target in
# turn (A B C A B C), rounds repeat, and the summary gives medians and ratios. Reports tps,
# p50/p99 latency (pgbench --log, sampled), the proxy's CPU microseconds per transaction split
# into user and system time (/proc/PID/stat), voluntary and involuntary context switches per
# transaction (summed over its threads) and the proxies' RSS.
#
#   benches/e2e.sh                                   # 8 s per run, 3 rounds, every workload
#   ONLY="select-only simple,tpcb-like simple" ROUNDS=5 benches/e2e.sh
#   MODES=transaction DURATION=15 benches/e2e.sh
#   BASELINE=/path/to/older/pgsluice benches/e2e.sh  # A/B two pgsluice builds in one run
#   PGBOUNCER=/path PGBOUNCER_OLD= benches/e2e.sh    # another PgBouncer; skip Debian's
#   COUNT=1 benches/e2e.sh                           # + syscalls per transaction by kind (perf)
#   PROFILE=/tmp/prof benches/e2e.sh                 # + perf record of each proxy per run
#   SLUICE_GENERAL="worker_threads = 1" benches/e2e.sh
#   BASELINE=target/release/pgsluice BASELINE_GENERAL="worker_threads = 2" benches/e2e.sh
#                                                    # A/B of a setting on one build
#   PUMPS=1 MODES=transaction benches/e2e.sh     # + benches/pump's bare byte pumps on tokio
#                                                    # (epoll) and monoio (io_uring)
#   PIN=1 PROXY_CPUS=0 LOAD_CPUS=1-7 benches/e2e.sh  # proxies pinned apart from the load;
#                                                    # + transactions per second per proxy core
#
# Needs PostgreSQL's server binaries and pgbench. Auth is md5 on both hops (the `-C scram`
# workload uses SCRAM-SHA-256 from client to proxy), pool size 20, 20 clients, 2 pgbench
# threads.
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
CLK_TCK=$(getconf CLK_TCK)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

start_targets

RESULTS="$WORK/results.tsv"
SYSCALLS="$WORK/syscalls.tsv"
: > "$RESULTS"; : > "$SYSCALLS"

# Syscalls counted by kind with COUNT=1 (tracepoints; the rest is "other").
KINDS=(recvfrom sendto read write writev epoll_wait epoll_ctl futex)

# run target mode workload pgbench-args...
run() {
  local target=$1 mode=$2 workload=$3; shift 3
  local port pid db user=bench out tps txns failed p50 p99 stat_pid="" perf_pid=""
  port=${TX_PORT[$target]}; [ "$mode" = session ] && port=${SE_PORT[$target]}
  pid=${PID[$target]}
  db=${DBNAME[$target]}
  [ "$mode" = session ] && [ "$db" = bench_tx ] && db=bench_se
  [ "$workload" = "select-only -C scram" ] && user=bench_scram
  local tag="$target.$mode.$(echo "$workload" | tr ' ' '_')"
  rm -f "$WORK"/lat.*
  if [ "$COUNT" = 1 ] && [ -n "$pid" ]; then
    local events="raw_syscalls:sys_enter" k
    for k in "${KINDS[@]}"; do events="$events,syscalls:sys_enter_$k"; done
    perf stat -x, -e "$events" -p "$pid" -o "$WORK/stat" >/dev/null 2>&1 &
    stat_pid=$!
  fi
  if [ -n "$PROFILE" ] && [ -n "$pid" ]; then
    # cpu-clock sampling: works without access to the PMU.
    perf record -e cpu-clock -F 4999 -g -p "$pid" -o "$PROFILE.$tag" >/dev/null 2>&1 &
    perf_pid=$!
  fi
  local before after
  before=$(usage_of "$pid")
  out=$(cd "$WORK" && "${LOAD_PIN[@]}" env PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U "$user" -n \
    -T "$DURATION" -c "$CLIENTS" -j 2 --log --log-prefix=lat --sampling-rate="$SAMPLING" "$@" "$db" 2>&1) || true
  after=$(usage_of "$pid")
  [ -n "$stat_pid" ] && { kill -INT "$stat_pid"; wait "$stat_pid" || true; }
  [ -n "$perf_pid" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  if [ -z "$txns" ] || [ "$txns" = 0 ]; then
    echo "pgbench failed on $tag:" >&2; echo "$out" | tail -5 >&2
    return
  fi
  # user, system (us/txn), voluntary, involuntary (switches/txn); "-" for direct.
  local usage="- - - -"
  [ -n "$pid" ] && usage=$(echo "$before $after" | awk -v hz="$CLK_TCK" -v n="$txns" \
    '{ printf "%.2f %.2f %.3f %.3f", ($5 - $1) * 1e6 / hz / n, ($6 - $2) * 1e6 / hz / n, ($7 - $3) / n, ($8 - $4) / n }')
  # pgbench log: field 3 is the transaction's latency in microseconds.
  read -r p50 p99 < <(cat "$WORK"/lat.* 2>/dev/null | awk '{print $3}' | sort -n |
    awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit }
      i = int(NR * 0.99) + 1; if (i > NR) i = NR
      printf "%.3f %.3f\n", v[int(NR * 0.50) + 1] / 1000, v[i] / 1000 }')
  local user sys vol invol
  read -r user sys vol invol <<< "$usage"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$workload" "$mode" "$target" "$tps" "$p50" "$p99" \
    "$user" "$sys" "$vol" "$invol" "${failed:-0}" >> "$RESULTS"
  local extra=""
  if [ -n "$stat_pid" ]; then
    # One row per run: workload mode target then per-transaction counts, total first.
    extra=$(awk -F, -v n="$txns" '$3 ~ /sys_enter/ { c[++k] = sprintf("%.2f", $1 / n) }
      END { for (i = 1; i <= k; i++) printf "\t%s", c[i] }' "$WORK/stat")
    printf '%s\t%s\t%s%s\n' "$workload" "$mode" "$target" "$extra" >> "$SYSCALLS"
    extra="  syscalls/txn $(echo "$extra" | cut -f2)"
  fi
  printf '  %-22s %-11s %-15s tps %8.0f  p50 %6s  p99 %6s ms  cpu us/txn user %6s sys %6s  switches/txn %s+%s  failed %s%s\n' \
    "$workload" "$mode" "$target" "$tps" "$p50" "$p99" "$user" "$sys" "$vol" "$invol" "${failed:-0}" "$extra" >&2
}

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -r)"
echo "# PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'); pgbouncer $( [ -x "$PGBOUNCER" ] && version "$PGBOUNCER" || echo absent)${PGBOUNCER_OLD:+ and $(version "$PGBOUNCER_OLD")}; pgsluice $(version "$SLUICE") ${SLUICE_GENERAL:+($SLUICE_GENERAL)}"
echo "# pgbench ${DURATION}s x $ROUNDS rounds, $CLIENTS clients, -j 2, scale $SCALE, pool $POOL, md5"
[ "$PIN" = 1 ] && echo "# pinned: proxies on CPUs $PROXY_CPUS, PostgreSQL and pgbench on $LOAD_CPUS"
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
        # PgBouncer before 1.21 cannot keep protocol-level prepared statements in
        # transaction mode: its runs would measure errors.
        [[ "$target" == pgbouncer-1.1[0-9]* && "$workload" == *prepared* && "$mode" == transaction ]] && continue
        # A pump has no pool: a login per transaction would measure PostgreSQL's backend
        # start, and its session mode is its transaction mode.
        [[ "$target" == pump-* && ( "$workload" == *-C* || "$mode" == session ) ]] && continue
        run "$target" "$mode" "$workload" "${args[@]}"
      done
    done
  done
done

echo
echo "| workload | mode | target | tps | p50 ms | p99 ms | CPU us/txn | user | sys | CPU vs pgbouncer | user − pgbouncer's | switches/txn vol+invol | tps vs direct | failed |"
echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
# Medians per (workload, mode, target), then ratios against PgBouncer 1.25's CPU and direct's
# tps. Field 12 is user+system of the run.
awk -F'\t' '
  function median(key,   n, i, j, a, t) {
    n = split(vals[key], a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  {
    k = $1 SUBSEP $2 SUBSEP $3
    if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    $12 = $7 == "-" ? "-" : $7 + $8
    for (f = 4; f <= 12; f++) vals[k SUBSEP f] = vals[k SUBSEP f] " " $f
  }
  END {
    for (i = 1; i <= n; i++) {
      split(order[i], p, SUBSEP)
      d = p[1] SUBSEP p[2] SUBSEP "direct"; b = p[1] SUBSEP p[2] SUBSEP "pgbouncer"
      tps = median(order[i] SUBSEP 4); cpu = median(order[i] SUBSEP 12); user = median(order[i] SUBSEP 7)
      dt = (d in seen) ? median(d SUBSEP 4) : 0
      bc = (b in seen) ? median(b SUBSEP 12) : 0
      bu = (b in seen) ? median(b SUBSEP 7) : 0
      px = p[3] != "direct"
      cr = (px && bc > 0) ? sprintf("%.2f", cpu / bc) : "-"
      ud = (px && bc > 0) ? sprintf("%+.2f", user - bu) : "-"
      tr = (px && dt > 0) ? sprintf("%.2f", tps / dt) : "-"
      printf "| %s | %s | %s | %.0f | %.3f | %.3f | %s | %s | %s | %s | %s | %s | %s | %d |\n", p[1], p[2], p[3], tps,
        median(order[i] SUBSEP 5), median(order[i] SUBSEP 6),
        px ? sprintf("%.2f", cpu) : "-", px ? sprintf("%.2f", user) : "-", px ? sprintf("%.2f", median(order[i] SUBSEP 8)) : "-",
        cr, ud, px ? sprintf("%.2f+%.2f", median(order[i] SUBSEP 9), median(order[i] SUBSEP 10)) : "-", tr, median(order[i] SUBSEP 11)
    }
  }' "$RESULTS"
if [ "$PIN" = 1 ]; then
  # What one of the proxy's cores can carry: transactions per CPU-second it spent.
  echo
  echo "| workload | mode | target | transactions per second per proxy core |"
  echo "|---|---|---|---:|"
  awk -F'\t' '
    function median(s,   n, i, j, a, t) {
      n = split(s, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    $3 != "direct" && $7 != "-" && $7 + $8 > 0 {
      k = $1 "|" $2 "|" $3; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      v[k] = v[k] " " 1e6 / ($7 + $8) }
    END { for (i = 1; i <= n; i++) { split(order[i], p, "|")
      printf "| %s | %s | %s | %.0f |\n", p[1], p[2], p[3], median(v[order[i]]) } }' "$RESULTS"
fi
if [ -s "$SYSCALLS" ]; then
  echo
  printf '| workload | mode | target | syscalls/txn |'; printf ' %s |' "${KINDS[@]}"; echo " other |"
  printf '|---|---|---|---:|'; printf -- '---:|%.0s' "${KINDS[@]}"; echo "---:|"
  awk -F'\t' '
    function median(s,   n, i, j, a, t) {
      n = split(s, a, " ")
      for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
      return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    {
      k = $1 SUBSEP $2 SUBSEP $3
      if (!(k in seen)) { seen[k] = 1; order[++n] = k }
      for (f = 4; f <= NF; f++) vals[k SUBSEP f] = vals[k SUBSEP f] " " $f
      if (NF > nf) nf = NF
    }
    END {
      for (i = 1; i <= n; i++) {
        split(order[i], p, SUBSEP)
        total = median(vals[order[i] SUBSEP 4]); rest = total
        printf "| %s | %s | %s | %.2f |", p[1], p[2], p[3], total
        for (f = 5; f <= nf; f++) { m = median(vals[order[i] SUBSEP f]); rest -= m; printf " %.2f |", m }
        printf " %.2f |\n", rest
      }
    }' "$SYSCALLS"
fi
echo
for t in "${TARGETS[@]}"; do
  [ -n "${PID[$t]}" ] && echo "$t RSS at end: $(awk '/VmRSS/ {print $2, $3}' "/proc/${PID[$t]}/status")"
done
