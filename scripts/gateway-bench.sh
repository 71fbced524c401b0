#!/usr/bin/env bash
# The gateway alone at full speed: one shard, many loopback connections
# publishing as fast as it takes their bytes (benches/examples/blast.rs),
# into librdkafka's mock cluster, a sink that keeps up (its CPU is printed
# beside, and so are the gateway's read pauses: how long a full producer
# queue held the cars back). Over the measured window it reads:
#
#   - PUBLISH per second acknowledged by the sink;
#   - the gateway's CPU time (user + system, from /proc), by thread: the
#     shard's and librdkafka's;
#   - from the two: the gateway's CPU per PUBLISH, and PUBLISH per second
#     per core of gateway CPU (the figure that does not depend on how much
#     of the 2 cores the gateway got beside the blaster and the sink).
#
#   scripts/gateway-bench.sh     # 1,000 connections, 5 s warm-up, 20 s measured
#   BENCH_BEFORE=<commit> BENCH_ROUNDS=3 scripts/gateway-bench.sh
#                                # that commit's gateway (built from a git
#                                # worktree into target/gateway-bench/bin-<commit>)
#                                # and this tree's, round after round, and the
#                                # ratio of their PUBLISH per core-second
#
# BENCH_CARS, BENCH_WARMUP, BENCH_SECS, BENCH_PAYLOAD (bytes, default 128)
# change those; BENCH_GATEWAY_ARGS adds gateway flags (-X queue.buffering.max.messages=...);
# BENCH_DIR is where the logs go.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

cars=${BENCH_CARS:-1000}
warmup=${BENCH_WARMUP:-5}
secs=${BENCH_SECS:-20}
payload=${BENCH_PAYLOAD:-128}
dir=${BENCH_DIR:-target/gateway-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
mqtt=127.0.0.1:23883
admin=127.0.0.1:29190
bin=target/release

log "building (release)"
cargo build --release --locked -p gateway --bin gateway -p loadgen --bin carbridge-mockbroker 2>&1 | tail -n 1 >&2
cargo build --release --locked -p benches --example blast 2>&1 | tail -n 1 >&2
variants=("now=$bin/gateway")
before=${BENCH_BEFORE:-}
if [ -n "$before" ]; then
  rev=$(git rev-parse --short "$before")
  keep=target/gateway-bench/bin-$rev tree=target/gateway-bench/tree
  if [ ! -x "$keep/gateway" ]; then
    log "building the gateway of $rev (a git worktree, this target directory)"
    git worktree remove --force "$tree" 2>/dev/null || true
    git worktree add --force --detach "$tree" "$rev" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$(pwd)/../.." cargo build --release -p gateway --bin gateway 2>&1 | tail -n 1 >&2)
    mkdir -p "$keep"
    cp "$bin/gateway" "$keep/"
    git worktree remove --force "$tree"
    # The working tree's gateway again: that build went through the same directory.
    cargo build --release --locked -p gateway --bin gateway 2>&1 | tail -n 1 >&2
  fi
  variants=("$rev=$keep/gateway" "${variants[@]}")
fi
rounds=${BENCH_ROUNDS:-1}

blast="" gateway="" sink=""
# The blaster, then the gateway (while the sink still takes what it
# flushes), then the sink; between measurements and on the way out.
stop_all() {
  local p
  for p in "$blast" "$gateway" "$sink"; do
    [ -z "$p" ] || stop_pids "$p"
  done
  blast="" gateway="" sink=""
}
cleanup_on_exit "logs in $dir"

metric() {
  curl -fsS "http://$admin/metrics" | awk -v m="$1" '$1 == m { s += $2 } END { print s + 0 }'
}

# One measurement of the gateway binary $2, named $1, round $3, in
# $dir/$1-$3: a fresh sink, gateway and fleet each time.
measure() {
  local name=$1 binary=$2 out=$dir/$1-$3 port load_before
  mkdir -p "$out"
  for port in "${mqtt#*:}" "${admin#*:}"; do
    if port_open "$port"; then
      echo "gateway-bench: port $port is in use: stop what holds it first" >&2
      exit 1
    fi
  done
  start_mockbroker "$bin/carbridge-mockbroker" "$out/bootstrap" "$out/mockbroker.log" --partitions 2 --slots 1
  sink=$mock_pid
  # shellcheck disable=SC2086 # BENCH_GATEWAY_ARGS: words, as typed.
  "$binary" --kafka-bootstrap "$mock_bootstrap" --no-downlink --shards 1 \
    --listen "$mqtt" --admin-listen "$admin" ${BENCH_GATEWAY_ARGS:-} >"$out/gateway.log" 2>&1 &
  gateway=$!
  await "the gateway" curl -fsS "http://$admin/readyz"
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  "$bin/examples/blast" "$mqtt" "$cars" $((warmup + secs + 3)) "$payload" >"$out/blast.log" 2>&1 &
  blast=$!
  await "$cars connections" grep -q '^connected' "$out/blast.log"

  # The windows are the measurement, not waits for an event.
  sleep "$warmup"
  sample "$out" start
  sleep "$secs"
  sample "$out" end
  kill -0 "$blast" 2>/dev/null || { cat "$out/blast.log" >&2; echo "gateway-bench: the blaster ended early" >&2; exit 1; }
  wait "$blast" || { cat "$out/blast.log" >&2; exit 1; }
  blast=""
  stop_all
  report "$name" "$out" "$load_before"
}

# The counters at one end of the window, into directory $1, named $2.
sample() {
  thread_ticks "$gateway" >"$1/threads-$2"
  echo "$(stat_ticks "/proc/$sink/stat") $(stat_ticks "/proc/$blast/stat") $(metric carbridge_gateway_publish_acked_total)" \
    "$(metric carbridge_gateway_publish_received_total) $(metric carbridge_gateway_read_pauses_total)" \
    "$(metric carbridge_gateway_read_paused_seconds_total)" \
    >"$1/sample-$2"
}

# Prints the figures of one measurement and appends "name per-core-rate"
# to $dir/results.
report() {
  py gateway_bench report "$1" "$2" "$secs" "$cars" "$payload" "$clk_tck" "$3" "$dir/results"
}

for ((round = 1; round <= rounds; round++)); do
  for variant in "${variants[@]}"; do
    measure "${variant%%=*}" "${variant#*=}" "$round"
  done
done

if [ ${#variants[@]} -gt 1 ]; then
  py gateway_bench compare "$dir/results" "$rev"
fi
