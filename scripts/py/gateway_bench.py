#!/usr/bin/env python3
"""The gateway alone at full speed (scripts/gateway-bench.sh).

    gateway_bench.py report NAME OUT SECS CARS PAYLOAD CLK_TCK LOAD RESULTS
        the figures of one measurement from the samples in OUT
        (threads-start, threads-end: "tid name ticks" per gateway thread;
        sample-start, sample-end: "sink_ticks blaster_ticks acked received
        pauses paused_secs"); appends "NAME per-core-rate" to RESULTS
    gateway_bench.py compare RESULTS REV
        the medians of REV's and this tree's ("now") per-core rates
"""

import sys
from collections import defaultdict
from statistics import median


def report(name, out, secs, cars, payload, hz, load, results):
    secs, cars, payload, hz = float(secs), int(cars), int(payload), float(hz)

    def threads(which):
        by = defaultdict(float)
        for line in open(f"{out}/threads-{which}"):
            _, thread, ticks = line.split()
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


def compare(results, rev):
    rates = defaultdict(list)
    for line in open(results):
        name, rate = line.split()
        rates[name].append(float(rate))
    before, now = median(rates[rev]), median(rates["now"])
    print(f"gateway-bench: PUBLISH per second per core, medians of {len(rates['now'])} rounds: "
          f"{rev} {before:,.0f}, now {now:,.0f}: now / {rev} = {now / before:.3f}")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"report": report, "compare": compare}[command](*args)
