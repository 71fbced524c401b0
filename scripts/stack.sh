#!/usr/bin/env bash
# The main job: builds everything, starts a local stack (a broker, the
# bridge's topics, gateway, router and the water-warning service), runs
# loadgen against it, prints the report and
# tears everything down, also on Ctrl-C. A broker probe runs beside the
# fleet (records produced and consumed through the same broker at the same
# time), and the verdict at the end (`loadgen verdict`) says whether the
# run was healthy and which part of the latency is the broker's; it goes
# into the JSON and HTML reports, at their top, with the stack's setup and
# the gateways' CPU per message and memory per connection.
#
#   scripts/stack.sh                      # 5,000 cars, about a minute
#   scripts/stack.sh --cars 100000 --duration-secs 120
#
# Exit status: the verdict's. 0 HEALTHY (nothing lost; a latency goal may
# be missed), 3 LOST (messages lost while the broker kept up: the bridge's
# fault), 4 OVERLOADED (messages lost, and the broker is what fell behind:
# the run measured the broker; lower the load). Both losses fail the run:
# a message that did not arrive is never a pass. 1 or 2: the stack itself
# failed (a build, a start, a usage error); 130: interrupted.
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
#                    the others took them and whether all came back.
#                    Downlink messages meant for a car while it reconnects
#                    are lost (LOST, exit 3) unless --receipts is given:
#                    then each is answered offline, and not counted lost
#   STACK_DRAIN_RATE closes per second of that drain (default: the
#                    gateway's drain.closes_per_sec, 500)
#   STACK_RESTART_AFTER=S  with STACK_DRAIN_AFTER: S seconds into loadgen's
#                    run, stop the drained gateway (SIGTERM) and start it
#                    again with the same settings (its log in
#                    gateway-N-restarted.log). It takes no cars back by
#                    itself: a churning car returns to the gateway it left
#   STACK_HOLD=1     held delivery: the fleet's downlink asks for receipts,
#                    expires after 10 s, every other message asks the router
#                    to hold it (loadgen --hold 10), and cars come and
#                    go (--churn: a fiftieth of the fleet a second); the
#                    verdict compares how much of each kind reached the cars
#   STACK_GATEWAY_TOML whole tables appended to every gateway's settings
#                    file, "\n" for a line break (e.g. '[shard]\ngather_max_ms = 5')
#   STACK_ROUTERS    router instances in one consumer group (default 1)
#   STACK_KILL_ROUTER_AFTER=S  S seconds into loadgen's run, SIGKILL the
#                    last router (needs STACK_ROUTERS=2 or more); the others
#                    take its partitions after its session times out. The
#                    verdict reads router 0's counters only
#   STACK_RSS_EVERY=S  every S seconds, every process's resident set
#                    (VmRSS) into rss.csv (time,process,pid,rss_kib; loadgen
#                    and its workers included); what happened when (run,
#                    drain, restart, router kill, end) goes to events.txt
#   STACK_PROBE_SECS the broker probe's time, from the start of the measured
#                    window (default: all of it); its consumer polls every
#                    200 µs, about a quarter of a core here, which a long
#                    run need not pay throughout
#   STACK_ADMIN_PORT admin ports from here (default 29100): gateway 0 on it,
#                    router r on +1+r, gateway g > 0 on +10+g; another base
#                    lets two stacks run side by side (scripts/soak.sh)
#   STACK_BROKER     mock (default: librdkafka's in-process mock cluster,
#                    run by carbridge-mockbroker; memory only, 5 MB per
#                    partition, no compaction, never for production) or
#                    tansu (the broker of the correctness tests; slower
#                    here, see BENCHMARKS.md "The brokers of the local stack")
#   STACK_FETCH_WAIT_MS  the router's and gateways' fetch.wait.max.ms
#                    (default 2): both local brokers answer an empty fetch
#                    only when the whole wait is over (Kafka answers as soon
#                    as a record arrives), so each downlink hop costs up to
#                    this much here; the components' own default is 500
#                    (librdkafka's, right for Kafka)
#   STACK_BRIDGE_BIN a directory holding other gateway and router binaries
#                    to run instead of this build's (loadgen and the rest
#                    stay this build's): how scripts/receipts-bench.sh
#                    runs an older version beside this one
#   STACK_KAFKA_PORT, STACK_MQTT_PORT  (defaults 29092, 21883)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

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
routers=${STACK_ROUTERS:-1}
admin_port=${STACK_ADMIN_PORT:-29100}
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

