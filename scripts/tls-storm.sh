#!/usr/bin/env bash
# A TLS reconnect storm (issue 24): STORM_CARS mutual-TLS cars leave one
# gateway (A) at once for another (B) that reads the same session-ticket
# keys, and resume their TLS sessions there; then the same storm against
# mosquitto. For each storm: the time until every car is back, the
# server's CPU per reconnect, full handshakes against resumed ones, and
# the uplink p99 of a control fleet that was on B all along and took no
# part in the storm (B's accept limits at work), in a quiet window and in
# one that holds the storm.
#
#   scripts/tls-storm.sh                        # 18,000 cars; 10 minutes or more
#   STORM_CARS=300 CONTROL_CARS=100 CONTROL_SECS=10 scripts/tls-storm.sh
#   STORM_ONLY=gateway STORM_PHASES="resumed full" scripts/tls-storm.sh
#
# A gateway phase ("resumed" or "full"):
#   1. gateway A with a mutual-TLS listener on port P, ticket keys from a
#      file K, and the storm fleet on it;
#   2. gateway B, started once every storm car is on A, with two
#      mutual-TLS listeners: P as well (every shard of both gateways binds
#      it with SO_REUSEPORT) and Q. "resumed": B reads K too; "full": B
#      has a file of its own, so no ticket A issued decrypts on B and every
#      car does a full handshake. There is no way to make half a fleet's
#      tickets fail, so full against resumed is two phases, in the order
#      of STORM_PHASES (ABBA by default: the machine's load drifts);
#   3. the control fleet, CONTROL_CARS cars on B's Q (one loadgen run):
#      CONTROL_SECS measured, quiet (B's CPU per second is taken in it);
#      then a second run, 1 s into whose measured window A is drained:
#      POST /drain on A's admin port with the admin token, at
#      STORM_DRAIN_RATE closes a second. A closes its listeners and then
#      its cars; each reconnects (loadgen's --reconnect, after 0.1-1 s) to
#      P, now B's alone, offering the ticket A gave it;
#   4. from the drain until B's carbridge_gateway_connections_open (a TLS
#      connection counts once its handshake is done) reaches what it held
#      plus A's cars, polled about every 0.2 s (B's and A's samples in
#      storm-samples.txt): that time, and when A was empty; B's CPU time
#      (utime + stime, /proc) over it per car that came back, also less
#      B's quiet rate times the same time (the control fleet's share);
#      carbridge_gateway_tls_handshakes_total by result (full, resumed,
#      the rest failed) and carbridge_gateway_limited_total{limit=
#      "accept_rate"} on B; the control fleet's uplink p99 over each
#      window, end to end (through the broker and loadgen's consumer) and
#      the bridge's part alone (the car's send to the gateway's hand-over
#      to its producer, from the Kafka record's timestamp: what B's accept
#      limits are there to keep), and its worst second (end to end).
#
# A drain, not a restart: a gateway restarted in place comes back empty,
# with no cars on it that were not part of the storm. The drain's own
# pace (drain.closes_per_sec, 500 a second by default) would let 18,000
# cars out over 36 s, a trickle rather than a storm: STORM_DRAIN_RATE is
# 20,000 by default, so that A fires every close at once (each shard in
# 10 ms batches); a car's connection on A ends when the car closes its
# end, and the cars' own 0.1-1 s backoff spreads their return (with 300
# cars, A was empty 1.2 s after the drain and all were on B after 2.2 s).
#
# Resolution: the time is that of the first sample at the count, the
# samples about 0.2 s apart (more on a busy machine: one gap of 1.6 s was
# seen); /proc counts CPU in 10 ms ticks, coarse for a small storm.
#
# The storm fleet is loadgen's worker processes, started directly
# (`loadgen worker --plan JSON`, as loadgen starts them), not a loadgen
# run: loadgen numbers every fleet's cars from 0 and has no option to
# start elsewhere, so two loadgen fleets share client ids and on B each
# storm car would take over the control car of the same id. A worker's
# plan names its first car: the storm cars are CONTROL_CARS onwards. This
# leans on loadgen's internal plan (loadgen/src/worker.rs, `Plan`); a
# `--first-car` option for loadgen would end that. The storm cars publish
# on ST/POS, which the gateways map to a topic of its own (cs.storm), so
# that the control run reads only its own cars' records; the storm cars'
# own latency is not measured.
#
# The mosquitto phase (last): mosquitto 2.0 with the same certificates and
# settings as scripts/tls-bench.sh, STORM_CARS cars on it, stopped
# (SIGTERM) and started again on the same port with the same settings.
# Measured from the stop until its new log holds STORM_CARS distinct
# clients' "New client connected" (after their CONNACK, where the gateway
# counts a connection one round trip earlier); its CPU is the new
# process's, all of it, per car. Not symmetric: mosquitto has no drain and
# its port cannot be shared, so it is a restart in place; no resumption
# (mosquitto 2.0 has no setting for its ticket keys, and OpenSSL's are the
# process's own, so a restarted mosquitto decrypts no ticket: every
# reconnect is a full handshake, to be set against the gateway's "full");
# no control fleet (a restart takes every car on it).
#
# Environment:
#   STORM_CARS       cars in the storm (default 18000)
#   CONTROL_CARS     cars of the control fleet (default 1500, not 2000: B
#                    holds both fleets, one open file per car, and a process
#                    may have 20,000 here; the gateway keeps 256 of them
#                    spare and warns at start that it then takes about
#                    19,744 connections; its own files (Kafka's sockets,
#                    io_uring rings, listeners, log) were 35 with 2 shards.
#                    The script refuses STORM_CARS + CONTROL_CARS + 300
#                    above the limit)
#   STORM_BROKER     tansu (default, as scripts/tls-bench.sh) or mock
#                    (librdkafka's mock cluster, carbridge-mockbroker)
#   STORM_ONLY       gateway or mosquitto (default: both)
#   STORM_PHASES     the gateway phases in order (default "resumed full
#                    full resumed")
#   STORM_SHARDS     shards of each gateway (default: the number of CPUs)
#   STORM_DRAIN_RATE A's drain.closes_per_sec (default 20000)
#   STORM_CONNECT_RATE  the storm fleet's first connects, cars per second
#                    (default 2000)
#   STORM_PUBLISH_MS each storm car publishes every so many ms (default
#                    10000, the fleet goal's)
#   STORM_TIMEOUT    seconds a storm may take before it counts as not all
#                    back (default 120)
#   STORM_GATEWAY    another gateway binary (default target/release/gateway)
#   STORM_GATEWAY_TOML  whole tables added to both gateways' settings, "\n"
#                    for a line break (e.g. '[limits]\naccept_rate_per_shard
#                    = 500'); not [drain], which STORM_DRAIN_RATE sets
#   STORM_BUILD=1    cargo build --release first (by default the binaries
#                    in target/release are used as they are)
#   CONTROL_SECS     each control window, seconds (default 30)
#   CONTROL_PUBLISH_MS  each control car publishes every so many ms
#                    (default 1000: enough messages for a p99 per window)
#   STORM_DIR        where it all goes (default target/tls-storm/<time>)
#
# Ports: MQTT 27883 (P), 27884 (Q), 27885 (mosquitto); admin 27100 (A),
# 27101 (B); tansu 27092: apart from the other scripts'.
#
# Results: STORM_DIR/summary.txt (printed at the end), results.jsonl, and
# a directory per phase: every process's log and settings, B's metrics
# before and after the storm, the storm's samples (time, B open, A open),
# the storm workers' ticks, the control runs' reports.
#
# Exit status: 0; 3 when some storm was not all back within STORM_TIMEOUT
# (the figures are printed all the same); 1 or 2 when it could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
case "${1:-}" in
  "") ;;
  -h | --help) usage; exit 0 ;;
  *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
