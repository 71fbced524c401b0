#!/usr/bin/env bash
# The main job: builds everything, starts a local stack (a broker, the
# bridge's topics, gateway, router and the water-warning service), runs
# loadgen against it, prints the report and
# tears everything down, also on Ctrl-C. A broker probe runs beside the
# fleet (records produced and consumed through the same broker at the same
# time), and the verdict at the end says whether the run was healthy and
# which part of the latency is the broker's.
#
#   scripts/stack.sh                      # 5,000 cars, about a minute
#   scripts/stack.sh --cars 100000 --duration-secs 120
#
# Every argument goes to loadgen (see `loadgen --help`). Environment:
#   STACK_BASELINE=1 first runs loadgen --raw-kafka with the same arguments
#                    (the same records from one rdkafka producer, no MQTT)
#                    and prints the gateway's uplink throughput as a ratio
#   STACK_MOSQUITTO=1 afterwards runs the same loadgen arguments in peer mode
#                    against mosquitto and prints the ingest ratio
#   STACK_DIR        where logs and reports go (default target/stack/<time>)
#   STACK_SHARDS     shards per gateway (default: the number of CPUs)
#   STACK_GATEWAYS   gateway processes (default 1); each holds at most
#                    about 19,000 cars (20,000 open files per process here)
#   STACK_PROFILE    cargo profile, release (default) or dev
#   STACK_TANSU      the tansu binary (default: tansu on PATH)
#   STACK_STORAGE    tansu's storage engine (default memory://tansu/; a tansu
#                    built with --features libsql also takes sqlite://FILE)
#   STACK_KAFKA_PROPS librdkafka properties for the router and gateways,
#                    space-separated KEY=VALUE (e.g. fetch.wait.max.ms=2)
#   STACK_TLS=1      the whole stack over mutual TLS with identity binding:
#                    a test PKI in target/testpki (carbridge-testpki; kept
#                    between runs), TLS listeners that require a car
#                    certificate whose CN is the client id, and loadgen
#                    --tls (one certificate per car, made once)
#   STACK_TLS_RESUME=1 with STACK_TLS: each car's measured connection
#                    resumes a TLS session (loadgen --tls-resume)
#   STACK_DRAIN_AFTER=S  S seconds into loadgen's run, drain the last
#                    gateway (POST /drain) while the cars reconnect to the
#                    others (loadgen --reconnect); the report says how fast
#                    the others took them and whether all came back
#   STACK_DRAIN_RATE closes per second of that drain (default: the
#                    gateway's drain.closes_per_sec, 500)
#   STACK_BROKER     mock (default: librdkafka's in-process mock cluster,
#                    run by carbridge-mockbroker; memory only, 5 MB per
#                    partition, no compaction, never for production) or
#                    tansu (the broker of the correctness tests; slower
#                    here, see BENCHMARKS.md "The brokers of the local stack")
#   STACK_FETCH_WAIT_MS  the router's and gateways' fetch.wait.max.ms
#                    (default 2): both local brokers answer an empty fetch
#                    only when the whole wait is over (Kafka answers as soon
#                    as a record arrives), so each downlink hop costs up to
#                    this much here; 20 is the components' own default
#   STACK_BRIDGE_BIN a directory holding other gateway and router binaries
#                    to run instead of this build's (loadgen and the rest
#                    stay this build's): how scripts/receipts-bench.sh
#                    runs an older version beside this one
#   STACK_KAFKA_PORT, STACK_MQTT_PORT  (defaults 29092, 21883)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

profile=${STACK_PROFILE:-release}
case "$profile" in
  release) build=(cargo build --release --workspace --bins --example kafka_rtt); bin=target/release ;;
  dev) build=(cargo build --workspace --bins --example kafka_rtt); bin=target/debug ;;
  *) echo "STACK_PROFILE must be release or dev" >&2; exit 2 ;;
esac
bridge_bin=${STACK_BRIDGE_BIN:-$bin}
kafka_port=${STACK_KAFKA_PORT:-29092}
mqtt_port=${STACK_MQTT_PORT:-21883}
shards=${STACK_SHARDS:-$(nproc)}
gateways=${STACK_GATEWAYS:-1}
slots=$((gateways * shards))
dir=${STACK_DIR:-target/stack/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
kafka=127.0.0.1:$kafka_port
tansu=${STACK_TANSU:-tansu}
storage=${STACK_STORAGE:-memory://tansu/}
broker=${STACK_BROKER:-mock}
case "$broker" in
  tansu | mock) ;;
  *) echo "STACK_BROKER must be tansu or mock" >&2; exit 2 ;;
