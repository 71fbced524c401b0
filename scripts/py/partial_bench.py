#!/usr/bin/env python3
"""Stalled partial packets against a server (scripts/partial-bench.sh).

    partial_bench.py attack HOST PORT N PID [--metrics URL] [--samples 30,60,90]
        N attackers, 100 at a time: each connects, sends CONNECT
        (keep-alive 1,200 s), waits for its CONNACK, then sends the first
        100 bytes of a PUBLISH that declares 250 kB and sends nothing more.
        Reads the server's (PID) memory before and once they are all in
        place, then watches the sockets and counts how many are still open
        at each sample (seconds after all were in place); with --metrics,
        the gateway's /metrics at the same moments. Prints one JSON line.
    partial_bench.py brief ATTACK
        one line from an attack's JSON: KiB per stalled packet, open counts
    partial_bench.py summary DIR RATIO_MAX
        the table of both servers from DIR (SERVER.without.json and
        SERVER.with.json: loadgen's reports; SERVER.attack.json: the
        attack's line; loads.txt); exits 3 when the gateway missed the goal
"""

import argparse
import json
import os
import selectors
import socket
import sys
import time
import urllib.request

TOPIC = b"UL/POS"
# An attacker's first bytes wait this long for the server before the run
# is called broken; the whole attack may take CONNECT_BOUND seconds to set up.
SOCKET_TIMEOUT = 10.0
CONNECT_BOUND = 120.0
BATCH = 100
# Seconds between the last attacker's bytes and the memory reading, for the
# server to have read them all.
SETTLE = 2.0
# The goal's bounds.
KIB_PER_PACKET_MAX = 4.0
CLOSED_WITHIN = 60.0


def remaining_length(n):
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def connect_packet(client_id, keep_alive):
    cid = client_id.encode()
    body = (b"\x00\x04MQTT\x04\x02" + keep_alive.to_bytes(2, "big")
            + len(cid).to_bytes(2, "big") + cid)
    return b"\x10" + remaining_length(len(body)) + body


def publish_head(declared_payload, sent):
    """The first SENT bytes of a QoS 0 PUBLISH on UL/POS whose payload is
    DECLARED_PAYLOAD bytes long."""
    head = (b"\x30" + remaining_length(2 + len(TOPIC) + declared_payload)
            + len(TOPIC).to_bytes(2, "big") + TOPIC)
    return (head + b"x" * max(0, sent - len(head)))[:sent]


def recv_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def closed(sock):
    """Whether the server closed SOCK (the end of the stream, or a reset)."""
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def memory_kib(pid):
    """VmRSS and VmData of a process, KiB."""
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmData"):
            fields[key] = int(value.split()[0])
    return fields["VmRSS"], fields["VmData"]


def scrape(url):
    """The gateway's counters this measure reads, summed over their series."""
    if not url:
        return None
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    out = {"partial_bytes": 0, "connections_open": 0, "closed": {}, "limited_partial_bytes": 0}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        series, _, value = line.rpartition(" ")
        name, _, labels = series.partition("{")
        value = float(value)
        if name == "carbridge_gateway_partial_bytes":
            out["partial_bytes"] += value
        elif name == "carbridge_gateway_connections_open":
            out["connections_open"] += value
        elif name == "carbridge_gateway_connections_closed_total":
            reason = labels.split('reason="', 1)[1].split('"', 1)[0]
            out["closed"][reason] = out["closed"].get(reason, 0) + value
        elif name == "carbridge_gateway_limited_total" and 'limit="partial_bytes"' in labels:
            out["limited_partial_bytes"] += value
    return out


def load_average():
    return " ".join(open("/proc/loadavg").read().split()[:3])