esac

storm_cars=${STORM_CARS:-18000}
control_cars=${CONTROL_CARS:-1500}
broker=${STORM_BROKER:-tansu}
only=${STORM_ONLY:-}
phases=${STORM_PHASES:-resumed full full resumed}
shards=${STORM_SHARDS:-$(nproc)}
drain_rate=${STORM_DRAIN_RATE:-20000}
connect_rate=${STORM_CONNECT_RATE:-2000}
storm_publish_ms=${STORM_PUBLISH_MS:-10000}
storm_timeout=${STORM_TIMEOUT:-120}
control_secs=${CONTROL_SECS:-30}
control_publish_ms=${CONTROL_PUBLISH_MS:-1000}
control_warmup=5
for knob in storm_cars control_cars shards drain_rate connect_rate storm_publish_ms storm_timeout \
  control_secs control_publish_ms; do
  [[ ${!knob} =~ ^[0-9]+$ && ${!knob} -gt 0 ]] || { echo "${knob^^}: a whole number above 0" >&2; exit 2; }
done
[ "$control_secs" -ge 5 ] || { echo "CONTROL_SECS: at least 5" >&2; exit 2; }
case "$broker" in tansu | mock) ;; *) echo "STORM_BROKER must be tansu or mock" >&2; exit 2 ;; esac
case "$only" in "" | gateway | mosquitto) ;; *) echo "STORM_ONLY must be gateway or mosquitto" >&2; exit 2 ;; esac
for kind in $phases; do
  case "$kind" in resumed | full) ;; *) echo "STORM_PHASES: resumed or full, not $kind" >&2; exit 2 ;; esac
