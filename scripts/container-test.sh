#!/usr/bin/env bash
# The image run as a deployment runs it: builds it (scripts/build-image.sh),
# starts the gateway and the router in containers with podman under the
# project's seccomp profile (deploy/k8s/components/seccomp-io-uring), as
# the image's non-root user, with a read-only root file system, no
# capabilities, no privilege escalation and bounded open files and
# processes, the broker on the host (librdkafka's mock cluster,
# carbridge-mockbroker), and checks what a car and an operator see:
#
#   1. both containers run under the profile (Seccomp: 2 in /proc/1/status)
#      as uid 65532 with no capabilities, and cannot write their root file
#      system;
#   2. a car's PUBLISH through the gateway's port is a record in cs.uplink
#      (read with kcat: key, mqtt.topic header, payload);
#   3. a message sent with carbridge-send (through the router's container)
#      reaches a subscribed car (mosquitto_sub), with a "written" receipt;
#   4. `podman stop` (SIGTERM) with a car connected drains the gateway: it
#      logs the drain, exits 0, within its bound (drain.max_secs + 5 s);
#      the router leaves and exits 0 as well;
#   5. under the profile without the io_uring calls the gateway stops at
#      once with a non-zero exit and its own message naming the profile.
#
# Every wait is bounded. Exit 0 when every check passed, 1 with the failed
# check's message otherwise (the containers' logs are kept in the run's
# directory). Containers and host processes are removed on exit, also on
# Ctrl-C. Needs root or sudo (podman's rootful storage, as build-image.sh).
#
# Networking is the host's (--network host): the mock cluster listens on
# 127.0.0.1 only, so a container on podman's bridge could not reach it.
#
# Environment:
#   CONTAINER_TEST_DIR   logs (default target/container/run-<time>)
#   IMAGE_BINARIES       a directory with this build's binaries (gateway,
#                        router, carbridge-topics, carbridge-send and
#                        carbridge-mockbroker) to use instead of building
#                        them into target/release
#   CONTAINER_TEST_PORT  the gateway's MQTT port (default 31883); the admin
#                        ports are 31900 (gateway) and 31901 (router): all
#                        below Linux's ephemeral ports (32768 and up), from
#                        which the run's own client sockets could take them
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH:/usr/sbin:/sbin"
. scripts/lib.sh

