"""A connect storm against one listener: opens N TCP connections to
HOST:PORT as fast as one process can, each from a source address of its
own (no search for a free local port), without sending a byte, then waits
SETTLE seconds and prints how often the kernel's listen queues
overflowed meanwhile (TcpExt ListenOverflows, the whole machine's).

    python3 listen_storm.py HOST PORT N [SETTLE]
"""

import socket
import sys
import time


def listen_overflows():
    lines = open("/proc/net/netstat").read().splitlines()
    for head, values in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            fields = dict(zip(head.split()[1:], values.split()[1:]))
            return int(fields["ListenOverflows"])
    raise SystemExit("no TcpExt ListenOverflows in /proc/net/netstat")


def main():
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    settle = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
    before = listen_overflows()
    held = []
    started = time.monotonic()
    for i in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.bind((f"127.{1 + i // 60000 % 200}.{i // 250 % 240 + 1}.{i % 250 + 1}", 0))
        s.connect_ex((host, port))
        held.append(s)
    took = time.monotonic() - started
    time.sleep(settle)
    overflows = listen_overflows() - before
    print(f"connects={n} seconds={took:.2f} per_second={n / took:.0f} listen_overflows={overflows}")


main()
