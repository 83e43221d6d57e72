#!/usr/bin/env bash
# demo.sh [path/to/flocon] - what `make demo` runs: a throw-away LAN of three flocon hosts and
# a slow "Internet" mirror, all in private network namespaces (tests/lan.sh isolated), that
# shows discovery and verified transfers, prints a short summary, and removes everything.
# It never touches the machine's real network. Needs python3, curl, iproute2, util-linux and
# root or unprivileged user namespaces; no pacman needed (each host's sync db is written
# here, in pacman's format, as if `pacman -Sy` had run; curl plays pacman).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
LAN=$here/lan.sh
BIN=${1:-${FLOCON_BIN:-$here/../target/release/flocon}}
die() { echo "demo: $*" >&2; exit 1; }
if [[ ! -x $BIN ]]; then
  echo "demo: building flocon (cargo build --release)"
  (cd "$here/.." && cargo build --release --quiet) || die "cargo build failed"
  BIN=$here/../target/release/flocon
fi
BIN=$(readlink -f "$BIN")
for t in python3:python3 curl:curl ip:iproute2 tc:iproute2 unshare:util-linux gpg:gnupg; do
  command -v "${t%%:*}" >/dev/null || die "needs ${t%%:*} (Debian: apt-get install ${t#*:})"
done

# Only lo in sight means a private network namespace; anything else: re-run in one.
if [[ -n $(ip -o link show | grep -v '^[0-9]*: lo:' || true) ]]; then   # (no grep -q: SIGPIPE + pipefail)
  [[ -z ${FLOCON_DEMO_INSIDE:-} ]] || die "still not in a private network namespace; refusing to run"
  if [[ $(id -u) != 0 ]] && ! unshare --user --map-root-user --net true 2>/dev/null; then
    die "this kernel does not allow unprivileged user namespaces, which the demo needs to build
      its private LAN without root. Either run it as root (sudo make demo: it still only creates
      namespaces that vanish with it), or allow them: sudo sysctl kernel.unprivileged_userns_clone=1
      (Debian) / sudo sysctl kernel.apparmor_restrict_unprivileged_userns=0 (Ubuntu 24.04+)."
  fi
  FLOCON_DEMO_INSIDE=1 exec "$LAN" isolated "$here/demo.sh" "$BIN"
fi

