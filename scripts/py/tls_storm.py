#!/usr/bin/env python3
"""A TLS reconnect storm's figures (scripts/tls-storm.sh).

    tls_storm.py record RESULTS KEY=VALUE...
        appends one phase's figures to RESULTS as a JSON line (whole
        numbers, decimals, true and false as such; anything else a string)
    tls_storm.py summary RESULTS
        the phases side by side, then each kind of storm (resumed, full,
        mosquitto) over its phases, with the ratios; the control fleet's
        figures come from its loadgen reports, whose paths RESULTS holds
"""

import json
import math
import os
import platform
import statistics
import sys


def value(text):
    if text in ("true", "false"):
        return text == "true"
    if text == "null":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def record(results, pairs):
    row = {}
    for pair in pairs:
        key, _, text = pair.partition("=")
        row[key] = value(text)
    with open(results, "a") as out:
        out.write(json.dumps(row) + "\n")


def control(path):
    """The control fleet's uplink in one loadgen run: the measured window's
    p99 end to end and the bridge's part of it (the car's send to the
    gateway's hand-over to its producer), the worst second's p99 (end to
    end), what was sent and lost (judged on the topic read again,
    --recount, when the report has it: the live read on tansu was seen to
    miss records Kafka held)."""
    if not isinstance(path, str) or not os.path.exists(path):
        return None
    report = json.load(open(path))
    up = report["uplink"]
    window = [t for t in report["timeline"] if not t["warmup"] and t["uplink_received"]]
    in_topic = report.get("uplink_in_topic") or {}
    lost = max(0, up["sent"] - in_topic["unique"]) if "unique" in in_topic else up["lost"]
    return {
        "p99": up["latency"]["p99_ms"],
        "bridge": ((up.get("stages") or {}).get("bridge") or {}).get("p99_ms", math.nan),
        "worst": max((t["uplink_p99_ms"] for t in window), default=math.nan),
        "sent": up["sent"],
        "lost": lost,
        "connected": report["connect"]["connected"],
    }


def per_reconnect_us(cpu_ms, back):
    return cpu_ms * 1000 / back if back else math.nan


def net_cpu_ms(row):
    """The storm's CPU less what B spent at its quiet rate (the control
    fleet's share) over the same time; None for mosquitto."""
    if not row.get("quiet_us"):
        return None
    rate = row["quiet_cpu_ms"] / (row["quiet_us"] / 1e6)
    return row["cpu_ms"] - rate * row["us"] / 1e6


def num(x, digits=0):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:,.{digits}f}"


def machine():
    model = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    u = platform.uname()
    return f"{u.node}, {os.cpu_count()} CPUs ({model}), Linux {u.release}"


def table(header, rows, width=16, label=44):
    print(f"{'':{label}}" + "".join(f"{h:>{width}}" for h in header))
    for name, cells in rows:
        print(f"{name:{label}}" + "".join(f"{c:>{width}}" for c in cells))