done
gateway_phases=$phases mosquitto_phase=1
[ "$only" != mosquitto ] || gateway_phases=""
[ "$only" != gateway ] || mosquitto_phase=""
[ -n "$gateway_phases$mosquitto_phase" ] || { echo "STORM_PHASES is empty: nothing to run" >&2; exit 2; }

# B holds both fleets, one open file per car.
files=$(ulimit -n)
if [ "$files" != unlimited ] && [ $((storm_cars + control_cars + 300)) -gt "$files" ]; then
  echo "STORM_CARS + CONTROL_CARS = $((storm_cars + control_cars)): gateway B would hold that many" \
    "connections and its own files, and a process may have $files open files here: fewer cars" >&2
  exit 2
fi

bin=target/release
gateway_bin=${STORM_GATEWAY:-$bin/gateway}
if [ -n "${STORM_BUILD:-}" ]; then
  log "building (release)"
  cargo build --release -p gateway -p pki -p loadgen --bins 2>&1 | tail -n 1 >&2
  cargo build --release -p loadgen --example tls_connect 2>&1 | tail -n 1 >&2
fi
for tool in "$gateway_bin" "$bin/loadgen" "$bin/carbridge-testpki" "$bin/carbridge-topics" \
  "$bin/carbridge-mockbroker" "$bin/examples/tls_connect"; do
  [ -x "$tool" ] || { echo "$tool is missing: build it (cargo build --release --workspace --bins --examples) or set STORM_BUILD=1" >&2; exit 1; }
done
[ -z "$mosquitto_phase" ] || command -v mosquitto >/dev/null || { echo "mosquitto not found: run scripts/setup.sh" >&2; exit 1; }
[ -z "$gateway_phases" ] || [ "$broker" != tansu ] || command -v tansu >/dev/null ||
  { echo "tansu not found: run scripts/setup.sh, or STORM_BROKER=mock" >&2; exit 1; }

kafka_port=27092 storm_port=27883 control_port=27884 mosquitto_port=27885
admin_a=127.0.0.1:27100 admin_b=127.0.0.1:27101
for port in "$kafka_port" "$storm_port" "$control_port" "$mosquitto_port" "${admin_a##*:}" "${admin_b##*:}"; do
  if port_open "$port"; then echo "port $port is in use (another storm still running?): stop it first" >&2; exit 1; fi
done

