#!/usr/bin/env python3
"""The soak's judgement and page (scripts/soak.sh): every process's resident
memory over time, whether a gateway or a router grew after warm-up, and what
each stack's verdict said.

    soak.py DIR STACK... --warm-from S --until S --window S --limit PCT

DIR holds one directory per stack (scripts/stack.sh's STACK_DIR), each with
rss.csv (time,process,pid,rss_kib), events.txt ("epoch what") and
report.json. Times S count from the stack's "run" event (loadgen's start).

The growth rule: for each gateway and router, the median of its samples in
[warm-from, warm-from + window) against the median of those in
[until - window, until]; it fails when the second is more than PCT % above
the first. A median, not one sample, so that one sample caught while the
allocator holds a burst does not decide; the same process (pid) in both
windows, or it is reported and not compared (a router killed, a gateway
restarted in between).

DIR/load.txt, if there, holds the machine's load averages over the run
("epoch 1min 5min 15min" lines): summed up on the page and printed.

Prints one line per judged process and the verdicts, writes DIR/soak.html
(inline SVG, no scripts), and exits 5 when a process grew past the limit
(1 is Python's own failure).
"""

import argparse
import html
import math
import json
import statistics
import sys

JUDGED = ("gateway", "router")
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
           "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"]


def load_stack(root, name):
    d = f"{root}/{name}"
    samples = {}  # process -> [(t, pid, kib)]
    try:
        with open(f"{d}/rss.csv") as f:
            next(f, None)
            for line in f:
                t, proc, pid, kib = line.strip().split(",")
                samples.setdefault(proc, []).append((float(t), int(pid), int(kib)))
    except OSError:
        pass
    events = []
    try:
        for line in open(f"{d}/events.txt"):
            t, what = line.rstrip("\n").split(" ", 1)
            events.append((float(t), what))
    except OSError:
        pass
    run = next((t for t, what in events if what == "run"), None)
    try:
        report = json.load(open(f"{d}/report.json"))
    except (OSError, ValueError):
        report = None
    return {"name": name, "samples": samples, "events": events, "run": run, "report": report}


def judge(stack, warm_from, until, window, limit):
    """One row per gateway and router: (process, base, end, growth %, note, failed)."""
    rows = []
    run = stack["run"]
    if run is None:
        return [("(all)", None, None, None, "no run event: loadgen never started", True)]
    base_range = (run + warm_from, run + warm_from + window)
    end_range = (run + until - window, run + until)
    for proc, points in sorted(stack["samples"].items()):
        if not proc.startswith(JUDGED):
            continue
        base = [(pid, kib) for t, pid, kib in points if base_range[0] <= t < base_range[1]]
        end = [(pid, kib) for t, pid, kib in points if end_range[0] <= t <= end_range[1]]
        if not end:
            gone = points[-1][0] - run
            rows.append((proc, med(base), None, None,
                         f"last seen {gone:.0f} s into the run (killed?): not compared", False))
            continue
        if not base:
            rows.append((proc, None, med(end), None, "no sample after warm-up: not compared", False))
            continue
        if {p for p, _ in base} != {p for p, _ in end}:
            rows.append((proc, med(base), med(end), None, "another process at the end (restarted): not compared", False))
            continue
        b, e = med(base), med(end)
        growth = (e / b - 1) * 100
        failed = growth > limit
        rows.append((proc, b, e, growth, f"above the {limit:g} % limit" if failed else "", failed))
    return rows


def load_line(root):
    """The 1-minute load average over the run: its least, median and most."""
    try:
        ones = [float(line.split()[1]) for line in open(f"{root}/load.txt") if len(line.split()) > 1]
    except (OSError, ValueError):
        return ""
    if not ones:
        return ""
    return (f"1-minute load average over the run, every 30 s: least {min(ones):.1f}, "
            f"median {statistics.median(ones):.1f}, most {max(ones):.1f} (2 cores)")


def nice_step(raw):
    """The smallest of 1, 2 or 5 times a power of ten that is at least `raw`."""
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def med(pairs):
    return statistics.median(kib for _, kib in pairs) if pairs else None


def mib(kib):
    return "—" if kib is None else f"{kib / 1024:.1f} MiB"


