#!/usr/bin/env bash
# Instructions pgsluice executes per workload, counted by valgrind's callgrind: the counts do
# not depend on how busy the machine is, so two builds compare exactly where timings cannot.
# Transaction mode, md5 (SCRAM-SHA-256 from client to proxy in the "scram" workload), pool 20; each run is a 200-transaction warm-up, then the workload.
#
#   benches/callgrind.sh                                   # this build
#   BASELINE=/path/to/other/pgsluice benches/callgrind.sh  # and another one, same workloads
#   BASELINE=target/release/pgsluice BASELINE_GENERAL="query_stats_max = 0" benches/callgrind.sh
#                                                          # A/B of a setting on one build
#   KEEP=/tmp/cg benches/callgrind.sh                      # keep the callgrind.out files
#   ONLY="select-only -C" benches/callgrind.sh              # the workloads whose label starts so
#   PUMPS=1 benches/callgrind.sh                           # + benches/pump's bare byte pumps
#                                                          # (no logins: -C workloads skipped)
#   PGBOUNCER_CG=1 benches/callgrind.sh                    # + PgBouncer 1.25.2 (PGBOUNCER=)
#                                                          # under callgrind, same workloads
#
# Needs valgrind (callgrind_annotate), PostgreSQL's server binaries and pgbench.
set -euo pipefail
SCALE=${SCALE:-10}
POOL=${POOL:-20}
BASELINE=${BASELINE:-}
KEEP=${KEEP:-}
ONLY=${ONLY:-}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

# count name binary pgbench-args...: prints the instruction total of one run.
count() {
  local name=$1 bin=$2 user=$3 wrap out total
  shift 3
  wrap="$WORK/$name.valgrind"
  out="$WORK/$name.callgrind"
  # jemalloc's background threads purge on their own clock: their instructions would vary
  # between runs of one build.
  printf '#!/bin/sh\n_RJEM_MALLOC_CONF=background_thread:false exec valgrind --tool=callgrind --callgrind-out-file=%s %s "$@"\n' "$out" "$bin" > "$wrap"
  chmod +x "$wrap"
  if [[ "$name" == pump-* ]]; then start_pump "$name" "$wrap"
  elif [[ "$name" == baseline-* ]]; then
    SLUICE_GENERAL="${BASELINE_GENERAL-${SLUICE_GENERAL:-}}" start_sluice "$name" "$wrap"
  elif [[ "$name" == pgbouncer-* ]]; then start_bouncer "$name" "$wrap"
  else start_sluice "$name" "$wrap"; fi
  local port=${TX_PORT[$name]} db=${DBNAME[$name]}
  for _ in $(seq 120); do
    PGPASSWORD=bench psql -h 127.0.0.1 -p "$port" -U bench -qtAc "SELECT 1" "$db" >/dev/null 2>&1 && break
    sleep 0.5
  done
  PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U bench -n -S -c 4 -j 2 -t 50 "$db" >/dev/null 2>&1
  PGPASSWORD=bench "$PGBIN/pgbench" -h 127.0.0.1 -p "$port" -U "$user" -n "$@" "$db" > "$WORK/$name.pgbench" 2>&1 ||
    { echo "pgbench failed through $name:" >&2; tail -5 "$WORK/$name.pgbench" >&2; }
  kill -INT "${PID[$name]}"
  # PgBouncer is not this shell's child (runuser started it): wait for it to go.
  wait "${PID[$name]}" 2>/dev/null || true
  while kill -0 "${PID[$name]}" 2>/dev/null; do sleep 0.2; done
  total=$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1 }')
  [ -n "$KEEP" ] && mkdir -p "$KEEP" && cp "$out" "$KEEP/"
  echo "${total:-0}"
}

BUILDS=(pgsluice)
declare -A BIN=([pgsluice]=$SLUICE)
if [ -n "$BASELINE" ]; then BUILDS+=(baseline); BIN[baseline]=$BASELINE; fi
if [ "${PGBOUNCER_CG:-0}" = 1 ]; then BUILDS+=(pgbouncer); BIN[pgbouncer]=$PGBOUNCER; fi
if [ "${PUMPS:-0}" = 1 ]; then
  BUILDS+=(pump-tokio pump-uring); BIN[pump-tokio]=$PUMP_DIR/pump-tokio; BIN[pump-uring]=$PUMP_DIR/pump-uring
fi

echo "# $(date -u +%Y-%m-%dT%H:%MZ), valgrind $(valgrind --version | sed 's/valgrind-//'); pgsluice $(version "$SLUICE")"
echo
printf '| workload |'; for b in "${BUILDS[@]}"; do printf ' %s |' "$b"; done
[ -n "$BASELINE" ] && printf ' change |'
echo
printf '|---|'; for _ in "${BUILDS[@]}"; do printf -- '---:|'; done
[ -n "$BASELINE" ] && printf -- '---:|'
echo
while IFS='|' read -r label args; do
  [ -n "$ONLY" ] && [[ "$label" != "$ONLY"* ]] && continue
  declare -A got=()
  user=bench
  [[ "$label" == *scram* ]] && user=bench_scram
  for b in "${BUILDS[@]}"; do
    # A pump makes a server connection per client: a login per transaction is PostgreSQL's.
    [[ "$b" == pump-* && "$label" == *-C* ]] && { got[$b]=0; continue; }
    # shellcheck disable=SC2086
    got[$b]=$(count "$b-${label// /-}" "${BIN[$b]}" "$user" $args)
  done
  printf '| %s |' "$label"
  for b in "${BUILDS[@]}"; do awk -v n="${got[$b]}" 'BEGIN { if (n > 0) printf " %.1f M |", n / 1e6; else printf " - |" }'; done
  if [ -n "$BASELINE" ]; then
    awk -v a="${got[pgsluice]}" -v b="${got[baseline]}" 'BEGIN { if (b > 0) printf " %+.1f%% |", (a - b) * 100 / b; else printf " - |" }'
  fi
  echo
  unset got
done <<'WORKLOADS'
select-only simple, 10,000 txns|-S -M simple -c 4 -j 2 -t 2500
select-only extended, 10,000 txns|-S -M extended -c 4 -j 2 -t 2500
select-only prepared, 10,000 txns|-S -M prepared -c 4 -j 2 -t 2500
select-only -C, 1,000 connections|-S -C -c 4 -j 2 -t 250
select-only -C scram, 1,000 connections|-S -C -c 4 -j 2 -t 250
tpcb-like simple, 2,000 txns|-M simple -c 4 -j 2 -t 500
tpcb-like extended, 2,000 txns|-M extended -c 4 -j 2 -t 500
WORKLOADS
