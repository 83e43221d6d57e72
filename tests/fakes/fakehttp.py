#!/usr/bin/env python3
"""fakehttp.py - a peer file server or a mirror that misbehaves on purpose, for flocon's
fault tests (tests/faults.rs starts it inside the test's network namespace; nothing here
ever listens outside one).

    fakehttp.py --listen IP:PORT [--root DIR] [--log FILE] [GLOB=MODE ...]

Each request's file name (the last path segment, percent-decoded) is matched against the
GLOBs in order; the first match picks the MODE, else `honest`. Prints `ready PORT` on stdout
once listening (PORT 0 picks one). With --log, one JSON line per event: `req` when a request
head arrived, `end` when its answer ended (with the body bytes sent and how it ended).

MODEs (N, BPS integers; F a fraction 0..1):
  honest          the file from --root: 200 / single-range 206 / 416 / 404, keep-alive
  chunked         honest, with Transfer-Encoding: chunked
  chunked-cut     chunked, half the body, then the connection closes (no last chunk)
  short           the whole Content-Length, half the body, then the connection closes
  garbage[:N]     200 with N (default 1000) bytes of "x"
  drip[:BPS]      the honest head, then the body at BPS bytes/s (default 1)
  rate:BPS        honest, paced at BPS bytes/s (a slow link)
  redirect:URL    302 to URL ("{path}" in URL: the request's path)
  busy            503
  not-found       404
  stall           reads the request, never answers
  head-stall      the honest head, then nothing
  half-stall      the head and half the body, then nothing
  cut:F           the head and F of the body, then the connection closes
  die:F           the head and F of the body, then the whole process exits (a killed peer:
                  later connections are refused)
  liar-half       the honest head, the first half of the body with every byte flipped, then
                  the connection closes
"""

import fnmatch
import json
import os
import socket
import socketserver
import sys
import threading
import time
import urllib.parse

MAX_HEAD = 16 * 1024
FLIP = bytes(255 - i for i in range(256))
# a stalling mode holds its connection this long at most (tests end well before)
STALL_MAX = 600


class Config:
    root = "."
    rules = []
    log = None
    lock = threading.Lock()


def log(ev, **kw):
    if Config.log is None:
        return
    kw["ev"] = ev
    kw["t"] = round(time.time(), 3)
    line = json.dumps(kw, sort_keys=True)
    with Config.lock:
        Config.log.write(line + "\n")
        Config.log.flush()


def mode_for(name):
    for glob, mode in Config.rules:
        if fnmatch.fnmatchcase(name, glob):
            return mode
    return "honest"


def parse_range(value, size):
    """(start, end_exclusive) for a single `bytes=a-[b]` range, None for the whole file,
    'bad' when unsatisfiable."""
    if not value or not value.startswith("bytes="):
        return None
    spec = value[6:].strip()
    if "," in spec or "-" not in spec:
        return None
    a, b = spec.split("-", 1)
    if a == "":
        return None
    start = int(a)
    end = int(b) + 1 if b else size
    if start >= size:
        return "bad"
    return (start, min(end, size))


