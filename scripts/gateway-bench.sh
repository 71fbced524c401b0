#!/usr/bin/env bash
# The gateway alone at full speed: one shard, many loopback connections
# publishing as fast as it takes their bytes (benches/examples/blast.rs),
# into librdkafka's mock cluster, a sink that keeps up (its CPU is printed
# beside, and so are the gateway's read pauses: how long a full producer
# queue held the cars back). Over the measured window it reads:
#
#   - PUBLISH per second acknowledged by the sink;
#   - the gateway's CPU time (user + system, from /proc), by thread: the
#     shard's and librdkafka's;
#   - from the two: the gateway's CPU per PUBLISH, and PUBLISH per second
#     per core of gateway CPU (the figure that does not depend on how much
#     of the 2 cores the gateway got beside the blaster and the sink).
#
#   scripts/gateway-bench.sh     # 1,000 connections, 5 s warm-up, 20 s measured
#   BENCH_BEFORE=<commit> BENCH_ROUNDS=3 scripts/gateway-bench.sh
#                                # that commit's gateway (built from a git
#                                # worktree into target/gateway-bench/bin-<commit>)
#                                # and this tree's, round after round, and the
#                                # ratio of their PUBLISH per core-second
#
# BENCH_CARS, BENCH_WARMUP, BENCH_SECS, BENCH_PAYLOAD (bytes, default 128)
# change those; BENCH_GATEWAY_ARGS adds gateway flags (-X queue.buffering.max.messages=...);
# BENCH_DIR is where the logs go.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