esac
fetch_wait=${STACK_FETCH_WAIT_MS:-2}
props=(-X "fetch.wait.max.ms=$fetch_wait")
for p in ${STACK_KAFKA_PROPS:-}; do props+=(-X "$p"); done

log() { printf '\033[1mstack:\033[0m %s\n' "$*" >&2; }

# A fresh machine: install what the main job lacks (skipped when there).
if [ -z "${STACK_TANSU:-}" ] && [ "$broker" = tansu ]; then
  SETUP_QUIET=1 scripts/setup.sh stack
fi
[ "$broker" = mock ] || command -v "$tansu" >/dev/null ||
  { echo "$tansu not found (STACK_TANSU): build it or unset STACK_TANSU" >&2; exit 1; }
log "building ($profile)"
"${build[@]}" 2>&1 | tail -n 3 >&2

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if [ ${#pids[@]} -gt 0 ]; then
    log "stopping the stack"
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
      kill -0 "${pids[@]}" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
  fi
  log "logs and reports in $dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits until $1 (a description) holds, running the rest as the check.
await() {
  local what=$1; shift
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "timed out waiting for $what; see $dir" >&2
  return 1
}
ready() { curl -fsS "http://$1/readyz"; }

# Another stack (or anything) on these ports would mix into this run:
# SO_REUSEPORT even lets a second gateway share the MQTT port.
for port in "$kafka_port" "$mqtt_port" 29100 29101; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "port $port is in use (another stack still running?): stop it first" >&2
    exit 1
  fi
done

probe_create=(--create)
if [ "$broker" = mock ]; then
  # The mock cluster picks its own port and has no CreateTopics: it makes
  # the topics (and the probe's) itself and says where it listens.
  log "librdkafka mock cluster ($((shards * 2)) partitions, $slots slots)"
  "$bin/carbridge-mockbroker" --partitions $((shards * 2)) --slots "$slots" --topic stack.probe=1 \
    --bootstrap-file "$dir/bootstrap" >"$dir/mockbroker.log" 2>&1 &
  pids+=($!)
  broker_pid=$!
  await "the mock cluster" test -s "$dir/bootstrap"
  kafka=$(cat "$dir/bootstrap")
  broker_name="librdkafka mock cluster"
  probe_create=()
else
  log "tansu on $kafka ($storage)"
  "$tansu" broker --listener-url "tcp://$kafka" --advertised-listener-url "tcp://$kafka" \
    --storage-engine "$storage" >"$dir/tansu.log" 2>&1 &
  pids+=($!)
  broker_pid=$!
  await "tansu to answer" bash -c "exec 3<>/dev/tcp/127.0.0.1/$kafka_port"
  broker_name="tansu ($storage)"

  log "topics: $((shards * 2)) partitions, $slots slots"
  "$bin/carbridge-topics" create --kafka-bootstrap "$kafka" --partitions $((shards * 2)) --slots "$slots" \
    >"$dir/topics.log" 2>&1 || { cat "$dir/topics.log" >&2; exit 1; }
fi

log "router"
"$bridge_bin/router" --kafka-bootstrap "$kafka" "${props[@]}" --admin-listen 127.0.0.1:29101 >"$dir/router.log" 2>&1 &
pids+=($!)
router_pid=$!
await "the router" ready 127.0.0.1:29101

tls_args=()
if [ -n "${STACK_TLS:-}" ]; then
  pki=$(pwd)/target/testpki
  log "test PKI in $pki"
  "$bin/carbridge-testpki" "$pki" >"$dir/testpki.log" 2>&1 || { cat "$dir/testpki.log" >&2; exit 1; }
  tls_args=(--tls --tls-dir "$pki")
  [ -n "${STACK_TLS_RESUME:-}" ] && tls_args+=(--tls-resume)
fi

targets=()
gateway_pids=()
admins=()
for ((g = 0; g < gateways; g++)); do
  port=$((mqtt_port + g)); admin=127.0.0.1:$((29110 + g))
  [ "$g" -eq 0 ] && admin=127.0.0.1:29100
  listen=(--listen "127.0.0.1:$port")
  if [ -n "${STACK_TLS:-}" ]; then
    # Mutual TLS: a car certificate from the test CA whose CN is the client id.
    cat >"$dir/gateway-$g.toml" <<EOF
[[listeners]]
address = "127.0.0.1:$port"
client_id = "{identity}"
[listeners.tls]
cert = "$pki/server.crt"
key = "$pki/server.key"
client_auth = "required"
client_ca = "$pki/ca.crt"
ticket_keys = "$pki/tickets"
EOF
    listen=(--config "$dir/gateway-$g.toml")
  fi
  if [ -n "${STACK_DRAIN_RATE:-}" ]; then
    [ "${listen[0]}" = --config ] || { : >"$dir/gateway-$g.toml"; listen+=(--config "$dir/gateway-$g.toml"); }
    printf '[drain]\ncloses_per_sec = %s\n' "$STACK_DRAIN_RATE" >>"$dir/gateway-$g.toml"
  fi
  log "gateway $g on 127.0.0.1:$port ($shards shards${STACK_TLS:+, mutual TLS})"
  # -X enable.idempotence=false: tansu 0.6.0 leaves some of an idempotent
  # producer's records unacknowledged (the gateway's default is on).
  "$bridge_bin/gateway" --kafka-bootstrap "$kafka" -X enable.idempotence=false "${props[@]}" "${listen[@]}" --shards "$shards" \
    --bridge-id "$g" --admin-listen "$admin" >"$dir/gateway-$g.log" 2>&1 &
  pids+=($!)
  gateway_pids+=($!)
  admins+=("$admin")
  targets+=(--target "127.0.0.1:$port")
  await "gateway $g" ready "$admin"
done

log "water-warning service"
"$bin/water-warning" --kafka-bootstrap "$kafka" >"$dir/water-warning.log" 2>&1 &
pids+=($!)

# The fleet goal's rates, every car publishing every 10 s, for as many cars
# as the local brokers carry within the latency goals on 2 cores (5,000;
# BENCHMARKS.md); services send 100 downlink messages a second.
defaults=(--cars 5000 --publish-interval-ms 10000 --downlink-rate 100 --warmup-secs 10 --duration-secs 40)
# The measured window, for the probe (the last value given wins, as in loadgen).
warmup=10 duration=40 cars_for_cpu=5000
all=("${defaults[@]}" "$@")
for ((i = 0; i < ${#all[@]}; i++)); do
  case "${all[$i]}" in
    --warmup-secs) warmup=${all[$((i + 1))]:-$warmup} ;;
    --warmup-secs=*) warmup=${all[$i]#*=} ;;
    --duration-secs) duration=${all[$((i + 1))]:-$duration} ;;
    --duration-secs=*) duration=${all[$i]#*=} ;;
    --cars) cars_for_cpu=${all[$((i + 1))]:-$cars_for_cpu} ;;
    --cars=*) cars_for_cpu=${all[$i]#*=} ;;
  esac
done

# Uplink records per second that reached Kafka in the measured window.
received_rate() {
  python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(t["uplink_received"] for t in r["timeline"] if not t["warmup"]) / r["measured_secs"])' "$1"
}

if [ -n "${STACK_BASELINE:-}" ]; then
  log "baseline: loadgen --raw-kafka $* (the same records from one rdkafka producer, no MQTT)"
  "$bin/loadgen" --kafka-bootstrap "$kafka" --raw-kafka "${defaults[@]}" \
    --report-json "$dir/baseline.json" --report-html "$dir/baseline.html" "$@"
fi

# Gateway memory per connection under load: every second, each gateway's
# resident set and open connections; the growth over the idle gateways at
# the sample with the most connections, divided by those connections.
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
open_connections() {
  curl -fsS "http://$1/metrics" 2>/dev/null | awk '/^carbridge_gateway_connections_open/ {s += $2} END {print s + 0}'
}
idle_kib=0
for p in "${gateway_pids[@]}"; do idle_kib=$((idle_kib + $(rss_kib "$p"))); done
(
  while true; do
    kib=0; conns=0
    for i in "${!gateway_pids[@]}"; do
      kib=$((kib + $(rss_kib "${gateway_pids[$i]}")))
      conns=$((conns + $(open_connections "${admins[$i]}")))
    done
    echo "$(date +%s) $conns $kib"
    sleep 1
  done
) >"$dir/gateway-memory.txt" &
sampler=$!
pids+=($sampler)

# The broker alone, beside the fleet in its measured window: 100 records/s
# produced and consumed with the gateway's linger and the components' fetch
# wait.
"$bin/examples/kafka_rtt" --kafka-bootstrap "$kafka" --topic stack.probe "${probe_create[@]}" \
  --rate 100 --delay-secs "$warmup" --secs "$duration" --linger-ms 5 --fetch-wait-ms "$fetch_wait" \
  --quiet --json "$dir/probe.json" >"$dir/probe.log" 2>&1 &
probe=$!
pids+=($probe)

drain_args=()
if [ -n "${STACK_DRAIN_AFTER:-}" ]; then
  [ "$gateways" -ge 2 ] || { echo "STACK_DRAIN_AFTER needs STACK_GATEWAYS=2 or more" >&2; exit 2; }
  drain_args=(--reconnect)
  last=${admins[$((gateways - 1))]}
  # Every second: each gateway's accepted and open connections.
  (
    while true; do
      line="$(date +%s.%N)"
      for a in "${admins[@]}"; do
        line+=" $(curl -fsS "http://$a/metrics" 2>/dev/null | awk '/^carbridge_gateway_connections_accepted_total/ {a = $2} /^carbridge_gateway_connections_open/ {o = $2} END {print a + 0 ":" o + 0}')"
      done
      echo "$line"
      sleep 1
    done
  ) >"$dir/drain-samples.txt" &
  pids+=($!)
  ( sleep "$STACK_DRAIN_AFTER"; date +%s.%N >"$dir/drain-start.txt"
    curl -fsS -X POST "http://$last/drain" >"$dir/drain.txt" 2>&1 ) &
  pids+=($!)
  log "draining gateway $((gateways - 1)) ($last) $STACK_DRAIN_AFTER s into the run; cars reconnect"
fi

# CPU time (user + system, ms) of processes $@ so far, from their own
# accounting; and the gateways' message counters, for CPU per message.
cpu_ms() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{ sub(/^.*\) /, ""); print ($12 + $13) * 10 }' "/proc/$p/stat"))); done; echo "$t"; }
gateway_count() {
  for a in "${admins[@]}"; do curl -fsS "http://$a/metrics" 2>/dev/null; done |
    awk -v name="$1" '$1 == name {n += $2} END {printf "%d\n", n}'
}
cpu_before=$(cpu_ms "${gateway_pids[@]}")
router_cpu_before=$(cpu_ms "$router_pid")
broker_cpu_before=$(cpu_ms "$broker_pid")
up_before=$(gateway_count carbridge_gateway_publish_received_total)
down_before=$(gateway_count carbridge_gateway_downlink_delivered_total)
started=$(date +%s.%N)

