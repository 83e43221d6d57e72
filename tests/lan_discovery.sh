#!/usr/bin/env bash
# lan_discovery.sh - discovery on a real (namespace) LAN with a bridge: each host runs flocon
# on its own eth0 with the default ports and interfaces (README, "Ports"). Run it isolated:
#   tests/lan.sh isolated tests/lan_discovery.sh [path/to/flocon]
# Prints one line per check and "N passed, N failed"; exits non-zero on any failure.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LAN="$here/lan.sh"
BIN=${1:-$here/../target/release/flocon}
[[ -x $BIN ]] || { echo "lan_discovery: no flocon binary at $BIN" >&2; exit 2; }
export FLAN_PREFIX=fld-
W=$(mktemp -d /tmp/flocon-lan-disc.XXXXXX)
pass=0 fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
ko() { echo "FAIL - $*"; fail=$((fail + 1)); }
cleanup() { "$LAN" down >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

# one real package and its sync db (bsdtar + repo-add), listed in every host's db
mkdir -p "$W/pkg/usr/share/v6" "$W/repo"
head -c 3000000 /dev/urandom > "$W/pkg/usr/share/v6/blob"
printf 'pkgname = v6\npkgver = 1.0-1\narch = any\nsize = 3000000\n' > "$W/pkg/.PKGINFO"
PKG=v6-1.0-1-any.pkg.tar.zst
bsdtar --zstd -cf "$W/repo/$PKG" -C "$W/pkg" .PKGINFO usr
repo-add -q "$W/repo/flocontest.db.tar.gz" "$W/repo/$PKG" >/dev/null

start() { # start I [extra args...]: flocon on host I with default ports and interfaces
  local i=$1; shift
  mkdir -p "$W/h$i/cache" "$W/h$i/state" "$W/h$i/db/sync"
  cp "$W/repo/flocontest.db.tar.gz" "$W/h$i/db/sync/flocontest.db"
  printf '[options]\n[flocontest]\nServer = http://localhost:19433/$repo/os/$arch\n' > "$W/h$i/pacman.conf"
  echo "# test" > "$W/h$i/flocon.conf"
  "$LAN" exec "$i" "$BIN" --config "$W/h$i/flocon.conf" --pacman-conf "$W/h$i/pacman.conf" \
    --cache-dir "$W/h$i/cache" --state-dir "$W/h$i/state" --db-path "$W/h$i/db" \
    --name "host$i" --announce-interval 1 --debug "$@" 2>>"$W/h$i.log" &
  echo $! > "$W/h$i.pid"
}
stop() { local p; p=$(cat "$W/h$1.pid" 2>/dev/null) && kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; }
peers() { # peers I: the peer names host I lists, sorted, space separated
  "$LAN" exec "$1" "$BIN" status --json 2>/dev/null | grep -o '"name":"host[0-9]*"' | sed 's/.*"\(host[0-9]*\)"/\1/' | grep -v "^host$1\$" | sort | tr '\n' ' ' | sed 's/ $//'
}
addrs() { "$LAN" exec "$1" "$BIN" status --json 2>/dev/null | grep -o '"addr":"[^"]*"' | tr '\n' ' '; }
# digest_version, wait_published: a file copied into a running daemon's cache is found by
# its peers once they hold the digest that lists it
# shellcheck source=tests/digest.sh
source "$here/digest.sh"
wait_peers() { # wait_peers I "WANT" SECONDS
  local i=$1 want=$2 t=$3 n
  for ((n = 0; n < t * 10; n++)); do [[ $(peers "$i") == "$want" ]] && return 0; sleep 0.1; done
  return 1
}

"$LAN" up 3 >/dev/null
# --- IPv4 (and IPv6) discovery on eth0, default interfaces
for i in 1 2 3; do start "$i"; done
if wait_peers 1 "host2 host3" 3 && wait_peers 2 "host1 host3" 3 && wait_peers 3 "host1 host2" 3; then
  ok "3 hosts on a bridge find each other ($(addrs 1))"
else ko "discovery on the bridge: h1 [$(peers 1)] h2 [$(peers 2)] h3 [$(peers 3)]"; fi
"$LAN" exec 1 "$BIN" status --json | grep -q '"multicast":\["eth0/ipv4","eth0/ipv6"\]\|"multicast":\["eth0/ipv6","eth0/ipv4"\]' \
  && ok "joined IPv4 and IPv6 groups on eth0 only (not lo)" || ko "memberships: $("$LAN" exec 1 "$BIN" status --json | grep -o '"multicast":[^]]*]')"

# --- cut host 2: it expires (4 x 1 s); heal: found again
"$LAN" cut 2
if wait_peers 1 "host3" 8; then ok "cut host 2 expires from host 1"; else ko "after cut: h1 [$(peers 1)]"; fi
"$LAN" heal 2
if wait_peers 1 "host2 host3" 8 && wait_peers 2 "host1 host3" 8; then ok "healed host 2 is found again"; else ko "after heal: h1 [$(peers 1)] h2 [$(peers 2)]"; fi
# --- host 2 restarted 8 times: each time host 2 lists both again and both list its new
# instance within 10 s. A clean stop says goodbye, and the others check host 2's address; the
# new daemon often answers that check before its timeout, and a host whose only wake-up was
# that timeout used to announce no more, so the new host 2, which admits a peer on hearing
# it, never listed it again (peers.rs `Wake`).
slow=""
for r in 1 2 3 4 5 6 7 8; do
  stop 2; start 2
  inst=""
  for ((n = 0; n < 30 && ${#inst} != 16; n++)); do
    inst=$("$LAN" exec 2 "$BIN" status --json 2>/dev/null | grep -o '"instance":"[0-9a-f]*"' | head -1 | cut -d'"' -f4); sleep 0.1
  done
  seen() { [[ $(peers 2) == "host1 host3" ]] && for i in 1 3; do "$LAN" exec "$i" "$BIN" status --json 2>/dev/null | grep -q "\"instance\":\"$inst\"" || return 1; done; }
  for ((n = 0; n < 100; n++)); do seen && break; sleep 0.1; done
  seen || slow+=" $r:[h2 sees $(peers 2); h1 $(peers 1); h3 $(peers 3)]"
done
[[ -z $slow ]] && ok "host 2 restarted 8 times: it and its peers admit each other again within 10 s" \
  || ko "after a restart, not admitted both ways within 10 s:$slow"

# --- off-link sources are ignored: host 2 gets a second address outside the LAN's prefix
# (host 1 has a route back to it, so an answer could go out if the daemon sent one)
cat > "$W/query.py" <<'PY'
import socket, struct, sys
src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3].encode()
q = b"FLCN" + bytes([1, 3, 0, 0]) + struct.pack(">QII", 0x1122334455667788, 7, 42)
q += b"\0" * (1 + 8 + 32) + bytes([len(name)]) + name
q += b"\0" * max(0, 68 - len(q))
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0)); s.settimeout(1.0); s.sendto(q, (dst, 19432))
try:
    d, _ = s.recvfrom(2048); print("reply", len(d))
except socket.timeout:
    print("none")
PY
"$LAN" exec 2 ip addr add 192.0.2.7/32 dev eth0
"$LAN" exec 1 ip route add 192.0.2.7/32 dev eth0
rej0=$("$LAN" exec 1 "$BIN" status --json | grep -o '"datagrams_rejected":[0-9]*' | cut -d: -f2)
off=$("$LAN" exec 2 python3 "$W/query.py" 192.0.2.7 10.77.0.1 "$PKG")
rej1=$("$LAN" exec 1 "$BIN" status --json | grep -o '"datagrams_rejected":[0-9]*' | cut -d: -f2)
on=$("$LAN" exec 2 python3 "$W/query.py" 10.77.0.2 10.77.0.1 "$PKG")
if [[ $off == none && $rej1 -gt $rej0 && $on == "reply 68" ]]; then
  ok "a query from an off-link source (192.0.2.7) is ignored; the same from 10.77.0.2 is answered"
else ko "off-link: reply [$off] rejected $rej0 -> $rej1; on-link: [$on]"; fi
"$LAN" exec 2 ip addr del 192.0.2.7/32 dev eth0
for i in 1 2 3; do stop "$i"; done

# --- IPv6 only: no IPv4 address anywhere
for i in 1 2 3; do "$LAN" exec "$i" ip -4 addr flush dev eth0; done
for i in 1 2 3; do start "$i"; done
if wait_peers 1 "host2 host3" 5 && wait_peers 3 "host1 host2" 5; then
  a=$(addrs 1)
  [[ $a == *fe80::* && $a != *10.77.* ]] && ok "IPv6-only LAN: found over link-local ($a)" || ko "IPv6-only: unexpected addresses $a"
else ko "IPv6-only discovery: h1 [$(peers 1)] h3 [$(peers 3)]"; fi
# a verified transfer over link-local IPv6 (the peer's scope id must survive)
v2=$(digest_version 2)
cp "$W/repo/$PKG" "$W/h2/cache/"
wait_published 2 "$v2" "$PKG" 1 || ko "IPv6-only LAN: host 1 does not hold a digest of host 2 listing $PKG"
"$LAN" exec 1 curl -sS -o "$W/got" "http://127.0.0.1:19433/flocontest/os/any/$PKG"
if cmp -s "$W/got" "$W/repo/$PKG" && "$LAN" exec 1 "$BIN" status --json | grep -q '"lan_hits":1'; then
  ok "IPv6-only LAN: a package crossed from host 2 to host 1, verified"
else ko "IPv6-only transfer: $(grep -h "$PKG" "$W/h1.log" | tail -3)"; fi
for i in 1 2 3; do stop "$i"; done

# --- a daemon started before its interface has any address
"$LAN" up 3 >/dev/null   # restores the IPv4 addresses
"$LAN" exec 3 ip addr flush dev eth0
"$LAN" exec 3 ip link set eth0 down
for i in 1 2 3; do start "$i"; done
sleep 2
[[ -z $(peers 3) ]] && ok "host 3 without addresses sees nobody yet" || ko "host 3 saw [$(peers 3)] without an address"
"$LAN" exec 3 ip link set eth0 up
"$LAN" exec 3 ip addr add 10.77.0.3/24 dev eth0
"$LAN" exec 3 ip route replace 224.0.0.0/4 dev eth0
if wait_peers 3 "host1 host2" 8 && wait_peers 1 "host2 host3" 8; then
  ok "address appeared: host 3 joins and is found, no signal, no restart"
else ko "late address: h3 [$(peers 3)] h1 [$(peers 1)]"; grep -h "multicast" "$W/h3.log" | tail -5; fi
# SIGUSR2 rejoins at once and keeps the peers
p=$(cat "$W/h3.pid"); kill -USR2 "$p"; sleep 1
grep -q "SIGUSR2: rejoining" "$W/h3.log" && wait_peers 3 "host1 host2" 3 && ok "SIGUSR2 rejoins and keeps the peers" || ko "SIGUSR2"
for i in 1 2 3; do stop "$i"; done

echo "$pass passed, $fail failed"
(( fail == 0 ))
