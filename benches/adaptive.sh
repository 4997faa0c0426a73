#!/usr/bin/env bash
# The adaptive concurrency limit against fixed pool sizes, on a deliberately overloaded
# upstream: CLIENTS clients (64) in transaction mode against one PostgreSQL on this machine,
# through pgsluice with fixed pool sizes and with `adaptive_limit = true` (pool_size 32), in
# turn, ROUNDS times. Medians over rounds.
#
# SCENARIO=steady (default): pgbench runs a CPU-bound query (about 20 ms of CPU) throughout,
#   overloading the database from the first transaction; reports tps and p50/p99 latency.
# SCENARIO=surge: the load alternates every PHASE seconds (10) between light statements that
#   wait (pg_sleep(0.05): concurrency helps) and the CPU-bound one (concurrency only makes
#   each slower; CPU_ROWS=300000 rows, about 20 ms), with the role's statement_timeout at
#   TIMEOUT (1s), as agents set it;
#   benches/surge.py drives it and counts timeouts instead of stopping. Reports light and
#   heavy statements finished in time per second (tps is the light ones), timeouts
#   (errors), and p50/p99 of those finished.
#
#   benches/adaptive.sh                         # 15 s per run, 2 rounds
#   SIZES="2 4 8" DURATION=30 ROUNDS=3 benches/adaptive.sh
#   SCENARIO=surge DURATION=40 ROUNDS=3 benches/adaptive.sh
#
# Needs PostgreSQL's server binaries and pgbench (as benches/e2e.sh), and asyncpg for surge.
set -euo pipefail
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-64}
ROUNDS=${ROUNDS:-2}
SIZES=${SIZES:-2 4 8 16 32}
SCENARIO=${SCENARIO:-steady}
PHASE=${PHASE:-10}
TIMEOUT=${TIMEOUT:-1s}
SCALE=1
POOL=32
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need_asyncpg

CONFIGS=()
for size in $SIZES; do
  POOL=$size start_sluice "fixed$size" "$SLUICE"
  CONFIGS+=("fixed$size")
done
POOL=32 SLUICE_GENERAL="adaptive_limit = true" start_sluice adaptive "$SLUICE"
CONFIGS+=(adaptive)
sleep 1

CPU="SELECT count(*) FROM generate_series(1, ${CPU_ROWS:-300000}) g WHERE g % 7 = 0"
echo "$CPU;" > "$WORK/cpu.sql"
# Even phases wait, odd ones burn CPU (an uncorrelated subquery runs only when its branch does).
echo "SELECT CASE WHEN (extract(epoch FROM clock_timestamp())::bigint / $PHASE) % 2 = 0
  THEN (SELECT 0 FROM pg_sleep(0.05)) ELSE ($CPU) END;" > "$WORK/surge.sql"
if [ "$SCENARIO" = surge ]; then
  psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "ALTER ROLE bench SET statement_timeout = '$TIMEOUT'" postgres
fi
RESULTS="$WORK/results.tsv"
: > "$RESULTS"

run_surge() {
  local name=$1 light heavy errors p50 p99 lost
  read -r light heavy errors p50 p99 lost < <("$PY" "$ROOT/benches/surge.py" \
    "postgresql://bench:bench@127.0.0.1:${TX_PORT[$name]}/bench" "$CLIENTS" "$DURATION" "$WORK/surge.sql")
  printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$light" "$p50" "$p99" "$errors" "$heavy" >> "$RESULTS"
  printf '  %-10s light/s %7.1f  heavy/s %5.1f  timeouts %5s  p50 %7.1f ms  p99 %7.1f ms  lost %s\n' \
    "$name" "$light" "$heavy" "$errors" "$p50" "$p99" "$lost"
}

run() {
  local name=$1 out tps p50 p99
  if [ "$SCENARIO" = surge ]; then run_surge "$name"; return; fi
  rm -f "$WORK"/lat.*
  out=$(cd "$WORK" && PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "${TX_PORT[$name]}" -U bench -n \
    -T "$DURATION" -c "$CLIENTS" -j 2 -f "$WORK/cpu.sql" --log --log-prefix=lat bench 2>&1) || true
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
  if [ -z "$tps" ]; then
    echo "pgbench failed on $name:" >&2; echo "$out" | tail -5 >&2
    return
  fi
  read -r p50 p99 < <(cat "$WORK"/lat.* | awk '{print $3}' | sort -n | awk '
    { v[NR] = $1 } END { printf "%.1f %.1f\n", v[int(NR * 0.5) + 1] / 1000, v[int(NR * 0.99) + 1] / 1000 }')
  printf '%s\t%s\t%s\t%s\n' "$name" "$tps" "$p50" "$p99" >> "$RESULTS"
  printf '  %-10s tps %8.1f  p50 %7.1f ms  p99 %7.1f ms\n' "$name" "$tps" "$p50" "$p99"
}

for round in $(seq "$ROUNDS"); do
  echo "round $round"
  for c in "${CONFIGS[@]}"; do run "$c"; done
done

echo
echo "$SCENARIO: medians over $ROUNDS rounds ($CLIENTS clients, $DURATION s each, $(nproc) cores)"
printf '%-10s %10s %10s %10s %10s %10s\n' config tps p50_ms p99_ms errors heavy/s
for c in "${CONFIGS[@]}"; do
  awk -v c="$c" -F'\t' '$1 == c { t[++n] = $2; a[n] = $3; b[n] = $4; e[n] = $5 + 0; h[n] = $6 + 0 }
    function med(x, n,   i, j, s) { for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (x[j] < x[i]) { s = x[i]; x[i] = x[j]; x[j] = s }
      return n % 2 ? x[(n + 1) / 2] : (x[n / 2] + x[n / 2 + 1]) / 2 }
    END { if (n) printf "%-10s %10.1f %10.1f %10.1f %10d %10.1f\n", c, med(t, n), med(a, n), med(b, n), med(e, n), med(h, n) }' "$RESULTS"
done