# A fresh machine: install what the main job lacks (skipped when there).
if [ -z "${STACK_TANSU:-}" ] && [ "$broker" = tansu ]; then
  SETUP_QUIET=1 scripts/setup.sh stack
fi
[ "$broker" = mock ] || command -v "$tansu" >/dev/null ||
  { echo "$tansu not found (STACK_TANSU): build it or unset STACK_TANSU" >&2; exit 1; }
log "building ($profile)"
"${build[@]}" 2>&1 | tail -n 3 >&2

# shellcheck disable=SC2317 # called by cleanup (scripts/lib.sh)
stop_all() {
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping the stack"
  stop_pids "${pids[@]}"
}
cleanup_on_exit "logs and reports in $dir"
# shellcheck disable=SC2317 # called by await
ready() { curl -fsS "http://$1/readyz"; }
# What the stack started ("name pid", for the RSS samples) and what
# happened when ("epoch what"); appended from background jobs too.
# With its start time (field 22 of its stat line), so that a sample never
# reads another process that got the pid after this one ended.
started_at() { awk '{ sub(/^.*\) /, ""); print $20 }' "/proc/$1/stat" 2>/dev/null || true; }
register() { echo "$1 $2 $(started_at "$2")" >>"$dir/procs.txt"; }
event() { echo "$(date +%s.%N) $*" >>"$dir/events.txt"; }
rm -f "$dir/procs.txt" "$dir/events.txt"

# Another stack (or anything) on these ports would mix into this run:
# SO_REUSEPORT even lets a second gateway share the MQTT port.
for port in "$kafka_port" "$mqtt_port" "$admin_port" $((admin_port + 1)); do
  if port_open "$port"; then
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
  register broker "$broker_pid"
  await "the mock cluster" test -s "$dir/bootstrap"
  kafka=$(cat "$dir/bootstrap")
  broker_name="librdkafka mock cluster"
  probe_create=()
else
  log "tansu on $kafka ($storage)"
  start_tansu "$kafka" "$dir/tansu.log" "$storage"
  pids+=("$tansu_pid")
  broker_pid=$tansu_pid
  register broker "$broker_pid"
  broker_name="tansu ($storage)"

  log "topics: $((shards * 2)) partitions, $slots slots"
  "$bin/carbridge-topics" create --kafka-bootstrap "$kafka" --partitions $((shards * 2)) --slots "$slots" \
    >"$dir/topics.log" 2>&1 || { cat "$dir/topics.log" >&2; exit 1; }
fi

router_pids=()
for ((r = 0; r < routers; r++)); do
  admin=127.0.0.1:$((admin_port + 1 + r)) out=$dir/router-$r.log
  [ "$r" -eq 0 ] && out=$dir/router.log
  log "router $r (admin $admin)"
  "$bridge_bin/router" --kafka-bootstrap "$kafka" "${props[@]}" --admin-listen "$admin" >"$out" 2>&1 &
  pids+=($!)
  router_pids+=($!)
  register "router-$r" $!
  await "router $r" ready "$admin"
done
router_pid=${router_pids[0]}

tls_args=()
if [ -n "${STACK_TLS:-}" ]; then
  pki=$(pwd)/target/testpki
  log "test PKI in $pki"
  "$bin/carbridge-testpki" "$pki" >"$dir/testpki.log" 2>&1 || { cat "$dir/testpki.log" >&2; exit 1; }
  tls_args=(--tls --tls-dir "$pki")
  [ -n "${STACK_TLS_RESUME:-}" ] && tls_args+=(--tls-resume)
