#!/usr/bin/env bash
# The brokers of the local stack, measured alone at the bridge's rates:
# tansu (memory storage, the broker of the correctness tests) and
# librdkafka's mock cluster (carbridge-mockbroker), one after the other in
# one run, each fresh, with the same client: `loadgen --example
# broker_bench`, 40 producers (as 40 gateway shards), 100-byte records,
# one consumer reading everything back. Prints a table of produce→ack and
# produce→fetch latency and the broker's CPU per 1,000 records.
#
#   scripts/broker-bench.sh                 # rates 1000 10000 70000 0 (0: flat out)
#   BENCH_RATES="10000" BENCH_SECS=20 scripts/broker-bench.sh
#
# Environment: BENCH_RATES, BENCH_SECS (10), BENCH_PRODUCERS (40),
# BENCH_BROKERS ("tansu mock"), STACK_TANSU (tansu binary), BENCH_DIR,
# BENCH_PROFILE=1 (perf samples of the broker process during each run;
# BROKER-RATE.profile.txt in the results: where its CPU goes).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

rates=${BENCH_RATES:-1000 10000 70000 0}
secs=${BENCH_SECS:-10}
producers=${BENCH_PRODUCERS:-40}
brokers=${BENCH_BROKERS:-tansu mock}
tansu=${STACK_TANSU:-tansu}
dir=${BENCH_DIR:-target/broker-bench/$(date -u +%Y%m%dT%H%M%SZ)}
port=29192
mkdir -p "$dir"

command -v "$tansu" >/dev/null || SETUP_QUIET=1 scripts/setup.sh stack
log "building (release)"
cargo build --release -q -p loadgen --example broker_bench --bin carbridge-mockbroker
bin=target/release

# The broker of the run (also on the way out).
pid=
stop_all() {
  if [ -n "$pid" ]; then
    stop_pids "$pid"
    pid=
  fi
}
cleanup_on_exit ""

start_broker() {
  case $1 in
    tansu)
      start_tansu "127.0.0.1:$port" "$dir/tansu.log"
      pid=$tansu_pid
      bootstrap=127.0.0.1:$port
      create=(--create)
      ;;
    mock)
      rm -f "$dir/bootstrap"
      "$bin/carbridge-mockbroker" --topic broker-bench=12 \
        --bootstrap-file "$dir/bootstrap" >"$dir/mock.log" 2>&1 &
      pid=$!
      await "the mock cluster" test -s "$dir/bootstrap"
      bootstrap=$(cat "$dir/bootstrap")
      create=()
      ;;
  esac
}

log "machine: $(nproc) cores; load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for broker in $brokers; do
  for rate in $rates; do
    # A fresh broker per rate: no run inherits another's backlog.
    start_broker "$broker"
    before=$(cpu_ms "$pid")
    perf_pid=
    if [ -n "${BENCH_PROFILE:-}" ]; then
      perf record -F 499 -g -p "$pid" -o "$dir/$broker-$rate.perf.data" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    log "$broker at ${rate}/s (0: flat out), $producers producers, ${secs}s"
    "$bin/examples/broker_bench" --kafka-bootstrap "$bootstrap" "${create[@]}" \
      --producers "$producers" --rate "$rate" --secs "$secs" --label "$broker" \
      -X enable.idempotence=false --json "$dir/$broker-$rate.json" | tee -a "$dir/runs.txt"
    after=$(cpu_ms "$pid")
    if [ -n "$perf_pid" ]; then
      if kill -INT "$perf_pid"; then wait "$perf_pid" || true; fi
      perf report -i "$dir/$broker-$rate.perf.data" --stdio --no-children --sort dso,sym \
        --percent-limit 0.7 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' \
        >"$dir/$broker-$rate.profile.txt" || true
    fi
    py broker_bench annotate "$dir/$broker-$rate.json" "$before" "$after"
    stop_all
  done
done

# shellcheck disable=SC2086 # BENCH_BROKERS: words, as typed.
py broker_bench table "$dir" $brokers
log "results in $dir"