dir=${STORM_DIR:-target/tls-storm/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pki=$(pwd)/target/testpki
cleanup_on_exit "logs in $dir"

now_us() { echo "${EPOCHREALTIME//[!0-9]/}"; }
sleep_until_us() {
  local left=$(($1 - $(now_us)))
  [ "$left" -le 0 ] || sleep "$((left / 1000000)).$(printf '%06d' $((left % 1000000)))"
}
# shellcheck disable=SC2317 # called by await
ready() { curl -fsS --max-time 2 "http://$1/readyz"; }
# shellcheck disable=SC2317 # called by await_secs
gone() { ! kill -0 "$1" 2>/dev/null; }
# shellcheck disable=SC2317 # called by await_secs
open_at_least() { [ "$(scrape "$1" | metric carbridge_gateway_connections_open)" -ge "$2" ]; }
# Clients that connected since a mosquitto started, by its log.
connected_in_log() {
  { grep -o 'New client connected from .* as [^ ]*' "$1" 2>/dev/null || true; } | awk '{ print $NF }' | sort -u | wc -l
}
# shellcheck disable=SC2317 # called by await_secs
log_at_least() { [ "$(connected_in_log "$1")" -ge "$2" ]; }
# The storm cars connected now, by their workers' latest ticks (a second
# old at most).
car_side() {
  local file count sum=0
  for file in "$1"/storm-worker-*.ticks; do
    [ -s "$file" ] || continue
    count=$(tail -n 1 "$file" | grep -o '"connected_now":[0-9]*' | cut -d: -f2) || count=0
    sum=$((sum + ${count:-0}))
  done
  echo "$sum"
}
fd_limit() { awk '/^Max open files/ { print $4 }' "/proc/$1/limits" 2>/dev/null || echo "?"; }
fd_count() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l; }
secret() { od -An -vtx1 -N"$1" /dev/urandom | tr -d ' \n'; echo; }

"$bin/carbridge-testpki" "$pki" >"$dir/testpki.log" 2>&1 || { cat "$dir/testpki.log" >&2; exit 1; }
# Certificates for both fleets (kept in target/testpki for later runs):
# tls_connect makes the missing ones, then fails its connects to a port
# nothing listens on yet.
last_car=$(printf 'CBLG%013d' $((control_cars + storm_cars - 1)))
if [ ! -e "$pki/cars/$last_car.crt" ]; then
  log "making certificates for cars 0-$((control_cars + storm_cars - 1)) in $pki/cars (once)"
  timeout 900 "$bin/examples/tls_connect" --target "127.0.0.1:$storm_port" --first-car 0 \
    --cars $((control_cars + storm_cars)) --tls-dir "$pki" --hold-secs 0 >"$dir/certificates.log" 2>&1 || true
  [ -e "$pki/cars/$last_car.crt" ] || { echo "the car certificates were not made: see $dir/certificates.log" >&2; exit 1; }
fi
(umask 077; secret 32 >"$dir/tickets-shared"; secret 32 >"$dir/tickets-b-own"; secret 16 >"$dir/admin-token")
token=$(cat "$dir/admin-token")

kafka_props=()
if [ -n "$gateway_phases" ]; then
  if [ "$broker" = tansu ]; then
    kafka=127.0.0.1:$kafka_port
    log "tansu on $kafka"
    start_tansu "$kafka" "$dir/tansu.log"
    pids+=("$tansu_pid")
    for topic in cs.uplink cs.storm; do
      "$bin/carbridge-topics" create --kafka-bootstrap "$kafka" --partitions $((2 * shards)) --slots $((2 * shards)) \
        --uplink-topic "$topic" >>"$dir/topics.log" 2>&1 || { cat "$dir/topics.log" >&2; exit 1; }
    done
    # tansu 0.6.0 leaves some of an idempotent producer's records
    # unacknowledged (scripts/stack.sh).
    kafka_props=(-X enable.idempotence=false)
  else
    log "librdkafka mock cluster"
    start_mockbroker "$bin/carbridge-mockbroker" "$dir/bootstrap" "$dir/mockbroker.log" \
      --partitions $((2 * shards)) --slots $((2 * shards)) --topic "cs.storm=$((2 * shards))"
    pids+=("$mock_pid")
    kafka=$mock_bootstrap
  fi
fi

# A gateway's settings: the uplink mapping (and ST/ to cs.storm), one
# mutual-TLS listener per address with the ticket keys of file $3, the
# drain's pace.
gateway_toml() {
  local file=$1 admin=$2 keys=$3 extra="" address
  shift 3
  for address; do extra+="$(tls_gateway_toml "$address" "$pki" "$keys")"$'\n'; done
  extra+=$'[[mapping]]\nmqtt = "^ST/.+"\nkafka = "cs.storm"\n'
  extra+=$'[drain]\ncloses_per_sec = '"$drain_rate"$'\n'
  [ -z "${STORM_GATEWAY_TOML:-}" ] || extra+="$(printf '%b' "$STORM_GATEWAY_TOML")"$'\n'
  uplink_gateway_toml "$file" "$kafka" "$admin" "$extra"
}
# Gateway with settings $1 and bridge id $2, its output in $3; gateway_pid.
start_gateway() {
  "$gateway_bin" --config "$1" --shards "$shards" --bridge-id "$2" --no-downlink \
    --admin-token-file "$dir/admin-token" "${kafka_props[@]}" >"$3" 2>&1 &
  gateway_pid=$!
  pids+=("$gateway_pid")
}