# The same CPU figures over loadgen's measured window alone (after its
# warm-up, when the fleet has connected), so that a per-PUBLISH cost at a
# fleet's rate leaves the connect storm out. A timed sample: loadgen's
# window is timed too.
window_cpu() {
  local out=$1; shift
  ( sleep "$warmup"; echo "$(cpu_ms "$@") $(gateway_count carbridge_gateway_publish_received_total)" >"$out.start"
    sleep "$duration"; echo "$(cpu_ms "$@") $(gateway_count carbridge_gateway_publish_received_total)" >"$out.end" ) 2>/dev/null &
  pids+=($!)
}
# Prints the CPU and the µs per PUBLISH of the measured window from the
# samples in $1.start and $1.end; $2 counts the PUBLISH when the samples'
# own count does not (mosquitto: from its report).
window_line() {
  [ -s "$1.start" ] && [ -s "$1.end" ] || return 0
  python3 - "$1" "$duration" "${2:-}" <<'EOF'
import sys
path, secs, count = sys.argv[1], float(sys.argv[2]), sys.argv[3]
(ms0, n0), (ms1, n1) = (map(int, open(f"{path}.{e}").read().split()) for e in ("start", "end"))
n = int(count) if count else n1 - n0
ms = ms1 - ms0
per = f"{ms * 1000 / n:.1f} µs per PUBLISH" if n else "no PUBLISH"
print(f"{ms / 1000:.2f} s over the {secs:.0f} s measured window ({ms / 10 / secs:.1f} % of one core): "
      f"{per} ({n:,}; the connect storm of the warm-up left out)")
EOF
}
window_cpu "$dir/gateway-window" "${gateway_pids[@]}"