tag=carbridge:container-test
profile=deploy/k8s/components/seccomp-io-uring/io-uring.json
mqtt_port=${CONTAINER_TEST_PORT:-31883}
gw_admin=127.0.0.1:31900
router_admin=127.0.0.1:31901
dir=${CONTAINER_TEST_DIR:-target/container/run-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
podman_cmd=(podman); [ "$(id -u)" -eq 0 ] || podman_cmd=(sudo podman)
pm() { "${podman_cmd[@]}" "$@"; }
started=$SECONDS

fail() {
  echo "$log_name: FAILED: $*" >&2
  exit 1
}
ok() { log "ok    $* ($((SECONDS - started)) s)"; }

for tool in podman runc kcat mosquitto_pub mosquitto_sub jq curl; do
  command -v "$tool" >/dev/null || fail "$tool not found: run scripts/setup.sh"
done
for port in "$mqtt_port" "${gw_admin##*:}" "${router_admin##*:}"; do
  ! port_open "$port" || fail "port $port is in use (another container test still running?)"
done

# --- The image and the host's tools ----------------------------------------
scripts/build-image.sh "$tag"
bin=${IMAGE_BINARIES:-target/release}
if [ -z "${IMAGE_BINARIES:-}" ]; then
  # The command of scripts/gateway-bench.sh: nothing to do after it.
  log "release build of the mock cluster"
  cargo build --release --locked -p gateway --bin gateway -p loadgen --bin carbridge-mockbroker >"$dir/cargo.log" 2>&1 ||
    { tail -n 20 "$dir/cargo.log" >&2; fail "the release build failed: see $dir/cargo.log"; }
fi
[ -x "$bin/carbridge-mockbroker" ] || fail "$bin/carbridge-mockbroker: no such binary"
image_secs=$((SECONDS - started))

# Named after this run, so that two runs never meet.
gw=carbridge-test-gateway-$$
router=carbridge-test-router-$$
no_uring=carbridge-test-no-io-uring-$$
containers=("$gw" "$router" "$no_uring")
# A container's output, without the colours the logger adds.
save_log() { pm logs "$1" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$dir/$1.log"; }
stop_all() {
  local c
  for c in "${containers[@]}"; do
    pm container exists "$c" 2>/dev/null || continue
    save_log "$c" || true
    pm rm -f -t 0 "$c" >/dev/null 2>&1 || true
  done
  stop_pids "${pids[@]}"
}
cleanup_on_exit "logs in $dir"

# As the Kubernetes manifests run them: the profile as a Localhost
# seccomp profile, runAsNonRoot (the image's user), readOnlyRootFilesystem,
# capabilities dropped, allowPrivilegeEscalation false. The limits are
# what runc accepts on this kind of machine: without them podman asks for
# 1,048,576 open files and runc refuses; --ulimit memlock=-1 is refused as
# well, so the locked-memory limit is the one podman runs with (the
# gateway needs 512 KiB and says so at start when it has less).
confined=(--runtime runc --pull never --network host --read-only --cap-drop all
  --security-opt no-new-privileges --ulimit nofile=20000:20000 --ulimit nproc=32768:32768)

log "mock cluster on the host"
start_mockbroker "$bin/carbridge-mockbroker" "$dir/bootstrap" "$dir/mockbroker.log" --partitions 2 --slots 1 ||
  fail "the mock cluster did not start: see $dir/mockbroker.log"
pids+=("$mock_pid")
kafka=$mock_bootstrap

# Ready, or the container's log and a failure: a container that died is
# not waited for.
ready_or_dead() { curl -fsS "http://$1/readyz" || ! pm container inspect --format '{{.State.Running}}' "$2" | grep -q true; }
await_ready() {
  local name=$1 admin=$2
  await "$name to be ready" ready_or_dead "$admin" "$name" || true
  if ! curl -fsS "http://$admin/readyz" >/dev/null 2>&1; then
    pm logs "$name" 2>&1 | tail -n 20 >&2
    fail "$name did not become ready on $admin"
  fi
}

log "router in a container"
pm run -d --name "$router" "${confined[@]}" --security-opt "seccomp=$profile" --stop-timeout 60 \
  --entrypoint /usr/local/bin/router "$tag" \
  --kafka-bootstrap "$kafka" --admin-listen "$router_admin" >/dev/null
await_ready "$router" "$router_admin"

log "gateway in a container, MQTT on 127.0.0.1:$mqtt_port"
pm run -d --name "$gw" "${confined[@]}" --security-opt "seccomp=$profile" --stop-timeout 150 "$tag" \
  --kafka-bootstrap "$kafka" --listen "127.0.0.1:$mqtt_port" --admin-listen "$gw_admin" \
  --shards 1 --bridge-id 0 >/dev/null
await_ready "$gw" "$gw_admin"
ok "the router and the gateway run in their containers and are ready"

# --- 1. Confined ------------------------------------------------------------
field() { awk -v f="$1:" '$1 == f { print $2 }' <<<"$status"; }
for c in "$router" "$gw"; do
  status=$(pm exec "$c" cat /proc/1/status) || fail "$c: cannot read /proc/1/status in the container"
  [ "$(field Seccomp)" = 2 ] || fail "$c: Seccomp: $(field Seccomp) in /proc/1/status, not 2 (filter)"
  [ "$(field Uid)" = 65532 ] || fail "$c: runs as uid $(field Uid), not the image's 65532"
  [ "$(field CapEff)" = 0000000000000000 ] || fail "$c: effective capabilities $(field CapEff)"
  [ "$(field NoNewPrivs)" = 1 ] || fail "$c: NoNewPrivs is not set"
  if out=$(pm exec "$c" touch /carbridge-probe 2>&1); then
    fail "$c: could write its root file system"
  fi
  grep -q 'Read-only file system' <<<"$out" || fail "$c: writing / failed, but not as read-only: $out"
done
ok "both under the seccomp profile (Seccomp: 2), uid 65532, no capabilities, no new privileges, / read-only"

connections_open() {
  curl -fsS "http://$gw_admin/metrics" | awk '$1 == "carbridge_gateway_connections_open" { n += $2 } END { print n + 0 }'
}
open_is() { [ "$(connections_open)" = "$1" ]; }

# --- 2. Uplink: a car's PUBLISH is a record in Kafka ------------------------
car=car-up-$$
payload="uplink from $car at $(date +%s%N)"
mosquitto_pub -h 127.0.0.1 -p "$mqtt_port" -i "$car" -t UL/POS/container-test -m "$payload" -q 0 ||
  fail "mosquitto_pub could not publish through 127.0.0.1:$mqtt_port"
# kcat reads the topic from its start to its end; the record is there once
# the gateway's producer has flushed it (its linger is milliseconds).
record=""
deadline=$((SECONDS + 30))
while [ -z "$record" ] && [ "$SECONDS" -lt "$deadline" ]; do
  record=$(timeout 10 kcat -b "$kafka" -C -t cs.uplink -o beginning -e -q -f '%k|%h|%s\n' 2>>"$dir/kcat.log" |
    grep -F "$payload" || true)
  [ -n "$record" ] || sleep 0.5
done
[ -n "$record" ] || fail "the car's PUBLISH did not reach cs.uplink within 30 s (see $dir/kcat.log)"
[ "${record%%|*}" = "$car" ] || fail "the uplink record's key is ${record%%|*}, not the client id $car"
grep -q 'mqtt.topic=UL/POS/container-test' <<<"$record" || fail "the uplink record lacks the mqtt.topic header: $record"
ok "a car's PUBLISH through the gateway's port is in cs.uplink (key $car, header mqtt.topic)"

# --- 3. Downlink: carbridge-send, the router, the gateway, the car ---------
car=car-down-$$
payload="downlink to $car at $(date +%s%N)"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -i "$car" -t DL/WARN -q 0 -C 1 -W 60 >"$dir/downlink.txt" 2>"$dir/mosquitto_sub.log" &
sub=$!
pids+=("$sub")
await "the car to be connected" open_is 1 || fail "the subscribing car did not connect"
# Until the router has read the car's session from mqtt.sessions it answers
# "offline": sent again then, for at most 30 s.
sent=""
deadline=$((SECONDS + 30))
while [ -z "$sent" ] && [ "$SECONDS" -lt "$deadline" ]; do
  if "$bin/carbridge-send" --kafka-bootstrap "$kafka" --receipt-timeout-secs 5 "$car" DL/WARN "$payload" \
    >>"$dir/carbridge-send.log" 2>&1; then
    sent=1
  else
    sleep 1
  fi
done
[ -n "$sent" ] || { tail -n 5 "$dir/carbridge-send.log" >&2; fail "carbridge-send got no \"written\" receipt within 30 s"; }
for _ in $(seq 100); do kill -0 "$sub" 2>/dev/null || break; sleep 0.1; done
[ "$(cat "$dir/downlink.txt")" = "$payload" ] ||
  fail "the car received \"$(cat "$dir/downlink.txt")\", not the message sent (see $dir/mosquitto_sub.log)"
ok "a message sent with carbridge-send reached the car through the router and the gateway (receipt: written)"

# --- 4. podman stop drains the gateway --------------------------------------
await "the first car to be gone" open_is 0 || fail "the downlink car's connection did not close"
mosquitto_sub -h 127.0.0.1 -p "$mqtt_port" -i "car-stay-$$" -t DL/WARN -q 0 >/dev/null 2>"$dir/car-stay.log" &
pids+=($!)
await "a car to stay connected" open_is 1 || fail "the staying car did not connect"
drain_max=$(pm exec "$gw" /usr/local/bin/gateway print-default-config | awk '/^\[drain\]/ { d = 1 } d && /^max_secs/ { print $3; exit }')
bound=$((${drain_max:-120} + 5))
stop_started=$(date +%s.%N)
pm stop --time 150 "$gw" >/dev/null
stop_secs=$(awk -v from="$stop_started" -v to="$(date +%s.%N)" 'BEGIN { printf "%.1f", to - from }')
save_log "$gw"
code=$(pm container inspect --format '{{.State.ExitCode}}' "$gw")
[ "$code" = 0 ] || { tail -n 20 "$dir/$gw.log" >&2; fail "the gateway exited $code after podman stop, not 0"; }
grep -q 'SIGTERM: draining, then stopping' "$dir/$gw.log" || fail "the gateway's log does not say it drained on SIGTERM"
grep -Eq 'draining: closing connections.*connections=1' "$dir/$gw.log" ||
  fail "the gateway's log does not show the connected car being drained"
grep -q 'stopped' "$dir/$gw.log" || fail "the gateway's log has no \"stopped\" line"
awk -v s="$stop_secs" -v b="$bound" 'BEGIN { exit !(s < b) }' || fail "the drain took $stop_secs s, beyond its bound of $bound s"
ok "podman stop drained the gateway (1 car) and it exited 0 in $stop_secs s (bound $bound s)"
pm stop --time 60 "$router" >/dev/null
code=$(pm container inspect --format '{{.State.ExitCode}}' "$router")
[ "$code" = 0 ] || fail "the router exited $code after podman stop, not 0"
ok "podman stop stopped the router: exit 0"

# --- 5. Without io_uring in the profile -------------------------------------
jq '.syscalls |= map(.names |= map(select(startswith("io_uring") | not)) | select(.names | length > 0))' \
  "$profile" >"$dir/no-io-uring.json"
! grep -q io_uring "$dir/no-io-uring.json" || fail "the io_uring calls are still in $dir/no-io-uring.json"
code=0
timeout 60 "${podman_cmd[@]}" run --name "$no_uring" "${confined[@]}" --security-opt "seccomp=$dir/no-io-uring.json" \
  "$tag" --kafka-bootstrap "$kafka" --listen "127.0.0.1:$mqtt_port" --admin-listen "$gw_admin" \
  --shards 1 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$dir/no-io-uring.log" || code=${PIPESTATUS[0]}
case $code in
  0) fail "the gateway ran under a profile without io_uring" ;;
  124) fail "the gateway under a profile without io_uring neither ran nor stopped within 60 s" ;;
  125 | 126 | 127) cat "$dir/no-io-uring.log" >&2; fail "podman could not run the container (exit $code)" ;;
esac
# The gateway's own words, on its last line: io_uring refused or not set
# up, and the seccomp profile to look at first.
said=$(grep -E '^Error: .*io_uring (is refused|could not be set up).*seccomp' "$dir/no-io-uring.log" | head -n 1 || true)
if [ -z "$said" ]; then
  cat "$dir/no-io-uring.log" >&2
  fail "the gateway stopped (exit $code) without saying that io_uring was refused and naming the seccomp profile"
fi
ok "without io_uring in the profile the gateway stops (exit $code) and says: ${said:0:160}..."

log "all checks passed in $((SECONDS - started)) s (the image and the host's binaries: $image_secs s)"