fi

gateway_admin() {
  if [ "$1" -eq 0 ]; then echo "127.0.0.1:$admin_port"; else echo "127.0.0.1:$((admin_port + 10 + $1))"; fi
}
# Gateway $1 in the background, its output in $2, its process $!; its
# settings file (if any) is gateway-$1.toml, written below.
start_gateway() {
  local g=$1 listen=()
  [ -n "${STACK_TLS:-}" ] || listen=(--listen "127.0.0.1:$((mqtt_port + g))")
  [ ! -e "$dir/gateway-$g.toml" ] || listen+=(--config "$dir/gateway-$g.toml")
  # -X enable.idempotence=false: tansu 0.6.0 leaves some of an idempotent
  # producer's records unacknowledged (the gateway's default is on).
  "$bridge_bin/gateway" --kafka-bootstrap "$kafka" -X enable.idempotence=false "${props[@]}" "${listen[@]}" --shards "$shards" \
    --bridge-id "$g" --admin-listen "$(gateway_admin "$g")" >"$2" 2>&1 &
}
targets=()
gateway_pids=()
admins=()
for ((g = 0; g < gateways; g++)); do
  port=$((mqtt_port + g)); admin=$(gateway_admin "$g")
  rm -f "$dir/gateway-$g.toml"
  if [ -n "${STACK_TLS:-}" ]; then
    # Mutual TLS: a car certificate from the test CA whose CN is the client id.
    tls_gateway_toml "127.0.0.1:$port" "$pki" >"$dir/gateway-$g.toml"
  fi
  if [ -n "${STACK_DRAIN_RATE:-}" ]; then
    printf '[drain]\ncloses_per_sec = %s\n' "$STACK_DRAIN_RATE" >>"$dir/gateway-$g.toml"
  fi
  if [ -n "${STACK_GATEWAY_TOML:-}" ]; then
    printf '%b\n' "$STACK_GATEWAY_TOML" >>"$dir/gateway-$g.toml"
  fi
  log "gateway $g on 127.0.0.1:$port ($shards shards${STACK_TLS:+, mutual TLS})"
  start_gateway "$g" "$dir/gateway-$g.log"
  pids+=($!)
  gateway_pids+=($!)
  register "gateway-$g" $!
  admins+=("$admin")
  targets+=(--target "127.0.0.1:$port")
  await "gateway $g" ready "$admin"
done

log "water-warning service"
"$bin/water-warning" --kafka-bootstrap "$kafka" >"$dir/water-warning.log" 2>&1 &
pids+=($!)
register water-warning $!

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

if [ -n "${STACK_BASELINE:-}" ]; then
  log "baseline: loadgen --raw-kafka $* (the same records from one rdkafka producer, no MQTT)"
  "$bin/loadgen" --kafka-bootstrap "$kafka" --raw-kafka "${defaults[@]}" \
    --report-json "$dir/baseline.json" --report-html "$dir/baseline.html" "$@"
fi

