# What the scripts share; sourced, never run:
#
#   . "$(dirname "$0")/lib.sh"
#
#   log MESSAGE...         "<script>: MESSAGE" on stderr, the name in bold
#                          (log_name, by default the script's name)
#   pids+=($!)             a background process to stop on the way out
#   cleanup_on_exit [NOTE] on exit, Ctrl-C or TERM: stop what the script
#                          started (its own stop_all if it defines one,
#                          else stop_pids "${pids[@]}"), log NOTE, and exit
#                          with the script's status (130 after a signal)
#   stop_pids PID...       TERM, up to 5 s for them to go, then KILL; only
#                          those still children of this script
#   port_open PORT         something listens on 127.0.0.1:PORT
#   await WHAT CMD...      runs CMD every 0.1 s until it succeeds, at most
#                          30 s, else fails saying what it waited for
#   await_secs SECS WHAT CMD...
#                          the same, at most SECS seconds
#   stat_ticks FILE        CPU time (user + system) in clock ticks of a
#                          /proc/PID/stat or /proc/PID/task/TID/stat
#   cpu_ms PID...          the CPU time (user + system) of processes so far, ms
#   thread_ticks PID       one line per thread: "tid name ticks"
#   rss_kib PID            its resident set, KiB (0 when it is gone)
#   start_tansu ADDR LOG [STORAGE]
#                          tansu (STACK_TANSU, default tansu on PATH) on
#                          ADDR (127.0.0.1:PORT), its output in LOG, storage
#                          memory://tansu/ unless given; tansu_pid is its
#                          process; returns once it answers
#   py MODULE ARGS...      runs scripts/py/MODULE.py with python3
#   tls_gateway_toml ADDR PKI [TICKETS]
#                          a gateway.toml with one mutual-TLS listener on
#                          ADDR, its files from carbridge-testpki's PKI dir
#                          (the car's certificate CN is its client id), its
#                          session-ticket keys from TICKETS (default
#                          PKI/tickets)
#   mosquitto_tls_conf PORT PKI
#                          a mosquitto.conf with one mutual-TLS listener on
#                          127.0.0.1:PORT and the same files
#                          (require_certificate, use_identity_as_username)
#   scrape ADDR            an admin endpoint's /metrics (nothing when it does
#                          not answer within 2 s)
#   metric SERIES          the value of SERIES (its name and labels exactly
#                          as exposed) in the Prometheus text on stdin,
#                          summed if it repeats, 0 if absent:
#                          scrape ADDR | metric 'x_total{result="full"}'
#
# shellcheck shell=bash

scripts_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log_name=${log_name:-$(basename "$0" .sh)}
clk_tck=$(getconf CLK_TCK)
pids=()
exit_note=""

log() { printf '\033[1m%s:\033[0m %s\n' "$log_name" "$*" >&2; }

