#!/usr/bin/env python3
"""The local brokers alone (scripts/broker-bench.sh).

    broker_bench.py annotate RUN.json CPU_MS_BEFORE CPU_MS_AFTER
        adds the broker's CPU seconds over the run and the load average
        after it to one run's JSON (broker_bench --json)
    broker_bench.py table DIR BROKER...
        prints every run in DIR as a Markdown table, by broker then rate
"""

import glob
import json
import os
import sys


def annotate(path, before_ms, after_ms):
    run = json.load(open(path))
    run["broker_cpu_s"] = round((int(after_ms) - int(before_ms)) / 1000, 2)
    run["load_after"] = open("/proc/loadavg").read().split()[0]
    json.dump(run, open(path, "w"))


def table(dir, *brokers):
    runs = [json.load(open(p)) for p in glob.glob(os.path.join(dir, "*.json"))]
    runs.sort(key=lambda r: (brokers.index(r["broker"]), r["rate"] or 10**9))
    print("| broker | asked/s | acked/s | lost | ack p50 / p99 / max ms | fetch p50 / p99 / max ms | broker CPU ms per 1,000 | load after |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        asked = "flat out" if r["rate"] == 0 else f'{r["rate"]:,}'
        lost = r["sent"] - r["read"]
        cpu = 1000 * r["broker_cpu_s"] / max(r["acked"], 1) * 1000
        print(f'| {r["broker"]} | {asked} | {r["acked_per_sec"]:,.0f} | {lost:,} | '
              f'{r["ack_p50_ms"]:.1f} / {r["ack_p99_ms"]:.1f} / {r["ack_max_ms"]:.0f} | '
              f'{r["fetch_p50_ms"]:.1f} / {r["fetch_p99_ms"]:.1f} / {r["fetch_max_ms"]:.0f} | '
              f'{cpu:.1f} | {r["load_after"]} |')


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"annotate": annotate, "table": table}[command](*args)
