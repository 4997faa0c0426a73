# Shared by the end-to-end benchmarks: builds pgsluice, starts one PostgreSQL and the poolers
# in a scratch directory, and cleans everything up on exit. Sourced, not run.
#   needs: ROOT, PGBIN, POOL, SCALE set by the caller.
#   SLUICE_GENERAL: extra lines for pgsluice's [general] (e.g. "handover_reset = false").
#   SLUICE_EXTRA: extra tables appended to pgsluice's config (benches/claims.sh's [jwt]...).
(cd "$ROOT" && cargo build --release -q)
SLUICE="$ROOT/target/release/pgsluice"

# PgBouncer 1.25.2, the release users compare against, built once from the source beside
# ../shared/peers/build-pgbouncer.sh into a cache; PGBOUNCER=/path overrides it. Debian's
# package (1.18) is measured too, as PGBOUNCER_OLD (empty to skip it).
# (/var/tmp: PgBouncer runs as `postgres` when the bench runs as root, and must reach it.)
PGB_CACHE=${PGB_CACHE:-/var/tmp/pgsluice-bench/pgbouncer-1.25.2}
PGB_BUILD="$ROOT/../shared/peers/build-pgbouncer.sh"
if [ -z "${PGBOUNCER:-}" ]; then
  if [ ! -x "$PGB_CACHE/bin/pgbouncer" ] && [ -x "$PGB_BUILD" ]; then
    echo "building PgBouncer 1.25.2 into $PGB_CACHE (once)" >&2
    # Its man pages are made with pandoc, which the build script does not install.
    if ! command -v pandoc >/dev/null; then
      SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
      $SUDO apt-get install -y -qq pandoc >&2
    fi
    "$PGB_BUILD" "$PGB_CACHE" >&2
  fi
  PGBOUNCER="$PGB_CACHE/bin/pgbouncer"
fi
PGBOUNCER_OLD=${PGBOUNCER_OLD-$(command -v pgbouncer || true)}

# PIN=1: the proxies on PROXY_CPUS, PostgreSQL and pgbench on LOAD_CPUS (taskset), so a
# proxy's transactions per second per core it uses can be read off without the load
# competing for its cores (pgsluice sizes its workers to the cores it may use).
PIN=${PIN:-0}
PROXY_CPUS=${PROXY_CPUS:-0}
LOAD_CPUS=${LOAD_CPUS:-1-$(($(nproc) - 1))}
PROXY_PIN=(); LOAD_PIN=()
if [ "$PIN" = 1 ]; then PROXY_PIN=(taskset -c "$PROXY_CPUS"); LOAD_PIN=(taskset -c "$LOAD_CPUS"); fi

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
PG_PORT=$(free_port)

as_pg "$PGBIN/initdb" -D "$WORK/data" -U postgres -A trust -N --locale=C -E UTF8 >/dev/null
cat >> "$WORK/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$WORK'
max_connections = 400
password_encryption = 'md5'
fsync = off
synchronous_commit = off
shared_buffers = 128MB
CONF
echo "host all all 127.0.0.1/32 md5" > "$WORK/data/pg_hba.conf"
echo "local all all trust" >> "$WORK/data/pg_hba.conf"
as_pg "${LOAD_PIN[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w start >/dev/null
psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "CREATE ROLE bench LOGIN PASSWORD 'bench'" postgres
psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "CREATE ROLE bench_scram LOGIN PASSWORD 'bench' IN ROLE bench" postgres
psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "CREATE DATABASE bench OWNER bench" postgres
PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U bench -i -q -s "$SCALE" bench >/dev/null 2>&1
psql -h "$WORK" -p "$PG_PORT" -U postgres -qc "GRANT ALL ON ALL TABLES IN SCHEMA public TO bench_scram" bench

# Both poolers: md5 for `bench`, SCRAM-SHA-256 for `bench_scram` (one hba file, same syntax).
printf 'host all bench_scram 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 md5\n' > "$WORK/hba.conf"

# start_sluice name binary: a transaction-mode and a session-mode listener.
declare -A TX_PORT SE_PORT PID DBNAME
start_sluice() {
  local name=$1 bin=$2
  TX_PORT[$name]=$(free_port); SE_PORT[$name]=$(free_port)
  cat > "$WORK/$name.toml" <<CONF
[general]
auth_type = "md5"
auth_hba_file = "$WORK/hba.conf"
default_pool_size = $POOL
max_client_conn = 20000
${SLUICE_GENERAL:-}
[[listeners]]
addr = "127.0.0.1:${TX_PORT[$name]}"
mode = "transaction"
[[listeners]]
addr = "127.0.0.1:${SE_PORT[$name]}"
mode = "session"
[[databases]]
name = "bench"
port = $PG_PORT
[[users]]
name = "bench"
password = "bench"
[[users]]
name = "bench_scram"
password = "bench"
${SLUICE_EXTRA:-}
CONF
  "${PROXY_PIN[@]}" "$bin" --config "$WORK/$name.toml" --log-format json 2>"$WORK/$name.log" &
  PID[$name]=$!; PIDS+=("${PID[$name]}")
  DBNAME[$name]=bench
}

