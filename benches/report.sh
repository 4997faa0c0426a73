#!/usr/bin/env bash
# Every figure of docs/benchmarks.md from one command: pgbench through PgBouncer and pgsluice
# (both modes), the idle-client fleets and the storm, and the instruction counts. Takes the
# scripts' own settings (BASELINE=, PGBOUNCER=, PGBOUNCER_OLD=, ROUNDS=, DURATION=, ...) and passes them on.
#
#   benches/report.sh > report.md                     # about 40 minutes on 2 cores
#   BASELINE=/path/to/older/pgsluice benches/report.sh  # every table A/B against another build
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
echo "## pgbench (benches/e2e.sh)"
echo
"$HERE/e2e.sh"
echo
echo "## Idle clients, fresh processes (IDLE=10000 STORM=10 benches/clients.sh)"
echo
IDLE=10000 STORM=10 "$HERE/clients.sh"
echo
echo "## Idle clients and the storm (benches/clients.sh)"
echo
"$HERE/clients.sh"
echo
echo "## Instructions (benches/callgrind.sh)"
echo
"$HERE/callgrind.sh"
