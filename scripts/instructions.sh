#!/usr/bin/env bash
# Instruction counts of the hot paths (benches/benches/instructions.rs),
# each under callgrind, against the committed baseline
# benches/instructions.baseline. Counts do not drift with the machine's
# load as times do, so this can fail a build (scripts/test.sh runs it).
#
#   scripts/instructions.sh            measure and compare: exit 1 when a
#                                      count grew by more than the tolerance,
#                                      or a benchmark and the baseline differ
#                                      in their names; also when the codec
#                                      decodes a PUBLISH in more than half
#                                      mqttbytes' instructions (into owned
#                                      packets or in place), or in place in
#                                      more than half its time
#   scripts/instructions.sh --accept   measure and write the counts as the
#                                      new baseline (commit it)
#
# INSTRUCTIONS_TOLERANCE  allowed growth in percent (default 3)
#
# A count depends on the compiler and on the CPU features the code picks at
# run time (memchr and glibc choose AVX2 routines where the CPU has them),
# so the baseline holds for the toolchain and kind of machine it names in
# its header: after a toolchain upgrade, check the table and accept.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

baseline=benches/instructions.baseline
tolerance="${INSTRUCTIONS_TOLERANCE:-3}"
accept=""
case "${1:-}" in
  "") ;;
  --accept) accept=1 ;;
  *) echo "usage: $0 [--accept]" >&2; exit 2 ;;
esac

if ! command -v valgrind >/dev/null; then
  echo "instructions: valgrind is missing (scripts/setup.sh installs it)" >&2
  exit 2
fi

# The bench profile: release code, and the same build as `cargo bench`.
exe=$(cargo bench -p benches --bench instructions --no-run --locked --message-format=json |
  grep -o '"executable":"[^"]*"' | tail -n 1 | cut -d'"' -f4)
if [ -z "$exe" ] || [ ! -x "$exe" ]; then
  echo "instructions: no benchmark binary built" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One callgrind run per benchmark, counting only inside `instructions::gate`
# (the setup and the unmeasured warm-up run outside it).
: >"$work/counts"
for name in $("$exe" --list); do
  if ! valgrind --tool=callgrind --toggle-collect='instructions::gate' \
    --callgrind-out-file="$work/$name.out" "$exe" "$name" >"$work/$name.log" 2>&1; then
    cat "$work/$name.log" >&2
    echo "instructions: $name failed under valgrind" >&2
    exit 2
  fi
  count=$(sed -n 's/^summary: *\([0-9][0-9]*\).*/\1/p' "$work/$name.out")
  if [ -z "$count" ] || [ "$count" -eq 0 ]; then
    echo "instructions: $name: nothing counted; is instructions::gate still its own function?" >&2
    exit 2
  fi
  echo "$name $count" >>"$work/counts"
done

rustc_version=$(rustc -V)
valgrind_version=$(valgrind --version)
cpu=$(sed -n 's/^model name[[:space:]]*: *//p' /proc/cpuinfo | head -n 1)
grep -qw avx2 /proc/cpuinfo && cpu="$cpu, avx2" || cpu="$cpu, no avx2"

if [ -n "$accept" ]; then
  {
    echo "# Instructions (callgrind Ir) per benchmark of benches/benches/instructions.rs."
    echo "# Written by scripts/instructions.sh --accept; valid for this toolchain and CPU:"
    echo "# toolchain: $rustc_version"
    echo "# valgrind: $valgrind_version"
    echo "# cpu: $cpu"
    cat "$work/counts"
  } >"$baseline"
  echo "instructions: baseline written to $baseline:"
  cat "$work/counts"
  exit 0
fi

if [ ! -f "$baseline" ]; then
  echo "instructions: no $baseline; write one with $0 --accept" >&2
  exit 1
fi
for field in toolchain valgrind cpu; do
  case $field in
    toolchain) now=$rustc_version ;;
    valgrind) now=$valgrind_version ;;
    cpu) now=$cpu ;;
  esac
  then=$(sed -n "s/^# $field: //p" "$baseline")
  if [ "$then" != "$now" ]; then
    echo "instructions: note: the baseline's $field is '$then', this one '$now':" \
      "counts may differ for that alone; if so, accept them with $0 --accept"
  fi
done

# The table, and the verdict: 1 for a count beyond the tolerance or a name
# in only one of the two lists.
awk -v tolerance="$tolerance" '
  FNR == NR { if ($0 !~ /^#/ && NF == 2) { old[$1] = $2; order[++n] = $1 } next }
  { new[$1] = $2; if (!($1 in old)) order[++n] = $1 }
  END {
    limit = 1 + tolerance / 100; status = 0
    printf "%-26s %12s %12s %8s\n", "benchmark", "baseline", "now", "ratio"
    for (i = 1; i <= n; i++) {
      name = order[i]
      if (!(name in new)) {
        printf "%-26s %12s %12s %8s  not measured: gone from the benchmarks?\n", name, old[name], "-", "-"
        status = 1; continue
      }
      if (!(name in old)) {
        printf "%-26s %12s %12s %8s  not in the baseline\n", name, "-", new[name], "-"
        status = 1; continue
      }
      ratio = new[name] / old[name]; verdict = ""
      if (ratio > limit) { verdict = sprintf("  FAIL: more than +%s %%", tolerance); status = 1 }
      else if (ratio < 1 / limit) verdict = "  smaller: accept to tighten the baseline"
      printf "%-26s %12d %12d %8.4f%s\n", name, old[name], new[name], ratio, verdict
    }
    exit status
  }' "$baseline" "$work/counts" || {
  echo "instructions: a count grew by more than ${tolerance} % (INSTRUCTIONS_TOLERANCE), or the benchmarks and $baseline name different ones." >&2
  echo "If the change is meant (or the toolchain changed), accept it: $0 --accept, and commit $baseline." >&2
  exit 1
}
echo "instructions: within ${tolerance} % of $baseline"

# The codec against mqttbytes on the same 1,000 frames, in instructions (a
# ratio that does not move with the machine's clock, load or neighbours),
# decoded into owned packets and in place (the gateway's path): each must
# stay at least 2 (issue 13; BENCHMARKS.md, "The codec against mqttbytes").
awk '$1 == "decode_publish" { owned = $2 } $1 == "decode_publish_in_place" { in_place = $2 }
  $1 == "decode_publish_mqttbytes" { theirs = $2 }
  END {
    if (!owned || !in_place || !theirs) { print "codec: a decode benchmark is missing"; exit 1 }
    status = 0
    for (i = 1; i <= 2; i++) {
      name = i == 1 ? "into owned packets" : "in place"
      ratio = theirs / (i == 1 ? owned : in_place)
      verdict = ratio >= 2 ? "ok" : "FAIL: below 2"
      if (ratio < 2) status = 1
      printf "codec: mqttbytes needs %.2fx the instructions of this codec decoding %s (goal >= 2: %s)\n", ratio, name, verdict
    }
    exit status
  }' "$work/counts" || {
  echo "instructions: the codec decodes in less than half mqttbytes' instructions no longer" >&2
  exit 1
}

# The same in time, natively: rounds alternating between the decoders,
# medians compared (benches/benches/instructions.rs, timed_codec_ratio).
# The in-place ratio is judged; the owned one is printed.
"$exe" --timed || {
  echo "instructions: the in-place decode is no longer 2x mqttbytes in time" >&2
  exit 1
}