def attack(argv):
    p = argparse.ArgumentParser(prog="partial_bench.py attack")
    p.add_argument("host")
    p.add_argument("port", type=int)
    p.add_argument("n", type=int)
    p.add_argument("pid", type=int)
    p.add_argument("--metrics", help="the gateway's /metrics URL")
    p.add_argument("--samples", default="30,60,90", help="seconds after all are in place")
    p.add_argument("--declared", type=int, default=250_000, help="declared payload bytes")
    p.add_argument("--sent", type=int, default=100, help="bytes of the PUBLISH sent")
    p.add_argument("--keep-alive", type=int, default=1200)
    a = p.parse_args(argv)
    samples_at = [float(s) for s in a.samples.split(",")]

    # Two readings 2 s apart before the attack: how much the server's
    # memory moves by itself (the cars' traffic) over such a span.
    rss_early, _ = memory_kib(a.pid)
    time.sleep(SETTLE)
    rss_before, data_before = memory_kib(a.pid)
    metrics_before = scrape(a.metrics)
    load_before = load_average()

    # In batches: a batch's CONNECTs go out together and then its CONNACKs
    # are read, so that the attack arrives within about a second rather
    # than one round trip after another.
    head = publish_head(a.declared, a.sent)
    socks, stalled_at = [], []
    started = time.monotonic()
    for first in range(0, a.n, BATCH):
        if time.monotonic() - started > CONNECT_BOUND:
            sys.exit(f"partial_bench: {first} of {a.n} attackers in place after {CONNECT_BOUND:.0f} s")
        batch = []
        for i in range(first, min(first + BATCH, a.n)):
            s = socket.create_connection((a.host, a.port), timeout=SOCKET_TIMEOUT)
            s.sendall(connect_packet(f"STALL{i:07d}", a.keep_alive))
            batch.append(s)
        for i, s in enumerate(batch, first):
            connack = recv_exact(s, 4)
            if connack != b"\x20\x02\x00\x00":
                sys.exit(f"partial_bench: attacker {i} got {connack.hex() or 'a close'} instead of CONNACK 0")
        for s in batch:
            s.sendall(head)
            stalled_at.append(time.monotonic())
            s.setblocking(False)
        socks.extend(batch)
    in_place = time.monotonic()
    time.sleep(SETTLE)
    rss_after, data_after = memory_kib(a.pid)
    metrics_in_place = scrape(a.metrics)
    # A server that closed some before the reading (a machine so slow
    # that connecting took longer than the packet timeout) makes the
    # reading worthless: counted, and the summary says so.
    closed_early = sum(1 for s in socks if closed(s))

    # Watch for closes: a closed socket reads as the end of the stream (or
    # a reset). Nothing else is expected from the server.
    sel = selectors.DefaultSelector()
    for i, s in enumerate(socks):
        sel.register(s, selectors.EVENT_READ, i)
    closed_at = [None] * a.n
    samples = []
    for at in samples_at:
        until = in_place + at
        while (left := until - time.monotonic()) > 0:
            for key, _ in sel.select(timeout=left):
                try:
                    data = key.fileobj.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    closed_at[key.data] = time.monotonic()
                    sel.unregister(key.fileobj)
                    key.fileobj.close()
        still_open = sum(1 for c in closed_at if c is None)
        samples.append({"secs": at, "open": still_open, "metrics": scrape(a.metrics)})
    for key in list(sel.get_map().values()):
        key.fileobj.close()

    lifetimes = sorted(c - s for c, s in zip(closed_at, stalled_at) if c is not None)
    print(json.dumps({
        "attackers": a.n, "declared_payload": a.declared, "sent": a.sent, "keep_alive": a.keep_alive,
        "connect_secs": round(in_place - started, 3), "closed_before_reading": closed_early,
        "rss_early_kib": rss_early, "rss_before_kib": rss_before, "rss_after_kib": rss_after,
        "data_before_kib": data_before, "data_after_kib": data_after,
        "kib_per_packet": (rss_after - rss_before) / a.n,
        "drift_kib": rss_before - rss_early,
        "reserved_kib_per_packet": (data_after - data_before) / a.n,
        "closed_within": {str(int(t)): sum(1 for x in lifetimes if x <= t) for t in (30, CLOSED_WITHIN, 90)},
        "longest_open_secs": round(lifetimes[-1], 2) if lifetimes else None,
        "shortest_open_secs": round(lifetimes[0], 2) if lifetimes else None,
        "samples": samples,
        "metrics_before": metrics_before, "metrics_in_place": metrics_in_place,
        "load_before": load_before, "load_after": load_average(),
    }))


def brief(path):
    r = json.load(open(path))
    opened = " / ".join(f"{s['open']:,}" for s in r["samples"])
    at = " / ".join(f"{s['secs']:.0f}" for s in r["samples"])
    print(f"{r['attackers']:,} attackers in place in {r['connect_secs']:.1f} s; "
          f"{r['kib_per_packet']:.2f} KiB per stalled packet; open at {at} s: {opened}")


def uplink(report):
    r = json.load(open(report))
    up = r["uplink"]
    bridge = up.get("stages", {}).get("bridge")
    worst = max((t.get("uplink_p99_ms") or 0 for t in r["timeline"] if not t.get("warmup")), default=0)
    return {"p99": up["latency"]["p99_ms"], "p50": up["latency"]["p50_ms"], "sent": up["sent"],
            "lost": up["lost"], "connected": r["connect"]["connected"], "cars": r["connect"]["cars"],
            "bridge_p99": bridge["p99_ms"] if bridge else None, "worst_second_p99": worst}