# The storm fleet's workers, cars CONTROL_CARS onwards (see the top):
# into $1/storm-worker-N.ticks, to target $2, subscribing to $3, from
# 127.$4.0.x (one address per 20,000 car numbers, as loadgen does);
# storm_pids.
start_storm() {
  local out=$1 target=$2 subscribe=$3 net=$4
  local per workers k w first next sources="" start_us plan
  # As loadgen splits a fleet: over three workers, at most 15,000 cars each.
  per=$(((storm_cars + 2) / 3))
  [ "$per" -le 15000 ] || per=15000
  workers=$(((storm_cars + per - 1) / per))
  for ((k = 0; k * 20000 < control_cars + storm_cars; k++)); do
    sources+="${sources:+,}\"127.$net.0.$((k + 1))\""
  done
  start_us=$(($(now_us) + 500000))
  storm_pids=()
  for ((w = 0; w < workers; w++)); do
    first=$((control_cars + w * storm_cars / workers))
    next=$((control_cars + (w + 1) * storm_cars / workers))
    # Publishing ends an hour on: the phase stops the workers (SIGTERM)
    # long before.
    plan=$(printf '{"first_car":%d,"cars":%d,"targets":["%s"],"sources":[%s],"cars_per_source":20000,' \
      "$first" $((next - first)) "$target" "$sources")
    plan+=$(printf '"connect_rate":%d,"publish_interval_ms":%d,"payload_size":64,"topic":"ST/POS",' \
      $(((connect_rate + workers - 1) / workers)) "$storm_publish_ms")
    plan+=$(printf '"shards":1,"subscribe":"%s","start_us":%d,"end_us":%d,' \
      "$subscribe" "$start_us" $((start_us + 3600000000)))
    plan+=$(printf '"tls":{"dir":"%s","server_name":"localhost","resume":false},' "$pki")
    plan+='"reconnect":true,"churn_period_secs":null,"link":null}'
    "$bin/loadgen" worker --plan "$plan" >"$out/storm-worker-$w.ticks" 2>"$out/storm-worker-$w.log" &
    pids+=($!)
    storm_pids+=($!)
  done
}
connect_bound=$((60 + storm_cars / 100))
# Phase N's storm cars connect from 127.(251 + N mod 5).0.x: never
# loadgen's own choice (1-250, the control fleet's), and never the last
# phase's, whose connections may linger in TIME_WAIT.
storm_net() { echo $((251 + ($1 - 1) % 5)); }

# One run of the control fleet on B's Q into $1.json (and .html, .log), in
# the background: control_pid, control_launch (µs). Its measured window
# begins about 0.5 s + the warm-up after the launch (loadgen's schedule).
start_control() {
  control_launch=$(now_us)
  "$bin/loadgen" --kafka-bootstrap "$kafka" --target "127.0.0.1:$control_port" --cars "$control_cars" \
    --tls --tls-dir "$pki" --publish-interval-ms "$control_publish_ms" --downlink-rate 0 --no-subscribe \
    --warmup-secs "$control_warmup" --duration-secs "$control_secs" --quiet --recount \
    --report-json "$1.json" --report-html "$1.html" >"$1.log" 2>&1 &
  control_pid=$!
  pids+=("$control_pid")
}
finish_control() {
  await_secs $((control_warmup + control_secs + 90)) "the control fleet's loadgen to end" gone "$control_pid"
  wait "$control_pid" || { echo "the control fleet's loadgen failed: see $1.log" >&2; return 1; }
}
window_us() { echo $((control_launch + 500000 + control_warmup * 1000000 + $1)); }

incomplete=""
results=$dir/results.jsonl
: >"$results"

