#!/usr/bin/env python3
"""TLS side by side, the gateway and mosquitto (scripts/tls-bench.sh).

    tls_bench.py server NAME RSS_BEFORE_KIB RSS_IDLE_KIB CARS ROUNDS
        one server's result as a JSON line: its memory per idle TLS
        connection and tls_connect's rounds (ROUNDS: one JSON per line)
    tls_bench.py uplink NAME GATEWAY_CPU_MS REPORT
        one listener's uplink run (loadgen's REPORT) as a JSON line
    tls_bench.py summary RESULTS UPLINK
        the two as tables, with the ratios (UPLINK "-": no uplink run)
    tls_bench.py gate RESULTS GOAL_BYTES
        exit 3 when the gateway's bytes per idle TLS connection are above
        GOAL_BYTES or above mosquitto's (GOAL_BYTES empty: no gate)
"""

import json
import sys


def server(name, before, after, cars, rounds):
    before, after, cars = int(before), int(after), int(cars)
    result = {"server": name, "rss_before_kib": before, "rss_idle_kib": after,
              "bytes_per_connection": (after - before) * 1024 / cars}
    for line in open(rounds):
        r = json.loads(line)
        result[r["round"]] = r
    print(json.dumps(result))


def uplink(name, cpu_ms, report, steady_cpu_ms, steady_secs):
    report = json.load(open(report))
    up = report["uplink"]
    received = sum(t["uplink_received"] for t in report["timeline"])
    # Loss judged on the topic read again after the run (--recount): the
    # live read on tansu was seen to miss records that Kafka held.
    in_topic = report.get("uplink_in_topic") or {}
    lost_in_topic = up["sent"] - in_topic["unique"] if "unique" in in_topic else None
    print(json.dumps({"listener": name, "gateway_cpu_secs": int(cpu_ms) / 1000, "received": received,
                      "lost": up["lost"], "lost_in_topic": lost_in_topic,
                      "achieved_rate": up["achieved_rate"], "p99_ms": up["latency"]["p99_ms"],
                      # The steady part: the measured window's send rate
                      # over those seconds, no connects in them.
                      "steady_cpu_secs": int(steady_cpu_ms) / 1000,
                      "steady_received": up["achieved_rate"] * float(steady_secs)}))


def summary(results, uplinks):
    results = {r["server"]: r for r in map(json.loads, open(results))}
    g, m = results["gateway"], results["mosquitto"]
    print(f"load average (1 min) at the end: {open('/proc/loadavg').read().split()[0]}")
    print(f"{'':28}{'gateway':>14}{'mosquitto':>14}{'ratio':>8}")
    for label, key in (("full handshakes, cars/s", "full"), ("resumed, cars/s", "resumed")):
        gr, mr = g[key]["rate"], m[key]["rate"]
        print(f"{label:28}{gr:>14,.0f}{mr:>14,.0f}{gr / mr if mr else float('nan'):>8.2f}")
    for label, key in (("  of them resumed", "resumed"),):
        print(f"{label:28}{g[key]['resumed']:>14,}{m[key]['resumed']:>14,}")
    print(f"{'failed (full + resumed)':28}{g['full']['failed'] + g['resumed']['failed']:>14,}{m['full']['failed'] + m['resumed']['failed']:>14,}")
    gb, mb = g["bytes_per_connection"], m["bytes_per_connection"]
    print(f"{'bytes per idle connection':28}{gb:>14,.0f}{mb:>14,.0f}{gb / mb if mb else float('nan'):>8.2f}")
    # Each listener's phases (plain and plain-2, tls and tls-2) summed.
    if uplinks == "-":
        return
    uplink = {}
    for r in map(json.loads, open(uplinks)):
        name = r["listener"].split("-")[0]
        if name in uplink:
            u = uplink[name]
            for key in ("gateway_cpu_secs", "received", "lost", "steady_cpu_secs", "steady_received"):
                u[key] += r[key]
            u["lost_in_topic"] = None if None in (u["lost_in_topic"], r["lost_in_topic"]) \
                else u["lost_in_topic"] + r["lost_in_topic"]
            u["achieved_rate"] = (u["achieved_rate"] + r["achieved_rate"]) / 2
            u["phases"].append(r)
        else:
            uplink[name] = dict(r, phases=[r])
    p, t = uplink["plain"], uplink["tls"]
    print()
    print(f"{'uplink, 2,000 cars, gateway':28}{'plain':>14}{'TLS':>14}{'ratio':>8}")
    print(f"{'  sent per second':28}{p['achieved_rate']:>14,.0f}{t['achieved_rate']:>14,.0f}{t['achieved_rate'] / p['achieved_rate']:>8.2f}")
    print(f"{'  lost, live read':28}{p['lost']:>14,}{t['lost']:>14,}")
    topic = lambda r: "—" if r.get("lost_in_topic") is None else f"{r['lost_in_topic']:,}"
    print(f"{'  lost, topic read again':28}{topic(p):>14}{topic(t):>14}")
    def rates(label, messages, cpu_secs):
        """Messages per CPU-second: both listeners, their ratio, then each phase."""
        rate = lambda r: r[messages] / r[cpu_secs] if r[cpu_secs] else float("nan")
        print(f"{label:28}{rate(p):>14,.0f}{rate(t):>14,.0f}{rate(t) / rate(p):>8.2f}")
        for n in range(max(len(p["phases"]), len(t["phases"]))):
            ph = lambda r: f"{rate(r['phases'][n]):,.0f}" if n < len(r["phases"]) else "—"
            print(f"{f'    phase {n + 1}':28}{ph(p):>14}{ph(t):>14}")

    rates("  messages per gateway CPU-s", "received", "gateway_cpu_secs")
    # Without the 2,000 cars' connects: what a car that stays costs.
    rates("  the same, connects left out", "steady_received", "steady_cpu_secs")


def gate(results, goal):
    if not goal:
        return
    results = {r["server"]: r for r in map(json.loads, open(results))}
    ours = results["gateway"]["bytes_per_connection"]
    theirs = results["mosquitto"]["bytes_per_connection"]
    failed = []
    if ours > int(goal):
        failed.append(f"above the goal of {int(goal):,} bytes")
    if ours > theirs:
        failed.append(f"above mosquitto's {theirs:,.0f} bytes")
    if failed:
        print(f"TLS memory gate: {ours:,.0f} bytes per idle TLS connection, " + " and ".join(failed),
              file=sys.stderr)
        sys.exit(3)
    print(f"TLS memory gate: {ours:,.0f} bytes per idle TLS connection, within {int(goal):,} "
          f"and mosquitto's {theirs:,.0f}", file=sys.stderr)


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    {"server": server, "uplink": uplink, "summary": summary, "gate": gate}[command](*args)
