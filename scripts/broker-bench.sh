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

rates=${BENCH_RATES:-1000 10000 70000 0}
secs=${BENCH_SECS:-10}
producers=${BENCH_PRODUCERS:-40}
brokers=${BENCH_BROKERS:-tansu mock}
tansu=${STACK_TANSU:-tansu}
dir=${BENCH_DIR:-target/broker-bench/$(date -u +%Y%m%dT%H%M%SZ)}
port=29192
mkdir -p "$dir"
log() { printf '\033[1mbroker-bench:\033[0m %s\n' "$*" >&2; }

command -v "$tansu" >/dev/null || SETUP_QUIET=1 scripts/setup.sh stack
log "building (release)"
cargo build --release -q -p loadgen --example broker_bench --bin carbridge-mockbroker
bin=target/release

pid=
stop_broker() {
  if [ -n "$pid" ]; then
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=
  fi
}
trap stop_broker EXIT

# CPU seconds (user + system) of process $1 so far.
cpu() { awk '{ sub(/^.*\) /, ""); printf "%.2f\n", ($12 + $13) / 100 }' "/proc/$1/stat"; }

start_broker() {
  case $1 in
    tansu)
      "$tansu" broker --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
      pid=$!
      for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
      done
      bootstrap=127.0.0.1:$port
      create=(--create)
      ;;
    mock)
      rm -f "$dir/bootstrap"
      "$bin/carbridge-mockbroker" --topic broker-bench=12 \
        --bootstrap-file "$dir/bootstrap" >"$dir/mock.log" 2>&1 &
      pid=$!
      for _ in $(seq 100); do
        [ -s "$dir/bootstrap" ] && break
        sleep 0.1
      done
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
    before=$(cpu "$pid")
    perf_pid=
    if [ -n "${BENCH_PROFILE:-}" ]; then
      perf record -F 499 -g -p "$pid" -o "$dir/$broker-$rate.perf.data" >/dev/null 2>&1 &
      perf_pid=$!
    fi
    log "$broker at ${rate}/s (0: flat out), $producers producers, ${secs}s"
    "$bin/examples/broker_bench" --kafka-bootstrap "$bootstrap" "${create[@]}" \
      --producers "$producers" --rate "$rate" --secs "$secs" --label "$broker" \
      -X enable.idempotence=false --json "$dir/$broker-$rate.json" | tee -a "$dir/runs.txt"
    after=$(cpu "$pid")
    if [ -n "$perf_pid" ]; then
      kill -INT "$perf_pid" && wait "$perf_pid" || true
      perf report -i "$dir/$broker-$rate.perf.data" --stdio --no-children --sort dso,sym \
        --percent-limit 0.7 -g none 2>/dev/null | grep -v '^#' | grep -v '^$' \
        >"$dir/$broker-$rate.profile.txt" || true
    fi
    python3 - "$dir/$broker-$rate.json" "$before" "$after" <<'EOF'
import json, sys
path, before, after = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
run = json.load(open(path))
run["broker_cpu_s"] = round(after - before, 2)
run["load_after"] = open("/proc/loadavg").read().split()[0]
json.dump(run, open(path, "w"))
EOF
    stop_broker
  done
done

python3 - "$dir" $brokers <<'EOF'
import glob, json, os, sys
dir, brokers = sys.argv[1], sys.argv[2:]
runs = [json.load(open(p)) for p in glob.glob(os.path.join(dir, "*.json"))]
runs.sort(key=lambda r: (brokers.index(r["broker"]), r["rate"] or 10**9))
print("| broker | asked/s | acked/s | lost | ack p50 / p99 / max ms | fetch p50 / p99 / max ms | broker CPU ms per 1,000 | load after |")
print("|---|---|---|---|---|---|---|---|")
for r in runs:
    asked = "flat out" if r["rate"] == 0 else f'{r["rate"]:,}'
    lost = r["sent"] - r["read"]
    cpu = 1000 * r["broker_cpu_s"] / max(r["acked"], 1) * 1000
    print(f'| {r["broker"]} | {asked} | {r["acked_per_sec"]:,.0f} | {lost:,} | '
          f'{r["ack_p50_ms"]:.1f} / {r["ack_p99_ms"]:.1f} / {r["ack_max_ms"]:.0f} | '
          f'{r["fetch_p50_ms"]:.1f} / {r["fetch_p99_ms"]:.1f} / {r["fetch_max_ms"]:.0f} | '
          f'{cpu:.1f} | {r["load_after"]} |')
EOF
log "results in $dir"
