#!/usr/bin/env python3
"""What downlink receipts cost (scripts/receipts-bench.sh).

    receipts_bench.py run DIR NAME ROUND
        one line for the run in DIR (scripts/stack.sh's server-cpu.txt and
        report.json): what was delivered and the CPU per delivered message
    receipts_bench.py summary RUNS
        the medians of those lines per variant, and the rate ratios
"""

import collections
import json
import statistics
import sys


def run(d, name, rnd):
    cpu = dict(kv.split("=") for kv in open(f"{d}/server-cpu.txt").read().split())
    r = json.load(open(f"{d}/report.json"))
    dl = r["downlink"]
    bridge = float(cpu["gateway_ms"]) + float(cpu["router_ms"])
    server = bridge + float(cpu["broker_ms"])
    n = int(cpu["downlink"])
    print(f"{name} {rnd} delivered={dl['received']}/{dl['sent']} lost={dl['lost']} "
          f"rate={dl['received'] / r['measured_secs']:.0f}/s p99_ms={dl['latency']['p99_ms']:.1f} "
          f"gateway_ms={cpu['gateway_ms']} router_ms={cpu['router_ms']} broker_ms={cpu['broker_ms']} "
          f"bridge_us={bridge * 1000 / n:.2f} server_us={server * 1000 / n:.2f} "
          f"receipts={(r.get('receipts') or {}).get('answered', 0)}")


def summary(runs):
    for part in ("bridge", "server"):
        cost = collections.defaultdict(list)
        for line in open(runs):
            name, _, *fields = line.split()
            kv = dict(f.split("=") for f in fields)
            cost[name].append(float(kv[f"{part}_us"]))
        med = {k: statistics.median(v) for k, v in cost.items()}
        what = "gateway + router" if part == "bridge" else "gateway + router + broker"
        print(f"{what}: CPU per delivered downlink message")
        for k in ("before", "after", "receipts"):
            print(f"  {k:9} median {med[k]:.2f} µs (runs: {', '.join(f'{x:.2f}' for x in cost[k])}); "
                  f"one core carries {1e6 / med[k]:,.0f}/s")
        a, b, r = med["after"], med["before"], med["receipts"]
        print(f"  rate ratio after/before (no receipts): {b / a:.3f} (goal >= 0.97)")
        print(f"  rate ratio receipts/after (a receipt on every request): {a / r:.3f} (goal >= 0.8)")


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"run": run, "summary": summary}[command](*args)
