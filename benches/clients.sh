#!/usr/bin/env bash
# Many clients: memory per mostly idle client, the latency of the few active ones meanwhile,
# and a connection storm, through PgBouncer and pgsluice (transaction mode, pool 20, md5),
# against one PostgreSQL started here.
#
#   benches/clients.sh                     # 1,000 and 10,000 idle clients, a 2,000-client storm
#   IDLE="1000" STORM=500 benches/clients.sh
#   SETTLE=10 benches/clients.sh           # read the RSS after 10 s of idleness (default 2)
#
# Memory per client is the proxy's RSS with the idle clients connected (each ran one query,
# so every buffer it ever needs was used once) minus its RSS before, divided by their number.
# While they stay connected, pgbench runs 8 active clients (-S, simple) for ACTIVE seconds:
# their p50/p99 latency.
set -euo pipefail
IDLE=${IDLE:-1000 10000}
STORM=${STORM:-2000}
ACTIVE=${ACTIVE:-5}
# Seconds the idle clients sit idle before the RSS is read.
SETTLE=${SETTLE:-2}
SCALE=${SCALE:-10}
POOL=${POOL:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
BASELINE=${BASELINE:-}
# Every client is a descriptor in the client process and in the proxy.
ulimit -n "$(ulimit -Hn)"

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"
need_asyncpg
start_targets

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }

echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -r); PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'); pgbouncer $( [ -x "$PGBOUNCER" ] && version "$PGBOUNCER" || echo absent)${PGBOUNCER_OLD:+ and $(version "$PGBOUNCER_OLD")}; pgsluice $(version "$SLUICE")"
echo
echo "| target | idle clients | connect s | RSS before KiB | RSS with clients KiB | KiB per client | active p50 ms | active p99 ms | active tps |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $IDLE; do
  for target in "${TARGETS[@]}"; do
    [ "$target" = direct ] && continue
    pid=${PID[$target]}
    before=$(rss_kib "$pid")
    fifo="$WORK/hold.$target.$n"
    mkfifo "$fifo"
    "$PY" "$ROOT/benches/clients.py" idle 127.0.0.1 "${TX_PORT[$target]}" "${DBNAME[$target]}" "$n" \
      < "$fifo" > "$WORK/idle.out" 2>"$WORK/idle.err" &
    holder=$!
    exec 9> "$fifo"   # keeps the clients connected until closed
    for _ in $(seq 600); do grep -q '^ready' "$WORK/idle.out" 2>/dev/null && break; sleep 0.5; done
    if ! grep -q '^ready' "$WORK/idle.out"; then
      echo "idle clients did not connect through $target:" >&2; tail -5 "$WORK/idle.err" >&2
      exec 9>&-; wait "$holder" || true; continue
    fi
    secs=$(awk '{print $3}' "$WORK/idle.out")
    sleep "$SETTLE"
    with=$(rss_kib "$pid")
    rm -f "$WORK"/lat.*
    out=$(cd "$WORK" && PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "${TX_PORT[$target]}" -U bench -n -S \
      -T "$ACTIVE" -c 8 -j 2 --log --log-prefix=lat "${DBNAME[$target]}" 2>&1) || true
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
    read -r p50 p99 < <(cat "$WORK"/lat.* 2>/dev/null | awk '{print $3}' | sort -n |
      awk '{ v[NR] = $1 } END { if (NR == 0) { print "- -"; exit }
        i = int(NR * 0.99) + 1; if (i > NR) i = NR
        printf "%.3f %.3f\n", v[int(NR * 0.50) + 1] / 1000, v[i] / 1000 }')
    exec 9>&-
    wait "$holder" || true
    rm -f "$fifo"
    awk -v t="$target" -v n="$n" -v s="$secs" -v b="$before" -v w="$with" -v p50="$p50" -v p99="$p99" -v tps="${tps:-0}" \
      'BEGIN { printf "| %s | %d | %s | %d | %d | %.2f | %s | %s | %.0f |\n", t, n, s, b, w, (w - b) / n, p50, p99, tps }'
    sleep 2
  done
done

echo
echo "| target | storm clients | ok | errors | seconds | connect+query p50 ms | p99 ms | proxy CPU us/client |"
echo "|---|---:|---:|---|---:|---:|---:|---:|"
for target in "${TARGETS[@]}"; do
  [ "$target" = direct ] && continue
  pid=${PID[$target]}
  before=$(cpu_ticks "$pid")
  line=$("$PY" "$ROOT/benches/clients.py" storm 127.0.0.1 "${TX_PORT[$target]}" "${DBNAME[$target]}" "$STORM")
  after=$(cpu_ticks "$pid")
  echo "$line" | python3 -c '
import json, sys
r = json.loads(sys.stdin.read())
t, ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
errors = ", ".join("%s: %d" % kv for kv in r["errors"].items()) or "0"
cpu = ticks * 1e6 / hz / r["clients"]
print("| %s | %d | %d | %s | %s | %s | %s | %.0f |" % (t, r["clients"], r["ok"], errors, r["seconds"], r["p50_ms"], r["p99_ms"], cpu))
' "$target" $((after - before)) "$(getconf CLK_TCK)"
  sleep 2
done
for t in "${TARGETS[@]}"; do
  [ -n "${PID[$t]}" ] && echo "$t RSS at end: $(awk '/VmRSS/ {print $2, $3}' "/proc/${PID[$t]}/status")"
done
