#!/usr/bin/env bash
# lan_attack.sh - a hostile host on the LAN (tests/attacker.py) against flocon, without and
# with a group key (issue 10). Run it isolated:
#   tests/lan.sh isolated tests/lan_attack.sh [path/to/flocon]
# Hosts: 1 = A (has the package), 2 = B (looks it up), 3 = M (the attacker: raw sockets,
# promiscuous, and the switch floods unicast like a hub, so M sees B's queries to A),
# 4 = a honest newcomer. The LAN is a /16 so that M's forged sources are all on-link.
# Each attack runs for ATTACK_SECS while B makes LOOKUPS lookups of A's package (10/s) and
# counts those that find A. Prints one line per check and "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LAN="$here/lan.sh"
BIN=${1:-$here/../target/release/flocon}
[[ -x $BIN ]] || { echo "lan_attack: no flocon binary at $BIN" >&2; exit 2; }
export FLAN_PREFIX=fla-
W=$(mktemp -d /tmp/flocon-lan-attack.XXXXXX)
ATTACK_SECS=14
LOOKUPS=100
pass=0 fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
ko() { echo "FAIL - $*"; fail=$((fail + 1)); }
cleanup() { "$LAN" down >/dev/null 2>&1 || true; rm -rf "$W"; }
trap cleanup EXIT

PKG=att-1.0-1-any.pkg.tar.zst
start() { # start I [extra args...]
  local i=$1; shift
  mkdir -p "$W/h$i/cache" "$W/h$i/state" "$W/h$i/db/sync"
  printf '[options]\n' > "$W/h$i/pacman.conf"
  echo "# test" > "$W/h$i/flocon.conf"
  "$LAN" exec "$i" "$BIN" --config "$W/h$i/flocon.conf" --pacman-conf "$W/h$i/pacman.conf" \
    --cache-dir "$W/h$i/cache" --state-dir "$W/h$i/state" --db-path "$W/h$i/db" \
    --name "host$i" --announce-interval 2 --debug "$@" 2>>"$W/h$i.log" &
  echo $! > "$W/h$i.pid"
}
stop() { local p; p=$(cat "$W/h$1.pid" 2>/dev/null) && kill "$p" 2>/dev/null; wait "$p" 2>/dev/null || true; }
peers() {
  "$LAN" exec "$1" "$BIN" status --json 2>/dev/null | grep -o '"name":"host[0-9]*"' | sed 's/.*"\(host[0-9]*\)"/\1/' | grep -v "^host$1\$" | sort | tr '\n' ' ' | sed 's/ $//'
}
wait_peer() { # wait_peer I NAME SECONDS: host I lists NAME
  local n
  for ((n = 0; n < $3 * 10; n++)); do [[ " $(peers "$1") " == *" $2 "* ]] && return 0; sleep 0.1; done
  return 1
}
cat > "$W/lookups.py" <<'PY'
import http.client, json, sys, time
n, gap, name, size = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
conn = lambda: http.client.HTTPConnection("127.0.0.1", 19433, timeout=5)
c, found, errors, micros = conn(), 0, 0, []
for i in range(n):
    t = time.monotonic()
    try:
        c.request("GET", "/.flocon/lookup/%s?size=%s" % (name, size))
        j = json.loads(c.getresponse().read())
        found += any(h["peer"] == "host1" for h in j["have"])
        micros.append(j["micros"])
    except Exception:
        errors += 1
        c = conn()
    time.sleep(max(0.0, gap - (time.monotonic() - t)))
