#!/usr/bin/env python3
"""crowd.py - connections that hog a listener, for flocon's fairness tests (run inside the
test's network namespace by tests/faults.rs; bounded in count and time).

    crowd.py --target IP:PORT --seconds S [--keepalive N] [--slow N] [--every S]
             [--sources IP,IP,...] [--path P] [--host H]

--keepalive N  N connections that send one whole request (`GET P`, Host H) every --every
               seconds (default 20) and read the answers: idle keep-alive clients.
--slow N       N connections that send a request head one byte every 2 s and never finish
               it (slowloris).
Connections are spread over the --sources addresses (bound before connecting). A connection
the server closes is opened again, so the pressure holds for S seconds. Prints `ready` once
every connection was attempted, then at the end one JSON line: opened, refused, closed by
the server, answers read.
"""

import errno
import json
import selectors
import socket
import sys
import time

REOPEN_AFTER = 0.5


def main(argv):
    opts = {"--keepalive": "0", "--slow": "0", "--every": "20", "--sources": "",
            "--path": "/", "--host": "localhost", "--seconds": "10"}
    i = 0
    while i < len(argv):
        if argv[i] not in opts and argv[i] != "--target":
            sys.exit(f"crowd.py: unknown argument {argv[i]}")
        opts[argv[i]] = argv[i + 1]
        i += 2
    host, port = opts["--target"].rsplit(":", 1)
    target = (host, int(port))
    sources = [s for s in opts["--sources"].split(",") if s] or [None]
    every = float(opts["--every"])
    end = time.monotonic() + float(opts["--seconds"])
    request = (f"GET {opts['--path']} HTTP/1.1\r\nHost: {opts['--host']}\r\n"
               f"User-Agent: crowd\r\n\r\n").encode()
    sel = selectors.DefaultSelector()
    stats = {"opened": 0, "refused": 0, "closed_by_server": 0, "answers": 0}
    # per connection: kind, next send time, bytes of the slow head sent
    conns = {}

    def open_one(kind, n):
        src = sources[n % len(sources)]
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        s.setblocking(False)
        if src:
            s.bind((src, 0))
        try:
            s.connect(target)
        except BlockingIOError:
            pass
        except OSError:
            stats["refused"] += 1
            s.close()
            reopen.append((time.monotonic() + REOPEN_AFTER, kind, n))
            return
        stats["opened"] += 1
        conns[s.fileno()] = {"sock": s, "kind": kind, "n": n, "due": time.monotonic(),
                             "sent": 0}
        sel.register(s, selectors.EVENT_READ)

    # (reopen time, kind, n): a closed connection comes back after REOPEN_AFTER, so a
    # server that closes at once does not turn the crowd into a connect storm
    reopen = []

    def close(fd, by_server):
        c = conns.pop(fd)
        sel.unregister(c["sock"])
        c["sock"].close()
        if by_server:
            stats["closed_by_server"] += 1
        reopen.append((time.monotonic() + REOPEN_AFTER, c["kind"], c["n"]))

    for n in range(int(opts["--keepalive"])):
        open_one("keepalive", n)
    for n in range(int(opts["--slow"])):
        open_one("slow", n)
    print("ready", flush=True)
    slow_head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100000
    while time.monotonic() < end:
        now = time.monotonic()
        while reopen and reopen[0][0] <= now:
            _, kind, n = reopen.pop(0)
            open_one(kind, n)
        for fd, c in list(conns.items()):
            if fd not in conns or c["due"] > now:
                continue
            try:
                if c["kind"] == "keepalive":
                    c["sock"].send(request)
                    c["due"] = now + every
                else:
                    c["sock"].send(slow_head[c["sent"] : c["sent"] + 1])
                    c["sent"] += 1
                    c["due"] = now + 2
            except BlockingIOError:
                c["due"] = now + 0.2
            except OSError as e:
                close(fd, e.errno in (errno.ECONNRESET, errno.EPIPE, errno.ECONNREFUSED))
        for key, _ in sel.select(timeout=0.2):
            fd = key.fd
            if fd not in conns:
                continue
            try:
                data = conns[fd]["sock"].recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                close(fd, True)
                continue
            if not data:
                close(fd, True)
                continue
            stats["answers"] += data.count(b"HTTP/1.1 ")
    for c in list(conns.values()):
        c["sock"].close()
    print(json.dumps(stats), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
