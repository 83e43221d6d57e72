#!/usr/bin/env bash
# lan_join.sh [path/to/flocon] - one download per LAN (docs/DESIGN.md, "One download per LAN"):
# 4 flocon hosts with real pacman 6.0 (the host's; flocon as the first Server) and a mirror
# whose link is shaped to 20 Mbit/s, on a namespace LAN (tests/lan.sh). Run it isolated:
#   tests/lan.sh isolated tests/lan_join.sh [path/to/flocon]
# Scenarios:
#   1  all 4 run `pacman -S` of the same set (makepkg-built, signed: tests/fixtures.sh) at the
#      same moment: the mirror is asked for each package once in total, every pacman succeeds
#      without an error (no 'Operation too slow'); mirror bytes and wall time are printed
#   2  the host whose flocon fetches a package is killed half-way: the host that joined its
#      copy finishes, and asks the mirror only for the missing range
#   3  a host whose sync db names another build of a package does not join a copy of it
# For bench/lanjoin.sh: LANJOIN_MODE=nojoin runs scenario 1 with joining turned off
# (FLOCON_NO_JOIN=1: flocon as before this feature), LANJOIN_MODE=direct with pacman straight
# to the mirror (no flocon); LANJOIN_HOSTS=1 has only host 1 install; LANJOIN_ONLY1=1 stops
# after scenario 1. Each prints a "# RESULT" line.
# Prints one line per check and "N passed, N failed".
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LAN="$here/lan.sh"
BIN=${1:-$here/../target/release/flocon}
[[ -x $BIN ]] || { echo "lan_join: no flocon binary at $BIN" >&2; exit 2; }
export FLAN_PREFIX=${FLAN_PREFIX:-flj-}
W=$(mktemp -d /tmp/flocon-lan-join.XXXXXX)
chmod 755 "$W"
N=4 MH=5 MPORT=8080 RATE=${LANJOIN_RATE:-20mbit}
MODE=${LANJOIN_MODE:-join}   # join | nojoin | direct (pacman straight to the mirror)
pass=0 fail=0
ok() { echo "ok   - $*"; pass=$((pass + 1)); }
ko() { echo "FAIL - $*"; fail=$((fail + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else ko "$what"; fi; }
die() { echo "lan_join: $*" >&2; exit 1; }
stop() { local p; p=$(cat "$W/h$1/flocon.pid" 2>/dev/null) || return 0; kill "-${2:-TERM}" "$p" 2>/dev/null; wait "$p" 2>/dev/null; rm -f "$W/h$1/flocon.pid"; }
cleanup() {
  local i
  for i in $(seq $N); do stop "$i"; gpgconf --homedir "$W/h$i/gnupg" --kill all 2>/dev/null; done
  "$LAN" down >/dev/null 2>&1 || true
  [[ ${LANJOIN_KEEP:-0} == 1 ]] && echo "lan_join: kept $W" || rm -rf "$W"
}
trap cleanup EXIT

# ------------------------------------------------------------------------------ fixtures
FX=${E2E_FIXTURES:-$W/fx}
FIXTURE_BIG_MB=${FIXTURE_BIG_MB:-80} "$here/fixtures.sh" "$FX" >"$W/fixtures.log" 2>&1 ||
  { cat "$W/fixtures.log"; die "fixtures.sh failed"; }
# shellcheck source=/dev/null
source "$FX/fixtures.env"
declare -A FILE SIZE
while IFS=$'\t' read -r name _ file size _; do FILE[$name]=$file SIZE[$name]=$size; done < "$FIXTURE_DIR/packages.tsv"
# the set: every package but the big one (tens of MB, so that the run stays short)
SET=$(for n in $FIXTURE_PACKAGES; do [[ $n == "$FIXTURE_BIG_PKG" ]] || echo "$n"; done | tr '\n' ' ')
SET=${SET% }
SET_BYTES=0; for n in $SET; do SET_BYTES=$((SET_BYTES + SIZE[$n])); done
echo "# set: $SET ($SET_BYTES bytes); mirror link $RATE; mode $MODE"

# ------------------------------------------------------------------------------ the mirror
# mirror.py ROOT PORT LOG: HTTP/1.1 files with Range; one log line per finished request:
# "time client path status range=R sent=N"
cat > "$W/mirror.py" <<'PY'
import os, sys, threading, time, urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
ROOT, PORT, LOG = os.path.realpath(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
LOCK = threading.Lock()
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def log_message(self, *a): pass
    def log(self, code, sent, note=""):
        with LOCK, open(LOG, "a") as f:
            f.write("%.3f %s %s %s range=%s sent=%d%s\n" % (time.time(), self.client_address[0], self.path,
                    code, (self.headers.get("Range") or "-").replace(" ", ""), sent, note))
    def do_GET(self):
        fp = os.path.realpath(os.path.join(ROOT, urllib.parse.unquote(self.path.split("?")[0]).lstrip("/")))
        if not fp.startswith(ROOT + os.sep) or not os.path.isfile(fp):
            self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
            return self.log(404, 0)
        size = os.path.getsize(fp); start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and "," not in rng:
            a, _, b = rng[6:].partition("-")
            if a:
                start, end, code = int(a), (min(int(b), size - 1) if b else size - 1), 206
            if start >= size:
                self.send_response(416); self.send_header("Content-Range", "bytes */%d" % size)
                self.send_header("Content-Length", "0"); self.end_headers()
                return self.log(416, 0)
        self.send_response(code)
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        if code == 206: self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        sent, left = 0, end - start + 1
        try:
            with open(fp, "rb") as f:
                f.seek(start)
                while left > 0:
                    b = f.read(min(65536, left))
                    if not b: break
                    self.wfile.write(b); sent += len(b); left -= len(b)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return self.log(code, sent, " cut")
        self.log(code, sent)
class S(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
S(("0.0.0.0", PORT), H).serve_forever()
PY
MLOG=$W/mirror.log
: > "$MLOG"
mark() { wc -l < "$MLOG"; }
since() { tail -n +"$(($1 + 1))" "$MLOG"; }
# pkg_lines MARK [FILE]: the mirror's package requests since MARK (not .sig, not dbs)
pkg_lines() { since "$1" | awk -v f="${2:-}" '$3 ~ /\.pkg\.tar\.[a-z]+$/ && (f == "" || $3 ~ ("/" f "$"))'; }

"$LAN" up $MH >/dev/null || die "lan.sh up failed"
MIRROR=$("$LAN" addr $MH)
"$LAN" exec $MH python3 "$W/mirror.py" "$FIXTURE_MIRROR_ROOT" $MPORT "$MLOG" 2>"$W/mirror.err" &

# ------------------------------------------------------------------------------ hosts
mkconf() { # mkconf I: pacman.conf of host I (pacman 6.0: flocon as the first Server)
  local d=$W/h$1
  {
    printf '[options]\nRootDir = %s/root\nDBPath = %s/db/\nCacheDir = %s/cache/\n' "$d" "$d" "$d"
    printf 'LogFile = %s/pacman.log\nGPGDir = %s/gnupg/\nHookDir = %s/hooks/\n' "$d" "$d" "$d"
    printf 'Architecture = auto\nSigLevel = Required\nParallelDownloads = 5\n\n[%s]\n' "$FIXTURE_REPO"
    [[ $MODE != direct ]] && echo 'Server = http://localhost:19433/$repo/os/$arch'
    echo "Server = http://$MIRROR:$MPORT/\$repo/os/\$arch"
  } > "$d/pacman.conf"
}
st() { "$LAN" exec "$1" "$BIN" status --json 2>/dev/null; }
stq() { st "$1" | python3 -c 'import json, sys; s = json.load(sys.stdin); print(eval(sys.argv[1]))' "$2" 2>/dev/null; }
wait_for() { local end=$((SECONDS + $1)); shift; until "$@"; do (( SECONDS < end )) || return 1; sleep 0.2; done; }
start() { # start I [ENV=V...]
  local i=$1; shift
  "$LAN" exec "$i" env "$@" "$BIN" --config "$W/h$i/flocon.conf" --pacman-conf "$W/h$i/pacman.conf" \
    --state-dir "$W/h$i/state" --name "host$i" --announce-interval 1 --debug 2>>"$W/h$i/flocon.log" &
  echo $! > "$W/h$i/flocon.pid"
  wait_for 5 st "$i" >/dev/null || { tail -5 "$W/h$i/flocon.log"; die "flocon on host $i does not answer"; }
}
npeers() { stq "$1" 'len(s["peers"])'; }
N_PKGS=$(wc -l < "$FIXTURE_DIR/packages.tsv")
indexed() { [[ $(stq "$1" 's["indexed_packages"]') == "$N_PKGS" ]]; }
declare -A RC EL OUT
# pm I ARGS...: pacman on host I, started when $W/go exists (all hosts at the same moment)
pm() {
  local i=$1; shift
  local o=$W/out-h$i-$(date +%s%N).txt
  echo "\$ pacman $*" > "$o"
  "$LAN" exec "$i" bash -c 'while [[ ! -e $0 ]]; do sleep 0.005; done; t0=$(date +%s.%N)
      LC_ALL=C pacman --config "$1" --noconfirm "${@:2}"; rc=$?
      echo "# rc=$rc s=$(awk -v a="$t0" -v b="$(date +%s.%N)" "BEGIN { printf \"%.2f\", b - a }")"; exit $rc' \
    "$W/go" "$W/h$i/pacman.conf" "$@" >> "$o" 2>&1
  echo "$o" > "$W/h$i/pm.last"
}
pm_result() { # pm_result I: RC, EL, OUT of host I's last pacman
  local o; o=$(cat "$W/h$1/pm.last"); OUT[$1]=$o
  RC[$1]=$(grep -o '^# rc=[0-9]*' "$o" | tail -1 | cut -d= -f2); EL[$1]=$(grep -o ' s=[0-9.]*' "$o" | tail -1 | cut -d= -f2)
}
BAD='error|too many errors|operation too slow|timed? ?out|timeout|corrupt|invalid|failed|not found'
pm_clean() { [[ ${RC[$1]} == 0 ]] && ! grep -qiE "$BAD" "${OUT[$1]}"; }
show_pm() { echo "    --- pacman on host $1 (rc ${RC[$1]}):"; sed 's/^/    | /' "${OUT[$1]}" | tail -15; tail -8 "$W/h$1/flocon.log" | sed 's/^/    flocon| /'; }
installed() { local i=$1 n; shift; for n in "$@"; do pacman --config "$W/h$i/pacman.conf" -Q "$n" >/dev/null 2>&1 || return 1; done; }

keyjobs=()
for i in $(seq $N); do
  mkdir -p "$W/h$i"/{root,db,cache,hooks,state}
  echo "# lan_join host $i" > "$W/h$i/flocon.conf"
  mkconf "$i"
  ( pacman-key --gpgdir "$W/h$i/gnupg" --init && pacman-key --gpgdir "$W/h$i/gnupg" --add "$FIXTURE_SIGNER_ASC" &&
    pacman-key --gpgdir "$W/h$i/gnupg" --lsign-key "$FIXTURE_FPR" ) >"$W/h$i/pacman-key.log" 2>&1 &
  keyjobs+=($!)
done
wait_for 30 "$LAN" exec 1 bash -c "exec 3<>/dev/tcp/$MIRROR/$MPORT" 2>/dev/null || die "the mirror does not answer"
wait "${keyjobs[@]}"
NOJOIN=(); [[ $MODE == nojoin ]] && NOJOIN=(FLOCON_NO_JOIN=1)
for i in $(seq $N); do
  "$LAN" exec "$i" env LC_ALL=C pacman --config "$W/h$i/pacman.conf" -Sy >"$W/h$i/sync.txt" 2>&1 || { cat "$W/h$i/sync.txt"; die "pacman -Sy on host $i"; }
  [[ $MODE == direct ]] || start "$i" "${NOJOIN[@]}" X=1
done
if [[ $MODE != direct ]]; then
  for i in $(seq $N); do
    wait_for 10 indexed "$i" || die "host $i did not index its db"
    wait_for 10 eval '[[ $(npeers '"$i"') == 3 ]]' || die "host $i sees $(npeers "$i") peers"
  done
fi
"$LAN" shape $MH "$RATE"

# ------------------------------------------------------------------------------ 1
echo "# scenario 1: 4 hosts, pacman -S $SET at the same moment"
m=$(mark)
rm -f "$W/go"
jobs=()
RUN=${LANJOIN_HOSTS:-$N}
for i in $(seq "$RUN"); do pm "$i" -S $SET & jobs+=($!); done
sleep 0.3
t0=$(date +%s.%N)
touch "$W/go"
wait "${jobs[@]}"
wall=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
for i in $(seq "$RUN"); do
  pm_result "$i"
  if pm_clean "$i" && installed "$i" $SET; then ok "host $i: pacman -S rc 0, no error, installed (${EL[$i]} s)"
  else ko "host $i: pacman -S"; show_pm "$i"; fi
done
bytes=$(pkg_lines "$m" | awk '{ split($6, s, "="); n += s[2] } END { print n + 0 }')
reqs=$(pkg_lines "$m" | wc -l)
ratio=$(awk -v a="$bytes" -v b="$SET_BYTES" 'BEGIN { printf "%.2f", a / b }')
echo "# RESULT mode=$MODE hosts=$RUN wall_s=$wall mirror_bytes=$bytes set_bytes=$SET_BYTES ratio=$ratio package_requests=$reqs"
if [[ $MODE == join && $RUN == "$N" ]]; then
  for n in $SET; do
    c=$(pkg_lines "$m" "${FILE[$n]}" | wc -l)
    if (( c == 1 )); then ok "$n: the mirror was asked once in all"
    else
      ko "$n: the mirror was asked $c times:"; pkg_lines "$m" "${FILE[$n]}" | sed 's/^/    | /'
      # what each daemon decided for that file, and why (they run with --debug)
      for i in $(seq "$RUN"); do
        grep -F "${FILE[$n]}" "$W/h$i/flocon.log" | grep -v "\.sig" | tail -12 | sed "s/^/    host$i| /"
      done
    fi
  done
  check "mirror bytes = 1.0x the set ($bytes of $SET_BYTES)" [ "$bytes" == "$SET_BYTES" ]
  joined=$(cat "$W"/h*/flocon.log | grep -c "joining its copy in flight")
  kept=$(cat "$W"/h*/flocon.log | grep -c "verified and kept for the LAN")
  check "copies in flight were joined ($joined) and kept copies verified ($kept)" [ "$joined" -gt 0 -a "$kept" -gt 0 ]
fi
if [[ $MODE != join || ${LANJOIN_ONLY1:-0} == 1 || $RUN != "$N" ]]; then echo "$pass passed, $fail failed"; (( fail == 0 )); exit; fi

# ------------------------------------------------------------------------------ 2
echo "# scenario 2: the fetching host is killed half-way; the joiner finishes from the mirror's range"
P=flocon-large F=${FILE[flocon-large]}
# nobody holds it any more (verified copies linger 10 s after they were handed out, and are
# offered meanwhile): host 1's flocon fetches it upstream, host 2 joins that copy
sleep 11
for i in $(seq $N); do pacman --config "$W/h$i/pacman.conf" -Rdd --noconfirm $P >/dev/null 2>&1; rm -f "$W/h$i/cache/$F"*; done
"$LAN" shape $MH 8mbit
m=$(mark); l1=$(wc -l < "$W/h1/flocon.log")
rm -f "$W/go"; touch "$W/go"
pm 1 -S $P & j1=$!
# host 2 asks once host 1's copy is arriving
wait_for 10 eval 'tail -n +$l1 "$W/h1/flocon.log" | grep -q "$F: nobody on the LAN has it; fetching it upstream"' || ko "host 1 did not fetch $P for the LAN"
sleep 1
pm 2 -S $P & j2=$!
half=$((SIZE[$P] / 2))
wait_for 30 eval '[[ $(stq 2 "sum(c[\"bytes\"] for c in s[\"transfers\"])" ) -ge '"$half"' ]]' ||
  echo "    (host 2's copy did not reach half in time: $(stq 2 's["transfers"]'))"
stop 1 KILL
echo "    killed host 1's flocon with host 2 at $(stq 2 'sum(c["bytes"] for c in s["transfers"])' 2>/dev/null) of ${SIZE[$P]} bytes"
wait "$j2"; pm_result 2
wait "$j1"
if pm_clean 2 && installed 2 $P; then ok "host 2: pacman -S $P rc 0, no error (${EL[2]} s)"; else ko "host 2: pacman -S $P"; show_pm 2; fi
r=$(pkg_lines "$m" "$F" | awk -v a="$("$LAN" addr 2)" '$2 == a')
check "host 2 asked the mirror only for the missing range: $(echo "$r" | awk '{ print $5, $6 }' | tr '\n' ' ')" \
  bash -c '[[ -n "$1" ]] && ! grep -q "range=-" <<<"$1"' _ "$r"
start 1

# ------------------------------------------------------------------------------ 3
echo "# scenario 3: a host whose db names another build does not join"
A=$FIXTURE_ALT_FILE
# host 4's db: the repo's, with the alternative build of $FIXTURE_ALT_PKG (unsigned db, read by flocon)
mkdir -p "$W/altdb"
cp "$FIXTURE_DIR/alt/$A" "$W/altdb/"
tar -xzf "$FIXTURE_DB_DIR/$FIXTURE_REPO.db.tar.gz" -C "$W/altdb" 2>/dev/null
cp "$FIXTURE_DB_DIR/$FIXTURE_REPO.db.tar.gz" "$W/altdb/x.db.tar.gz"
repo-add -q "$W/altdb/x.db.tar.gz" "$W/altdb/$A" >/dev/null 2>&1
cp "$W/altdb/x.db.tar.gz" "$W/h4/db/sync/$FIXTURE_REPO.db"
wait_for 10 eval '[[ $(stq 4 "s[\"indexed_packages\"]") == '"$N_PKGS"' ]] && grep -q "sync db $FIXTURE_REPO" "$W/h4/flocon.log"'
sleep 2.5
for i in $(seq $N); do rm -f "$W/h$i/cache/$A"*; done
"$LAN" shape $MH 2mbit
m=$(mark); l4=$(wc -l < "$W/h4/flocon.log")
"$LAN" exec 3 curl -s -o "$W/a3" "http://127.0.0.1:19433/$FIXTURE_REPO/os/any/$A" & c3=$!
sleep 0.5
"$LAN" exec 4 curl -s -o "$W/a4" "http://127.0.0.1:19433/$FIXTURE_REPO/os/any/$A"
wait $c3
check "host 3 fetched $A upstream and kept it for the LAN" grep -q "$A: nobody on the LAN has it; fetching it upstream" "$W/h3/flocon.log"
r4=$(pkg_lines "$m" "$A" | awk -v a="$("$LAN" addr 4)" '$2 == a' | wc -l)
check "host 4 (other build in its db) fetched upstream itself, not from host 3's copy" \
  bash -c '(( $1 >= 1 )) && ! tail -n +"$2" "$3" | grep -q "fetching $4 from peer"' _ "$r4" "$l4" "$W/h4/flocon.log" "$A"
check "and banned nobody" bash -c '! tail -n +"$1" "$2" | grep -qi "banned"' _ "$l4" "$W/h4/flocon.log"
"$LAN" shape $MH off

echo "$pass passed, $fail failed"
(( fail == 0 ))
