#!/usr/bin/env python3
"""How a drain went (scripts/stack.sh with STACK_DRAIN_AFTER): from the
samples of each gateway's accepted and open connections, taken every
second, how long the drained gateway (the last) took to empty and how fast
the others took its cars.

    drain.py SAMPLES START GATEWAYS

SAMPLES: one line per sample, "time accepted:open accepted:open ...", a
pair per gateway; START: when the drain was asked for (epoch seconds).
"""

import sys


def main():
    samples, start, gateways = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    rows = []
    for line in open(samples):
        t, *cells = line.split()
        rows.append((float(t), [tuple(int(float(x)) for x in c.split(":")) for c in cells]))
    before = [r for r in rows if r[0] <= start]
    after = [r for r in rows if r[0] > start]
    if not before or len(after) < 2:
        print("drain: too few samples")
        return
    drained = gateways - 1
    peak_open = max(cells[drained][1] for _, cells in before + after[:1])
    empty = next((t for t, cells in after if cells[drained][1] == 0), None)
    rates = []
    for (t0, c0), (t1, c1) in zip(after, after[1:]):
        accepted = sum(c1[g][0] - c0[g][0] for g in range(drained))
        rates.append(accepted / (t1 - t0))
    others_open = max(sum(cells[g][1] for g in range(drained)) for _, cells in after)
    took = f"{empty - start:.1f} s" if empty else "not empty by the end"
    print(
        f"drain: gateway {drained} went from {peak_open} connections to 0 in {took}; "
        f"the others accepted at most {max(rates):.0f} connections/s meanwhile "
        f"and held {others_open} at most"
    )


if __name__ == "__main__":
    main()
