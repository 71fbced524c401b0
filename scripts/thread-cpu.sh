#!/usr/bin/env bash
# Where a process's CPU goes, thread by thread, over an interval: CPU time
# (user + system, from /proc/<pid>/task/*/stat) as a share of one core, and
# context switches per second, voluntary (the thread slept and was woken:
# a wake-up) and involuntary (it was preempted). For a gateway at a
# fleet's rate, most of the CPU is wake-ups; this shows whose.
#
#   scripts/thread-cpu.sh PID [SECONDS]     # default 20 s
#
# For example, during the measured window of the main job at a fleet's rate:
#   STACK_SHARDS=1 scripts/stack.sh --cars 10000 --publish-interval-ms 10000 --downlink-rate 0 --quiet &
#   sleep 45; scripts/thread-cpu.sh "$(pgrep -f target/release/gateway | head -1)"
#
# A clock tick is 1/CLK_TCK s (10 ms here): over 20 s a thread's share is
# known to 0.05 % of a core.
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
. "$(dirname "$0")/lib.sh"
pid=${1:?usage: scripts/thread-cpu.sh PID [SECONDS]}
secs=${2:-20}
[[ -d /proc/$pid ]] || { echo "thread-cpu: no process $pid" >&2; exit 2; }

# One line per thread: tid name ticks voluntary involuntary (a thread gone
# meanwhile left out).
snapshot() {
  local tid name ticks
  thread_ticks "$pid" | while read -r tid name ticks; do
    echo "$tid $name $ticks $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' \
      "/proc/$pid/task/$tid/status" 2>/dev/null)"
  done | awk 'NF == 5' | sort
}

before=$(snapshot)
sleep "$secs"
after=$(snapshot)
join <(echo "$before") <(echo "$after") | awk -v secs="$secs" -v hz="$clk_tck" '
  $2 == $6 {
    cpu = ($7 - $3) / hz / secs * 100
    woken = ($8 - $4) / secs; preempted = ($9 - $5) / secs
    all += cpu; wakeups += woken; preemptions += preempted
    printf "%-8s %-18s %6.2f %% of a core  %8.1f wake-ups/s  %7.1f preemptions/s\n", $1, $2, cpu, woken, preempted
  }
  END { printf "%-27s %6.2f %% of a core  %8.1f wake-ups/s  %7.1f preemptions/s\n", "all threads", all, wakeups, preemptions }'
