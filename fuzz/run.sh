#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on nightly; exits
# non-zero on the first crash (libFuzzer leaves the input in fuzz/artifacts).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
for target in $(cargo +nightly fuzz list); do
  mkdir -p "corpus/$target"
  seeds=()
  [ -d "seeds/$target" ] && seeds=("seeds/$target")
  echo "fuzz: $target for ${seconds}s"
  cargo +nightly fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 2>&1 |
    grep -E '^(stat::|#[0-9]+ +DONE|==[0-9]+==|SUMMARY|Done)' || true
  # grep hides the progress lines; the exit status of cargo fuzz is what counts.
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "fuzz: $target failed"; exit 1; }
done