# Only processes still this script's children (or the calling subshell's)
# are signalled: a pid that ended and was reaped may be someone else's by
# now (pid_max is 32,768 here, and a build wraps it in minutes).
stop_pids() {
  local own=() p parent
  for p; do
    parent=$(awk '{ sub(/^.*\) /, ""); print $2 }' "/proc/$p/stat" 2>/dev/null) || continue
    [ "$parent" = "$$" ] || [ "$parent" = "$BASHPID" ] || continue
    own+=("$p")
  done
  [ ${#own[@]} -gt 0 ] || return 0
  kill -TERM "${own[@]}" 2>/dev/null || true
  for _ in $(seq 50); do
    kill -0 "${own[@]}" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "${own[@]}" 2>/dev/null || true
  wait "${own[@]}" 2>/dev/null || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  if declare -F stop_all >/dev/null; then
    stop_all
  else
    stop_pids "${pids[@]}"
  fi
  [ -z "$exit_note" ] || log "$exit_note"
  exit "$status"
}

cleanup_on_exit() {
  exit_note=${1:-}
  trap cleanup EXIT
  trap 'exit 130' INT TERM
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

await() {
  local what=$1
  shift
  await_secs 30 "$what" "$@"
}

# A deadline rather than a count of tries: a command that takes a while
# (a curl to a busy endpoint) does not stretch the bound.
await_secs() {
  local secs=$1 what=$2
  shift 2
  local end=$((SECONDS + secs))
  while true; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    [ "$SECONDS" -lt "$end" ] || break
    sleep 0.1
  done
  echo "$log_name: timed out waiting for $what (${secs} s)${dir:+; see $dir}" >&2
  return 1
}

# Fields 14 and 15 of the stat line, counted after the name in parentheses
# (which may hold spaces and parentheses); 0 for a process that is gone.
stat_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "$1" 2>/dev/null || echo 0; }

cpu_ms() {
  local ticks=0 pid
  for pid; do ticks=$((ticks + $(stat_ticks "/proc/$pid/stat"))); done
  echo $((ticks * 1000 / clk_tck))
}

# The thread's name with its spaces as "_", so that the line splits on
# spaces.
thread_ticks() {
  local task name
  for task in /proc/"$1"/task/*; do
    name=$(tr ' ' '_' <"$task/comm" 2>/dev/null) || continue
    echo "${task##*/} $name $(stat_ticks "$task/stat")"
  done
}

rss_kib() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }

start_tansu() {
  local addr=$1 out=$2 storage=${3:-memory://tansu/}
  "${STACK_TANSU:-tansu}" broker --listener-url "tcp://$addr" --advertised-listener-url "tcp://$addr" \
    --storage-engine "$storage" >"$out" 2>&1 &
  # shellcheck disable=SC2034 # the caller's
  tansu_pid=$!
  await "tansu to answer on $addr" port_open "${addr##*:}"
}

# A gateway settings file for the uplink alone, against Kafka at $2 (the
# mapping of "^UL/.+" to cs.uplink, no downlink), an admin endpoint on $3,
# and any further tables ($4, whole TOML text) into $1.
uplink_gateway_toml() {
  cat >"$1" <<TOML
[[mapping]]
mqtt = "^UL/.+"
kafka = "cs.uplink"
[kafka.properties]
"bootstrap.servers" = "$2"
[downlink]
enabled = false
[admin]
listen = "$3"
${4:-}
TOML
}

# Starts librdkafka's mock cluster: binary $1 (carbridge-mockbroker), its
# address written to file $2, its output appended to $3, the rest of the
# arguments its own. Once it listens: its pid in mock_pid, its bootstrap
# address in mock_bootstrap.
start_mockbroker() {
  local binary=$1 file=$2 out=$3
  shift 3
  rm -f "$file"
  "$binary" --bootstrap-file "$file" "$@" >>"$out" 2>&1 &
  # shellcheck disable=SC2034 # the caller's
  mock_pid=$!
  await "the mock cluster's address" test -s "$file" || return 1
  # shellcheck disable=SC2034 # the caller's
  mock_bootstrap=$(cat "$file")
}

tls_gateway_toml() {
  cat <<EOF
[[listeners]]
address = "$1"
client_id = "{identity}"
[listeners.tls]
cert = "$2/server.crt"
key = "$2/server.key"
client_auth = "required"
client_ca = "$2/ca.crt"
ticket_keys = "${3:-$2/tickets}"
EOF
}

mosquitto_tls_conf() {
  cat <<EOF
listener $1 127.0.0.1
cafile $2/ca.crt
certfile $2/server.crt
keyfile $2/server.key
require_certificate true
use_identity_as_username true
max_keepalive 65535
EOF
}

scrape() { curl -fsS --max-time 2 "http://$1/metrics" 2>/dev/null || true; }

metric() { awk -v s="$1" '$1 == s { v += $2 } END { printf "%.0f\n", v }'; }

py() {
  local module=$1
  shift
  python3 "$scripts_dir/py/$module.py" "$@"
}
