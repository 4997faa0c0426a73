#!/usr/bin/env bash
# The soak test for longer than CI runs it: mixed load in both modes with faults injected
# (cuts, resets, delays) between pgsluice and PostgreSQL, then checks that no acknowledged
# write is lost and that descriptors, tasks and memory return to their baseline.
#
#   benches/soak.sh            # 10 minutes
#   SOAK_SECONDS=3600 benches/soak.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SOAK_SECONDS=${SOAK_SECONDS:-600} cargo test --release --locked --test soak -- --nocapture
