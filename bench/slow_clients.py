#!/usr/bin/env python3
"""slow_clients.py HOST PORT PATH N RATE SIZE PID - N clients that each read at RATE bytes/s.

Opens N connections to HOST:PORT, sends `GET PATH` on each, and reads every answer at no
more than RATE bytes/s per connection (a token bucket refilled every 20 ms), as pacman on a
slow link or a Raspberry Pi's SD card would. Every answer must be 200 with Content-Length
SIZE and deliver SIZE body bytes. Meanwhile PID's VmRSS is sampled every 100 ms.
Prints one line: "<complete> <N> <peak VmRSS KiB> <seconds>". Exits 1 on a deadline
(3 x the ideal time + 30 s) or a bad answer. Used by bench/io.sh, inside a namespace.
"""
import socket
import sys
import time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    n, rate, size, pid = (int(a) for a in sys.argv[4:8])
    conns = []
    for _ in range(n):
        s = socket.create_connection((host, port), timeout=10)
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        s.setblocking(False)
        c = {"sock": s, "head": b"", "body": 0, "budget": 0.0, "done": False}
        conns.append(c)
    t0 = time.monotonic()
    deadline = t0 + 3 * size / rate + 30
    peak, last_sample, last_tick = rss_kib(pid), 0.0, t0
    while True:
        now = time.monotonic()
        if now > deadline:
            left = sum(1 for c in conns if not c["done"])
            sys.exit(f"slow_clients: {left} of {n} downloads unfinished at the deadline")
        if now - last_sample >= 0.1:
            peak, last_sample = max(peak, rss_kib(pid)), now
        dt, last_tick = now - last_tick, now
        active = 0
        for c in conns:
            if c["done"]:
                continue
            active += 1
            # a bucket of at most 40 ms worth: the reader never catches up in a burst
            c["budget"] = min(c["budget"] + rate * dt, rate * 0.04)
            while c["budget"] >= 1:
                try:
                    data = c["sock"].recv(int(min(c["budget"], 65536)))
                except BlockingIOError:
                    break
                if not data:
                    if c["body"] != size:
                        sys.exit(f"slow_clients: closed after {c['body']} of {size} bytes")
                    c["done"] = True
                    c["sock"].close()
                    break
                c["budget"] -= len(data)
                if c["head"] is not None:
                    c["head"] += data
                    end = c["head"].find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    head = c["head"][:end].decode("latin-1").lower()
                    if not head.startswith("http/1.1 200") or f"content-length: {size}" not in head:
                        sys.exit(f"slow_clients: unexpected answer: {head!r}")
                    data = c["head"][end + 4:]
                    c["head"] = None
                c["body"] += len(data)
        if active == 0:
            break
        time.sleep(0.02)
    peak = max(peak, rss_kib(pid))
    print(f"{sum(1 for c in conns if c['done'])} {n} {peak} {time.monotonic() - t0:.1f}")


main()