log "loadgen ${tls_args[*]} ${drain_args[*]} $*"
"$bin/loadgen" --kafka-bootstrap "$kafka" --target "127.0.0.1:$mqtt_port" "${targets[@]:2}" "${defaults[@]}" \
  "${tls_args[@]}" "${drain_args[@]}" --report-json "$dir/report.json" --report-html "$dir/report.html" "$@"
wait "$probe" 2>/dev/null || log "the broker probe failed: see $dir/probe.log"

kill "$sampler" 2>/dev/null || true
cpu_after=$(cpu_ms "${gateway_pids[@]}")
up=$(($(gateway_count carbridge_gateway_publish_received_total) - up_before))
down=$(($(gateway_count carbridge_gateway_downlink_delivered_total) - down_before))
# The server side's CPU over loadgen's run, for scripts that compare runs.
printf 'gateway_ms=%d router_ms=%d broker_ms=%d secs=%s uplink=%d downlink=%d\n' \
  $((cpu_after - cpu_before)) $(($(cpu_ms "$router_pid") - router_cpu_before)) \
  $(($(cpu_ms "$broker_pid") - broker_cpu_before)) "$(python3 -c "import time; print(round(time.time() - $started, 2))")" \
  "$up" "$down" >"$dir/server-cpu.txt"
