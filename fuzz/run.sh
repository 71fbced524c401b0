#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 30) on nightly, from its
# corpus (fuzz/corpus/<target>, gitignored) and its seeds (fuzz/seeds/<target>).
# Exits non-zero on the first crash, leak, timeout or failed assertion;
# libFuzzer leaves the input in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
[[ $seconds =~ ^[0-9]+$ ]] || { echo "usage: $0 [SECONDS]" >&2; exit 2; }

cargo +nightly --version >/dev/null 2>&1 || rustup toolchain install nightly --profile minimal
cargo fuzz --version >/dev/null 2>&1 || cargo install --locked cargo-fuzz

log=$(mktemp)
trap 'rm -f "$log"' EXIT
# An assignment, not a for-list substitution, so that `set -e` sees a failure.
targets=$(cargo +nightly fuzz list)
[[ -n $targets ]] || { echo "fuzz: no targets found" >&2; exit 1; }
for target in $targets; do
  mkdir -p "corpus/$target"
  dirs=("corpus/$target")
  [[ -d seeds/$target ]] && dirs+=("seeds/$target")
  echo "fuzz: $target for ${seconds}s"
  status=0
  cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
    -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The progress lines are noise in CI; the summary and any report are not.
  grep -E '^(stat::|#[0-9]+[[:space:]]+DONE|==[0-9]+==|SUMMARY|thread .* panicked|Failing input|artifact_prefix|Test unit written)' "$log" || true
  if ((status != 0)); then
    tail -n 60 "$log"
    echo "fuzz: $target failed (exit $status)" >&2
    exit 1
  fi
done
