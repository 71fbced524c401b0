#!/usr/bin/env python3
"""The main job's own figures (scripts/stack.sh): what the servers cost,
which loadgen cannot see from the cars.

    stack_figures.py server ...     the gateways' CPU per PUBLISH (loadgen's
                                    run, and its measured window alone) and
                                    memory per connection: printed, and
                                    written with the stack's setup as the
                                    JSON that `loadgen verdict --stack` puts
                                    in the report
    stack_figures.py mosquitto ...  mosquitto's CPU per PUBLISH, the same way
    stack_figures.py ingest GATEWAY.json MOSQUITTO.json
    stack_figures.py baseline GATEWAY.json RAW.json
                                    the gateway's uplink rate against
                                    mosquitto's or a raw producer's

One line per figure on stdout; the script logs them.
"""

import argparse
import json
import sys


def window(prefix, secs, count=None):
    """The CPU figure of the measured window from the samples PREFIX.start
    and PREFIX.end ("cpu_ms publish" each), or None without both; `count`
    counts the PUBLISH when the samples' own count does not."""
    try:
        (ms0, n0), (ms1, n1) = (
            map(int, open(f"{prefix}.{end}").read().split()) for end in ("start", "end")
        )
    except (OSError, ValueError):
        return None
    n = count if count is not None else n1 - n0
    if ms1 < ms0 or n < 0:
        return None  # a process gone between the samples: its counters with it
    return cpu_use(ms1 - ms0, secs, n)


def cpu_use(ms, secs, publish, downlink=None):
    """The report's CpuUse."""
    use = {
        "cpu_ms": ms,
        "secs": secs,
        "core_percent": ms / 10 / secs if secs else 0.0,
        "publish": publish,
    }
    if publish:
        use["us_per_publish"] = ms * 1000 / publish
    if downlink is not None:
        use["downlink"] = downlink
    return use


def window_line(use):
    per = f"{use['us_per_publish']:.1f} µs per PUBLISH" if use["publish"] else "no PUBLISH"
    return (
        f"{use['cpu_ms'] / 1000:.2f} s over the {use['secs']:.0f} s measured window "
        f"({use['core_percent']:.1f} % of one core): {per} ({use['publish']:,}; "
        f"the connect storm of the warm-up left out)"
    )


def memory(samples, idle_kib):
    """Memory per connection from "time connections resident_kib" samples:
    the growth over the idle gateways at the sample with the most
    connections, divided by them; None without connections."""
    best, kib = 0, 0
    for line in open(samples):
        fields = line.split()
        if len(fields) == 3 and int(fields[1]) > best:
            best, kib = int(fields[1]), int(fields[2])
    if best == 0:
        return None
    return {
        "connections": best,
        "growth_mib": (kib - idle_kib) / 1024,
        "idle_mib": idle_kib / 1024,
        "bytes_per_connection": (kib - idle_kib) * 1024 / best,
    }


def server(args):
    run = None
    if min(args.cpu_ms, args.uplink, args.downlink) < 0:
        print("gateway CPU: not measured (a gateway exited during the run, its counters with it)")
    else:
        run = cpu_use(args.cpu_ms, args.secs, args.uplink, args.downlink)
        per = f"{run['us_per_publish']:.1f} µs per uplink PUBLISH" if args.uplink else "no uplink"
        print(
            f"gateway CPU (user + system, all gateways): {args.cpu_ms / 1000:.2f} s over "
            f"{args.secs:.0f} s of loadgen ({run['core_percent']:.1f} % of one core): {per} "
            f"({args.uplink:,} PUBLISH, {args.downlink:,} downlink deliveries, {args.cars:,} cars)"
        )
    measured = window(args.window, args.duration) if run else None
    if measured:
        print(f"gateway CPU in the measured window: {window_line(measured)}")
    held = memory(args.memory, args.idle_kib)
    if held:
        print(
            f"gateway memory: {held['connections']} connections at most, resident "
            f"{(held['growth_mib']):.1f} MiB over {args.gateways} idle gateway(s) "
            f"({held['idle_mib']:.1f} MiB): {int(held['bytes_per_connection'])} bytes per connection"
        )
    else:
        print("gateway memory: no connections seen")
    facts = {
        "broker": args.broker,
        "broker_detail": args.broker_detail,
        "tls": args.tls,
        "tls_resume": args.tls_resume,
        "gateways": args.gateways,
        "shards": args.shards,
        "fetch_wait_ms": args.fetch_wait_ms,
        "profile": args.profile,
    }
    if run:
        facts["gateway_cpu"] = run
    if measured:
        facts["gateway_cpu_window"] = measured
    if held:
        facts["gateway_memory"] = held
    with open(args.json, "w") as out:
        json.dump(facts, out, indent=2)


