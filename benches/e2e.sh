#!/usr/bin/env bash
# End-to-end benchmark: pgbench directly, through PgBouncer and through pgsluice, against one
# PostgreSQL started here, in one run, workloads interleaved. Reports tps, average latency and
# the proxy's CPU microseconds per transaction (utime+stime from /proc/PID/stat).
#
#   benches/e2e.sh                      # defaults: 15 s per run, 20 clients, scale 10
#   DURATION=30 CLIENTS=50 ROUNDS=3 benches/e2e.sh
#   TRACKING_AB=1 ONLY="select-only simple" benches/e2e.sh   # + pgsluice with query_stats_max = 0
#
# Needs PostgreSQL's server binaries and pgbench; PgBouncer (Debian's `pgbouncer`, or
# PGBOUNCER=/path/to/newer) is measured when present. Auth is md5 on both hops, pool size 20.
set -euo pipefail
DURATION=${DURATION:-15}
CLIENTS=${CLIENTS:-20}
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-1}
POOL=${POOL:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
PGBOUNCER=${PGBOUNCER:-$(command -v pgbouncer || echo /usr/sbin/pgbouncer)}
TRACKING_AB=${TRACKING_AB:-0}
ONLY=${ONLY:-}
CLK_TCK=$(getconf CLK_TCK)

(cd "$ROOT" && cargo build --release -q)
SLUICE="$ROOT/target/release/pgsluice"

WORK=$(mktemp -d /tmp/pgsluice-bench.XXXXXX)
chmod 755 "$WORK"
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.5
  as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); BOUNCER_PORT=$(free_port); SLUICE_PORT=$(free_port); NOTRACK_PORT=$(free_port)

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -N --locale=C -E UTF8 >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 300
password_encryption = 'md5'
fsync = off
synchronous_commit = off
shared_buffers = 128MB
CONF
echo "host all all 127.0.0.1/32 md5" > "$WORK/data/pg_hba.conf"
echo "local all all trust" >> "$WORK/data/pg_hba.conf"
as_pg "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "CREATE ROLE bench LOGIN PASSWORD 'bench'" postgres
psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE bench OWNER bench" postgres
PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U bench -i -q -s "$SCALE" bench >/dev/null 2>&1

cat > "$WORK/sluice.toml" <<CONF
[general]
auth_type = "md5"
default_pool_size = $POOL
[[listeners]]
addr = "127.0.0.1:$SLUICE_PORT"
mode = "transaction"
[[databases]]
name = "bench"
port = $PG_PORT
[[users]]
name = "bench"
password = "bench"
CONF
"$SLUICE" --config "$WORK/sluice.toml" --log-format json 2>"$WORK/sluice.log" &
SLUICE_PID=$!; PIDS+=("$SLUICE_PID")
NOTRACK_PID=""
if [ "$TRACKING_AB" = 1 ]; then
  # The same proxy with query fingerprinting off: what tracking costs, A/B in one run.
  sed -e "s/^default_pool_size = .*/&\nquery_stats_max = 0/" -e "s/127.0.0.1:$SLUICE_PORT/127.0.0.1:$NOTRACK_PORT/" \
    "$WORK/sluice.toml" > "$WORK/notrack.toml"
  "$SLUICE" --config "$WORK/notrack.toml" --log-format json 2>"$WORK/notrack.log" &
  NOTRACK_PID=$!; PIDS+=("$NOTRACK_PID")
fi

BOUNCER_PID=""
if [ -x "$PGBOUNCER" ]; then
  MD5=$(printf '%s' "benchbench" | md5sum | cut -d' ' -f1)
  echo "\"bench\" \"md5$MD5\"" > "$WORK/userlist.txt"
  cat > "$WORK/pgbouncer.ini" <<CONF
[databases]
bench = host=127.0.0.1 port=$PG_PORT dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BOUNCER_PORT
unix_socket_dir =
auth_type = md5
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 10000
logfile = $WORK/pgbouncer.log
ignore_startup_parameters = extra_float_digits
CONF
  [ "$(id -u)" = 0 ] && chown postgres "$WORK"/pgbouncer.ini "$WORK"/userlist.txt
  as_pg "$PGBOUNCER" "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.out" 2>&1 &
  sleep 0.5
  BOUNCER_PID=$(pgrep -n -f "pgbouncer $WORK/pgbouncer.ini" || true)
  [ -n "$BOUNCER_PID" ] && PIDS+=("$BOUNCER_PID")
fi
sleep 0.5

cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }

run() { # name port pid args...
  local name=$1 port=$2 pid=$3; shift 3
  local before after out tps lat txns failed cpu
  before=$(cpu_ticks "$pid")
  out=$(PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -n -T "$DURATION" -c "$CLIENTS" -j 2 "$@" bench 2>&1) || true
  after=$(cpu_ticks "$pid")
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
  lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  if [ -n "$pid" ] && [ -n "$txns" ] && [ "$txns" -gt 0 ]; then
    cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')
  else
    cpu="-"
  fi
  printf '| %-22s | %-9s | %10s | %8s | %8s | %6s |\n' "$WORKLOAD" "$name" "${tps:-error}" "${lat:--}" "$cpu" "${failed:-?}"
}

echo "pgbench ${DURATION}s, $CLIENTS clients, scale $SCALE, pool $POOL, $(nproc) cores, $(date -u +%Y-%m-%d)"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}'), $("$PGBOUNCER" --version 2>/dev/null | head -1 || echo 'no PgBouncer'), pgsluice $("$SLUICE" --version | awk '{print $2}')"
echo
echo "| workload               | target    |        tps | lat (ms) | proxy CPU us/txn | failed |"
echo "|------------------------|-----------|-----------:|---------:|---------:|-------:|"
WORKLOADS=("select-only simple|-S -M simple" "select-only extended|-S -M extended" "select-only prepared|-S -M prepared" "tpcb-like simple|-M simple" "select-only -C|-S -C")
for round in $(seq 1 "$ROUNDS"); do
  for w in "${WORKLOADS[@]}"; do
    WORKLOAD=${w%%|*}
    [ -n "$ONLY" ] && [ "$WORKLOAD" != "$ONLY" ] && continue
    # shellcheck disable=SC2206
    ARGS=(${w#*|})
    run direct "$PG_PORT" "" "${ARGS[@]}"
    [ -n "$BOUNCER_PID" ] && run pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID" "${ARGS[@]}"
    run pgsluice "$SLUICE_PORT" "$SLUICE_PID" "${ARGS[@]}"
    [ -n "$NOTRACK_PID" ] && run "pgsluice-nq" "$NOTRACK_PORT" "$NOTRACK_PID" "${ARGS[@]}"
  done
done
echo
echo "pgsluice RSS at end: $(awk '/VmRSS/ {print $2, $3}' /proc/$SLUICE_PID/status)"