# start_bouncer name binary: database bench_tx in transaction mode, bench_se in session mode.
start_bouncer() {
  local name=$1 bin=$2 port
  port=$(free_port)
  TX_PORT[$name]=$port; SE_PORT[$name]=$port
  MD5=$(printf '%s' "benchbench" | md5sum | cut -d' ' -f1)
  printf '"bench" "md5%s"\n"bench_scram" "bench"\n' "$MD5" > "$WORK/userlist.txt"
  cat > "$WORK/$name.ini" <<CONF
[databases]
bench_tx = host=127.0.0.1 port=$PG_PORT dbname=bench pool_mode=transaction
bench_se = host=127.0.0.1 port=$PG_PORT dbname=bench pool_mode=session
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = hba
auth_hba_file = $WORK/hba.conf
auth_file = $WORK/userlist.txt
default_pool_size = $POOL
max_client_conn = 20000
logfile = $WORK/$name.log
pidfile = $WORK/$name.pid
ignore_startup_parameters = extra_float_digits
listen_backlog = 4096
CONF
  [ "$(id -u)" = 0 ] && chown postgres "$WORK/$name.ini" "$WORK/userlist.txt" "$WORK/hba.conf"
  # runuser applies the login limits: give it as many descriptors as pgsluice takes.
  as_pg "${PROXY_PIN[@]}" sh -c 'ulimit -n "$1"; shift; exec "$@"' sh "$(ulimit -Hn)" "$bin" "$WORK/$name.ini" >"$WORK/$name.out" 2>&1 &
  for _ in $(seq 50); do [ -s "$WORK/$name.pid" ] && break; sleep 0.1; done
  PID[$name]=$(cat "$WORK/$name.pid"); PIDS+=("${PID[$name]}")
  DBNAME[$name]=bench_tx
}

# start_pump name [binary]: benches/pump's bare byte pump `name` (pump-tokio, pump-uring: one
# server connection per client, no pool, no parsing) in front of PostgreSQL: the I/O floor of
# a proxy on its runtime.
PUMP_DIR=/var/tmp/pgsluice-bench/pump/release
start_pump() {
  local name=$1 bin=${2:-$PUMP_DIR/$1} port
  (cd "$ROOT/benches/pump" && CARGO_TARGET_DIR=/var/tmp/pgsluice-bench/pump cargo build --release -q)
  port=$(free_port)
  TX_PORT[$name]=$port; SE_PORT[$name]=$port
  "${PROXY_PIN[@]}" "$bin" "127.0.0.1:$port" "127.0.0.1:$PG_PORT" 2>"$WORK/$name.log" &
  PID[$name]=$!; PIDS+=("${PID[$name]}")
  DBNAME[$name]=bench
  [ $# -lt 2 ] && TARGETS+=("$name")
  return 0
}

# Every target: direct, PgBouncer 1.25 (and the older PGBOUNCER_OLD) when present, pgsluice
# (and BASELINE). Ratios are against the target named `pgbouncer`.
start_targets() {
  TARGETS=(direct)
  TX_PORT[direct]=$PG_PORT; SE_PORT[direct]=$PG_PORT; PID[direct]=""; DBNAME[direct]=bench
  if [ -x "$PGBOUNCER" ]; then start_bouncer pgbouncer "$PGBOUNCER"; TARGETS+=(pgbouncer); fi
  if [ -x "$PGBOUNCER_OLD" ] && [ "$PGBOUNCER_OLD" != "$PGBOUNCER" ]; then
    local old; old="pgbouncer-$(version "$PGBOUNCER_OLD")"
    start_bouncer "$old" "$PGBOUNCER_OLD"; TARGETS+=("$old")
  fi
  start_sluice pgsluice "$SLUICE"; TARGETS+=(pgsluice)
  if [ "${PUMPS:-0}" = 1 ]; then start_pump pump-tokio; start_pump pump-uring; fi
  # BASELINE_GENERAL: the baseline's own [general] lines (A/B of a setting on one build).
  if [ -n "$BASELINE" ]; then
    SLUICE_GENERAL="${BASELINE_GENERAL-${SLUICE_GENERAL:-}}" start_sluice baseline "$BASELINE"
    TARGETS+=(baseline)
  fi
  sleep 1
}

cpu_ticks() { [ -n "$1" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
# "user-ticks system-ticks voluntary-switches involuntary-switches" of a process (switches
# summed over its threads).
usage_of() {
  [ -n "$1" ] || { echo "0 0 0 0"; return; }
  local t; t=$(awk '{print $14, $15}' "/proc/$1/stat")
  echo "$t $(cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt/ {v += $2} /^nonvoluntary_ctxt/ {n += $2} END {print v + 0, n + 0}')"
}
user_ticks() { [ -n "$1" ] && awk '{print $14}' "/proc/$1/stat" || echo 0; }
version() { "$1" --version 2>/dev/null | head -1 | sed "s/^[^ ]* //"; }

# The Python with asyncpg: tests/clients/.venv's when `./dev test` made one (the system's
# Python refused pip), else python3 on PATH. need_asyncpg stops a script that needs it with
# a message instead of tables left empty.
PY=python3
[ -x "$ROOT/tests/clients/.venv/bin/python3" ] && PY="$ROOT/tests/clients/.venv/bin/python3"
need_asyncpg() {
  "$PY" -c 'import asyncpg' 2>/dev/null ||
    { echo "$0: asyncpg is not installed for $PY (pip install asyncpg, or ./dev test)" >&2; exit 1; }
}
