#!/usr/bin/env bash
# lan_routed.sh - two segments joined by a router that forwards no multicast (tests/lan.sh
# routed): hosts with `peer =` lines find each other across it, and a real pacman -S on one
# side takes its packages from the other side's cache, verified, without and with a group
# key; a host without peer lines does not see across; `exclude-interface` on a two-legged
# host keeps discovery and the peer server off that leg (checked with ss and real
# connections). Run it isolated:
#   tests/lan.sh isolated tests/lan_routed.sh [path/to/flocon]
#
#   side A (10.77.0.0/24)   host 1: flocon + the host's pacman (6.0: flocon as first Server)
#                           host 2: flocon without peer lines, and the mirror (port 8080,
#                                   reachable from both sides through the router)
#   side B (10.78.0.0/24)   host 101: flocon + pacman; it installs the packages first (from
#                                   the mirror, through its flocon), then holds them
#   router                  r1 10.77.0.254, r2 10.78.0.254
# The packages are tests/fixtures.sh's signed repository (makepkg, repo-add, gpg), built with
# FIXTURE_BIG_MB=5 into $ROUTED_FIXTURES, or next to $E2E_FIXTURES (tests/lan.rs sets it)
# as routed-fixtures/, or into the temp dir; kept and reused while fixtures.sh and pacman
# are unchanged. Prints one line per check and "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LAN="$here/lan.sh"
BIN=${1:-$here/../target/release/flocon}
[[ -x $BIN ]] || { echo "lan_routed: no flocon binary at $BIN" >&2; exit 2; }
for t in pacman pacman-key makepkg repo-add bsdtar gpg python3 curl ss; do
  command -v "$t" >/dev/null || { echo "lan_routed: $t is not installed" >&2; exit 2; }
done
export FLAN_PREFIX=flr-
W=$(mktemp -d /tmp/flocon-lan-routed.XXXXXX)
chmod 755 "$W"
T0=$SECONDS
pass=0 fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
ko() { echo "FAIL - $*"; fail=$((fail + 1)); }
cleanup() {
  local i
  for i in 1 101; do gpgconf --homedir "$W/h$i/gnupg" --kill all 2>/dev/null; done
  "$LAN" down >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ fixtures
FX=${ROUTED_FIXTURES:-${E2E_FIXTURES:+$(dirname "$E2E_FIXTURES")/routed-fixtures}}
FX=${FX:-$W/fx}
FIXTURE_BIG_MB=5 "$here/fixtures.sh" "$FX" > "$W/fixtures.log" 2>&1 ||
  { cat "$W/fixtures.log"; echo "lan_routed: fixtures.sh failed" >&2; exit 2; }
# shellcheck source=/dev/null
source "$FX/fixtures.env"
declare -A FILE SHA BLOB
while IFS=$'\t' read -r name _ file _ sha; do
  FILE[$name]=$file SHA[$name]=$sha
  BLOB[$name]=$(bsdtar -xOf "$FIXTURE_DB_DIR/$file" "usr/share/$name/blob" | sha256sum | cut -d' ' -f1)
done < "$FIXTURE_DIR/packages.tsv"
SET=(flocon-small flocon-xz flocon-mid flocon-big)
echo "# fixtures: ${SET[*]} from $FX ($((SECONDS - T0)) s)"

"$LAN" routed 2 1 >/dev/null
# a name for the far side, as a site's DNS or /etc/hosts would give it (this mount namespace only)
{ cat /etc/hosts; echo "10.78.0.1 side-b.flocon.test"; } > "$W/hosts"
mount --bind "$W/hosts" /etc/hosts

# ------------------------------------------------------------------------------ the mirror
MIRROR=10.77.0.2:8080
MLOG=$W/mirror.log
: > "$MLOG"
cat > "$W/mirror.py" <<'PY'
# mirror.py ROOT PORT LOG: HTTP/1.1 file server; LOG gets "client method path status" lines
import functools, sys
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
class H(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def log_request(self, code="-", size="-"):
        with open(sys.argv[3], "a") as f:
            f.write("%s %s %s %s\n" % (self.client_address[0], self.command, self.path, getattr(code, "value", code)))
ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), functools.partial(H, directory=sys.argv[1])).serve_forever()
PY
"$LAN" exec 2 python3 "$W/mirror.py" "$FIXTURE_MIRROR_ROOT" 8080 "$MLOG" 2> "$W/mirror.err" &
mark() { wc -l < "$MLOG"; }
# pkg_reqs MARK ADDR: package and .sig requests from ADDR since MARK
pkg_reqs() { tail -n +"$(($1 + 1))" "$MLOG" | awk -v a="$2" '$1 == a && $3 ~ /\.pkg\.tar\./ { n = split($3, p, "/"); print p[n] }' | sort -u | tr '\n' ' '; }

