#!/usr/bin/env bash
# CPU per message, the gateway against mosquitto, same fleet, same run:
# the main job (scripts/stack.sh with STACK_MOSQUITTO=1) three times, at a
# fleet's rate (every car every 10 s), at saturation (every car every
# 100 ms) and idle (no publishing: keep-alives and sweeps only). stack.sh
# reads each process's CPU time (user + system) from /proc before and
# after loadgen and divides by the messages it handled; and again over
# loadgen's measured window alone, the connect storm of its warm-up left out.
#
#   scripts/cpu-bench.sh                # 10,000 cars; CPU_CARS=... to change
#
# One gateway with one shard (one core's worth), so the figure is per core.
#
# The gateway's downlink consumer fetches with its own default wait (500 ms,
# what a deployment on Kafka gets), not the 2 ms scripts/stack.sh sets for
# the local brokers' sake (they answer an empty fetch only when the whole
# wait is over): at 2 ms that consumer alone took 1 % of a core, at 20 ms
# 0.35 %, which a deployment on Kafka does not pay. The runs send no
# downlink, so the longer wait delays nothing here.
# STACK_FETCH_WAIT_MS=2 measures as the main job runs.
#
# The idle phase's cars ask for a 60 s keep-alive and send PINGREQ every
# 60 s (loadgen --keep-alive-secs): 167 a second from 10,000 cars, served by
# both servers alike.
set -euo pipefail
cd "$(dirname "$0")/.."
export STACK_FETCH_WAIT_MS=${STACK_FETCH_WAIT_MS:-500}

cars=${CPU_CARS:-10000}
dir=${CPU_DIR:-target/cpu-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"

run() {
  local name=$1; shift
  echo "== $name (load average before: $(cut -d' ' -f1 /proc/loadavg); fetch wait $STACK_FETCH_WAIT_MS ms)"
  STACK_MOSQUITTO=1 STACK_SHARDS=1 STACK_DIR="$dir/$name" scripts/stack.sh "$@" --downlink-rate 0 --quiet \
    >"$dir/$name.log" 2>&1 || true
  grep -E "CPU \(user|CPU in the measured window|uplink ingest" "$dir/$name.log" | sed 's/^.*stack:[^ ]* //'
}

run fleet-rate --cars "$cars" --publish-interval-ms 10000
run saturation --cars "$((cars / 5))" --publish-interval-ms 100
run idle --cars "$cars" --publish-interval-ms 3600000 --keep-alive-secs 60
echo "logs in $dir"
