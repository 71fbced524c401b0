#!/usr/bin/env bash
# A soak: the local stack under a steady fleet for a set time, with the
# faults an operator meets (a gateway drained and restarted, a router
# killed, cars coming and going), watching every process's memory.
#
#   scripts/soak.sh                      # 30 minutes, 10,000 cars
#   scripts/soak.sh --secs 150 --cars 2000
#   SOAK_SECS=600 SOAK_CARS=4000 scripts/soak.sh
#   scripts/soak.sh --secs 600 -- --publish-interval-ms 5000   # after --: to both loadgens
#
# Plain and TLS cars at once: two stacks side by side (scripts/stack.sh
# twice, on their own ports), one with plain MQTT and one over mutual TLS,
# half the cars each. Two stacks rather than two fleets on one: a loadgen
# fleet is all plain or all TLS, and two fleets on one broker would share
# client ids (each takes the other's cars over) and each would count the
# other's uplink records as its own. Each stack has two gateways, two
# routers in one consumer group, its own broker (the mock cluster unless
# STACK_BROKER says otherwise) and its own loadgen with --receipts,
# --churn and --reconnect.
#
# The run, counted from loadgen's start, after its warm-up of WARM s
# (connecting) and then SOAK_SECS measured (T):
#
#   WARM + 0.20 T   gateway 1 is drained (POST /drain); its cars reconnect
#                   to gateway 0
#   WARM + 0.25 T   gateway 1 is stopped (SIGTERM) and started again; it
#                   takes no cars back (a churning car returns to the
#                   gateway it left), so it runs empty to the end
#   WARM + 0.30 T   router 1 is killed (SIGKILL); router 0 takes its
#                   partitions once its session times out
#   WARM + 0.40 T   warm-up for the memory check ends (or 30 s after the
#                   router kill, if later: router 0 takes the partitions
#                   over after the dead one's 10 s session timeout, then
#                   rebuilds their tables)
#
# The faults come in the first third, not in the middle: each one moves
# load for good (gateway 0 holds twice the cars afterwards, router 0 the
# whole session table), which is growth, but not a leak. The memory check
# then watches the longest steady stretch after them, where a process that
# keeps growing leaks, whether the faults left it something or not.
#
# The memory check: every process's resident set (VmRSS) every few
# seconds (rss.csv in each stack's directory); for each gateway and
# router, the median of its samples in the WINDOW s after warm-up against
# the median of the last WINDOW s of the measured run; more than 5 % above
# fails (scripts/py/soak.py). soak.html in the run's directory plots every
# process's resident memory over time, with the faults and both windows.
#
# Exit status: 0 nothing lost that receipts do not explain and no gateway
# or router grew; 3 LOST or 4 OVERLOADED (a stack's loadgen verdict, as
# scripts/stack.sh: the plain stack's first); 5 memory grew; 1 or 2 the
# soak or a stack failed to run; 130 interrupted.
#
# Arguments: --secs N (or SOAK_SECS, default 1800), --cars N (SOAK_CARS,
# default 10000, split over the two stacks), --help; after --, arguments
# for both loadgens. Environment:
#   SOAK_DIR         where it all goes (default target/soak/<time>); the
#                    stacks in plain/ and tls/, their output in plain.log
#                    and tls.log
#   SOAK_WARMUP_SECS loadgen's warm-up (default 20: 5,000 TLS cars connect
#                    in a few seconds, and the first run makes their
#                    certificates, about 2 ms each)
#   SOAK_WINDOW_SECS the memory check's windows (default 60, at most a
#                    tenth of SOAK_SECS)
#   SOAK_GROWTH_PERCENT  the limit (default 5)
#   SOAK_RSS_EVERY   seconds between memory samples (default 5; 2 under
#                    10 minutes)
#   SOAK_DOWNLINK_RATE  downlink requests per second per stack (default 25:
#                    loadgen sends them with linger.ms 1, a batch each, and
#                    the mock cluster hands the routers one batch per
#                    partition per fetch; at 100 a second the routers fell
#                    minutes behind in a 30-minute run, and the requests
#                    still waiting at its end counted lost)
#   SOAK_CHURN       cars leaving per second per stack (default: a
#                    hundredth of its cars, each car about every 100 s)
#   STACK_PROFILE, STACK_BROKER: passed to both stacks
#   STACK_SHARDS     shards per gateway (default 1: four gateways share the
#                    2 cores here)
#   STACK_FETCH_WAIT_MS  the components' fetch wait (default 20, rather
#                    than the main job's 2: the local
#                    brokers answer an empty fetch only when the wait is
#                    over, so at 2 ms a dozen consumers per stack keep a
#                    broker and the machine busy with empty fetches, and a
#                    soak judges loss and memory, not latency)
#   STACK_KAFKA_PROPS  default linger.ms=100 for the gateways' and routers'
#                    producers. The mock cluster hands a consumer at most
#                    one producer batch per partition per fetch, finds it
#                    by walking the partition's batches from the oldest,
#                    and keeps 5 MB per partition: batches of 5 ms made
#                    loadgen's reader fall minutes behind, past what the
#                    mock keeps, in two 30-minute runs (librdkafka
#                    2.12.1's rdkafka_mock.c and rdkafka_mock_handlers.c)
#   STACK_PROBE_SECS default 60: the broker probe measures the first minute
#                    of the window (its consumer polls every 200 µs, a
#                    quarter of a core for the whole run otherwise)
# The gateway and router binaries are linked (or copied) into DIR/bin
# first, so that one restarted minutes in is the program the run began
# with even when target/ is rebuilt meanwhile.
# The stacks' ports: MQTT 23883-23884 and admin 29300-29312 (plain), MQTT
# 24883-24884 and admin 29400-29412 (TLS), apart from scripts/stack.sh's
# defaults so that a main job can run beside a soak.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
. scripts/lib.sh

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
secs=${SOAK_SECS:-1800}
cars=${SOAK_CARS:-10000}
extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --secs) secs=$2; shift 2 ;;
    --cars) cars=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$secs" =~ ^[0-9]+$ && "$secs" -ge 60 ]] || { echo "--secs: whole seconds, at least 60" >&2; exit 2; }