# Gateway memory per connection under load: every second, each gateway's
# resident set and open connections; the growth over the idle gateways at
# the sample with the most connections, divided by those connections.
open_connections() {
  { curl -fsS "http://$1/metrics" 2>/dev/null || true; } | awk '/^carbridge_gateway_connections_open/ {s += $2} END {print s + 0}'
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
pids+=("$sampler")

# The broker alone, beside the fleet in its measured window: 100 records/s
# produced and consumed with the gateway's linger and the components' fetch
# wait.
"$bin/examples/kafka_rtt" --kafka-bootstrap "$kafka" --topic stack.probe "${probe_create[@]}" \
  --rate 100 --delay-secs "$warmup" --secs "${STACK_PROBE_SECS:-$duration}" --linger-ms 5 --fetch-wait-ms "$fetch_wait" \
  --quiet --json "$dir/probe.json" >"$dir/probe.log" 2>&1 &
probe=$!
pids+=("$probe")
register probe "$probe"

drain_args=()
hold_args=()
if [[ -n ${STACK_HOLD:-} ]]; then
  churn=$(( ${cars_for_cpu:-5000} / 50 ))
  hold_args=(--receipts --hold 10 --churn "$((churn > 0 ? churn : 1))")
fi
if [ -n "${STACK_DRAIN_AFTER:-}" ]; then
  [ "$gateways" -ge 2 ] || { echo "STACK_DRAIN_AFTER needs STACK_GATEWAYS=2 or more" >&2; exit 2; }
  drain_args=(--reconnect)
  last=${admins[$((gateways - 1))]}
  # Every second: each gateway's accepted and open connections.
  (
    while true; do
      line="$(date +%s.%N)"
      for a in "${admins[@]}"; do
        line+=" $({ curl -fsS "http://$a/metrics" 2>/dev/null || true; } | awk '/^carbridge_gateway_connections_accepted_total/ {a = $2} /^carbridge_gateway_connections_open/ {o = $2} END {print a + 0 ":" o + 0}')"
      done
      echo "$line"
      sleep 1
    done
  ) >"$dir/drain-samples.txt" &
  pids+=($!)
  ( sleep "$STACK_DRAIN_AFTER"; date +%s.%N >"$dir/drain-start.txt"; event "drain gateway-$((gateways - 1))"
    curl -fsS -X POST "http://$last/drain" >"$dir/drain.txt" 2>&1 ) &
  pids+=($!)
  log "draining gateway $((gateways - 1)) ($last) $STACK_DRAIN_AFTER s into the run; cars reconnect"
fi

if [ -n "${STACK_RESTART_AFTER:-}" ]; then
  [ -n "${STACK_DRAIN_AFTER:-}" ] || { echo "STACK_RESTART_AFTER needs STACK_DRAIN_AFTER" >&2; exit 2; }
  drained=$((gateways - 1))
  # The new process is this job's child, not the script's: on the way out
  # the job is stopped, and it stops the gateway it started.
  (
    sleep "$STACK_RESTART_AFTER"
    event "stop gateway-$drained"
    stop_pids "${gateway_pids[$drained]}"
    event "restart gateway-$drained"
    start_gateway "$drained" "$dir/gateway-$drained-restarted.log"
    child=$!
    trap 'stop_pids "$child"; exit 0' TERM
    register "gateway-$drained" "$child"
    await "gateway $drained again" ready "${admins[$drained]}" || event "gateway-$drained not ready after its restart"
    wait "$child"
  ) &
  pids+=($!)
  log "restarting gateway $drained $STACK_RESTART_AFTER s into the run"
fi

if [ -n "${STACK_KILL_ROUTER_AFTER:-}" ]; then
  [ "$routers" -ge 2 ] || { echo "STACK_KILL_ROUTER_AFTER needs STACK_ROUTERS=2 or more" >&2; exit 2; }
  ( sleep "$STACK_KILL_ROUTER_AFTER"; event "kill router-$((routers - 1))"; kill -KILL "${router_pids[-1]}" ) &
  pids+=($!)
  log "killing router $((routers - 1)) (SIGKILL) $STACK_KILL_ROUTER_AFTER s into the run"
fi

if [ -n "${STACK_RSS_EVERY:-}" ]; then
  # Every process of the stack, loadgen and its workers (found as this
  # script's and loadgen's children, since loadgen runs in the foreground);
  # a process that is gone reads 0 and is left out.
  (
    echo "time,process,pid,rss_kib"
    while true; do
      now=$(date +%s)
      {
        cat "$dir/procs.txt"
        for l in $(pgrep -x loadgen -P $$); do
          echo "loadgen $l"
          w=0
          for c in $(pgrep -P "$l"); do echo "loadgen-worker-$w $c"; w=$((w + 1)); done
        done
      } | while read -r name pid start; do
        [ -z "$start" ] || [ "$(started_at "$pid")" = "$start" ] || continue
        kib=$(rss_kib "$pid")
        [ "${kib:-0}" -eq 0 ] || echo "$now,$name,$pid,$kib"
      done
      sleep "$STACK_RSS_EVERY"
    done
  ) >"$dir/rss.csv" &
  rss_sampler=$!
  pids+=("$rss_sampler")
fi

# The gateways' message counters, for CPU per message (with cpu_ms of
# scripts/lib.sh: the processes' own accounting).
gateway_count() {
  # A gateway that is gone counts nothing (and must not end the script).
  for a in "${admins[@]}"; do curl -fsS "http://$a/metrics" 2>/dev/null || true; done |
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
# scripts/py/stack_figures.py turns the samples into the CPU per PUBLISH of
# the measured window.
window_cpu "$dir/gateway-window" "${gateway_pids[@]}"

log "loadgen ${tls_args[*]} ${drain_args[*]} ${hold_args[*]} $*"
event run
"$bin/loadgen" --kafka-bootstrap "$kafka" --target "127.0.0.1:$mqtt_port" "${targets[@]:2}" "${defaults[@]}" \
  "${tls_args[@]}" "${drain_args[@]}" "${hold_args[@]}" --report-json "$dir/report.json" --report-html "$dir/report.html" "$@"
event end
wait "$probe" 2>/dev/null || log "the broker probe failed: see $dir/probe.log"

kill "$sampler" 2>/dev/null || true
[ -z "${rss_sampler:-}" ] || kill "$rss_sampler" 2>/dev/null || true
for i in "${!gateway_pids[@]}"; do
  [ -z "${STACK_RESTART_AFTER:-}" ] || [ "$i" -ne $((gateways - 1)) ] || continue
  kill -0 "${gateway_pids[$i]}" 2>/dev/null || log "gateway $i exited during the run: see $dir/gateway-$i.log"
done
cpu_after=$(cpu_ms "${gateway_pids[@]}")
up=$(($(gateway_count carbridge_gateway_publish_received_total) - up_before))
down=$(($(gateway_count carbridge_gateway_downlink_delivered_total) - down_before))
secs=$(awk -v from="$started" -v to="$(date +%s.%N)" 'BEGIN { printf "%.2f", to - from }')
# The server side's CPU over loadgen's run, for scripts that compare runs.
printf 'gateway_ms=%d router_ms=%d broker_ms=%d secs=%s uplink=%d downlink=%d\n' \
  $((cpu_after - cpu_before)) $(($(cpu_ms "$router_pid") - router_cpu_before)) \
  $(($(cpu_ms "$broker_pid") - broker_cpu_before)) "$secs" \
  "$up" "$down" >"$dir/server-cpu.txt"
# The gateways' CPU per PUBLISH and memory per connection: printed, and
# written with the stack's setup for the report (loadgen verdict --stack).
tls_facts=()
if [ -n "${STACK_TLS:-}" ]; then
  tls_facts=(--tls)
  [ -z "${STACK_TLS_RESUME:-}" ] || tls_facts+=(--tls-resume)
fi
py stack_figures server --cpu-ms $((cpu_after - cpu_before)) --secs "$secs" --uplink "$up" --downlink "$down" \
  --cars "$cars_for_cpu" --window "$dir/gateway-window" --duration "$duration" \
  --memory "$dir/gateway-memory.txt" --idle-kib "$idle_kib" \
  --broker "$broker" --broker-detail "$broker_name" "${tls_facts[@]}" --gateways "$gateways" \
  --shards "$shards" --fetch-wait-ms "$fetch_wait" --profile "$profile" --json "$dir/stack.json" |
  while IFS= read -r line; do log "$line"; done

if [ -n "${STACK_MOSQUITTO:-}" ]; then
  # The same fleet against mosquitto, the uplink received by loadgen's
  # MQTT subscribers instead of read from Kafka.
  command -v mosquitto >/dev/null || { echo "mosquitto not found: run scripts/setup.sh" >&2; exit 1; }
  peer_port=$((mqtt_port + 1000))
  log "mosquitto on 127.0.0.1:$peer_port, same loadgen arguments in peer mode"
  mosquitto -p "$peer_port" >"$dir/mosquitto.log" 2>&1 &
  pids+=($!)
  await "mosquitto" port_open "$peer_port"
  mosquitto_pid=${pids[-1]}
  mq_cpu_before=$(cpu_ms "$mosquitto_pid")
  mq_started=$(date +%s.%N)
  window_cpu "$dir/mosquitto-window" "$mosquitto_pid"
  "$bin/loadgen" --peer --target "127.0.0.1:$peer_port" "${defaults[@]}" --topic 'UL/POS/{shard}' \
    --report-json "$dir/mosquitto.json" --report-html "$dir/mosquitto.html" "$@"
  mq_cpu=$(($(cpu_ms "$mosquitto_pid") - mq_cpu_before))
  mq_secs=$(awk -v from="$mq_started" -v to="$(date +%s.%N)" 'BEGIN { printf "%.2f", to - from }')
  py stack_figures mosquitto --cpu-ms "$mq_cpu" --secs "$mq_secs" --report "$dir/mosquitto.json" \
    --window "$dir/mosquitto-window" --duration "$duration" | while IFS= read -r line; do log "$line"; done
  log "$(py stack_figures ingest "$dir/report.json" "$dir/mosquitto.json")"
fi

if [ -n "${STACK_BASELINE:-}" ]; then
  log "$(py stack_figures baseline "$dir/report.json" "$dir/baseline.json")"
fi

# The gateways' and the router's metrics as the run left them, for the
# verdict: counters, Kafka's acknowledgements, the downlink's hops.
mkdir -p "$dir/metrics"
gateway_metrics=()
for i in "${!admins[@]}"; do
  curl -fsS "http://${admins[$i]}/metrics" >"$dir/metrics/gateway-$i.txt" 2>/dev/null || true
  gateway_metrics+=(--gateway-metrics "$dir/metrics/gateway-$i.txt")
done
curl -fsS "http://127.0.0.1:$((admin_port + 1))/metrics" >"$dir/metrics/router.txt" 2>/dev/null || true
for ((r = 1; r < routers; r++)); do
  curl -fsS "http://127.0.0.1:$((admin_port + 1 + r))/metrics" >"$dir/metrics/router-$r.txt" 2>/dev/null || true
done

log "gateway 0: $(grep -E '^carbridge_gateway_(publish_acked|downlink_delivered)_total' "$dir/metrics/gateway-0.txt" | tr '\n' ' ')"
log "router:  $(grep -E '^carbridge_router_(requests_received|routed_acked)_total' "$dir/metrics/router.txt" | tr '\n' ' ')"
if [ -n "${STACK_DRAIN_AFTER:-}" ] && [ -s "$dir/drain-start.txt" ]; then
  log "$(py drain "$dir/drain-samples.txt" "$(cat "$dir/drain-start.txt")" "$gateways")"
fi

# The verdict: printed, written into report.json and at the top of
# report.html (with stack.json's facts); its exit status is this script's.
echo >&2
verdict=0
"$bin/loadgen" verdict --report-json "$dir/report.json" --report-html "$dir/report.html" \
  --probe "$dir/probe.json" --stack "$dir/stack.json" "${gateway_metrics[@]}" \
  --router-metrics "$dir/metrics/router.txt" >&2 || verdict=$?
log "HTML report: $dir/report.html"
case $verdict in
  0) ;;
  3) log "the verdict is LOST: exit 3" ;;
  4) log "the verdict is OVERLOADED: exit 4" ;;
  *) log "loadgen verdict failed (exit $verdict)" ;;
esac
exit "$verdict"
