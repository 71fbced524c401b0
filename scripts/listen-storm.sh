#!/usr/bin/env bash
# A connect storm against one single-shard gateway that accepts 1,000
# connections a second (librdkafka's mock cluster behind it): how often the
# kernel's listen queue overflows (TcpExt ListenOverflows) while STORM_CONNECTS
# bare TCP connects (default 8,000) arrive at once. BENCHMARKS.md, "Connect
# rate and connect storms", compares one listen socket of backlog 4096 per
# shard with four of 1024 by running this against both builds
# (STORM_GATEWAY=path of another gateway binary).
#
#   scripts/listen-storm.sh
#   STORM_ROUNDS=3 STORM_GATEWAY=/tmp/gateway-before scripts/listen-storm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
export PATH="$HOME/.cargo/bin:$PATH"

connects=${STORM_CONNECTS:-8000}
rounds=${STORM_ROUNDS:-1}
mqtt_port=24883 admin=127.0.0.1:29555
dir=$(mktemp -d)
cleanup_on_exit
stop_all() { stop_pids "${pids[@]}"; rm -rf "$dir"; }

log "building (release)"
cargo build --release --locked -p gateway --bin gateway -p loadgen --bin carbridge-mockbroker 2>&1 | tail -n 1 >&2
gateway=${STORM_GATEWAY:-target/release/gateway}
log "net.core.somaxconn = $(cat /proc/sys/net/core/somaxconn); load average: $(cut -d' ' -f1-3 /proc/loadavg)"

for round in $(seq "$rounds"); do
  start_mockbroker target/release/carbridge-mockbroker "$dir/bootstrap" "$dir/mock.log" --partitions 2 --slots 1
  pids=("$mock_pid")
  uplink_gateway_toml "$dir/gateway.toml" "$mock_bootstrap" "$admin" \
    $'[limits]\naccept_rate_per_shard = 1000'
  "$gateway" --config "$dir/gateway.toml" --listen "127.0.0.1:$mqtt_port" --shards 1 >"$dir/gateway.log" 2>&1 &
  pids+=("$!")
  await "the gateway to be ready" curl -sf "http://$admin/readyz"
  log "round $round: $(py listen_storm 127.0.0.1 "$mqtt_port" "$connects")"
  ss -ltn "sport = :$mqtt_port" | tail -n +2 | awk '{ print "  listen socket: waiting " $2 " of a backlog of " $3 }' >&2
  stop_pids "${pids[@]}"
done