log "$(python3 -c "
import time
ms, up, down, secs = $cpu_after - $cpu_before, $up, $down, time.time() - $started
per = f'{ms * 1000 / up:.1f} µs per uplink PUBLISH' if up else 'no uplink'
print(f'gateway CPU (user + system, all gateways): {ms / 1000:.2f} s over {secs:.0f} s of loadgen '
      f'({ms / 10 / secs:.1f} % of one core): {per} ({up:,} PUBLISH, {down:,} downlink deliveries, '
      f'{$cars_for_cpu:,} cars)')
")"
line=$(window_line "$dir/gateway-window")
[ -n "$line" ] && log "gateway CPU in the measured window: $line"
log "$(awk -v idle="$idle_kib" -v n="${#gateway_pids[@]}" '$2 > best {best = $2; kib = $3}
  END {
    if (best > 0) printf "gateway memory: %d connections at most, resident %.1f MiB over %d idle gateway(s) (%.1f MiB): %d bytes per connection", best, (kib - idle) / 1024, n, idle / 1024, (kib - idle) * 1024 / best
    else print "gateway memory: no connections seen"
  }' "$dir/gateway-memory.txt")"

if [ -n "${STACK_MOSQUITTO:-}" ]; then
  # The same fleet against mosquitto, the uplink received by loadgen's
  # MQTT subscribers instead of read from Kafka.
  command -v mosquitto >/dev/null || { echo "mosquitto not found: run scripts/setup.sh" >&2; exit 1; }
  peer_port=$((mqtt_port + 1000))
  log "mosquitto on 127.0.0.1:$peer_port, same loadgen arguments in peer mode"
  mosquitto -p "$peer_port" >"$dir/mosquitto.log" 2>&1 &
  pids+=($!)
  await "mosquitto" bash -c "exec 3<>/dev/tcp/127.0.0.1/$peer_port"
  mosquitto_pid=${pids[-1]}
  mq_cpu_before=$(cpu_ms "$mosquitto_pid")
  mq_started=$(date +%s.%N)
  window_cpu "$dir/mosquitto-window" "$mosquitto_pid"
  "$bin/loadgen" --peer --target "127.0.0.1:$peer_port" "${defaults[@]}" --topic 'UL/POS/{shard}' \
    --report-json "$dir/mosquitto.json" --report-html "$dir/mosquitto.html" "$@"
  mq_cpu=$(($(cpu_ms "$mosquitto_pid") - mq_cpu_before))
  log "$(python3 -c "
import json, time
r = json.load(open('$dir/mosquitto.json'))
n, ms, secs = sum(t['uplink_received'] for t in r['timeline']), $mq_cpu, time.time() - $mq_started
print(f'mosquitto CPU (user + system): {ms / 1000:.2f} s over {secs:.0f} s ({ms / 10 / secs:.1f} % of one core): '
      + (f'{ms * 1000 / n:.1f} µs per PUBLISH delivered to its subscribers ({n:,}, warm-up included)' if n else 'nothing delivered'))
")"
  mq_window=$(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(sum(t["uplink_received"] for t in r["timeline"] if not t["warmup"]))' "$dir/mosquitto.json")
  line=$(window_line "$dir/mosquitto-window" "$mq_window")
  [ -n "$line" ] && log "mosquitto CPU in the measured window: $line"
  gw=$(received_rate "$dir/report.json")
  mq=$(received_rate "$dir/mosquitto.json")
  log "uplink ingest: gateway $gw/s into Kafka, mosquitto $mq/s to its subscribers, ratio $(python3 -c "print(round($gw / $mq, 3) if $mq else 'n/a')")"
fi

if [ -n "${STACK_BASELINE:-}" ]; then
  raw=$(received_rate "$dir/baseline.json")
  gw=$(received_rate "$dir/report.json")
  log "uplink into Kafka: gateway $gw/s, raw producer $raw/s, ratio $(python3 -c "print(round($gw / $raw, 3) if $raw else 'n/a')")"
fi

# Kafka's acknowledgement of the gateways' uplink records (whole run, all
# gateways): the gateway's share of the uplink, without the consumer side.
acks=$(for a in "${admins[@]}"; do curl -fsS "http://$a/metrics" 2>/dev/null; done | python3 -c '
import sys, collections
buckets = collections.Counter()
for line in sys.stdin:
    if line.startswith("carbridge_gateway_kafka_ack_seconds_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        buckets[float("inf") if le == "+Inf" else float(le)] += float(line.split()[-1])
bounds = sorted(buckets)
total = buckets[bounds[-1]] if bounds else 0
def q(p):
    for b in bounds:
        if buckets[b] >= p * total:
            return "%g ms" % (b * 1000) if b != float("inf") else "over 30 s"
if total:
    print("Kafka acknowledged %d gateway records: p50 <= %s, p99 <= %s (histogram bounds)" % (total, q(0.5), q(0.99)))
')
[ -n "$acks" ] && log "$acks"

log "gateway 0: $(curl -fsS 127.0.0.1:29100/metrics | grep -E '^carbridge_gateway_(publish_acked|downlink_delivered)_total' | tr '\n' ' ')"
log "router:  $(curl -fsS 127.0.0.1:29101/metrics | grep -E '^carbridge_router_(requests_received|routed_acked)_total' | tr '\n' ' ')"
if [ -n "${STACK_DRAIN_AFTER:-}" ] && [ -s "$dir/drain-start.txt" ]; then
  log "$(python3 - "$dir/drain-samples.txt" "$(cat "$dir/drain-start.txt")" "$gateways" <<'EOF'
import sys
samples, start, gateways = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
rows = []
for line in open(samples):
    t, *cells = line.split()
    rows.append((float(t), [tuple(int(float(x)) for x in c.split(":")) for c in cells]))
before = [r for r in rows if r[0] <= start]
after = [r for r in rows if r[0] > start]
if not before or len(after) < 2:
    print("drain: too few samples")
    sys.exit()
drained = gateways - 1
peak_open = max(cells[drained][1] for _, cells in before + after[:1])
empty = next((t for t, cells in after if cells[drained][1] == 0), None)
rates = []
for (t0, c0), (t1, c1) in zip(after, after[1:]):
    accepted = sum(c1[g][0] - c0[g][0] for g in range(drained))
    rates.append(accepted / (t1 - t0))
others_open = max(sum(cells[g][1] for g in range(drained)) for _, cells in after)
took = f"{empty - start:.1f} s" if empty else "not empty by the end"
print(f"drain: gateway {drained} went from {peak_open} connections to 0 in {took}; "
      f"the others accepted at most {max(rates):.0f} connections/s meanwhile "
      f"and held {others_open} at most")
EOF
)"
fi

gateway_metrics=()
for a in "${admins[@]}"; do gateway_metrics+=(--gateway-metrics "http://$a/metrics"); done
echo >&2
python3 scripts/verdict.py "$dir/report.json" "$dir/probe.json" --broker "$broker_name" \
  "${gateway_metrics[@]}" --router-metrics http://127.0.0.1:29101/metrics >&2 || true
log "HTML report: $dir/report.html"
