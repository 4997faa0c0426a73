#!/usr/bin/env bash
# Runs every fuzz target for FUZZ_SECONDS each (default 30), starting from its checked-in
# seeds (fuzz/seeds/TARGET); exits non-zero on the first crash, leaving the input in
# fuzz/artifacts/TARGET. Needs cargo-fuzz; the stable toolchain runs it with RUSTC_BOOTSTRAP=1.
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
each=${FUZZ_SECONDS:-30}
targets=$(sed -n 's/^name = "\(.*\)"/\1/p' Cargo.toml | grep -v '^pgsluice-fuzz$')
cargo fuzz build 2>&1 | tail -n 2
for t in $targets; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "== fuzz $t (${each}s)"
  cargo fuzz run "$t" "corpus/$t" "seeds/$t" -- -max_total_time="$each" -rss_limit_mb=2048 2>&1 \
    | grep -E '^(Done|==[0-9]+==|thread|SUMMARY)|panicked|deadly signal' || true
  # cargo fuzz exits non-zero on a crash; the pipeline above hides that, so check artifacts.
  if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
    echo "fuzz target $t found a failing input:" >&2
    ls "artifacts/$t" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran clean"
