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

before=$(git rev-parse --short "${BEFORE:-814fa33}")
after=$(git rev-parse --short "${AFTER:-HEAD}")
rounds=${ROUNDS:-3}
rate=${RATE:-10000}
cars=${CARS:-2000}
secs=${SECS:-15}
out=target/receipts-bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$out"
log() { printf '\033[1mreceipts-bench:\033[0m %s\n' "$*" >&2; }

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
  local dir=$out/$name-$round
  STACK_DIR=$dir "$@" --cars "$cars" --downlink-rate "$rate" --warmup-secs 5 --duration-secs "$secs" \
    >"$dir.log" 2>&1 || { log "$name round $round failed: see $dir.log"; return 1; }
  python3 - "$dir" "$name" "$round" <<'EOF' | tee -a "$out/runs.txt"
import json, sys
d, name, rnd = sys.argv[1:4]
cpu = dict(kv.split("=") for kv in open(f"{d}/server-cpu.txt").read().split())
r = json.load(open(f"{d}/report.json"))
dl = r["downlink"]
bridge = float(cpu["gateway_ms"]) + float(cpu["router_ms"])
server = bridge + float(cpu["broker_ms"])
n = int(cpu["downlink"])
print(f"{name} {rnd} delivered={dl['received']}/{dl['sent']} lost={dl['lost']} "
      f"rate={dl['received'] / r['measured_secs']:.0f}/s p99_ms={dl['latency']['p99_ms']:.1f} "
      f"gateway_ms={cpu['gateway_ms']} router_ms={cpu['router_ms']} broker_ms={cpu['broker_ms']} "
      f"bridge_us={bridge * 1000 / n:.2f} server_us={server * 1000 / n:.2f} "
      f"receipts={(r.get('receipts') or {}).get('answered', 0)}")
EOF
}
for ((round = 1; round <= rounds; round++)); do
  run before "$round" env STACK_BRIDGE_BIN="target/receipts-bench/bin-$before" scripts/stack.sh
  run after "$round" env STACK_BRIDGE_BIN="target/receipts-bench/bin-$after" scripts/stack.sh
  run receipts "$round" env STACK_BRIDGE_BIN="target/receipts-bench/bin-$after" scripts/stack.sh --receipts
done
log "load after: $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$out/runs.txt" <<'EOF'
import collections, statistics, sys
for part in ("bridge", "server"):
    cost = collections.defaultdict(list)
    for line in open(sys.argv[1]):
        name, _, *fields = line.split()
        kv = dict(f.split("=") for f in fields)
        cost[name].append(float(kv[f"{part}_us"]))
    med = {k: statistics.median(v) for k, v in cost.items()}
    what = "gateway + router" if part == "bridge" else "gateway + router + broker"
    print(f"{what}: CPU per delivered downlink message")
    for k in ("before", "after", "receipts"):
        print(f"  {k:9} median {med[k]:.2f} µs (runs: {', '.join(f'{x:.2f}' for x in cost[k])}); "
              f"one core carries {1e6 / med[k]:,.0f}/s")
    a, b, r = med["after"], med["before"], med["receipts"]
    print(f"  rate ratio after/before (no receipts): {b / a:.3f} (goal >= 0.97)")
    print(f"  rate ratio receipts/after (a receipt on every request): {a / r:.3f} (goal >= 0.8)")
EOF
log "runs in $out"
