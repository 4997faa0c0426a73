#!/usr/bin/env bash
# What a token identity's claims cost per transaction: pgbench select-only through pgsluice's
# transaction port as a password user (no claims), as an API-key identity in compat mode
# (request.jwt.* set per hand-over) and in sealed mode (pgsluice.seal() per hand-over), in
# turn within each round. Reports tps, p50 latency and pgsluice's CPU per transaction.
#
#   benches/claims.sh                      # 8 s per run, 3 rounds, simple and extended
#   ROUNDS=5 DURATION=15 benches/claims.sh
set -euo pipefail
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-20}
SCALE=${SCALE:-10}
ROUNDS=${ROUNDS:-3}
POOL=${POOL:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PGBIN=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)}
CLK_TCK=$(getconf CLK_TCK)
KEY=bench-api-key-0123456789
HASH=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)

# shellcheck source=benches/lib.sh
. "$ROOT/benches/lib.sh"

agents() {
  cat <<CONF
[jwt]
secret = "bench-jwt-secret-bench-jwt-secret-0123"
claims_mode = "$1"
[[roles]]
name = "bench_role"
server_user = "bench"
server_password = "bench"
[[api_keys]]
name = "bench-agent"
hash = "sha256:$HASH"
role = "bench_role"
subject = "00000000-0000-0000-0000-000000000001"
CONF
}
SLUICE_GENERAL='allow_plaintext_tokens = "local"'
SLUICE_EXTRA=$(agents compat) start_sluice compat "$SLUICE"
SLUICE_EXTRA=$(agents sealed) start_sluice sealed "$SLUICE"
sleep 1
"$SLUICE" install-sql --config "$WORK/sealed.toml" \
  --database-url "postgres://postgres@:$PG_PORT/bench?host=$WORK&sslmode=disable" >/dev/null

# run label instance user password protocol
run() {
  local label=$1 inst=$2 user=$3 pw=$4 proto=$5 pid before after out tps txns p50
  pid=${PID[$inst]}
  rm -f "$WORK"/lat.*
  before=$(cpu_ticks "$pid")
  out=$(cd "$WORK" && PGPASSWORD=$pw "$PGBIN/pgbench" -h 127.0.0.1 -p "${TX_PORT[$inst]}" -U "$user" -n \
    -S -M "$proto" -T "$DURATION" -c "$CLIENTS" -j 2 --log --log-prefix=lat --sampling-rate=0.1 bench 2>&1) || true
  after=$(cpu_ticks "$pid")
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | tail -1)
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  if [ -z "$txns" ] || [ "$txns" = 0 ]; then echo "pgbench failed on $label:" >&2; echo "$out" | tail -5 >&2; return; fi
  p50=$(cat "$WORK"/lat.* | awk '{print $3}' | sort -n | awk '{ v[NR] = $1 } END { printf "%.3f", v[int(NR * 0.5) + 1] / 1000 }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$proto" "$tps" "$p50" \
    "$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$txns" 'BEGIN { printf "%.1f", t * 1e6 / hz / n }')" >> "$WORK/results.tsv"
  printf '  %-8s %-9s tps %8.0f  p50 %s ms\n' "$label" "$proto" "$tps" "$p50" >&2
}

: > "$WORK/results.tsv"
echo "# $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores; pgbench -S ${DURATION}s x $ROUNDS rounds, $CLIENTS clients, pool $POOL"
for round in $(seq 1 "$ROUNDS"); do
  echo "round $round" >&2
  for proto in simple extended; do
    run none compat bench bench "$proto"
    run compat compat bench-agent "$KEY" "$proto"
    run sealed sealed bench-agent "$KEY" "$proto"
  done
done
seals=$(psql -h "$WORK" -p "$PG_PORT" -U postgres -Atc "SELECT n_tup_ins + n_tup_upd FROM pg_stat_user_tables WHERE relname = 'sealed'" bench)
sealed_txns=$(awk -F'\t' '$1 == "sealed" { s += $3 } END { printf "%.0f", s * '"$DURATION"' }' "$WORK/results.tsv")
echo "# seals recorded: $seals for about $sealed_txns sealed-mode transactions (a seal is due when a server changes hands)"
echo "| claims | protocol | tps | p50 ms | pgsluice CPU us/txn |"
echo "|---|---|---:|---:|---:|"
awk -F'\t' '
  function median(s,   n, a, i, j, t) { n = split(s, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2 }
  { k = $1 SUBSEP $2; if (!(k in seen)) { seen[k] = 1; order[++n] = k }
    tps[k] = tps[k] " " $3; p50[k] = p50[k] " " $4; cpu[k] = cpu[k] " " $5 }
  END { for (i = 1; i <= n; i++) { split(order[i], p, SUBSEP)
    printf "| %s | %s | %.0f | %.3f | %.1f |\n", p[1], p[2], median(tps[order[i]]), median(p50[order[i]]), median(cpu[order[i]]) } }' "$WORK/results.tsv"
