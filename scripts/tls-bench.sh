#!/usr/bin/env bash
# TLS side by side, in one run: the gateway and mosquitto, each with a
# mutual-TLS listener on the same certificates (mosquitto:
# require_certificate, use_identity_as_username), and the same client
# (loadgen's tls_connect example): connect rate with full handshakes, then
# with resumed ones, and resident memory per idle TLS connection. Then the
# uplink over TLS against plain TCP: the same fleet (loadgen, gateway mode,
# through tansu) on the gateway's plain and TLS listeners one after the
# other, with the gateway's CPU time per message for each.
#
#   scripts/tls-bench.sh            # 5,000 cars each
#   TLS_BENCH_CARS=10000 scripts/tls-bench.sh
#
# Results: target/tls-bench/<time>/ (results.json, logs); the summary is
# printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cars=${TLS_BENCH_CARS:-5000}
dir=target/tls-bench/$(date -u +%Y%m%dT%H%M%SZ)
mkdir -p "$dir"
pki=$(pwd)/target/testpki
kafka_port=29192 gateway_port=28883 mosquitto_port=28884 plain_port=28885 admin=127.0.0.1:29190
log() { printf '\033[1mtls-bench:\033[0m %s\n' "$*" >&2; }

command -v mosquitto >/dev/null || { echo "mosquitto not found: run scripts/setup.sh" >&2; exit 1; }
log "building (release)"
cargo build --release -p gateway -p pki -p router -p loadgen --bins 2>&1 | tail -n 1 >&2
cargo build --release -p loadgen --example tls_connect 2>&1 | tail -n 1 >&2
bin=target/release