def verdict_line(stack):
    r = stack["report"]
    if not r or "verdict" not in r:
        return "no verdict (loadgen did not finish)"
    v = r["verdict"]
    up, down = r.get("uplink", {}), r.get("downlink") or {}
    parts = [f"uplink {up.get('sent', 0):,} sent, {up.get('lost', 0):,} lost"]
    if down:
        parts.append(f"downlink {down.get('sent', 0):,} sent, {down.get('received', 0):,} delivered, "
                     f"{down.get('lost', 0):,} not delivered")
    rc = r.get("receipts")
    if rc:
        outcomes = rc.get("outcomes", {})
        pairs = outcomes.items() if isinstance(outcomes, dict) else outcomes
        parts.append("receipts " + ", ".join(f"{n:,} {k}" for k, n in pairs)
                     + f", {rc.get('missing', 0):,} missing")
    return f"{v.get('headline', v.get('outcome'))} ({'; '.join(parts)})"


def chart(stack, procs, t0, title, windows):
    """An SVG line chart of the processes' resident memory, MiB against minutes."""
    w, h, left, right, top, bottom = 920, 300, 60, 170, 24, 36
    series = [(p, stack["samples"][p]) for p in procs if p in stack["samples"]]
    if not series:
        return ""
    tmax = max(t for _, pts in series for t, _, _ in pts) - t0
    tmax = max(tmax, max((t - t0 for t, _ in stack["events"]), default=0), 1)
    ymax = max(kib for _, pts in series for _, _, kib in pts) / 1024 * 1.08 or 1
    pw, ph = w - left - right, h - top - bottom

    def x(t):
        return left + (t - t0) / tmax * pw

    def y(m):
        return top + ph - m / ymax * ph

    out = [f'<svg width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img">',
           f'<text x="{left}" y="15" class="title">{html.escape(title)}</text>']
    for a, b, label in windows:
        out.append(f'<rect x="{x(a):.1f}" y="{top}" width="{max(x(b) - x(a), 1):.1f}" height="{ph}" '
                   f'class="window"><title>{label}</title></rect>')
    tick = nice_step(ymax / 5)
    for i in range(int(ymax / tick) + 1):
        m = tick * i
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(m):.1f}" y2="{y(m):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{y(m) + 4:.1f}" class="ylab">{m:.0f}</text>')
    step = 60 if tmax > 300 else 10
    while tmax / step > 12:
        step *= 2
    t = 0
    while t <= tmax:
        label = f"{t / 60:g} min" if step >= 60 else f"{t:.0f} s"
        out.append(f'<text x="{x(t0 + t):.1f}" y="{h - bottom + 16}" class="xlab">{label}</text>')
        t += step
    out.append(f'<text x="12" y="{top + ph / 2}" class="ylab" transform="rotate(-90 12 {top + ph / 2})">MiB</text>')
    faults = [(et, what) for et, what in stack["events"] if what not in ("run", "end")]
    for i, (et, what) in enumerate(faults):
        # Faults come seconds apart: their labels go one below the other.
        out.append(f'<line x1="{x(et):.1f}" x2="{x(et):.1f}" y1="{top}" y2="{top + ph}" class="event"/>'
                   f'<text x="{x(et) + 3:.1f}" y="{top + 10 + 11 * i}" class="elab">{html.escape(what)}</text>')
    for i, (proc, pts) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        # One line per process: a restarted one is a new line in the same colour.
        runs, last = [], None
        for t, pid, kib in pts:
            if pid != last:
                runs.append([])
                last = pid
            runs[-1].append(f"{x(t):.1f},{y(kib / 1024):.1f}")
        for r in runs:
            out.append(f'<polyline points="{" ".join(r)}" stroke="{colour}" class="line"/>')
        ly = top + 12 + i * 16
        out.append(f'<line x1="{w - right + 10}" x2="{w - right + 28}" y1="{ly - 4}" y2="{ly - 4}" '
                   f'stroke="{colour}" stroke-width="3"/>'
                   f'<text x="{w - right + 32}" y="{ly}" class="legend">{html.escape(proc)}</text>')
    out.append("</svg>")
    return "\n".join(out)


STYLE = """body{font-family:sans-serif;margin:1.5em;max-width:980px}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}.fail{color:#b00;font-weight:bold}
.title{font-weight:bold;font-size:13px}.ylab{font-size:11px;text-anchor:end}
.xlab{font-size:11px;text-anchor:middle}.legend{font-size:12px}.elab{font-size:10px;fill:#555}
.grid{stroke:#eee}.event{stroke:#999;stroke-dasharray:4 3}.window{fill:#fff3c4}
.line{fill:none;stroke-width:1.5}"""


def page(stacks, judged, args):
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>soak</title>",
           f"<style>{STYLE}</style></head><body><h1>Soak</h1>"]
    failed = [(s["name"], row) for s, rows in zip(stacks, judged) for row in rows if row[5]]
    out.append(f"<p class='{'fail' if failed else ''}'>"
               + ("Memory grew: " + "; ".join(f"{n} {r[0]} {r[3]:+.1f} %" for n, r in failed if r[3] is not None)
                  if failed else f"No gateway or router grew more than {args.limit:g} % after warm-up.")
               + "</p>")
    for line in (args.about, load_line(args.dir)):
        if line:
            out.append(f"<p>{html.escape(line)}</p>")
    out.append(f"<p>Rule: the median of each gateway's and router's resident set in the {args.window:g} s "
               f"from {args.warm_from:g} s into loadgen's run, against the median of the {args.window:g} s "
               f"up to {args.until:g} s (the end of the measured window); more than {args.limit:g} % above "
               "fails. The shaded bands are those windows; dashed lines are the faults.</p>")
    for s, rows in zip(stacks, judged):
        name = html.escape(s["name"])
        out.append(f"<h2>{name}</h2><p>{html.escape(verdict_line(s))} "
                   f"(<a href='{name}/report.html'>loadgen report</a>)</p>")
        out.append("<table><tr><th>process</th><th>after warm-up</th><th>end</th><th>growth</th><th></th></tr>")
        for proc, b, e, g, note, bad in rows:
            cls = " class='fail'" if bad else ""
            out.append(f"<tr{cls}><td>{html.escape(proc)}</td><td>{mib(b)}</td><td>{mib(e)}</td>"
                       f"<td>{'—' if g is None else f'{g:+.1f} %'}</td><td>{html.escape(note)}</td></tr>")
        out.append("</table>")
        if s["run"] is None:
            continue
        t0 = min([s["run"]] + [t for pts in s["samples"].values() for t, _, _ in pts])
        windows = [(s["run"] + args.warm_from, s["run"] + args.warm_from + args.window, "after warm-up"),
                   (s["run"] + args.until - args.window, s["run"] + args.until, "the end")]
        bridge = sorted(p for p in s["samples"] if p.startswith(JUDGED))
        rest = sorted(p for p in s["samples"] if not p.startswith(JUDGED))
        out.append(chart(s, bridge, t0, f"{s['name']}: gateways and routers, resident MiB", windows))
        out.append(chart(s, rest, t0, f"{s['name']}: broker, loadgen and the rest, resident MiB", windows))
    out.append("</body></html>")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("stacks", nargs="+")
    ap.add_argument("--warm-from", type=float, required=True)
    ap.add_argument("--until", type=float, required=True)
    ap.add_argument("--window", type=float, required=True)
    ap.add_argument("--limit", type=float, default=5.0)
    ap.add_argument("--about", default="", help="the run's setup, one line at the top of the page")
    args = ap.parse_args()
    stacks = [load_stack(args.dir, n) for n in args.stacks]
    judged = [judge(s, args.warm_from, args.until, args.window, args.limit) for s in stacks]
    for s, rows in zip(stacks, judged):
        print(f"{s['name']}: {verdict_line(s)}")
        for proc, b, e, g, note, bad in rows:
            figure = f"{mib(b)} after warm-up, {mib(e)} at the end"
            if g is not None:
                figure += f" ({g:+.1f} %)"
            print(f"{s['name']} {proc}: {figure}{'; ' + note if note else ''}")
    if load_line(args.dir):
        print(load_line(args.dir))
    with open(f"{args.dir}/soak.html", "w") as f:
        f.write(page(stacks, judged, args))
    if any(row[5] for rows in judged for row in rows):
        sys.exit(5)


if __name__ == "__main__":
    main()