gateway_phase() {
  local n=$1 kind=$2 name=$1-$2 out=$dir/$1-$2 keys_b=$dir/tickets-shared
  [ "$kind" = resumed ] || keys_b=$dir/tickets-b-own
  mkdir -p "$out"
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "phase $name (load average $load): gateway A, $storm_cars cars on it"
  gateway_toml "$out/gateway-a.toml" "$admin_a" "$dir/tickets-shared" "127.0.0.1:$storm_port"
  gateway_toml "$out/gateway-b.toml" "$admin_b" "$keys_b" "127.0.0.1:$storm_port" "127.0.0.1:$control_port"
  start_gateway "$out/gateway-a.toml" 0 "$out/gateway-a.log"
  local a=$gateway_pid
  await "gateway A" ready "$admin_a"
  start_storm "$out" "127.0.0.1:$storm_port" "DL/#" "$(storm_net "$n")"
  await_secs "$connect_bound" "$storm_cars cars on gateway A" open_at_least "$admin_a" "$storm_cars" ||
    { echo "(connected by the cars' count: $(car_side "$out"))" >&2; return 1; }

  local whose="A's"
  [ "$kind" = resumed ] || whose="its own"
  log "phase $name: gateway B (ticket keys: $whose), the control fleet's quiet window"
  start_gateway "$out/gateway-b.toml" 1 "$out/gateway-b.log"
  local b=$gateway_pid
  await "gateway B" ready "$admin_b"
  start_control "$out/control-quiet"
  sleep_until_us "$(window_us 1000000)"
  local q0 q0_us q1 q1_us
  q0=$(cpu_ms "$b")
  q0_us=$(now_us)
  sleep_until_us "$(window_us $(((control_secs - 1) * 1000000)))"
  q1=$(cpu_ms "$b")
  q1_us=$(now_us)
  finish_control "$out/control-quiet"

  start_control "$out/control-storm"
  sleep_until_us "$(window_us 1000000)"
  local moved open0 open target c0 t0 c1 t1 a_open a_empty="" back=false deadline
  moved=$(scrape "$admin_a" | metric carbridge_gateway_connections_open)
  scrape "$admin_b" >"$out/b-before.prom"
  open0=$(metric carbridge_gateway_connections_open <"$out/b-before.prom")
  target=$((open0 + moved))
  log "phase $name: draining A ($moved cars) at $drain_rate closes/s; B holds $open0"
  c0=$(cpu_ms "$b")
  t0=$(now_us)
  curl -fsS --max-time 5 -X POST -H "Authorization: Bearer $token" "http://$admin_a/drain" >"$out/drain.txt" 2>&1 ||
    { echo "POST /drain on A failed: $(cat "$out/drain.txt")" >&2; return 1; }
  deadline=$((SECONDS + storm_timeout))
  while true; do
    open=$(scrape "$admin_b" | metric carbridge_gateway_connections_open)
    t1=$(now_us)
    c1=$(cpu_ms "$b")
    a_open=$(scrape "$admin_a" | metric carbridge_gateway_connections_open)
    echo "$t1 $open $a_open" >>"$out/storm-samples.txt"
    [ -n "$a_empty" ] || [ "$a_open" -gt 0 ] || a_empty=$((t1 - t0))
    if [ "$open" -ge "$target" ]; then back=true; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  scrape "$admin_b" >"$out/b-after.prom"
  local fds limit
  fds=$(fd_count "$b")
  limit=$(fd_limit "$b")
  if [ "$back" = true ]; then
    log "phase $name: all $moved back on B in $(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.2f", us / 1e6 }') s"
  else
    log "phase $name: only $((open - open0)) of $moved back on B after $storm_timeout s"
    incomplete=1
  fi
  finish_control "$out/control-storm"
  local car_count
  car_count=$(car_side "$out")

  local before=$out/b-before.prom after=$out/b-after.prom full resumed all
  full=$(($(metric 'carbridge_gateway_tls_handshakes_total{result="full"}' <"$after") -
    $(metric 'carbridge_gateway_tls_handshakes_total{result="full"}' <"$before")))
  resumed=$(($(metric 'carbridge_gateway_tls_handshakes_total{result="resumed"}' <"$after") -
    $(metric 'carbridge_gateway_tls_handshakes_total{result="resumed"}' <"$before")))
  all=$(($(handshakes <"$after") - $(handshakes <"$before")))
  py tls_storm record "$results" phase="$name" kind="$kind" server=gateway load="$load" \
    cars="$storm_cars" moved="$moved" back=$((open - open0)) all_back=$back car_side="$car_count" \
    us=$((t1 - t0)) a_empty_us="${a_empty:-null}" cpu_ms=$((c1 - c0)) quiet_cpu_ms=$((q1 - q0)) quiet_us=$((q1_us - q0_us)) \
    full="$full" resumed="$resumed" failed=$((all - full - resumed)) \
    accept_limited=$(($(metric 'carbridge_gateway_limited_total{limit="accept_rate"}' <"$after") -
      $(metric 'carbridge_gateway_limited_total{limit="accept_rate"}' <"$before"))) \
    fds="$fds" fd_limit="$limit" shards="$shards" publish_ms="$storm_publish_ms" \
    control_cars="$control_cars" control_publish_ms="$control_publish_ms" control_secs="$control_secs" \
    control_quiet="$out/control-quiet.json" control_storm="$out/control-storm.json"
  stop_pids "${storm_pids[@]}" "$a" "$b"
}
# Every TLS handshake B counted, whatever its result (Prometheus text on stdin).
handshakes() { awk '$1 ~ /^carbridge_gateway_tls_handshakes_total[{]/ { v += $2 } END { printf "%.0f\n", v }'; }