[[ "$cars" =~ ^[0-9]+$ && "$cars" -ge 2 ]] || { echo "--cars: a whole number, at least 2" >&2; exit 2; }

dir=${SOAK_DIR:-target/soak/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
warm=${SOAK_WARMUP_SECS:-20}
window=${SOAK_WINDOW_SECS:-$((secs / 10 < 60 ? secs / 10 : 60))}
limit=${SOAK_GROWTH_PERCENT:-5}
every=${SOAK_RSS_EVERY:-$((secs < 600 ? 2 : 5))}
rate=${SOAK_DOWNLINK_RATE:-25}
plain_cars=$((cars / 2))
tls_cars=$((cars - plain_cars))
at() { echo $((warm + secs * $1 / 100)); }

# The stacks run in the background, where a script's jobs ignore SIGINT;
# TERM reaches a stack's trap only once its foreground loadgen is gone, so
# loadgen is stopped first.
# shellcheck disable=SC2317 # called by cleanup (scripts/lib.sh)
stop_all() {
  [ ${#pids[@]} -gt 0 ] || return 0
  log "stopping the stacks"
  local p l
  for p in "${pids[@]}"; do
    for l in $(pgrep -x loadgen -P "$p"); do kill -TERM "$l" 2>/dev/null || true; done
    kill -TERM "$p" 2>/dev/null || true
  done
  for _ in $(seq 300); do
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.1
  done
  stop_pids "${pids[@]}"
}
cleanup_on_exit "soak: logs and reports in $dir"

# One stack: $1 its name, then its own environment (NAME=VALUE ...).
stack() {
  local name=$1 n=$2
  shift 2
  env STACK_SHARDS="${STACK_SHARDS:-1}" STACK_FETCH_WAIT_MS="${STACK_FETCH_WAIT_MS:-20}" \
    STACK_KAFKA_PROPS="${STACK_KAFKA_PROPS:-linger.ms=100}" STACK_PROBE_SECS="${STACK_PROBE_SECS:-60}" \
    "$@" STACK_DIR="$dir/$name" STACK_GATEWAYS=2 STACK_ROUTERS=2 \
    STACK_DRAIN_AFTER="$(at 20)" STACK_RESTART_AFTER="$(at 25)" STACK_KILL_ROUTER_AFTER="$(at 30)" \
    STACK_RSS_EVERY="$every" \
    scripts/stack.sh --cars "$n" --warmup-secs "$warm" --duration-secs "$secs" \
    --downlink-rate "$rate" --receipts --churn "${SOAK_CHURN:-$(((n + 99) / 100))}" --quiet "${extra[@]}" \
    >"$dir/$name.log" 2>&1 &
  pids+=($!)
}

# The gateway and router of this build, linked into the run's directory
# (STACK_BRIDGE_BIN): the gateway restarted minutes in is the same
# program, whatever is rebuilt in target/ meanwhile.
profile=${STACK_PROFILE:-release}
case "$profile" in
  release) flags=(--release); out=target/release ;;
  *) flags=(); out=target/debug ;;
esac
log "building ($profile)"
cargo build "${flags[@]}" --workspace --bins --example kafka_rtt 2>&1 | tail -n 3 >&2
mkdir -p "$dir/bin"
for b in gateway router; do
  ln -f "$out/$b" "$dir/bin/$b" 2>/dev/null || cp -f "$out/$b" "$dir/bin/$b"
done
export STACK_BRIDGE_BIN=$dir/bin

log "$cars cars ($plain_cars plain, $tls_cars over mutual TLS) for $warm + $secs s; drain at $(at 20) s, restart at $(at 25) s, router kill at $(at 30) s"
log "ends about $(date -d "+$((warm + secs + 60)) sec" +%H:%M); follow with: tail -f $dir/plain.log $dir/tls.log"
stack plain "$plain_cars" STACK_MQTT_PORT=23883 STACK_ADMIN_PORT=29300 STACK_KAFKA_PORT=29392
plain=${pids[-1]}
stack tls "$tls_cars" STACK_TLS=1 STACK_MQTT_PORT=24883 STACK_ADMIN_PORT=29400 STACK_KAFKA_PORT=29492
tls=${pids[-1]}
# The machine's load, beside the figures (2 cores, shared): every 30 s.
while true; do echo "$(date +%s) $(cut -d' ' -f1-3 /proc/loadavg)"; sleep 30; done >"$dir/load.txt" &
loadwatch=$!
pids+=("$loadwatch")

status_plain=0 status_tls=0
wait "$plain" || status_plain=$?
wait "$tls" || status_tls=$?
kill "$loadwatch" 2>/dev/null || true
pids=()
for name in plain tls; do
  grep -E 'drain:|exited during|timed out|not found|in use' "$dir/$name.log" | sed "s/^/$name: /" >&2 || true
done

load=$(cut -d' ' -f1-3 /proc/loadavg)
log "load average at the end: $load (1, 5, 15 minutes)"
about="$cars cars ($plain_cars plain, $tls_cars over mutual TLS), $warm s warm-up + $secs s; drain at $(at 20) s, \
restart at $(at 25) s, router kill at $(at 30) s; memory sampled every $every s; load average at the end $load; \
$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- gateway/src router/src loadgen/src codec/src contract/src ops/src || echo ' with uncommitted changes')"
warm_from=$(at 40)
[ "$warm_from" -ge $(($(at 30) + 30)) ] || warm_from=$(($(at 30) + 30))
growth=0
py soak "$dir" plain tls --warm-from "$warm_from" --until $((warm + secs)) --window "$window" --limit "$limit" \
  --about "$about" | while IFS= read -r line; do log "$line"; done || growth=$?
log "memory over time: $dir/soak.html"

for s in "$status_plain" "$status_tls"; do
  [ "$s" -eq 0 ] || { log "a stack ended with $s (see its log)"; exit "$s"; }
done
case $growth in
  0) ;;
  5) log "FAILED: a gateway or router grew more than $limit % after warm-up (above)"; exit 5 ;;
  *) log "scripts/py/soak.py failed (exit $growth): memory not judged"; exit 1 ;;
esac
log "PASSED: nothing lost that receipts do not explain, no gateway or router grew more than $limit %"