micros.sort()
print(found, errors, micros[len(micros) // 2] if micros else -1)
PY
# measure: B's lookups of A's package; prints "found errors median_us"
measure() { "$LAN" exec 2 python3 "$W/lookups.py" "$LOOKUPS" 0.1 "$PKG" 4096; }
# B's defence counters (flocon status --json), as "key value" lines
DEFENCE="auth_rejected rate_limited strangers_refused checks_sent checks_failed claims_refuted send_errors"
defence() {
  local j k; j=$("$LAN" exec 2 "$BIN" status --json 2>/dev/null)
  for k in $DEFENCE; do echo "$k $(grep -o "\"$k\":[0-9]*" <<<"$j" | cut -d: -f2)"; done
}
# defence_delta BEFORE AFTER: the counters that moved, "+N key" each
defence_delta() {
  awk 'NR == FNR { a[$1] = $2; next } $2 - a[$1] > 0 { printf "%s+%d %s", sep, $2 - a[$1], $1; sep = ", " }' <(echo "$1") <(echo "$2")
}
# attack MODES LABEL MIN: runs the attacker during a measurement; checks found >= MIN
attack() {
  local modes=$1 label=$2 min=$3 res found errors med d0 d1
  d0=$(defence)
  "$LAN" exec 3 python3 "$here/attacker.py" run eth0 10.77.0.1 10.77.0.2 "$ATTACK_SECS" "$modes" > "$W/att.out" 2>&1 &
  local ap=$!
  sleep 2
  res=$(measure); read -r found errors med <<<"$res"
  wait "$ap"
  d1=$(defence)
  DELTA=$(defence_delta "$d0" "$d1")
  local line="$label: A found in $found of $LOOKUPS lookups (median ${med} us, $errors errors; $(tail -1 "$W/att.out"); B's defence: ${DELTA:-nothing counted})"
  if grep -q "first error" "$W/att.out"; then ko "$line: the attacker could not send"
  elif (( found >= min )); then ok "$line"; else ko "$line (want >= $min)"; fi
}

"$LAN" up 4 >/dev/null
for i in 1 2 3 4; do
  "$LAN" exec "$i" ip addr del "10.77.0.$i/24" dev eth0
  "$LAN" exec "$i" ip addr add "10.77.0.$i/16" dev eth0
  "$LAN" exec "$i" ip route replace 224.0.0.0/4 dev eth0   # went with the /24
done
ip -n "${FLAN_PREFIX}sw" link set br0 type bridge ageing_time 0   # a hub: M sees unicast
"$LAN" exec 3 ip link set eth0 promisc on
mkdir -p "$W/h1/cache"; head -c 4096 /dev/urandom > "$W/h1/cache/$PKG"

# ------------------------------------------------------------------------ open LAN
start 1; start 2
wait_peer 2 host1 5 && wait_peer 1 host2 5 || ko "A and B do not find each other: [$(peers 2)]"
res=$(measure); read -r found errors med <<<"$res"
(( found >= 99 )) && ok "no attack: A found in $found of $LOOKUPS (median ${med} us)" || ko "no attack: A found in $found of $LOOKUPS"
attack goodbye "open LAN, forged GOODBYE in A's name 20/s" 95
attack announce "open LAN, forged new instance at A's address 10/s" 95
attack qflood "open LAN, 5000 spoofed QUERY/s to B from absent addresses" 95
# the newcomer starts while 480 forged peers announce
"$LAN" exec 3 python3 "$here/attacker.py" run eth0 10.77.0.1 10.77.0.2 "$ATTACK_SECS" stuff > "$W/att.out" 2>&1 &
ap=$!
d0=$(defence)
sleep 3
table=$("$LAN" exec 2 "$BIN" status --json | grep -o '"instance":"' | wc -l)
# B's lookups meanwhile (10 s, within the attack's 14)
measure > "$W/stuff.measure" &
mp=$!
start 4
t0=$SECONDS
if wait_peer 2 host4 10; then
  ok "open LAN, 480 forged peers: newcomer host4 listed by B after $((SECONDS - t0)) s (B's table held $((table - 1)) peers before it)"
else ko "open LAN, 480 forged peers: newcomer not listed by B within 10 s ([$(peers 2)])"; fi
wait "$mp"; read -r found errors med < "$W/stuff.measure"
wait "$ap"
DELTA=$(defence_delta "$d0" "$(defence)")
line="open LAN, 480 forged peers: A found in $found of $LOOKUPS lookups (median ${med} us, $errors errors; $(tail -1 "$W/att.out"); B's defence: ${DELTA:-nothing counted})"
(( found >= 95 )) && ok "$line" || ko "$line (want >= 95)"
# a forged DON'T HAVE by a host that sees the queries: no defence without a key (reported)
"$LAN" exec 3 python3 "$here/attacker.py" run eth0 10.77.0.1 10.77.0.2 "$ATTACK_SECS" answers > "$W/att.out" 2>&1 &
ap=$!; sleep 2
res=$(measure); read -r found errors med <<<"$res"; wait "$ap"
echo "info - open LAN, forged DON'T HAVE by a host that sees the queries: A found in $found of $LOOKUPS (median ${med} us; $(tail -1 "$W/att.out"))"
for i in 1 2 4; do stop "$i"; done

# ------------------------------------------------------------------------ with a key
"$BIN" genkey "$W/group.key" >/dev/null || ko "flocon genkey"
[[ $(stat -c %a "$W/group.key") == 600 && $(stat -c %s "$W/group.key") == 32 ]] && ok "genkey writes 32 bytes, mode 600" || ko "genkey: $(stat -c '%a %s' "$W/group.key")"
"$BIN" genkey "$W/group.key" >/dev/null 2>&1 && ko "genkey overwrote a key" || ok "genkey refuses to overwrite"
K=(--key-file "$W/group.key")
start 1 "${K[@]}"; start 2 "${K[@]}"; start 4
if wait_peer 2 host1 5 && wait_peer 1 host2 5; then ok "keyed A and B find each other"; else ko "keyed discovery: [$(peers 2)]"; fi
sleep 3
[[ " $(peers 2) " != *" host4 "* && " $(peers 4) " != *" host1 "* ]] && ok "an open daemon and keyed ones ignore each other" || ko "mixed: B [$(peers 2)] h4 [$(peers 4)]"
stop 4
attack goodbye,announce,stuff,qflood,answers,replay "keyed, every attack at once (goodbye, announce, 480 forged peers, query flood, forged answers, replays)" 99
sleep 1
[[ " $(peers 2) " == *" host1 "* && $(peers 2) == host1 ]] && ok "keyed B lists exactly A after the attacks" || ko "keyed B lists [$(peers 2)]"
rej=$("$LAN" exec 2 "$BIN" status --json | grep -o '"datagrams_rejected":[0-9]*' | cut -d: -f2)
(( rej > 1000 )) && ok "keyed B dropped $rej datagrams before decoding them" || ko "keyed B rejected only $rej"
got=$("$LAN" exec 3 python3 "$here/attacker.py" http 10.77.0.1 19432 "/$PKG")
[[ $got == "HTTP/1.1 403"* ]] && ok "attacker's GET of A's package: ${got% *} (${got##* } bytes)" || ko "attacker's GET: $got"
got=$("$LAN" exec 3 python3 "$here/attacker.py" http 10.77.0.1 19432 "/nothing-1-1-any.pkg.tar.zst")
[[ $got == "HTTP/1.1 403"* ]] && ok "attacker's GET of a missing file: 403 too (nothing learnt)" || ko "attacker's GET (missing): $got"
# a keyed newcomer joins; a verified transfer between keyed peers (the Flocon-Auth header)
start 4 "${K[@]}"
wait_peer 2 host4 5 && ok "a keyed newcomer joins" || ko "keyed newcomer: [$(peers 2)]"
for i in 1 2 4; do stop "$i"; done

echo "$pass passed, $fail failed"
(( fail == 0 ))