# ------------------------------------------------------------------------------ hosts
# mkhost I: host I's pacman (its own root, dbs, cache, keyring) configured the pacman 6.0
# way: its flocon first, then the mirror
mkhost() {
  local d=$W/h$1
  mkdir -p "$d"/{root,db/sync,cache,hooks,state}
  cat > "$d/pacman.conf" <<EOF
[options]
RootDir = $d/root
DBPath = $d/db/
CacheDir = $d/cache/
LogFile = $d/pacman.log
GPGDir = $d/gnupg/
HookDir = $d/hooks/
Architecture = x86_64
SigLevel = Required

[$FIXTURE_REPO]
Server = http://localhost:19433/\$repo/os/\$arch
Server = http://$MIRROR/\$repo/os/\$arch
EOF
}
for i in 1 2 101; do mkhost "$i"; done
keyjobs=()
for i in 1 101; do
  ( pacman-key --gpgdir "$W/h$i/gnupg" --init && pacman-key --gpgdir "$W/h$i/gnupg" --add "$FIXTURE_SIGNER_ASC" &&
    pacman-key --gpgdir "$W/h$i/gnupg" --lsign-key "$FIXTURE_FPR" ) > "$W/h$i/pacman-key.log" 2>&1 &
  keyjobs+=($!)
done

start() { # start I [extra args...]; the router (rt) gets a pacman.conf of its own
  local i=$1; shift
  local run=("$LAN" exec "$i")
  [[ $i == rt ]] && run=(ip netns exec "${FLAN_PREFIX}rt")
  mkdir -p "$W/h$i/cache" "$W/h$i/state" "$W/h$i/db/sync"
  [[ -f $W/h$i/pacman.conf ]] ||
    printf '[options]\n[%s]\nServer = http://localhost:19433/$repo/os/$arch\n' "$FIXTURE_REPO" > "$W/h$i/pacman.conf"
  echo "# test" > "$W/h$i/flocon.conf"
  "${run[@]}" "$BIN" --config "$W/h$i/flocon.conf" --pacman-conf "$W/h$i/pacman.conf" \
    --cache-dir "$W/h$i/cache" --state-dir "$W/h$i/state" --db-path "$W/h$i/db" \
    --name "host$i" --announce-interval 1 --debug "$@" 2>>"$W/h$i.log" &
  echo $! > "$W/h$i.pid"
}
stop() { local p; p=$(cat "$W/h$1.pid" 2>/dev/null) && kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; }
status() { if [[ $1 == rt ]]; then ip netns exec "${FLAN_PREFIX}rt" "$BIN" status --json; else "$LAN" exec "$1" "$BIN" status --json; fi 2>/dev/null; }
field() { status "$1" | grep -o "\"$2\":[0-9]*" | cut -d: -f2; }
peers() { status "$1" | grep -o '"name":"host[0-9a-z]*"' | sed 's/.*"\(host[0-9a-z]*\)"/\1/' | grep -v "^host$1\$" | sort | tr '\n' ' ' | sed 's/ $//'; }
wait_peers() { local n; for ((n = 0; n < $3 * 10; n++)); do [[ $(peers "$1") == "$2" ]] && return 0; sleep 0.1; done; return 1; }
wait_indexed() { local n; for ((n = 0; n < 100; n++)); do [[ $(field "$1" indexed_packages) -gt 0 ]] && return 0; sleep 0.1; done; return 1; }