def received(report, measured_only=True):
    """Uplink messages received in the report's measured window (or the
    whole run)."""
    return sum(t["uplink_received"] for t in report["timeline"] if not (measured_only and t["warmup"]))


def mosquitto(args):
    report = json.load(open(args.report))
    n = received(report, measured_only=False)
    ms, secs = args.cpu_ms, args.secs
    print(
        f"mosquitto CPU (user + system): {ms / 1000:.2f} s over {secs:.0f} s ({ms / 10 / secs:.1f} % of one core): "
        + (f"{ms * 1000 / n:.1f} µs per PUBLISH delivered to its subscribers ({n:,}, warm-up included)" if n else "nothing delivered")
    )
    measured = window(args.window, args.duration, received(report))
    if measured:
        print(f"mosquitto CPU in the measured window: {window_line(measured)}")


def rate(path):
    report = json.load(open(path))
    return received(report) / report["measured_secs"]


def ratio(a, b):
    return round(a / b, 3) if b else "n/a"


def ingest(args):
    gw, mq = rate(args.gateway), rate(args.other)
    print(f"uplink ingest: gateway {gw}/s into Kafka, mosquitto {mq}/s to its subscribers, ratio {ratio(gw, mq)}")


def baseline(args):
    gw, raw = rate(args.gateway), rate(args.other)
    print(f"uplink into Kafka: gateway {gw}/s, raw producer {raw}/s, ratio {ratio(gw, raw)}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    s = sub.add_parser("server", help="the gateways' CPU and memory, and the stack's facts as JSON")
    s.add_argument("--cpu-ms", type=int, required=True, help="all gateways' CPU over loadgen's run")
    s.add_argument("--secs", type=float, required=True, help="loadgen's run, seconds")
    s.add_argument("--uplink", type=int, required=True, help="uplink PUBLISH the gateways received")
    s.add_argument("--downlink", type=int, required=True, help="downlink messages they delivered")
    s.add_argument("--cars", type=int, required=True)
    s.add_argument("--window", required=True, help="the measured window's samples: PREFIX.start, PREFIX.end")
    s.add_argument("--duration", type=float, required=True, help="the measured window, seconds")
    s.add_argument("--memory", required=True, help="'time connections resident_kib' samples")
    s.add_argument("--idle-kib", type=int, required=True, help="the idle gateways' resident set")
    s.add_argument("--broker", required=True, choices=["mock", "tansu"])
    s.add_argument("--broker-detail", required=True)
    s.add_argument("--tls", action="store_true")
    s.add_argument("--tls-resume", action="store_true")
    s.add_argument("--gateways", type=int, required=True)
    s.add_argument("--shards", type=int, required=True, help="per gateway")
    s.add_argument("--fetch-wait-ms", type=int, required=True)
    s.add_argument("--profile", required=True)
    s.add_argument("--json", required=True, help="where to write the stack's facts")
    s.set_defaults(run=server)

    m = sub.add_parser("mosquitto", help="mosquitto's CPU per PUBLISH")
    m.add_argument("--cpu-ms", type=int, required=True)
    m.add_argument("--secs", type=float, required=True)
    m.add_argument("--report", required=True, help="loadgen's report of the peer run")
    m.add_argument("--window", required=True)
    m.add_argument("--duration", type=float, required=True)
    m.set_defaults(run=mosquitto)

    for name, run, other in (("ingest", ingest, "mosquitto's"), ("baseline", baseline, "the raw producer's")):
        r = sub.add_parser(name, help=f"the gateway's uplink rate against {other}")
        r.add_argument("gateway")
        r.add_argument("other")
        r.set_defaults(run=run)

    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    sys.exit(main())