pids=()
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [ ${#pids[@]} -gt 0 ] && kill "${pids[@]}" 2>/dev/null
  wait 2>/dev/null || true
  log "logs in $dir"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
await_port() {
  for _ in $(seq 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1; see $dir" >&2
  return 1
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

"$bin/carbridge-testpki" "$pki" >"$dir/testpki.log"

tansu broker --listener-url "tcp://127.0.0.1:$kafka_port" --advertised-listener-url "tcp://127.0.0.1:$kafka_port" \
  --storage-engine memory://tansu/ >"$dir/tansu.log" 2>&1 &
pids+=($!)
await_port "$kafka_port"

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
"$bin/gateway" --config "$dir/gateway.toml" --kafka-bootstrap "127.0.0.1:$kafka_port" --no-downlink \
  -X enable.idempotence=false \
  --admin-listen "$admin" >"$dir/gateway.log" 2>&1 &
gateway=$!
pids+=($gateway)

cat >"$dir/mosquitto.conf" <<EOF
listener $mosquitto_port 127.0.0.1
cafile $pki/ca.crt
certfile $pki/server.crt
keyfile $pki/server.key
require_certificate true
use_identity_as_username true
max_keepalive 65535
EOF
mosquitto -c "$dir/mosquitto.conf" >"$dir/mosquitto.log" 2>&1 &
mosquitto=$!
pids+=($mosquitto)
await_port "$gateway_port"
await_port "$mosquitto_port"
sleep 1

# One server: the tool's rounds, and the server's memory with the cars
# connected and idle.
measure() {
  local name=$1 pid=$2 port=$3 source=$4
  local ready="$dir/$name.ready" idle before after
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
  python3 - "$name" "$before" "$after" "$cars" "$dir/$name.rounds" <<'EOF' >>"$dir/results.jsonl"
import json, sys
name, before, after, cars, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
result = {"server": name, "rss_before_kib": before, "rss_idle_kib": after,
          "bytes_per_connection": (after - before) * 1024 / cars}
for line in open(rounds):
    r = json.loads(line)
    result[r["round"]] = r
print(json.dumps(result))
EOF
}

log "$cars cars, mutual TLS: the gateway (2 shards) on $gateway_port"
measure gateway "$gateway" "$gateway_port" 127.0.8.1
log "$cars cars, mutual TLS: mosquitto on $mosquitto_port"
measure mosquitto "$mosquitto" "$mosquitto_port" 127.0.9.1

# The uplink, plain then TLS: the same fleet, the gateway's CPU per message.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
uplink() {
  local name=$1 port=$2; shift 2
  local before after
  before=$(cpu_ticks "$gateway")
  "$bin/loadgen" --kafka-bootstrap "127.0.0.1:$kafka_port" --target "127.0.0.1:$port" --cars 2000 \
    --publish-interval-ms 500 --downlink-rate 0 --no-subscribe --warmup-secs 3 --duration-secs 20 --quiet \
    --report-json "$dir/uplink-$name.json" --report-html "$dir/uplink-$name.html" "$@" >"$dir/uplink-$name.log" 2>&1
  after=$(cpu_ticks "$gateway")
  python3 - "$name" "$((after - before))" "$(getconf CLK_TCK)" "$dir/uplink-$name.json" <<'EOF' >>"$dir/uplink.jsonl"
import json, sys
name, ticks, hz, report = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.load(open(sys.argv[4]))
up = report["uplink"]
received = sum(t["uplink_received"] for t in report["timeline"])
print(json.dumps({"listener": name, "gateway_cpu_secs": ticks / hz, "received": received,
                  "lost": up["lost"], "achieved_rate": up["achieved_rate"], "p99_ms": up["latency"]["p99_ms"]}))
EOF
}
log "uplink: 2,000 cars every 500 ms on the plain listener, then on the TLS one"
uplink plain "$plain_port"
uplink tls "$gateway_port" --tls --tls-dir "$pki"

python3 - "$dir/results.jsonl" "$cars" <<'EOF' | tee "$dir/summary.txt" >&2
import json, sys
results = {r["server"]: r for r in map(json.loads, open(sys.argv[1]))}
g, m = results["gateway"], results["mosquitto"]
print(f"load average (1 min) at the end: {open('/proc/loadavg').read().split()[0]}")
print(f"{'':28}{'gateway':>14}{'mosquitto':>14}{'ratio':>8}")
for label, key in (("full handshakes, cars/s", "full"), ("resumed, cars/s", "resumed")):
    gr, mr = g[key]["rate"], m[key]["rate"]
    print(f"{label:28}{gr:>14,.0f}{mr:>14,.0f}{gr / mr if mr else float('nan'):>8.2f}")
for label, key in (("  of them resumed", "resumed"),):
    print(f"{label:28}{g[key]['resumed']:>14,}{m[key]['resumed']:>14,}")
print(f"{'failed (full + resumed)':28}{g['full']['failed'] + g['resumed']['failed']:>14,}{m['full']['failed'] + m['resumed']['failed']:>14,}")
gb, mb = g["bytes_per_connection"], m["bytes_per_connection"]
print(f"{'bytes per idle connection':28}{gb:>14,.0f}{mb:>14,.0f}{gb / mb if mb else float('nan'):>8.2f}")
uplink = {r["listener"]: r for r in map(json.loads, open(sys.argv[1].replace("results.jsonl", "uplink.jsonl")))}
p, t = uplink["plain"], uplink["tls"]
print()
print(f"{'uplink, 2,000 cars, gateway':28}{'plain':>14}{'TLS':>14}{'ratio':>8}")
print(f"{'  sent per second':28}{p['achieved_rate']:>14,.0f}{t['achieved_rate']:>14,.0f}{t['achieved_rate'] / p['achieved_rate']:>8.2f}")
print(f"{'  lost':28}{p['lost']:>14,}{t['lost']:>14,}")
per = lambda r: r["received"] / r["gateway_cpu_secs"] if r["gateway_cpu_secs"] else float("nan")
print(f"{'  messages per gateway CPU-s':28}{per(p):>14,.0f}{per(t):>14,.0f}{per(t) / per(p):>8.2f}")
EOF
