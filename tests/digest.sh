# digest.sh - sourced by the shell suites (e2e.sh, lan_discovery.sh, demo.sh), not run:
# waiting for a cache digest to reach the peers (docs/PROTOCOL.md §14).
#
# A file put into a running daemon's cache behind flocon's back (cp by a test) is found by a
# peer that already holds that daemon's digest only once the daemon has published a newer
# digest (its rescan notices the cache dir changed) and the peer has fetched it; before that,
# only if the holder answers the asker's INTENT within the asker's miss wait (§14.5), which
# a busy machine often misses. A test that needs such a file found (a hit, a ban for a
# corrupt copy, a refused other build) waits for what the protocol promises:
#
#   v=$(digest_version 3)              # before the copy
#   cp "$dir/$file" "$W/h3/cache/"
#   wait_published 3 "$v" "$file" 4 || ko "..."
#
# Files present before a daemon starts need no wait (its first digest lists them, and a peer
# that does not hold that digest yet asks it by QUERY), nor files that reach a cache through
# flocon (the INTENTs cover them). The Rust tests' twin is tests/common `Daemon::wait_published`.
# Hosts are lan.sh indices; needs LAN (tests/lan.sh), BIN (flocon) and python3.

# _digest_q I PYEXPR [ARG]: PYEXPR evaluated on host I's status (as `s`, ARG as sys.argv[2]);
# prints nothing when the status is unreadable
_digest_q() {
  "$LAN" exec "$1" "$BIN" status --json 2>/dev/null |
    python3 -c 'import json, sys; s = json.load(sys.stdin); print(eval(sys.argv[1]))' "${@:2}" 2>/dev/null
}

# digest_version I: the version of the digest host I publishes (0: none yet, or digests off)
digest_version() { _digest_q "$1" 's["digest"]["version"]'; }

# _digest_lists I FILE: "ON VERSION INSTANCE NAME" of host I's status, where VERSION is that
# of the digest it serves (GET /.flocon/digest on its own file server, default port) when
# that digest may hold FILE (§14.2: k bits of SHA-256(FILE)), else 0
_digest_lists() {
  "$LAN" exec "$1" python3 -c '
import hashlib, json, struct, subprocess, sys, urllib.request
bin, name = sys.argv[1], sys.argv[2]
s = json.loads(subprocess.run([bin, "status", "--json"], capture_output=True, check=True).stdout)
on, v = s["digest"]["on"], 0
try:
    b = urllib.request.urlopen("http://127.0.0.1:19432/.flocon/digest", timeout=5).read()
    k, m = b[5], 1 << b[6]
    h = hashlib.sha256(name.encode()).digest()
    h1, h2 = struct.unpack(">QQ", h[:16])
    h2 |= 1
    bits = [((h1 + i * h2) % (1 << 64)) % m for i in range(k)]
    if b[:5] == b"FLDG\x01" and len(b) == 16 + m // 8 and all(b[16 + p // 8] >> (p % 8) & 1 for p in bits):
        v = struct.unpack(">I", b[8:12])[0]
except Exception:
    pass
print(on, v, s["instance"], s["name"])' "$BIN" "$2" 2>/dev/null
}

# wait_published HOLDER SINCE FILE ASKER...: waits (45 s at most) until host HOLDER
# publishes a digest newer than SINCE (its digest_version before FILE was copied into its
# cache) that holds FILE, and each ASKER holds that version or a newer one (its peer row
# for HOLDER's instance says "digest": >= it). Checking FILE itself, not only the version,
# matters when HOLDER's cache changed just before the copy: the version built for that
# change may come after SINCE was read and still not list FILE. At once when HOLDER
# publishes no digests; an ASKER with digests off asks every peer by QUERY, so it is not
# waited for. Returns 1, saying what it saw, when that does not happen. Not under a group
# key (the loopback GET of the digest would need Flocon-Auth).
wait_published() {
  local holder=$1 since=$2 file=$3; shift 3
  local end=$((SECONDS + 45)) me on v inst name a held seen all
  [[ $since =~ ^[0-9]+$ ]] ||
    { echo "    wait_published: no digest version of host $holder from before the copy ('$since')"; return 1; }
  while :; do
    me=$(_digest_lists "$holder" "$file")
    read -r on v inst name <<<"$me"
    [[ $on == False ]] && return 0
    seen="" all=0
    if [[ ${v:-0} -gt $since ]]; then
      all=1
      for a in "$@"; do
        held=$(_digest_q "$a" '"off" if not s["digest"]["on"] else max([p["digest"] for p in s["peers"] if p["instance"] == sys.argv[2]] or [0])' "$inst")
        seen+=" host $a holds v${held:-?};"
        [[ $held == off || ${held:-0} -ge $v ]] || all=0
      done
    fi
    (( all )) && return 0
    if (( SECONDS >= end )); then
      if [[ -z $me ]]; then
        echo "    wait_published: host $holder's status unreadable for 45 s"
      elif (( v <= since )); then
        echo "    wait_published: after 45 s, host $holder ($name) publishes digest v$(digest_version "$holder") (v$since before the copy), and the one it serves does not hold $file (askers: hosts $*)"
      else
        echo "    wait_published: host $holder ($name) publishes digest v$v holding $file (v$since before the copy), not held by every asker within 45 s:${seen%;} (v?: status unreadable)"
      fi
      return 1
    fi
    sleep 0.2
  done
}
