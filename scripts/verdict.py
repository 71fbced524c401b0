#!/usr/bin/env python3
"""The main job's verdict: did the system keep up, and whose latency is it?

Reads loadgen's JSON report, the broker probe's totals (kafka_rtt run
beside the fleet: produce -> consume through the same broker at the same
time, nothing of the bridge in between) and the gateway's and router's
metrics, and says in plain words whether the run was healthy, which goals
it met, and which part of the latency is the broker's.

    verdict.py REPORT.json PROBE.json --broker NAME [--gateway-metrics URL ...] [--router-metrics URL]
"""

import argparse
import json
import os
import sys
import urllib.request

UPLINK_GOAL_MS = 50.0
DOWNLINK_GOAL_MS = 20.0
# A probe this slow means the broker itself is the bottleneck.
BROKER_SLOW_MS = 250.0


def scrape(url):
    """Prometheus text page -> {sample name with labels: value}; {} if down."""
    try:
        with urllib.request.urlopen(url, timeout=5) as page:
            text = page.read().decode()
    except OSError:
        return {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or " " not in line:
            continue
        name, value = line.rsplit(" ", 1)
        try:
            samples[name] = samples.get(name, 0.0) + float(value)
        except ValueError:
            pass
    return samples


def histogram(samples, name):
    """(count, mean ms, p50 ms, p99 ms) of a Prometheus histogram in
    seconds, percentiles interpolated within buckets; None if absent."""
    buckets = []
    for key, value in samples.items():
        prefix = name + '_bucket{le="'
        if key.startswith(prefix):
            bound = key[len(prefix):-2]
            buckets.append((float("inf") if bound == "+Inf" else float(bound), value))
    total = samples.get(name + "_count", 0)
    if not buckets or total == 0:
        return None
    buckets.sort()

    def quantile(q):
        want, lower, below = q * total, 0.0, 0.0
        for bound, cumulative in buckets:
            if cumulative >= want:
                if bound == float("inf"):
                    return lower * 1e3
                inside = cumulative - below
                share = (want - below) / inside if inside else 1.0
                return (lower + (bound - lower) * share) * 1e3
            lower, below = bound, cumulative
        return lower * 1e3

    mean = samples.get(name + "_sum", 0) / total * 1e3
    return total, mean, quantile(0.5), quantile(0.99)


def hop_lines(gateway, router):
    """The downlink's hops from the bridge's own histograms (whole run)."""
    hops = [
        ("Kafka: request produced -> router read", histogram(router, "carbridge_router_request_age_at_read_seconds")),
        ("router: -> routed record produced (age)", histogram(router, "carbridge_router_request_age_at_routing_seconds")),
        ("Kafka: routed -> gateway read", histogram(gateway, "carbridge_gateway_downlink_age_at_read_seconds")),
        ("gateway: read -> written to the car's socket", histogram(gateway, "carbridge_gateway_downlink_write_seconds")),
    ]
    if any(h is None for _, h in hops):
        return []
    lines = [f"{'':<9} hops, from the router's and gateway's histograms (whole run, bucketed):"]
    for label, (n, mean, p50, p99) in hops:
        lines.append(f"{'':<11} {label:<46} mean {mean:6.1f} ms, p50 {p50:6.1f} ms, p99 {p99:6.1f} ms")
    (_, read, _, _), (_, routed, _, _), (_, hop2, _, _), (_, write, _, _) = (h for _, h in hops)
    bridge = max(routed - read, 0.0) + write
    lines.append(
        f"{'':<11} by the means: the bridge's own share {bridge:.1f} ms "
        f"(router {max(routed - read, 0.0):.1f}, gateway {write:.1f}), Kafka's two hops {read + hop2:.1f} ms"
    )
    return lines


def count(n):
    return f"{int(n):,}"


def flow_lines(name, flow, goal_ms, probe, hops):
    """Lines for one direction, and (met, lost) for the result."""
    sent, received, lost = flow["sent"], flow["received"], flow["lost"]
    latency = flow["latency"]
    p50, p99 = latency["p50_ms"], latency["p99_ms"]
    rate = flow.get("achieved_rate", 0.0)
    met = lost == 0 and p99 < goal_ms
    lines = [
        f"{name:<9} {count(sent)} sent ({rate:,.0f}/s measured), {count(received)} arrived, "
        + ("none lost" if lost == 0 else f"{count(lost)} LOST"),
        f"{'':<9} latency p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(goal p99 < {goal_ms:.0f} ms): {'met' if p99 < goal_ms else 'missed'}",
    ]
    stages = flow.get("stages")
    if stages:
        # Split at each record's Kafka timestamp: measured, not estimated.
        lines.append(
            f"{'':<9} the bridge (car -> gateway -> its producer): p50 {stages['bridge']['p50_ms']:.1f} ms, "
            f"p99 {stages['bridge']['p99_ms']:.1f} ms"
        )
        lines.append(
            f"{'':<9} Kafka (producer batching, broker, consumer fetch): p50 {stages['kafka']['p50_ms']:.1f} ms, "
            f"p99 {stages['kafka']['p99_ms']:.1f} ms"
        )
    elif probe:
        broker50, broker99 = hops * probe["p50_ms"], hops * probe["p99_ms"]
        where = "one hop" if hops == 1 else f"{hops} hops"
        lines.append(
            f"{'':<9} the broker's part, estimated ({where} at the probe's figures, "
            f"a quiet topic of its own): p50 {broker50:.1f} ms, p99 {broker99:.1f} ms"
        )
        lines.append(
            f"{'':<9} the rest (the bridge, the clients, and whatever the busy topics cost "
            f"the broker beyond the probe's): about {max(p50 - broker50, 0):.1f} ms at the median"
        )
    return lines, met, lost


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report")
    parser.add_argument("probe")
    parser.add_argument("--broker", default="the broker")
    parser.add_argument("--gateway-metrics", action="append", default=[])
    parser.add_argument("--router-metrics")
    args = parser.parse_args()

    with open(args.report) as f:
        report = json.load(f)
    try:
        with open(args.probe) as f:
            probe = json.load(f)
    except (OSError, ValueError):
        probe = None

    out = [f"== verdict (broker: {args.broker}) =="]
    connect = report["connect"]
    connected, cars = connect["connected"], connect["cars"]
    out.append(
        (
            f"cars      {count(cars)} cars, {count(connected)} connections "
            f"({count(connected - cars)} of them reconnects)"
            if connected > cars
            else f"cars      {count(connected)} of {count(cars)} connected"
        )
        + (f", {count(connect['failed'])} FAILED" if connect["failed"] else "")
    )
    lines, up_met, up_lost = flow_lines("uplink", report["uplink"], UPLINK_GOAL_MS, probe, 1)
    out += lines
    down_met, down_lost = True, 0
    downlink = report.get("downlink")
    if downlink:
        lines, down_met, down_lost = flow_lines(
            "downlink", downlink, DOWNLINK_GOAL_MS, probe, 2
        )
        out += lines
    receipts = report.get("receipts")
    if receipts:
        outcomes = receipts["outcomes"]
        shown = ", ".join(f"{name} {count(n)}" for name, n in sorted(outcomes.items())) or "none"
        out.append(
            f"receipts  {count(receipts['asked'])} asked, {count(receipts['answered'])} answered ({shown}), "
            + (f"{count(receipts['missing'])} MISSING" if receipts["missing"] else "none missing")
            + (f", {count(receipts['duplicates'])} repeated" if receipts["duplicates"] else "")
            + f"; request to receipt p50 {receipts['latency']['p50_ms']:.1f} ms, p99 {receipts['latency']['p99_ms']:.1f} ms"
        )
        # A message the bridge answered "offline" (the car was away, as
        # with --churn) or otherwise not written was not lost: its sender
        # knows what became of it.
        answered_undelivered = sum(n for name, n in outcomes.items() if name != "written")
        if down_lost and not receipts["missing"] and answered_undelivered >= down_lost:
            out.append(
                f"{'':<9} the {count(down_lost)} downlink messages that did not arrive were each "
                f"answered with a receipt saying why (the cars were away or could not take them)"
            )
            down_lost = 0
            down_met = downlink["latency"]["p99_ms"] < DOWNLINK_GOAL_MS
    if probe:
        out.append(
            f"probe     {count(probe['sent'])} records through {args.broker} alone: "
            f"p50 {probe['p50_ms']:.1f} ms, p99 {probe['p99_ms']:.1f} ms, max {probe['max_ms']:.1f} ms"
            + ("" if probe["received"] >= probe["sent"] else f", {count(probe['sent'] - probe['received'])} not read back")
        )

    gateway = {}
    for url in args.gateway_metrics:
        for name, value in scrape(url).items():
            gateway[name] = gateway.get(name, 0.0) + value
    router = scrape(args.router_metrics) if args.router_metrics else {}
    failed = sum(v for k, v in gateway.items() if k.startswith("carbridge_gateway_publish_failed_total"))
    if gateway:
        out.append(
            f"gateway   {count(gateway.get('carbridge_gateway_publish_acked_total', 0))} records acknowledged "
            f"by {args.broker}, {count(failed)} failed, "
            f"{count(gateway.get('carbridge_gateway_downlink_delivered_total', 0))} downlink messages written to cars"
        )
    if router and downlink:
        received = router.get("carbridge_router_requests_received_total", 0)
        out.append(f"router    {count(received)} downlink requests read from {args.broker}")
        out += hop_lines(gateway, router)

    broker_slow = probe is not None and (
        probe["p99_ms"] > BROKER_SLOW_MS or probe["received"] < probe["sent"]
    )
    # Every uplink record acknowledged by the broker, yet not all read back
    # in time: the broker's fetch side is behind, not the bridge.
    acked = gateway.get("carbridge_gateway_publish_acked_total", 0)
    if up_lost and gateway and failed == 0 and acked >= report["uplink"]["sent"]:
        out.append(
            f"{'':<9} every uplink record was acknowledged by {args.broker}; "
            f"the {count(up_lost)} missing were not read back from it in time"
        )
        broker_slow = True
    if down_lost and router and downlink:
        received = router.get("carbridge_router_requests_received_total", 0)
        if received < downlink["sent"]:
            out.append(
                f"{'':<9} the router read {count(received)} requests from {args.broker}: "
                f"the broker did not hand it the rest in time"
            )
            broker_slow = True
    lost = up_lost + down_lost
    if lost == 0 and up_met and down_met:
        verdict = "HEALTHY: nothing lost, every latency goal met."
    elif lost == 0 and broker_slow:
        verdict = (
            f"HEALTHY BUT SLOW: nothing lost, but {args.broker} itself is slow here "
            f"(probe p99 {probe['p99_ms']:.0f} ms): the latencies above are mostly the broker's."
        )
    elif lost == 0:
        missed = [n for n, m in (("uplink", up_met), ("downlink", down_met)) if not m]
        stages = report["uplink"].get("stages")
        bridge = (
            f"the bridge's own part of the uplink is p99 {stages['bridge']['p99_ms']:.1f} ms, "
            f"Kafka's p99 {stages['kafka']['p99_ms']:.1f} ms"
            if stages
            else "see the broker's part above"
        )
        verdict = (
            f"HEALTHY: nothing lost. The {' and '.join(missed)} p99 "
            f"goal{'s are' if len(missed) > 1 else ' is'} missed, and the time goes to "
            f"{args.broker}: {bridge}; each downlink message crosses the broker twice."
        )
    elif broker_slow:
        verdict = (
            f"OVERLOADED BROKER: {count(lost)} messages did not arrive in time, and {args.broker} "
            f"is what fell behind (see above; the probe alone saw p99 "
            f"{probe['p99_ms'] if probe else float('nan'):.0f} ms). This run measures the broker, "
            f"not the bridge: lower the load (--cars, --publish-interval-ms, --downlink-rate) "
            f"or run a broker that keeps up."
        )
    else:
        verdict = (
            f"LOST: {count(lost)} messages did not arrive while the broker kept up "
            f"(probe p99 {probe['p99_ms']:.0f} ms): look at the gateway and router logs."
        )
    out.append(verdict)
    # A machine with more runnable work than cores bends every figure:
    # the fleet, the broker and the bridge share the CPUs here.
    try:
        load = float(open("/proc/loadavg").read().split()[0])
        cores = os.cpu_count() or 1
        if load > cores:
            out.append(
                f"BUSY MACHINE: load average {load:.1f} on {cores} cores at the end of the run: "
                f"the fleet, the broker and the bridge competed for CPU, so the latencies above "
                f"are bent by it; compare figures only between runs on a quiet machine."
            )
    except (OSError, ValueError, IndexError):
        pass
    print("\n".join(out))
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