# pm I ARGS...: pacman on host I; sets RC, EL (seconds), OUT (its output file)
PM_N=0
pm() {
  local i=$1; shift
  PM_N=$((PM_N + 1)); OUT=$W/pm$PM_N-h$i.txt
  local t0=$SECONDS
  "$LAN" exec "$i" env LC_ALL=C pacman --config "$W/h$i/pacman.conf" --noconfirm "$@" > "$OUT" 2>&1
  RC=$? EL=$((SECONDS - t0))
}
pm_ok() { # pm_ok WHAT: the last pacman exited 0 and printed no error
  if [[ $RC == 0 ]] && ! grep -qiE 'error|failed|corrupt|invalid|not found|too slow' "$OUT"; then
    ok "$1: pacman rc 0, no error (${EL} s)"
  else ko "$1: pacman rc $RC"; sed 's/^/    | /' "$OUT" | tail -15; fi
}
installed() { # installed I: every package of SET is installed, the repo's build, cached as the repo's file
  local i=$1 n bad=
  for n in "${SET[@]}"; do
    pacman --config "$W/h$i/pacman.conf" -Q "$n" >/dev/null 2>&1 || { bad+=" $n(not in local db)"; continue; }
    [[ $(sha256sum < "$W/h$i/root/usr/share/$n/blob" | cut -d' ' -f1) == "${BLOB[$n]}" ]] || { bad+=" $n(blob)"; continue; }
    [[ $(sha256sum < "$W/h$i/cache/${FILE[$n]}" 2>/dev/null | cut -d' ' -f1) == "${SHA[$n]}" ]] || bad+=" $n(cached file)"
  done
  [[ -z $bad ]] || { echo "    host $i: bad:$bad"; return 1; }
}
# from_host101 LOG-LINE: the packages of SET host 1's flocon copied from host 101 after that line
from_host101() {
  local n c=0
  for n in "${SET[@]}"; do
    tail -n +"$(($1 + 1))" "$W/h1.log" | grep -qF "${FILE[$n]}: " &&
      tail -n +"$(($1 + 1))" "$W/h1.log" | grep -F "${FILE[$n]}: " | grep -q "bytes from peer 10.78.0.1:19432 (host101) verified" &&
      c=$((c + 1))
  done
  echo "$c"
}
# routed_install LABEL: host 1 installs SET; checks pacman, the files, flocon's log and status,
# and the mirror's log (no package or .sig request from host 1)
routed_install() {
  local label=$1 m l0 hits0 sent0 r c
  m=$(mark); l0=$(wc -l < "$W/h1.log")
  hits0=$(field 1 lan_hits); sent0=$(field 101 peer_bytes_sent)
  pm 1 -S "${SET[@]}"
  pm_ok "$label: pacman -S ${SET[*]} on host 1"
  installed 1 && ok "$label: installed on host 1, the signed repo's builds" || ko "$label: not installed as built"
  c=$(from_host101 "$l0")
  [[ $c == "${#SET[@]}" ]] && ok "$label: host 1's flocon logs all $c packages as verified copies from peer 10.78.0.1:19432 (host101)" ||
    { ko "$label: $c of ${#SET[@]} packages logged as from host101"; grep -h "bytes from\|upstream\|mirror" "$W/h1.log" | tail -6 | sed 's/^/    | /'; }
  local hits=$(( $(field 1 lan_hits) - hits0 )) sent=$(( $(field 101 peer_bytes_sent) - sent0 ))
  (( hits >= ${#SET[@]} && sent > 0 )) && ok "$label: host 1's status: $hits LAN hits; host 101 sent $sent bytes to peers" ||
    ko "$label: host 1's status: $hits LAN hits, host 101 sent $sent bytes"
  r=$(pkg_reqs "$m" 10.77.0.1)
  [[ -z $r ]] && ok "$label: the mirror saw no package or .sig request from host 1 (all it ever served host 1: $(awk '$1 == "10.77.0.1" { n = split($3, p, "/"); print p[n] }' "$MLOG" | sort -u | tr '\n' ' '))" ||
    ko "$label: the mirror served host 1: $r"
}

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

# --- pacman across the router, open LAN: host 101 installs from the mirror, host 1 from host 101
wait "${keyjobs[@]}"
for i in 1 101; do
  pacman-key --gpgdir "$W/h$i/gnupg" --list-keys "$FIXTURE_FPR" >/dev/null 2>&1 || { cat "$W/h$i/pacman-key.log"; ko "host $i's keyring"; }
done
for i in 101 1; do
  pm "$i" -Sy
  pm_ok "pacman -Sy on host $i (the db through its flocon, from the mirror)"
  wait_indexed "$i" || ko "flocon on host $i did not index its sync db"
done
m=$(mark)
pm 101 -S "${SET[@]}"
pm_ok "pacman -S ${SET[*]} on host 101 (side B)"
r=$(pkg_reqs "$m" 10.78.0.1)
[[ -n $r ]] && ok "host 101's flocon fetched them from the mirror across the router ($r)" || ko "the mirror saw no request from host 101"
routed_install "open LAN"
for i in 1 2 101; do stop "$i"; done

# --- the same with a group key: static peers follow the key, the copy carries Flocon-Auth
"$BIN" genkey "$W/k" >/dev/null
start 1 --peer 10.78.0.1 --key-file "$W/k"
start 101 --peer 10.77.0.1 --key-file "$W/k"
if wait_peers 1 "host101" 6 && wait_peers 101 "host1" 6; then ok "keyed static peers find each other"; else ko "keyed static: h1 [$(peers 1)] h101 [$(peers 101)]"; fi
wait_indexed 1 || ko "keyed: flocon on host 1 did not index its sync db"
pm 1 -R "${SET[@]}"
pm_ok "keyed: pacman -R on host 1"
for n in "${SET[@]}"; do rm -f "$W/h1/cache/${FILE[$n]}" "$W/h1/cache/${FILE[$n]}.sig"; done
routed_install "keyed"
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

echo "$pass passed, $fail failed ($((SECONDS - T0)) s)"
(( fail == 0 ))