def summary(directory, ratio_max):
    ratio_max = float(ratio_max)
    loads = {}
    for line in open(os.path.join(directory, "loads.txt")):
        server, phase, when, *avg = line.split()
        loads[(server, phase, when)] = avg[0]
    servers = [s for s in ("gateway", "mosquitto") if os.path.exists(os.path.join(directory, f"{s}.attack.json"))]
    rows = {}
    for s in servers:
        attack_result = json.loads(open(os.path.join(directory, f"{s}.attack.json")).read())
        without = uplink(os.path.join(directory, f"{s}.without.json"))
        with_ = uplink(os.path.join(directory, f"{s}.with.json"))
        rows[s] = (attack_result, without, with_)

    def line(label, cells):
        print(f"{label:44}" + "".join(f"{c:>22}" for c in cells))

    n = next(iter(rows.values()))[0]["attackers"]
    cars = next(iter(rows.values()))[1]["cars"]
    print(f"{n:,} attackers, each {rows[servers[0]][0]['sent']} bytes into a PUBLISH declaring "
          f"{rows[servers[0]][0]['declared_payload']:,} bytes, beside {cars:,} cars")
    line("", servers)
    line("KiB per stalled packet (resident-set growth)", [f"{r[0]['kib_per_packet']:.2f}" for r in rows.values()])
    line("  the server's own drift over 2 s before, KiB", [f"{r[0]['drift_kib']:+,}" for r in rows.values()])
    line("  address space per stalled packet, KiB", [f"{r[0]['reserved_kib_per_packet']:.1f}" for r in rows.values()])
    line("  held in partial packets (gauge), bytes each",
         [f"{r[0]['metrics_in_place']['partial_bytes'] / n:.0f}" if r[0]["metrics_in_place"] else "—"
          for r in rows.values()])
    line("open at 30 / 60 / 90 s after all in place",
         [" / ".join(f"{x['open']:,}" for x in r[0]["samples"]) for r in rows.values()])
    line(f"closed within {CLOSED_WITHIN:.0f} s of their stall",
         [f"{r[0]['closed_within'][str(int(CLOSED_WITHIN))]:,} of {n:,}" for r in rows.values()])
    line("  open for (shortest – longest), s",
         [f"{r[0]['shortest_open_secs']} – {r[0]['longest_open_secs']}" if r[0]["longest_open_secs"] else "none closed"
          for r in rows.values()])
    line("  closed before the memory reading", [f"{r[0]['closed_before_reading']:,}" for r in rows.values()])
    for s, r in rows.items():
        before, last = r[0]["metrics_before"], r[0]["samples"][-1]["metrics"]
        if before and last:
            delta = {k: last["closed"].get(k, 0) - before["closed"].get(k, 0) for k in last["closed"]}
            line(f"  {s}: closed as packet_timeout / partial_budget",
                 [f"{delta.get('packet_timeout', 0):,.0f} / {delta.get('partial_budget', 0):,.0f}"])
    line("uplink p99 without attackers, ms", [f"{r[1]['p99']:.1f}" for r in rows.values()])
    line("uplink p99 with attackers, ms", [f"{r[2]['p99']:.1f}" for r in rows.values()])
    ratios = {s: r[2]["p99"] / r[1]["p99"] if r[1]["p99"] else float("inf") for s, r in rows.items()}
    line("  ratio (with / without)", [f"{ratios[s]:.2f}" for s in rows])
    line("  worst one-second p99 without / with, ms",
         [f"{r[1]['worst_second_p99']:.1f} / {r[2]['worst_second_p99']:.1f}" for r in rows.values()])
    line("  the bridge's part p99 without / with, ms",
         [f"{r[1]['bridge_p99']:.2f} / {r[2]['bridge_p99']:.2f}" if r[1]["bridge_p99"] is not None else "—"
          for r in rows.values()])
    line("  uplink sent / lost without", [f"{r[1]['sent']:,} / {r[1]['lost']:,}" for r in rows.values()])
    line("  uplink sent / lost with", [f"{r[2]['sent']:,} / {r[2]['lost']:,}" for r in rows.values()])
    line("load average (1 min) before without / with",
         [f"{loads.get((s, 'without', 'before'), '?')} / {loads.get((s, 'with', 'before'), '?')}" for s in rows])
    line("load average (1 min) after the attack", [r[0]["load_after"].split()[0] for r in rows.values()])

    if "gateway" not in rows:
        return 0
    attack_g, without_g, with_g = rows["gateway"]
    if attack_g["closed_before_reading"]:
        print(f"\ngateway: no verdict: {attack_g['closed_before_reading']:,} attackers were closed before the memory "
              f"reading (they took {attack_g['connect_secs']:.0f} s to connect); the machine is too busy")
        return 1
    missed = []
    if attack_g["kib_per_packet"] > KIB_PER_PACKET_MAX:
        missed.append(f"{attack_g['kib_per_packet']:.2f} KiB per stalled packet (goal ≤ {KIB_PER_PACKET_MAX:.0f})")
    closed = attack_g["closed_within"][str(int(CLOSED_WITHIN))]
    if closed < n:
        missed.append(f"{n - closed:,} of {n:,} not closed within {CLOSED_WITHIN:.0f} s")
    if ratios["gateway"] > ratio_max:
        missed.append(f"uplink p99 {ratios['gateway']:.2f}× with the attackers (goal ≤ {ratio_max}×)")
    if without_g["lost"] or with_g["lost"]:
        missed.append(f"cars' messages lost: {without_g['lost']:,} without, {with_g['lost']:,} with")
    print()
    if missed:
        print("gateway: goal MISSED: " + "; ".join(missed))
        return 3
    print(f"gateway: goal met (≤ {KIB_PER_PACKET_MAX:.0f} KiB per stalled packet, all closed within "
          f"{CLOSED_WITHIN:.0f} s, p99 ratio ≤ {ratio_max}, nothing lost); mosquitto's figures are recorded, not judged")
    return 0


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "attack":
        attack(args)
    elif command == "brief":
        brief(*args)
    elif command == "summary":
        sys.exit(summary(*args))
    else:
        sys.exit(f"unknown command {command}")