mosquitto_phase() {
  local n=$1 name=$1-mosquitto out=$dir/$1-mosquitto
  mkdir -p "$out"
  local load
  load=$(cut -d' ' -f1 /proc/loadavg)
  log "phase $name (load average $load): mosquitto, $storm_cars cars on it"
  mosquitto_tls_conf "$mosquitto_port" "$pki" >"$out/mosquitto.conf"
  mosquitto -c "$out/mosquitto.conf" >"$out/mosquitto-1.log" 2>&1 &
  local m=$!
  pids+=("$m")
  await "mosquitto on $mosquitto_port" port_open "$mosquitto_port"
  start_storm "$out" "127.0.0.1:$mosquitto_port" "DL/LOAD/{car}" "$(storm_net "$n")"
  await_secs "$connect_bound" "$storm_cars cars on mosquitto" log_at_least "$out/mosquitto-1.log" "$storm_cars" ||
    { echo "(connected by the cars' count: $(car_side "$out"))" >&2; return 1; }

  log "phase $name: restarting mosquitto"
  local t0 t1 c1 back=false count deadline
  t0=$(now_us)
  stop_pids "$m"
  mosquitto -c "$out/mosquitto.conf" >"$out/mosquitto-2.log" 2>&1 &
  m=$!
  pids+=("$m")
  deadline=$((SECONDS + storm_timeout))
  while true; do
    count=$(connected_in_log "$out/mosquitto-2.log")
    t1=$(now_us)
    c1=$(cpu_ms "$m")
    echo "$t1 $count" >>"$out/storm-samples.txt"
    if [ "$count" -ge "$storm_cars" ]; then back=true; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
  done
  local fds limit
  fds=$(fd_count "$m")
  limit=$(fd_limit "$m")
  if [ "$back" = true ]; then
    log "phase $name: all $storm_cars back in $(awk -v us=$((t1 - t0)) 'BEGIN { printf "%.2f", us / 1e6 }') s"
  else
    log "phase $name: only $count of $storm_cars back after $storm_timeout s"
    incomplete=1
  fi
  sleep 1.5
  py tls_storm record "$results" phase="$name" kind=mosquitto server=mosquitto load="$load" \
    cars="$storm_cars" moved="$storm_cars" back="$count" all_back=$back car_side="$(car_side "$out")" \
    us=$((t1 - t0)) cpu_ms="$c1" fds="$fds" fd_limit="$limit" shards="$shards" publish_ms="$storm_publish_ms"
  stop_pids "${storm_pids[@]}" "$m"
}

n=0
for kind in $gateway_phases; do
  n=$((n + 1))
  gateway_phase "$n" "$kind"
done
if [ -n "$mosquitto_phase" ]; then
  n=$((n + 1))
  mosquitto_phase "$n"
fi

echo >&2
py tls_storm summary "$results" | tee "$dir/summary.txt" >&2
if [ -n "$incomplete" ]; then
  log "some storm was not all back within $storm_timeout s: exit 3"
  exit 3
fi
