#!/usr/bin/env bash
# lan_routed.sh - two segments joined by a router that forwards no multicast (tests/lan.sh
# routed): hosts with `peer =` lines find each other across it and copy a package, verified;
# a host without them does not; `exclude-interface` on a two-legged host keeps discovery and
# the peer server off that leg (checked with ss and real connections). Run it isolated:
#   tests/lan.sh isolated tests/lan_routed.sh [path/to/flocon]
# Prints one line per check and "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LAN="$here/lan.sh"
BIN=${1:-$here/../target/release/flocon}
[[ -x $BIN ]] || { echo "lan_routed: no flocon binary at $BIN" >&2; exit 2; }
export FLAN_PREFIX=flr-
W=$(mktemp -d /tmp/flocon-lan-routed.XXXXXX)
pass=0 fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
ko() { echo "FAIL - $*"; fail=$((fail + 1)); }
cleanup() { "$LAN" down >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

mkdir -p "$W/pkg/usr/share/r" "$W/repo"
head -c 2000000 /dev/urandom > "$W/pkg/usr/share/r/blob"
printf 'pkgname = r\npkgver = 1.0-1\narch = any\nsize = 2000000\n' > "$W/pkg/.PKGINFO"
PKG=r-1.0-1-any.pkg.tar.zst
bsdtar --zstd -cf "$W/repo/$PKG" -C "$W/pkg" .PKGINFO usr
repo-add -q "$W/repo/flocontest.db.tar.gz" "$W/repo/$PKG" >/dev/null

# run_in NETNS_CMD... : "$LAN" exec I, or `ip netns exec` for the router
start() { # start I [extra args...]
  local i=$1; shift
  local run=("$LAN" exec "$i")
  [[ $i == rt ]] && run=(ip netns exec "${FLAN_PREFIX}rt")
  mkdir -p "$W/h$i/cache" "$W/h$i/state" "$W/h$i/db/sync"
  cp "$W/repo/flocontest.db.tar.gz" "$W/h$i/db/sync/flocontest.db"
  printf '[options]\n[flocontest]\nServer = http://localhost:19433/$repo/os/$arch\n' > "$W/h$i/pacman.conf"
  echo "# test" > "$W/h$i/flocon.conf"
  "${run[@]}" "$BIN" --config "$W/h$i/flocon.conf" --pacman-conf "$W/h$i/pacman.conf" \
    --cache-dir "$W/h$i/cache" --state-dir "$W/h$i/state" --db-path "$W/h$i/db" \
    --name "host$i" --announce-interval 1 --debug "$@" 2>>"$W/h$i.log" &
  echo $! > "$W/h$i.pid"
}
stop() { local p; p=$(cat "$W/h$1.pid" 2>/dev/null) && kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; }
status() { if [[ $1 == rt ]]; then ip netns exec "${FLAN_PREFIX}rt" "$BIN" status --json; else "$LAN" exec "$1" "$BIN" status --json; fi 2>/dev/null; }
peers() { status "$1" | grep -o '"name":"host[0-9a-z]*"' | sed 's/.*"\(host[0-9a-z]*\)"/\1/' | grep -v "^host$1\$" | sort | tr '\n' ' ' | sed 's/ $//'; }
wait_peers() { local n; for ((n = 0; n < $3 * 10; n++)); do [[ $(peers "$1") == "$2" ]] && return 0; sleep 0.1; done; return 1; }

"$LAN" routed 2 1 >/dev/null
# a name for the far side, as a site's DNS or /etc/hosts would give it (this mount namespace only)
{ cat /etc/hosts; echo "10.78.0.1 side-b.flocon.test"; } > "$W/hosts"
mount --bind "$W/hosts" /etc/hosts

# --- static peers across the router: h1 names h101 by name, h101 names h1 by address
start 1 --peer side-b.flocon.test
start 2
start 101 --peer 10.77.0.1:19432
if wait_peers 1 "host101 host2" 6 && wait_peers 101 "host1" 6; then
  ok "static peers across the router find each other (h1: $(peers 1); h101: $(peers 101))"
else ko "static peers: h1 [$(peers 1)] h101 [$(peers 101)]"; grep -h "static\|peer " "$W/h1.log" | tail -5; fi
sleep 2
[[ $(peers 2) == host1 ]] && ok "h2 (no peer line) sees h1 only: multicast does not cross the router" || ko "h2 lists [$(peers 2)]"
grep -q "static peer side-b.flocon.test is at \[10.78.0.1:19432\]" "$W/h1.log" && ok "the name was resolved off the loop" || ko "no resolution logged: $(grep -h static "$W/h1.log" | tail -2)"
cp "$W/repo/$PKG" "$W/h101/cache/"
"$LAN" exec 1 curl -sS -o "$W/got" "http://127.0.0.1:19433/flocontest/os/any/$PKG"
if cmp -s "$W/got" "$W/repo/$PKG" && status 1 | grep -q '"lan_hits":1'; then
  ok "a package crossed the router from h101 to h1, verified"
else ko "routed transfer: $(grep -h "$PKG" "$W/h1.log" | tail -3)"; fi
for i in 1 2 101; do stop "$i"; done

# --- the same with a group key: static peers follow the key
"$BIN" genkey "$W/k" >/dev/null
start 1 --peer 10.78.0.1 --key-file "$W/k"
start 101 --peer 10.77.0.1 --key-file "$W/k"
if wait_peers 1 "host101" 6 && wait_peers 101 "host1" 6; then ok "keyed static peers find each other"; else ko "keyed static: h1 [$(peers 1)] h101 [$(peers 101)]"; fi
rm -f "$W/h1/cache/$PKG"; cp "$W/repo/$PKG" "$W/h101/cache/" 2>/dev/null
"$LAN" exec 1 curl -sS -o "$W/got2" "http://127.0.0.1:19433/flocontest/os/any/$PKG"
if cmp -s "$W/got2" "$W/repo/$PKG" && status 1 | grep -q '"lan_hits":1'; then
  ok "keyed: the copy carried a valid Flocon-Auth (h101 served it)"
else ko "keyed routed transfer: $(grep -h "$PKG" "$W/h1.log" | tail -3)"; fi
for i in 1 101; do stop "$i"; done

# --- exclude-interface on the router (two legs: r1 on side A, r2 on side B)
start rt --exclude-interface r2
start 1
start 101
sleep 3
m=$(status rt | grep -o '"multicast":\[[^]]*\]')
[[ $m == *r1/* && $m != *r2* ]] && ok "exclude-interface r2: multicast only on r1 ($m)" || ko "memberships: $m"
[[ $(peers rt) == host1 ]] && ok "the router's flocon sees side A only" || ko "router lists [$(peers rt)]"
ss_out=$(ip netns exec "${FLAN_PREFIX}rt" ss -Htlnp 2>/dev/null | grep ':19432' | awk '{print $4}' | tr '\n' ' ')
echo "     router's peer TCP listener (ss): $ss_out"
a=$("$LAN" exec 1 curl -s -o /dev/null -w '%{http_code}' "http://10.77.0.254:19432/none-1-1-any.pkg.tar.zst")
b=$("$LAN" exec 101 curl -s -o /dev/null -w '%{http_code}' "http://10.78.0.254:19432/none-1-1-any.pkg.tar.zst"; echo " exit $?")
# closed unanswered: curl sees an empty reply (52) or a reset (56) when its request was
# already in the socket's receive buffer at the close
if [[ $a == 404 && ( $b == "000 exit 52" || $b == "000 exit 56" ) ]]; then
  ok "peer server: answers on r1 (404 for a missing file), closes connections arriving on excluded r2 without a byte (curl ${b#* })"
else ko "peer server: r1 [$a] r2 [$b]"; fi
established=$(ip netns exec "${FLAN_PREFIX}rt" ss -Htn state established '( sport = :19432 )' | wc -l)
(( established == 0 )) && ok "ss: no peer connection left open on the router" || ko "ss: $established connections open"
for i in rt 1 101; do stop "$i"; done

echo "$pass passed, $fail failed"
(( fail == 0 ))
