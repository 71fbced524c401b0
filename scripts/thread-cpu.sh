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
pid=${1:?usage: scripts/thread-cpu.sh PID [SECONDS]}
secs=${2:-20}
[[ -d /proc/$pid ]] || { echo "thread-cpu: no process $pid" >&2; exit 2; }

# One line per thread: tid name utime stime voluntary involuntary.
snapshot() {
  local task stat name
  for task in /proc/"$pid"/task/*; do
    stat=$(cat "$task/stat" 2>/dev/null) || continue
    name=$(tr ' ' '_' <"$task/comm")
    read -r -a fields <<<"${stat##*) }"
    echo "${task##*/} $name ${fields[11]} ${fields[12]} $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {n=$2} END {print v, n}' "$task/status")"
  done | sort
}

before=$(snapshot)
sleep "$secs"
after=$(snapshot)
join <(echo "$before") <(echo "$after") | awk -v secs="$secs" -v hz="$(getconf CLK_TCK)" '
  $2 == $7 {
    cpu = ($8 - $3 + $9 - $4) / hz / secs * 100
    woken = ($10 - $5) / secs; preempted = ($11 - $6) / secs
    all += cpu; wakeups += woken; preemptions += preempted
    printf "%-8s %-18s %6.2f %% of a core  %8.1f wake-ups/s  %7.1f preemptions/s\n", $1, $2, cpu, woken, preempted
  }
  END { printf "%-27s %6.2f %% of a core  %8.1f wake-ups/s  %7.1f preemptions/s\n", "all threads", all, wakeups, preemptions }'
