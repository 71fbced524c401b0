#!/usr/bin/env bash
# TLS side by side, in one run: the gateway and mosquitto, each with a
# mutual-TLS listener on the same certificates (mosquitto:
# require_certificate, use_identity_as_username), and the same client
# (loadgen's tls_connect example): connect rate with full handshakes, then
# with resumed ones, and resident memory per idle TLS connection. Then the
# uplink over TLS against plain TCP: the same fleet (loadgen, gateway mode,
# through tansu) on the gateway's plain and TLS listeners one after the
# other (plain, TLS, TLS, plain), with the gateway's CPU time per message
# for each: over the whole phase (the cars' connects and TLS handshakes
# included) and over its steady part (connects left out).
#
#   scripts/tls-bench.sh            # 5,000 cars each
#   TLS_BENCH_CARS=10000 scripts/tls-bench.sh
#   TLS_BENCH_GATE_BYTES=6144 TLS_BENCH_ONLY=memory scripts/tls-bench.sh
#
# TLS_BENCH_GATEWAY: another gateway binary to measure (a known commit's,
# for a before and after), with this tree's tools.
#
# With TLS_BENCH_GATE_BYTES, a gate (scripts/test.sh runs it): exit 3 when
# the gateway's memory per idle TLS connection is above that many bytes or
# above mosquitto's. TLS_BENCH_ONLY=memory leaves the uplink out (about a
# minute in all).
#
# Results: target/tls-bench/<time>/ (results.json, logs); the summary is
# printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

cars=${TLS_BENCH_CARS:-5000}
dir=target/tls-bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$dir"
pki=$(pwd)/target/testpki
kafka_port=29192 gateway_port=28883 mosquitto_port=28884 plain_port=28885 admin=127.0.0.1:29190

command -v mosquitto >/dev/null || { echo "mosquitto not found: run scripts/setup.sh" >&2; exit 1; }
log "building (release)"
cargo build --release -p gateway -p pki -p router -p loadgen --bins 2>&1 | tail -n 1 >&2
cargo build --release -p loadgen --example tls_connect 2>&1 | tail -n 1 >&2
bin=target/release

cleanup_on_exit "logs in $dir"

"$bin/carbridge-testpki" "$pki" >"$dir/testpki.log"

start_tansu "127.0.0.1:$kafka_port" "$dir/tansu.log"
pids+=("$tansu_pid")

"$bin/carbridge-topics" create --kafka-bootstrap "127.0.0.1:$kafka_port" --partitions 4 --slots 2 \
  >"$dir/topics.log" 2>&1

cat >"$dir/gateway.toml" <<EOF
[[listeners]]
address = "127.0.0.1:$plain_port"
[[listeners]]
address = "127.0.0.1:$gateway_port"
[listeners.tls]
cert = "$pki/server.crt"
key = "$pki/server.key"
client_auth = "required"
client_ca = "$pki/ca.crt"
ticket_keys = "$pki/tickets"
[limits]
accept_rate_per_shard = 100000
EOF
"${TLS_BENCH_GATEWAY:-$bin/gateway}" --config "$dir/gateway.toml" --kafka-bootstrap "127.0.0.1:$kafka_port" --no-downlink \
  -X enable.idempotence=false \
  --admin-listen "$admin" >"$dir/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")

mosquitto_tls_conf "$mosquitto_port" "$pki" >"$dir/mosquitto.conf"
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
mosquitto=$!
pids+=("$mosquitto")
await "the gateway on $gateway_port" port_open "$gateway_port"
await "mosquitto on $mosquitto_port" port_open "$mosquitto_port"
sleep 1

# One server: the tool's rounds, and the server's memory with the cars
# connected and idle.
measure() {
  local name=$1 pid=$2 port=$3 source=$4
  local ready="$dir/$name.ready" before after
  before=$(rss_kib "$pid")
  "$bin/examples/tls_connect" --target "127.0.0.1:$port" --cars "$cars" --tls-dir "$pki" \
    --source "$source" --resume --ready-file "$ready" >"$dir/$name.rounds" 2>"$dir/$name.err" &
  local tool=$!
  for _ in $(seq 1200); do [ -e "$ready" ] && break; sleep 0.1; done
  [ -e "$ready" ] || { echo "$name: the cars never all connected; see $dir/$name.err" >&2; kill $tool; return 1; }
  sleep 2
  after=$(rss_kib "$pid")
  rm -f "$ready"
  wait "$tool"
  py tls_bench server "$name" "$before" "$after" "$cars" "$dir/$name.rounds" >>"$dir/results.jsonl"
}

log "$cars cars, mutual TLS: the gateway (2 shards) on $gateway_port"
measure gateway "$gateway" "$gateway_port" 127.0.8.1
log "$cars cars, mutual TLS: mosquitto on $mosquitto_port"
measure mosquitto "$mosquitto" "$mosquitto_port" 127.0.9.1

# The uplink, plain then TLS: the same fleet, the gateway's CPU per message,
# over the whole phase (the 2,000 cars' connects and handshakes included)
# and over its steady part: from 2 s after the warm-up (every car
# connected) for 16 s, inside the measured window.
uplink() {
  local name=$1 port=$2; shift 2
  local before after steady_from steady_to run
  before=$(cpu_ms "$gateway")
  "$bin/loadgen" --kafka-bootstrap "127.0.0.1:$kafka_port" --target "127.0.0.1:$port" --cars 2000 \
    --publish-interval-ms 500 --downlink-rate 0 --no-subscribe --warmup-secs 3 --duration-secs 20 --quiet --recount \
    --report-json "$dir/uplink-$name.json" --report-html "$dir/uplink-$name.html" "$@" >"$dir/uplink-$name.log" 2>&1 &
  run=$!
  sleep 5
  steady_from=$(cpu_ms "$gateway")
  sleep 16
  steady_to=$(cpu_ms "$gateway")
  wait "$run"
  after=$(cpu_ms "$gateway")
  py tls_bench uplink "$name" "$((after - before))" "$dir/uplink-$name.json" \
    "$((steady_to - steady_from))" 16 >>"$dir/uplink.jsonl"
}
if [ "${TLS_BENCH_ONLY:-}" = memory ]; then
  py tls_bench summary "$dir/results.jsonl" - | tee "$dir/summary.txt" >&2
  py tls_bench gate "$dir/results.jsonl" "${TLS_BENCH_GATE_BYTES:-}"
  exit
fi

# Plain, TLS, TLS, plain: the broker slows over a run (its log grows), which
# made the second of two phases the dearer; in this order both listeners
# meet it alike, and the figures are each listener's two phases summed.
log "uplink: 2,000 cars every 500 ms on the plain listener and on the TLS one, in the order plain, TLS, TLS, plain"
uplink plain "$plain_port"
uplink tls "$gateway_port" --tls --tls-dir "$pki"
uplink tls-2 "$gateway_port" --tls --tls-dir "$pki"
uplink plain-2 "$plain_port"

py tls_bench summary "$dir/results.jsonl" "$dir/uplink.jsonl" | tee "$dir/summary.txt" >&2
py tls_bench gate "$dir/results.jsonl" "${TLS_BENCH_GATE_BYTES:-}"