cars=${BENCH_CARS:-1000}
warmup=${BENCH_WARMUP:-5}
secs=${BENCH_SECS:-20}
payload=${BENCH_PAYLOAD:-128}
dir=${BENCH_DIR:-target/gateway-bench/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$dir"
mqtt=127.0.0.1:23883
admin=127.0.0.1:29190
bin=target/release

log() { printf 'gateway-bench: %s\n' "$*" >&2; }

log "building (release)"
cargo build --release --locked -p gateway --bin gateway -p loadgen --bin carbridge-mockbroker 2>&1 | tail -n 1 >&2
cargo build --release --locked -p benches --example blast 2>&1 | tail -n 1 >&2
variants=("now=$bin/gateway")
before=${BENCH_BEFORE:-}
if [ -n "$before" ]; then
  rev=$(git rev-parse --short "$before")
  keep=target/gateway-bench/bin-$rev tree=target/gateway-bench/tree
  if [ ! -x "$keep/gateway" ]; then
    log "building the gateway of $rev (a git worktree, this target directory)"
    git worktree remove --force "$tree" 2>/dev/null || true
    git worktree add --force --detach "$tree" "$rev" >/dev/null
    (cd "$tree" && CARGO_TARGET_DIR="$(pwd)/../.." cargo build --release -p gateway --bin gateway 2>&1 | tail -n 1 >&2)
    mkdir -p "$keep"
    cp "$bin/gateway" "$keep/"
    git worktree remove --force "$tree"
    # The working tree's gateway again: that build went through the same directory.
    cargo build --release --locked -p gateway --bin gateway 2>&1 | tail -n 1 >&2
  fi
  variants=("$rev=$keep/gateway" "${variants[@]}")
fi
rounds=${BENCH_ROUNDS:-1}

blast="" gateway="" sink=""
cleanup() {
  local status=$?
  trap - EXIT INT TERM
  stop
  log "logs in $dir"
  exit "$status"
}
# The blaster, then the gateway (while the sink still takes what it
# flushes), then the sink.
stop() {
  local p
  for p in "$blast" "$gateway" "$sink"; do
    [ -n "$p" ] || continue
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
  blast="" gateway="" sink=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

await() {
  local what=$1; shift
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "gateway-bench: timed out waiting for $what; see $dir" >&2
  return 1
}

# "name ticks" for every thread of process $1 (utime + stime, fields 14
# and 15 of its stat; the name may hold spaces, so split after it).
threads() {
  for stat in /proc/"$1"/task/*/stat; do
    sed -E 's/^[0-9]+ \((.*)\) [A-Za-z] (.*)$/\1|\2/' "$stat" 2>/dev/null
  done | awk -F'|' '{ split($2, f, " "); gsub(/ /, "_", $1); print $1, f[11] + f[12] }'
}
ticks() { threads "$1" | awk '{ s += $2 } END { print s + 0 }'; }
metric() {
  curl -fsS "http://$admin/metrics" | awk -v m="$1" '$1 == m { s += $2 } END { print s + 0 }'
}

# One measurement of the gateway binary $2, named $1, round $3, in
# $dir/$1-$3: a fresh sink, gateway and fleet each time.
measure() {
  local name=$1 binary=$2 out=$dir/$1-$3 port load_before
  mkdir -p "$out"
  for port in "${mqtt#*:}" "${admin#*:}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "gateway-bench: port $port is in use: stop what holds it first" >&2
      exit 1
    fi
  done
  "$bin/carbridge-mockbroker" --partitions 2 --slots 1 --bootstrap-file "$out/bootstrap" \
    >"$out/mockbroker.log" 2>&1 &
  sink=$!
  await "the mock cluster" test -s "$out/bootstrap"
  # shellcheck disable=SC2086 # BENCH_GATEWAY_ARGS: words, as typed.
  "$binary" --kafka-bootstrap "$(cat "$out/bootstrap")" --no-downlink --shards 1 \
    --listen "$mqtt" --admin-listen "$admin" ${BENCH_GATEWAY_ARGS:-} >"$out/gateway.log" 2>&1 &
  gateway=$!
  await "the gateway" curl -fsS "http://$admin/readyz"
  load_before=$(cut -d' ' -f1-3 /proc/loadavg)
  "$bin/examples/blast" "$mqtt" "$cars" $((warmup + secs + 3)) "$payload" >"$out/blast.log" 2>&1 &
  blast=$!
  await "$cars connections" grep -q '^connected' "$out/blast.log"

  # The windows are the measurement, not waits for an event.
  sleep "$warmup"
  sample "$out" start
  sleep "$secs"
  sample "$out" end
  kill -0 "$blast" 2>/dev/null || { cat "$out/blast.log" >&2; echo "gateway-bench: the blaster ended early" >&2; exit 1; }
  wait "$blast" || { cat "$out/blast.log" >&2; exit 1; }
  blast=""
  stop
  report "$name" "$out" "$load_before"
}

# The counters at one end of the window, into directory $1, named $2.
sample() {
  threads "$gateway" >"$1/threads-$2"
  echo "$(ticks "$sink") $(ticks "$blast") $(metric carbridge_gateway_publish_acked_total)" \
    "$(metric carbridge_gateway_publish_received_total) $(metric carbridge_gateway_read_pauses_total)" \
    "$(metric carbridge_gateway_read_paused_seconds_total)" \
    >"$1/sample-$2"
}

# Prints the figures of one measurement and appends "name per-core-rate"
# to $dir/results.
report() {
  python3 - "$1" "$2" "$secs" "$cars" "$payload" "$(getconf CLK_TCK)" "$3" "$dir/results" <<'EOF'
import sys
from collections import defaultdict
name, out, secs, cars, payload, hz, load, results = sys.argv[1:]
secs, cars, payload, hz = float(secs), int(cars), int(payload), float(hz)

def threads(which):
    by = defaultdict(float)
    for line in open(f"{out}/threads-{which}"):
        thread, ticks = line.split()
        # librdkafka's broker threads carry the broker's address: one group.
        by["librdkafka" if thread.startswith("rdk:") else thread] += float(ticks) / hz
    return by

start, end = threads("start"), threads("end")
used = {t: end[t] - start.get(t, 0.0) for t in end}
s0 = [float(x) for x in open(f"{out}/sample-start").read().split()]
s1 = [float(x) for x in open(f"{out}/sample-end").read().split()]
sink, blast, acked, received, pauses, paused = [(b - a) for a, b in zip(s0, s1)]
sink, blast = sink / hz, blast / hz
cpu = sum(used.values())
if acked <= 0 or cpu <= 0:
    sys.exit(f"gateway-bench [{name}]: nothing acknowledged in the window ({acked:.0f} PUBLISH, "
             f"{cpu:.2f} s of CPU); see {out}")
per_core = acked / cpu
print(f"gateway-bench [{name}]: 1 shard, {cars:,} connections, {payload}-byte payloads, "
      f"{secs:.0f} s measured (load average before: {load})")
print(f"  PUBLISH acknowledged by the sink: {acked / secs:,.0f}/s (received {received / secs:,.0f}/s)")
print(f"  gateway CPU: {cpu:.2f} s over {secs:.0f} s ({100 * cpu / secs:.0f} % of one core): "
      f"{1e6 * cpu / acked:.2f} µs per PUBLISH, {per_core:,.0f} PUBLISH per second per core")
for thread, seconds in sorted(used.items(), key=lambda kv: -kv[1]):
    if seconds > 0.005 * secs:
        print(f"    {thread:<20} {100 * seconds / secs:5.1f} % of a core, {1e6 * seconds / acked:.2f} µs per PUBLISH")
print(f"  the sink (librdkafka mock cluster): {100 * sink / secs:.0f} % of a core; "
      f"the blaster: {100 * blast / secs:.0f} %")
# Gateways before 2026-11-30 evening do not export the paused seconds.
# A pause is counted when it ends, so one begun before the window can
# take the share above 100 %.
held = (f"{paused:.2f} s in all ({100 * paused / secs:.1f} % of the window)"
        if s1[5] > 0 else "their length not exported by this gateway")
print(f"  read pauses (librdkafka's queue or the in-flight bytes full, cars held back): "
      f"{pauses:.0f}, {held}")
with open(results, "a") as f:
    print(name, per_core, file=f)
EOF
}

for ((round = 1; round <= rounds; round++)); do
  for variant in "${variants[@]}"; do
    measure "${variant%%=*}" "${variant#*=}" "$round"
  done
done

if [ ${#variants[@]} -gt 1 ]; then
  python3 - "$dir/results" "$rev" <<'EOF'
import sys
from collections import defaultdict
from statistics import median
rates = defaultdict(list)
for line in open(sys.argv[1]):
    name, rate = line.split()
    rates[name].append(float(rate))
rev = sys.argv[2]
before, now = median(rates[rev]), median(rates["now"])
print(f"gateway-bench: PUBLISH per second per core, medians of {len(rates['now'])} rounds: "
      f"{rev} {before:,.0f}, now {now:,.0f}: now / {rev} = {now / before:.3f}")
EOF
fi