class Handler(socketserver.BaseRequestHandler):
    def setup(self):
        self.sent = 0
        self.buf = b""

    def read_head(self):
        while b"\r\n\r\n" not in self.buf:
            if len(self.buf) > MAX_HEAD:
                return None
            try:
                chunk = self.request.recv(4096)
            except OSError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            return None
        headers = {}
        for l in lines[1:]:
            if ":" in l:
                k, v = l.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return parts[0], parts[1], headers

    def send(self, data):
        self.request.sendall(data)

    def body(self, f, start, n, bps=None, flip=False):
        """Sends n bytes of file f from start (read as it goes: a 150 MB file is not read whole
        before the first byte), paced at bps bytes/s if given, flipped if asked; counts what
        left."""
        f.seek(start)
        t0 = time.monotonic()
        step = (1 << 20) if bps is None else max(1, bps // 20)
        done = 0
        while done < n:
            piece = f.read(min(step, n - done))
            if not piece:
                return
            if flip:
                piece = piece.translate(FLIP)
            self.request.sendall(piece)
            done += len(piece)
            self.sent += len(piece)
            if bps is not None:
                delay = t0 + done / bps - time.monotonic()
                if delay > 0:
                    time.sleep(delay)

    def handle(self):
        peer = self.client_address[0]
        while True:
            got = self.read_head()
            if got is None:
                return
            method, target, headers = got
            path = urllib.parse.urlsplit(target).path
            name = urllib.parse.unquote(path.rsplit("/", 1)[-1])
            mode = mode_for(name)
            rng = headers.get("range")
            self.sent = 0
            log("req", method=method, path=target, name=name, range=rng, mode=mode,
                host=headers.get("host"), client=peer)
            how = "error"
            try:
                how = self.answer(method, target, name, mode, rng)
            except (BrokenPipeError, ConnectionResetError, OSError):
                how = "client-gone"
            log("end", method=method, path=target, name=name, range=rng, mode=mode,
                sent=self.sent, how=how, client=peer)
            if how != "keep-alive" or headers.get("connection", "").lower() == "close":
                return

    def simple(self, status, reason, extra=""):
        self.send(f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\n\r\n".encode())

    def hold(self):
        time.sleep(STALL_MAX)

    def answer(self, method, target, name, mode, rng):
        kind, _, arg = mode.partition(":")
        if kind == "busy":
            self.simple(503, "Service Unavailable", "Retry-After: 1\r\n")
            return "keep-alive"
        if kind == "not-found":
            self.simple(404, "Not Found")
            return "keep-alive"
        if kind == "redirect":
            self.simple(302, "Found", f"Location: {arg.replace('{path}', target)}\r\n")
            return "keep-alive"
        if kind == "stall":
            self.hold()
            return "stalled"
        if kind == "garbage":
            n = int(arg or 1000)
            self.send(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            self.request.sendall(b"x" * n)
            self.sent += n
            return "keep-alive"
        try:
            f = open(os.path.join(Config.root, name), "rb")
        except OSError:
            self.simple(404, "Not Found")
            return "keep-alive"
        with f:
            return self.answer_file(f, method, target, name, mode, kind, arg, rng)

    def answer_file(self, f, method, target, name, mode, kind, arg, rng):
        size = os.fstat(f.fileno()).st_size
        r = parse_range(rng, size)
        if r == "bad":
            self.simple(416, "Range Not Satisfiable", f"Content-Range: bytes */{size}\r\n")
            return "keep-alive"
        if r is None:
            status, start, end, extra = "200 OK", 0, size, ""
        else:
            start, end = r
            status = "206 Partial Content"
            extra = f"Content-Range: bytes {start}-{end - 1}/{size}\r\n"
        n = end - start
        lm = "Last-Modified: Sat, 01 Jan 2022 00:00:00 GMT\r\n"
        if kind in ("chunked", "chunked-cut"):
            self.send(f"HTTP/1.1 {status}\r\n{lm}{extra}Transfer-Encoding: chunked\r\n\r\n".encode())
            if method == "HEAD":
                return "keep-alive"
            upto = n if kind == "chunked" else n // 2
            f.seek(start)
            done = 0
            while done < upto:
                c = f.read(min(65536, upto - done))
                self.send(b"%x\r\n" % len(c) + c + b"\r\n")
                done += len(c)
                self.sent += len(c)
            if kind == "chunked-cut":
                return "cut"
            self.send(b"0\r\n\r\n")
            return "keep-alive"
        self.send(f"HTTP/1.1 {status}\r\n{lm}{extra}Content-Length: {n}\r\n\r\n".encode())
        if method == "HEAD":
            return "keep-alive"
        half = n // 2
        if kind == "honest":
            self.body(f, start, n)
            return "keep-alive"
        if kind in ("rate", "drip"):
            self.body(f, start, n, int(arg or 1))
            return "keep-alive"
        if kind == "head-stall":
            self.hold()
            return "stalled"
        if kind == "half-stall":
            self.body(f, start, half)
            self.hold()
            return "stalled"
        if kind == "short":
            self.body(f, start, half)
            return "cut"
        if kind == "liar-half":
            self.body(f, start, half, flip=True)
            return "cut"
        if kind in ("cut", "die"):
            self.body(f, start, int(n * float(arg)))
            if kind == "die":
                log("end", method=method, path=target, name=name, range=rng, mode=mode,
                    sent=self.sent, how="died", client=self.client_address[0])
                os._exit(0)
            return "cut"
        raise ValueError(f"unknown mode {mode}")


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def main(argv):
    listen = None
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "--listen":
            listen = argv[i + 1]
            i += 2
        elif a == "--root":
            Config.root = argv[i + 1]
            i += 2
        elif a == "--log":
            Config.log = open(argv[i + 1], "a")
            i += 2
        elif "=" in a:
            glob, mode = a.split("=", 1)
            Config.rules.append((glob, mode))
            i += 1
        else:
            sys.exit(f"fakehttp.py: unknown argument {a}")
    if listen is None:
        sys.exit("fakehttp.py: --listen IP:PORT is required")
    host, port = listen.rsplit(":", 1)
    srv = Server((host.strip("[]"), int(port)), Handler)
    print(f"ready {srv.server_address[1]}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main(sys.argv[1:])