def summary(results):
    rows = [json.loads(line) for line in open(results) if line.strip()]
    if not rows:
        print("no phase finished")
        return
    for r in rows:
        r["quiet"] = control(r.get("control_quiet"))
        r["storm"] = control(r.get("control_storm"))
        r["net_ms"] = net_cpu_ms(r)
    gateway = [r for r in rows if r["server"] == "gateway"]
    print(f"machine: {machine()}")
    print(f"load average (1 min) at the end: {open('/proc/loadavg').read().split()[0]}")
    first = rows[0]
    print(f"storm: {first['cars']:,} mutual-TLS cars, each publishing every {first['publish_ms']:,} ms; "
          f"gateways of {first['shards']} shards")
    if gateway:
        g = gateway[0]
        print(f"control fleet (gateway phases): {g['control_cars']:,} cars on B, each publishing every "
              f"{g['control_publish_ms']:,} ms; windows of {g['control_secs']} s")
    print()

    def cell(r, fn):
        try:
            return fn(r)
        except (KeyError, TypeError):
            return "—"

    def ctl(r, which, field, digits=1):
        c = r[which]
        return "—" if c is None else num(c[field], digits)

    def secs(r):
        s = num(r["us"] / 1e6, 2)
        return s if r["all_back"] else f">{s}"

    lines = [
        ("load average (1 min) before the phase", lambda r: num(r["load"], 2)),
        ("cars back / cars moved", lambda r: f"{r['back']:,}/{r['moved']:,}"),
        ("  connected, by the cars' count after", lambda r: num(r["car_side"])),
        ("time until all back, s", secs),
        ("  A empty after, s", lambda r: num(None if r.get("a_empty_us") is None else r["a_empty_us"] / 1e6, 2)),
        ("server CPU over that time, ms", lambda r: num(r["cpu_ms"])),
        ("CPU per reconnect, µs", lambda r: num(per_reconnect_us(r["cpu_ms"], r["back"]))),
        ("  less B's quiet rate (control fleet), µs",
         lambda r: num(None if r["net_ms"] is None else per_reconnect_us(r["net_ms"], r["back"]))),
        ("TLS handshakes on B: full", lambda r: num(r["full"])),
        ("  resumed", lambda r: num(r["resumed"])),
        ("  failed", lambda r: num(r["failed"])),
        ("accepts paused by accept_rate (B)", lambda r: num(r["accept_limited"])),
        ("server's open files at the end / limit", lambda r: f"{r['fds']:,}/{r['fd_limit']}"),
        ("control p99, quiet window, ms", lambda r: ctl(r, "quiet", "p99")),
        ("control p99, storm window, ms", lambda r: ctl(r, "storm", "p99")),
        ("  the bridge's part, quiet, ms", lambda r: ctl(r, "quiet", "bridge")),
        ("  the bridge's part, storm, ms", lambda r: ctl(r, "storm", "bridge")),
        ("control worst second's p99, quiet, ms", lambda r: ctl(r, "quiet", "worst")),
        ("control worst second's p99, storm, ms", lambda r: ctl(r, "storm", "worst")),
        ("control sent, quiet / storm",
         lambda r: "—" if r["quiet"] is None else f"{r['quiet']['sent']:,}/{r['storm']['sent']:,}"),
        ("control lost, quiet / storm",
         lambda r: "—" if r["quiet"] is None else f"{r['quiet']['lost']:,}/{r['storm']['lost']:,}"),
    ]
    table([r["phase"] for r in rows], [(name, [cell(r, fn) for r in rows]) for name, fn in lines])

    # Each kind over its phases: times averaged, CPU summed over the cars
    # that came back, the control fleet's p99 at its worst phase.
    kinds = {}
    for r in rows:
        kinds.setdefault(r["kind"], []).append(r)
    agg = {}
    for kind, rs in kinds.items():
        back = sum(r["back"] for r in rs)
        nets = [r["net_ms"] for r in rs]
        agg[kind] = {
            "phases": len(rs),
            "all_back": all(r["all_back"] for r in rs),
            "secs": statistics.mean(r["us"] / 1e6 for r in rs),
            "us": per_reconnect_us(sum(r["cpu_ms"] for r in rs), back),
            "net_us": None if None in nets else per_reconnect_us(sum(nets), back),
            "quiet_p99": max((r["quiet"]["p99"] for r in rs if r["quiet"]), default=None),
            "storm_p99": max((r["storm"]["p99"] for r in rs if r["storm"]), default=None),
            "quiet_bridge": max((r["quiet"]["bridge"] for r in rs if r["quiet"]), default=None),
            "storm_bridge": max((r["storm"]["bridge"] for r in rs if r["storm"]), default=None),
        }
    print()
    order = [k for k in ("resumed", "full", "mosquitto") if k in agg]
    table([f"{k} ({agg[k]['phases']})" for k in order], [
        ("time until all back, s (mean)",
         [num(agg[k]["secs"], 2) + ("" if agg[k]["all_back"] else " (not all)") for k in order]),
        ("CPU per reconnect, µs", [num(agg[k]["us"]) for k in order]),
        ("  less B's quiet rate, µs", [num(agg[k]["net_us"]) for k in order]),
        ("control p99 quiet → storm, ms (worst phase)",
         ["—" if agg[k]["quiet_p99"] is None else f"{agg[k]['quiet_p99']:.1f} → {agg[k]['storm_p99']:.1f}"
          for k in order]),
        ("  the bridge's part, ms",
         ["—" if agg[k]["quiet_bridge"] is None else f"{agg[k]['quiet_bridge']:.1f} → {agg[k]['storm_bridge']:.1f}"
          for k in order]),
    ])
    ratios = []
    if "resumed" in agg and "full" in agg:
        ratios.append(("gateway, full / resumed", agg["full"], agg["resumed"]))
    if "mosquitto" in agg and "full" in agg:
        ratios.append(("mosquitto / gateway full", agg["mosquitto"], agg["full"]))
    if ratios:
        print()
        table(["time", "CPU/reconnect"], [
            (name, [num(a["secs"] / b["secs"] if b["secs"] else math.nan, 2),
                    num(a["us"] / b["us"] if b["us"] else math.nan, 2)])
            for name, a, b in ratios
        ])
    if "mosquitto" in agg:
        print()
        print("mosquitto: restarted in place, every reconnect a full handshake (a new process has a new")
        print("ticket key and no way to share one), no control fleet (a restart takes every car).")


def main():
    command, *args = sys.argv[1:] or [""]
    if command == "record" and len(args) >= 1:
        record(args[0], args[1:])
    elif command == "summary" and len(args) == 1:
        summary(args[0])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