export FLAN_PREFIX=fdemo-
N=3                       # flocon hosts; host 4 is the mirror
MIRROR_HOST=4
MIRROR=$("$LAN" addr $MIRROR_HOST)
MIRROR_RATE=50mbit        # the "Internet" link; the LAN itself is not limited
BIG_MB=24
T0=$(date +%s.%N)
W=$(mktemp -d /tmp/flocon-demo.XXXXXX)
cleanup() {
  local i p
  for i in $(seq $N) mirror; do p=$(cat "$W/h$i/pid" 2>/dev/null) && kill "$p" 2>/dev/null; done
  "$LAN" down >/dev/null 2>&1
  wait 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT
el() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# ---------------------------------------------------------------- a repo "demo" with 2 packages
R=$W/mirror/demo/os/x86_64
mkdir -p "$R"
BIG=demo-big-1.0-1-x86_64.pkg.tar.zst
TOOL=demo-tool-1.0-1-any.pkg.tar.zst
head -c $((BIG_MB << 20)) /dev/urandom > "$R/$BIG"
head -c $((1 << 20)) /dev/urandom > "$R/$TOOL"
# real detached signatures (a throw-away key): flocon checks that a peer's .sig is one
# OpenPGP signature packet before handing it to pacman, and benches a peer that sends junk
G=(gpg --homedir "$W/gnupg" --batch --quiet --no-tty --passphrase '' --pinentry-mode loopback)
mkdir -m 700 "$W/gnupg"
"${G[@]}" --quick-gen-key "flocon demo <demo@flocon.invalid>" ed25519 sign never 2>/dev/null ||
  die "gpg could not make a signing key"
for f in "$BIG" "$TOOL"; do "${G[@]}" --detach-sign -o "$R/$f.sig" "$R/$f"; done
gpgconf --homedir "$W/gnupg" --kill all 2>/dev/null || true
# the sync db, in pacman's format: a gzip'd tar of <name>-<version>/desc
python3 - "$R" "$BIG" "$TOOL" <<'PY'
import hashlib, io, os, sys, tarfile
d, files = sys.argv[1], sys.argv[2:]
with tarfile.open(os.path.join(d, "demo.db.tar.gz"), "w:gz") as t:
    for f in files:
        name, ver, rel, arch = f.split(".pkg.tar")[0].rsplit("-", 3)
        data = open(os.path.join(d, f), "rb").read()
        desc = ("%%FILENAME%%\n%s\n\n%%NAME%%\n%s\n\n%%VERSION%%\n%s-%s\n\n%%CSIZE%%\n%d\n\n"
                "%%SHA256SUM%%\n%s\n\n%%ARCH%%\n%s\n\n" % (f, name, ver, rel, len(data),
                hashlib.sha256(data).hexdigest(), arch)).encode()
        i = tarfile.TarInfo("%s-%s-%s/desc" % (name, ver, rel)); i.size = len(desc)
        t.addfile(i, io.BytesIO(desc))
os.symlink("demo.db.tar.gz", os.path.join(d, "demo.db"))
PY
SHA_BIG=$(sha256sum < "$R/$BIG" | cut -d' ' -f1)
SHA_TOOL=$(sha256sum < "$R/$TOOL" | cut -d' ' -f1)

# ---------------------------------------------------------------- the LAN
echo "flocon demo: $N hosts + a mirror on a private namespace LAN (nothing leaves this machine)"
"$LAN" up $((N + 1)) >/dev/null || die "could not create the namespace LAN"
"$LAN" shape $MIRROR_HOST $MIRROR_RATE 2>/dev/null || MIRROR_RATE=unlimited
"$LAN" exec $MIRROR_HOST python3 -m http.server -d "$W/mirror" -b "$MIRROR" 8080 >/dev/null 2>&1 &
mkdir -p "$W/hmirror" && echo $! > "$W/hmirror/pid"
for i in $(seq $N); do
  d=$W/h$i
  mkdir -p "$d"/{db/sync,cache,state}
  printf '[options]\nDBPath = %s/db/\nCacheDir = %s/cache/\n\n[demo]\nServer = http://localhost:19433/$repo/os/$arch\nServer = http://%s:8080/$repo/os/$arch\n' \
    "$d" "$d" "$MIRROR" > "$d/pacman.conf"
  cp "$R/demo.db.tar.gz" "$d/db/sync/demo.db"      # as if `pacman -Sy` had run
  echo "# demo" > "$d/flocon.conf"
done
t_start=$(date +%s.%N)
for i in $(seq $N); do
  "$LAN" exec "$i" "$BIN" --config "$W/h$i/flocon.conf" --pacman-conf "$W/h$i/pacman.conf" \
    --state-dir "$W/h$i/state" --name "host$i" --announce-interval 1 2>"$W/h$i/log" &
  echo $! > "$W/h$i/pid"
done
st() { "$LAN" exec "$1" "$BIN" status --json 2>/dev/null; }
# digest_version, wait_published: a file copied into a running daemon's cache is found by
# its peers once they hold the digest that lists it
# shellcheck source=tests/digest.sh
source "$here/digest.sh"
q() { st "$1" | python3 -c 'import json, sys; s = json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null; }

echo
echo "discovery (multicast on each host's eth0, default ports):"
for i in $(seq $N); do
  want=$((N - 1)) got=0
  for _ in $(seq 100); do
    got=$(q "$i" 'len(s["peers"])'); [[ ${got:-0} -ge $want ]] && break; sleep 0.1
  done
  printf '  host%s (%s) found %-14s after %s s\n' "$i" "$("$LAN" addr "$i")" \
    "$(q "$i" '" ".join(sorted(p["name"] for p in s["peers"]))')" "$(el "$t_start")"
done

# get I FILE WHO: curl plays pacman on host I; prints one summary line
get() {
  local i=$1 f=$2 t0 lan0 up0 sz rate sum src
  lan0=$(q "$i" 's["lan_bytes"]') up0=$(q "$i" 's["upstream_bytes"]') t0=$(date +%s.%N)
  "$LAN" exec "$i" curl -sfL -o "$W/h$i/cache/$f" "http://localhost:19433/demo/os/x86_64/$f" ||
    { echo "  host$i: download of $f failed"; return 1; }
  local secs; secs=$(el "$t0")
  "$LAN" exec "$i" curl -sfL -o "$W/h$i/cache/$f.sig" "http://localhost:19433/demo/os/x86_64/$f.sig"
  sz=$(stat -c %s "$W/h$i/cache/$f")
  rate=$(awk -v b="$sz" -v s="$secs" 'BEGIN { printf "%.0f", b / 1e6 / (s > 0.05 ? s : 0.05) }')
  sum=$(sha256sum < "$W/h$i/cache/$f" | cut -d' ' -f1)
  [[ $sum == "$SHA_BIG" || $sum == "$SHA_TOOL" ]] && sum="sha256 ok" || sum="SHA256 WRONG"
  if (( $(q "$i" 's["lan_bytes"]') > lan0 )); then
    src=$(grep -o "$f: [0-9]* bytes from peer [0-9.]*" "$W/h$i/log" | tail -1 | awk '{ print $NF }')
    src="host${src##*.} (LAN, verified against host$i's sync db)"
  elif (( $(q "$i" 's["upstream_bytes"]') > up0 )); then src="the mirror ($MIRROR_RATE)"
  else src="?"; fi
  printf '  host%s <- %-52s %-36s %5.1f MB in %4s s (%s MB/s), %s\n' "$i" "$src" "$f" \
    "$(awk -v b="$sz" 'BEGIN { print b / 1e6 }')" "$secs" "$rate" "$sum"
}

echo
echo "transfers (curl asks its own flocon on localhost:19433, as pacman would):"
get 1 "$BIG"
get 2 "$BIG"
get 3 "$BIG"

echo
echo "integrity: host3 now holds a TAMPERED $TOOL (same name, same size, one byte changed)"
v3=$(digest_version 3)
cp "$R/$TOOL" "$W/h3/cache/$TOOL"
printf 'X' | dd of="$W/h3/cache/$TOOL" bs=1 seek=4096 conv=notrunc status=none
# host1 asks host3 for it once host1 holds the digest of host3 that lists it
wait_published 3 "$v3" "$TOOL" 1 || die "host1 does not hold a digest of host3 listing $TOOL"
get 1 "$TOOL"
printf '  host1 rejected %s bad copy; bans: %s\n' "$(q 1 's["rejected_copies"]')" \
  "$(q 1 '"; ".join("%s for %d s (%s)" % (([p["name"] for p in s["peers"] if p["instance"] in b["peer"]] or [b["peer"]])[0], b["seconds_left"], b["reason"]) for b in s["bans"]) or "none"')"
get 2 "$TOOL"

echo
for i in $(seq $N); do
  printf '  host%s: %s LAN hits, %s MB from the LAN, %s MB from the mirror, %s MB served to peers\n' "$i" \
    "$(q "$i" 's["lan_hits"]')" "$(q "$i" 'round(s["lan_bytes"] / 1e6, 1)')" \
    "$(q "$i" 'round(s["upstream_bytes"] / 1e6, 1)')" "$(q "$i" 'round(s["peer_bytes_sent"] / 1e6, 1)')"
done
echo
echo "what host2's operator sees: flocon status"
"$LAN" exec 2 "$BIN" status 2>&1 | sed 's/^/  | /'
echo "and a few lines of its Prometheus endpoint (curl http://localhost:19433/metrics):"
"$LAN" exec 2 curl -sf http://localhost:19433/metrics | grep -E '^flocon_(lan_hits_total|lan_bytes_total|upstream_bytes_total|rejected_copies_total|bans_total|peers|lifetime_lan_bytes)[ {]' | sed 's/^/  | /'
echo "demo done in $(el "$T0") s; removing the LAN, the daemons and $W"
