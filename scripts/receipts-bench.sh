#!/usr/bin/env bash
# What downlink receipts cost, in one run: the local stack (mock cluster)
# carries the same downlink load three ways, in turn, for a few rounds:
#
#   before    the gateway and router of $BEFORE (the commit before receipts)
#   after     those of $AFTER, requests without a receipt header
#   receipts  those of $AFTER, every request asking for a receipt (loadgen
#             --receipts: one more record per request, written by whoever
#             decided it, and read back by loadgen)
#
# The two versions are built from git worktrees through this target
# directory; loadgen, the broker and the scripts are the working tree's.
# For each run it prints the downlink rate delivered to the cars and the
# CPU (from the processes' own accounting) spent per delivered message by
# the bridge (gateway + router) and by the server side (the bridge and the
# broker); the rate one core carries is the inverse. The ratios at the end
# compare those rates: after/before (goal >= 0.97) and receipts/after
# (goal >= 0.8). CPU per message rather than a saturated rate: every
# process here shares the machine's 2 cores with loadgen, so a saturated
# rate would measure whoever wins the scheduler's race; the CPU each
# message costs does not depend on that.
#
#   scripts/receipts-bench.sh                 # 3 rounds at 10,000 requests/s
#   ROUNDS=5 RATE=5000 scripts/receipts-bench.sh
#
# Environment: BEFORE (default 814fa33), AFTER (default HEAD), ROUNDS (3),
# RATE (10000 downlink requests/s), CARS (2000), SECS (15 measured, after
# 5 s of warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

before=$(git rev-parse --short "${BEFORE:-814fa33}")
after=$(git rev-parse --short "${AFTER:-HEAD}")
rounds=${ROUNDS:-3}
rate=${RATE:-10000}
cars=${CARS:-2000}
secs=${SECS:-15}
out=target/receipts-bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"

# The gateway and router of commit $1, in target/receipts-bench/bin-$1
# (built once).
build_at() {
  local dir=target/receipts-bench/bin-$1 tree=target/receipts-bench/tree
  if [ ! -x "$dir/gateway" ] || [ ! -x "$dir/router" ]; then
    log "building the gateway and router of $1 (a worktree, this target dir)"
    git worktree remove --force "$tree" 2>/dev/null || true
    git worktree add --force --detach "$tree" "$1" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$(pwd)/../.." cargo build --release -p gateway -p router --bins 2>&1 | tail -n 2)
    mkdir -p "$dir"
    cp target/release/gateway target/release/router "$dir/"
    git worktree remove --force "$tree"
  fi
}
build_at "$before"
build_at "$after"
# The working tree's binaries (last: the builds above went through the
# same target directory).
log "building the working tree (loadgen, the broker)"
cargo build --release --workspace --bins --example kafka_rtt 2>&1 | tail -n 2 >&2

log "load before: $(cut -d' ' -f1-3 /proc/loadavg); $rounds rounds, $cars cars, $rate requests/s for $secs s"
run() {
  local name=$1 round=$2; shift 2
  local dir=$out/$name-$round status=0
  # A run that lost messages (the verdict LOST, 3, or OVERLOADED, 4) is
  # still measured: its line says how many.
  STACK_DIR=$dir "$@" --cars "$cars" --downlink-rate "$rate" --warmup-secs 5 --duration-secs "$secs" \
    >"$dir.log" 2>&1 || status=$?
  case $status in
    0) ;;
    3 | 4) log "$name round $round lost messages (exit $status): see $dir.log" ;;
    *) log "$name round $round failed: see $dir.log"; return 1 ;;
  esac
  py receipts_bench run "$dir" "$name" "$round" | tee -a "$out/runs.txt"
}
for ((round = 1; round <= rounds; round++)); do
  run before "$round" env STACK_BRIDGE_BIN="target/receipts-bench/bin-$before" scripts/stack.sh
  run after "$round" env STACK_BRIDGE_BIN="target/receipts-bench/bin-$after" scripts/stack.sh
  run receipts "$round" env STACK_BRIDGE_BIN="target/receipts-bench/bin-$after" scripts/stack.sh --receipts
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

py receipts_bench summary "$out/runs.txt"
log "runs in $out"
