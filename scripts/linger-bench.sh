#!/usr/bin/env bash
# The gateway's producer at a fleet's rate: CPU per uplink PUBLISH and
# wake-ups against librdkafka's linger.ms (issue 24, goal 2). The main job
# with one shard, 10,000 cars each publishing every 10 s (1,000 PUBLISH/s),
# no downlink, once per value in LINGER_VALUES, then again in reverse
# order (the machine's load drifts): stack.sh's CPU per PUBLISH over the
# measured window, and scripts/thread-cpu.sh's wake-ups per second by
# thread over 20 s of it, with the uplink's p99 (end to end, and the
# bridge's part) from the verdict.
#
#   scripts/linger-bench.sh                      # LINGER_VALUES="5 20 100"
#   LINGER_VALUES="5 50" LINGER_CARS=5000 scripts/linger-bench.sh
#
# librdkafka's mock cluster, the gateway's downlink consumer fetching with
# a 20 ms wait (the figures in BENCHMARKS.md were taken so, when 20 ms was
# the components' default; it is 500 ms since, as in scripts/cpu-bench.sh).
# Run nothing else meanwhile: it finds the gateway by its command line.
set -euo pipefail
cd "$(dirname "$0")/.."
values=${LINGER_VALUES:-5 20 100}
cars=${LINGER_CARS:-10000}
dir=${LINGER_DIR:-target/linger-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
export STACK_FETCH_WAIT_MS=20 STACK_SHARDS=1

# One run: linger.ms $1, round $2.
run() {
  local linger=$1 out="$dir/linger-$1-$2" pid=""
  echo "== linger.ms=$linger, round $2 (load average before: $(cut -d' ' -f1 /proc/loadavg))"
  STACK_DIR="$out" STACK_KAFKA_PROPS="linger.ms=$linger" scripts/stack.sh --cars "$cars" \
    --publish-interval-ms 10000 --downlink-rate 0 --quiet >"$out.log" 2>&1 &
  local stack=$!
  # Into the measured window: the stack's start, then loadgen's 10 s warm-up.
  for _ in $(seq 600); do
    pid=$(pgrep -f "^target/release/gateway .*--bridge-id 0 " | head -1 || true)
    [ -n "$pid" ] && grep -q "stack:.* loadgen " "$out.log" 2>/dev/null && break
    sleep 0.1
  done
  if [ -n "$pid" ]; then
    sleep 15
    scripts/thread-cpu.sh "$pid" 20 >"$out.threads" 2>&1 || true
  fi
  wait "$stack" || true
  grep -E "CPU in the measured window" "$out.log" | sed 's/^.*stack:[^ ]* //'
  grep -E "^ +latency p50|the bridge \(car" "$out.log" | head -2 | sed 's/^ */  uplink /'
  [ -s "$out.threads" ] && sed -n '1,12p' "$out.threads" | sed 's/^/  /'
}

order=$values
reverse=$(echo "$values" | tr ' ' '\n' | tac | tr '\n' ' ')
for linger in $order; do run "$linger" 1; done
for linger in $reverse; do run "$linger" 2; done
echo "logs in $dir"
