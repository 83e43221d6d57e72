#!/usr/bin/env bash
# front.sh - the loopback front against its references, in one private network namespace
# (issue 4's "Must show"), all in the same run:
#
#   (a) a BENCH_BIG_MB (256) MiB package, a peer hit: GET through B's front (lookup, fetch from
#       A, stage while hashing, verify, then serve) against the same kind of file fetched
#       directly from peer A's file server on 19432. BENCH_RUNS (3) runs, each with a fresh
#       package (B removes its staged copy once served, so a repeat would be a new transfer
#       anyway, but a fresh name rules out any reuse). MB/s = size / curl's time_total;
#       ratio = front / direct (target >= 0.8). The front's time to first byte is also shown:
#       it is the fetch + verify, since a copy is only handed out once verified. Then the same
#       again with fresh packages and A's uploads shaped to BENCH_LAN_MBIT (a LAN between A
#       and B; B's front to its local client stays loopback-fast, as for pacman).
#   (b) time to first byte of a 1 MiB hit through B's front (curl time_starttransfer), median
#       of BENCH_N (20) fresh packages, against the same files straight from A's 19432.
#   (c) the latency a miss adds before the upstream answer begins: TTFB through B's front for
#       packages listed in B's sync db but on no peer (lookup, then proxied from the mirror)
#       against TTFB asking the mirror directly, BENCH_N fresh packages, median of each and the
#       median of the per-package differences. Also shown: a package in no sync db (no lookup,
#       straight to the proxy).
#
# The LAN, on lo inside the namespace: A (127.0.0.2) holds the hit packages in its pacman
# cache; B (127.0.0.3) has the sync db and an empty cache; the upstream mirror is nginx on
# 127.0.0.100:80 (one worker, sendfile). Both daemons list flocon first, the mirror second.
# Every package is real (bsdtar, .PKGINFO, zstd -1 of random data) and listed in the sync db
# by repo-add. Each hit is checked: HTTP 200, full size, the mirror's access log never saw it,
# B's lan_hits counter went up by one; each miss: 200, full size, the mirror did see it.
#
# Environment:
#   BENCH_BIG_MB=256 BENCH_RUNS=3 BENCH_N=20   workload
#   BENCH_LAN_MBIT=1000                        (a) again with A's uploads shaped to this rate
#                                              (tc htb on lo, source port 19432); 0 = skip
#   FLOCON_BIN=target/release/flocon           the daemon to measure
#   FLOCON_BIN_PREBUILT=1                      skip `cargo build --release`
# Needs: cargo, curl, tc (iproute2, kernel sch_htb + cls_u32 when BENCH_LAN_MBIT > 0), nginx (Debian: nginx-light), bsdtar (libarchive-tools), zstd, repo-add
# (pacman-package-manager), python3, util-linux, iproute2. Runtime about a minute.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIG_MB=${BENCH_BIG_MB:-256}
RUNS=${BENCH_RUNS:-3}
N=${BENCH_N:-20}
LAN_MBIT=${BENCH_LAN_MBIT:-1000}
FLOCON_BIN=${FLOCON_BIN:-$ROOT/target/release/flocon}
REPO=flocontest
ARCH=x86_64
A=127.0.0.2 B=127.0.0.3 MIRROR=127.0.0.100
PEER_PORT=19432 FRONT_PORT=19433
CURL_MAX_S=60   # a 256 MiB transfer on loopback takes a second or two: a hang is a failure

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
pkgfile() { echo "$1-1.0-1-$ARCH.pkg.tar.zst"; }

# ============================================================================ inside the netns
if [[ ${1:-} == --inside ]]; then
  W=$2
  pids=()
  stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
  trap stop_all EXIT

  mkdir -p "$W/nginx/tmp"
  cat > "$W/nginx/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 1024; }
http {
  sendfile on;
  tcp_nopush off;  # corked keep-alive responses stall ~44 ms each: see bench/bench.sh
  access_log $W/nginx/access.log;
  default_type application/octet-stream;
  client_body_temp_path $W/nginx/tmp;
  proxy_temp_path $W/nginx/tmp;
  fastcgi_temp_path $W/nginx/tmp;
  uwsgi_temp_path $W/nginx/tmp;
  scgi_temp_path $W/nginx/tmp;
  server { listen $MIRROR:80; root $W/mirror; }
}
EOF
  start() {  # start NAME CMD...: run in the background, log to $W/NAME.log, pid in $started
    "${@:2}" > "$W/$1.log" 2>&1 &
    started=$!
    pids+=("$started")
  }
  daemon() {  # daemon NAME IP
    mkdir -p "$W/$1/state"
    start "$1" "$FLOCON_BIN" --config /dev/null --pacman-conf "$W/$1/pacman.conf" \
      --cache-dir "$W/$1/cache" --db-path "$W/$1/db" --state-dir "$W/$1/state" \
      --listen "$2:$FRONT_PORT" --peer-addr "$2" --interface lo --name "$1"
  }
  start nginx nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log"
  nginx_pid=$started
  daemon a $A
  a_pid=$started
  daemon b $B
  b_pid=$started

  status() { curl -s --max-time 2 "http://$B:$FRONT_PORT/.flocon/status.json"; }
  counter() { status | grep -o "\"$1\":[0-9]*" | cut -d: -f2; }
  n_pkgs=$(grep -c '^%FILENAME%' "$W/desc-all")
  t0=$SECONDS
  until status | grep -q "\"name\":\"a\"" && status | grep -q "\"indexed_packages\":$n_pkgs"; do
    for p in "$nginx_pid:nginx" "$a_pid:a" "$b_pid:b"; do
      kill -0 "${p%%:*}" 2>/dev/null || { cat "$W/${p#*:}.log" >&2; die "${p#*:} exited during startup"; }
    done
    (( SECONDS - t0 < 15 )) || { status >&2; die "after 15 s B does not list A or its $n_pkgs packages"; }
    sleep 0.1
  done
  curl -s -o /dev/null --max-time 2 "http://$MIRROR/" || die "the mirror does not answer"
  log "B lists A and indexes $n_pkgs packages after $((SECONDS - t0)) s"

  front_url() { echo "http://$B:$FRONT_PORT/$REPO/os/$ARCH/$1"; }
  peer_url() { echo "http://$A:$PEER_PORT/$1"; }
  mirror_url() { echo "http://$MIRROR/$REPO/os/$ARCH/$1"; }
  mirror_saw() { grep -c " /$REPO/os/$ARCH/$1 " "$W/nginx/access.log" || true; }
  # get URL SIZE MAX_S: "time_starttransfer time_total" in seconds; dies unless 200 and SIZE
  get() {
    local out code size ttfb total
    out=$(curl -sS -o /dev/null --max-time "$3" -w '%{http_code} %{size_download} %{time_starttransfer} %{time_total}' "$1") \
      || die "GET $1 failed"
    read -r code size ttfb total <<<"$out"
    [[ $code == 200 && $size == "$2" ]] || die "GET $1: HTTP $code, $size of $2 bytes"
    echo "$ttfb $total"
  }
  # hit FILE: through B's front, checked to be a LAN hit; prints "ttfb total"
  hit() {
    local before after r
    before=$(counter lan_hits)
    r=$(get "$(front_url "$1")" "$(stat -c %s "$W/repo/$1")" $CURL_MAX_S) || exit 1
    after=$(counter lan_hits)
    [[ $(mirror_saw "$1") == 0 ]] || die "$1: the mirror was asked: not a LAN hit"
    (( after == before + 1 )) || die "$1: B's lan_hits went $before -> $after"
    echo "$r"
  }
  ms() { awk -v s="$1" 'BEGIN { printf "%.2f", s * 1000 }'; }
  sms() { awk -v s="$1" 'BEGIN { printf "%+.2f", s * 1000 }'; }
  mbs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.0f", b / s / 1e6 }'; }

  # ---- (a) the big package
  # big_runs PREFIX: RUNS x (direct from A, then through B's front) of PREFIX1.., one line
  # per run in $W/PREFIX.txt: "direct_MB/s front_MB/s front_ttfb_s"
  big_runs() {
    local i f size d_total f_ttfb f_total r
    : > "$W/$1.txt"
    for i in $(seq "$RUNS"); do
      f=$(pkgfile "$1$i")
      size=$(stat -c %s "$W/repo/$f")
      r=$(get "$(peer_url "$f")" "$size" $CURL_MAX_S); read -r _ d_total <<<"$r"
      r=$(hit "$f"); read -r f_ttfb f_total <<<"$r"
      echo "$(mbs "$size" "$d_total") $(mbs "$size" "$f_total") $f_ttfb" >> "$W/$1.txt"
      log "  run $i: direct $(mbs "$size" "$d_total") MB/s, front $(mbs "$size" "$f_total") MB/s (first byte after $(ms "$f_ttfb") ms)"
    done
  }
  col() { awk -v c="$2" '{ print $c }' "$W/$1.txt" | median; }
  log "(a) $RUNS x $BIG_MB MiB on loopback: direct from A, then through B's front"
  big_runs big
  big_size=$(stat -c %s "$W/repo/$(pkgfile big1)")
  if (( LAN_MBIT > 0 )); then
    # A's uploads (source port 19432) through a $LAN_MBIT Mbit/s class, everything else
    # (B's front to curl, the mirror) unshaped: A -> B crosses a LAN, B -> pacman does not
    tc qdisc add dev lo root handle 1: htb default 10 r2q 100000
    tc class add dev lo parent 1: classid 1:10 htb rate 40gbit burst 8mb cburst 8mb
    tc class add dev lo parent 1: classid 1:20 htb rate "${LAN_MBIT}mbit" burst 512k cburst 512k
    tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport $PEER_PORT 0xffff flowid 1:20
    log "(a) $RUNS x $BIG_MB MiB with A's uploads shaped to $LAN_MBIT Mbit/s"
    big_runs lan
    tc qdisc del dev lo root
  fi
  sleep 0.5
  staged_left=$(find "$W/b/state" -type f | wc -l)

  # ---- (b) 1 MiB hits
  log "(b) $N x 1 MiB hits: direct from A, then through B's front"
  : > "$W/small.txt"
  for i in $(seq 0 "$N"); do
    f=$(pkgfile hit$i)
    size=$(stat -c %s "$W/repo/$f")
    r=$(get "$(peer_url "$f")" "$size" 10); read -r d_ttfb _ <<<"$r"
    r=$(hit "$f"); read -r f_ttfb _ <<<"$r"
    (( i == 0 )) || echo "$d_ttfb $f_ttfb" >> "$W/small.txt"   # hit0 warms up
  done
  hit_direct=$(awk '{ print $1 }' "$W/small.txt" | median)
  hit_front=$(awk '{ print $2 }' "$W/small.txt" | median)

  # ---- (c) misses
  log "(c) $N x 1 MiB misses: from the mirror directly, then through B's front"
  : > "$W/miss.txt"
  for i in $(seq 0 "$N"); do
    f=$(pkgfile miss$i)
    size=$(stat -c %s "$W/repo/$f")
    r=$(get "$(mirror_url "$f")" "$size" 10); read -r d_ttfb _ <<<"$r"
    r=$(get "$(front_url "$f")" "$size" 10); read -r f_ttfb _ <<<"$r"
    [[ $(mirror_saw "$f") == 2 ]] || die "$f: the mirror saw $(mirror_saw "$f") requests, not 2"
    (( i == 0 )) || echo "$d_ttfb $f_ttfb" >> "$W/miss.txt"
  done
  miss_direct=$(awk '{ print $1 }' "$W/miss.txt" | median)
  miss_front=$(awk '{ print $2 }' "$W/miss.txt" | median)
  miss_diff=$(awk '{ print $2 - $1 }' "$W/miss.txt" | median)
  : > "$W/nodb.txt"
  f=$(pkgfile notindb)
  size=$(stat -c %s "$W/repo/$f")
  for i in $(seq 0 "$N"); do
    r=$(get "$(mirror_url "$f")" "$size" 10); read -r d_ttfb _ <<<"$r"
    r=$(get "$(front_url "$f")" "$size" 10); read -r f_ttfb _ <<<"$r"
    (( i == 0 )) || echo "$d_ttfb $f_ttfb" >> "$W/nodb.txt"
  done
  nodb_direct=$(awk '{ print $1 }' "$W/nodb.txt" | median)
  nodb_front=$(awk '{ print $2 }' "$W/nodb.txt" | median)
  nodb_diff=$(awk '{ print $2 - $1 }' "$W/nodb.txt" | median)
  rss_b=$(awk '/^VmRSS:/ { print $2 }' "/proc/$b_pid/status")

  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
  verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo MISSED; fi; }
  echo
  printf '%-36s %12s %12s %9s   %s\n' "" reference "B's front" ratio target
  big_row() {  # big_row PREFIX LABEL
    local d f r
    d=$(col "$1" 1) f=$(col "$1" 2)
    r=$(ratio "$f" "$d")
    printf '%-36s %12s %12s %9s   %s\n' "$2" "$d" "$f" "$r" ">= 0.8x $(verdict "${r%x} >= 0.8")"
    printf '%-36s %12s %12s %9s   %s\n' "    first byte after, ms" "" "$(ms "$(col "$1" 3)")" "" \
      "(fetch from A + SHA-256, then serve)"
  }
  big_row big "(a) $BIG_MB MiB hit, lo, MB/s"
  (( LAN_MBIT > 0 )) && big_row lan "    A->B at $LAN_MBIT Mbit/s, MB/s"
  printf '%-36s %12s %12s %9s   %s\n' "(b) 1 MiB hit, TTFB ms (median of $N)" \
    "$(ms "$hit_direct")" "$(ms "$hit_front")" "$(ratio "$hit_front" "$hit_direct")" "(reference: same files from A's 19432)"
  printf '%-36s %12s %12s %9s   %s\n' "(c) miss in db, TTFB ms (median of $N)" \
    "$(ms "$miss_direct")" "$(ms "$miss_front")" "$(sms "$miss_diff")" "(reference: the mirror directly; +ms = median added latency)"
  printf '%-36s %12s %12s %9s   %s\n' "    not in any db, TTFB ms" \
    "$(ms "$nodb_direct")" "$(ms "$nodb_front")" "$(sms "$nodb_diff")" "(no lookup: the proxy alone)"
  echo "(a): MB/s medians of $RUNS runs, reference = a same-size package straight from A's 19432 (one curl"
  echo "    each, same run); the front hands out nothing before the whole file is verified, so its time"
  echo "    is fetch+hash plus serve: on bare loopback that is at best ~0.5x by design."
  echo "B: $staged_left staged file(s) left after (a); VmRSS $rss_b KiB at the end; $big_size bytes per big package."
  exit 0
fi

# ============================================================================ outside
for c in curl nginx bsdtar zstd repo-add python3 unshare ip; do
  command -v $c >/dev/null || die "needs $c (Debian: apt-get install -y curl nginx-light libarchive-tools zstd pacman-package-manager python3 util-linux iproute2)"
done
cd "$ROOT"
t_start=$SECONDS
if [[ -z ${FLOCON_BIN_PREBUILT:-} ]]; then
  log "building (release)"
  cargo build --release --quiet
fi
[[ -x $FLOCON_BIN ]] || die "no binary at $FLOCON_BIN"

W=$(mktemp -d /tmp/flocon-front.XXXXXX)
trap 'rm -rf "$W"' EXIT
chmod 755 "$W"     # nginx workers must reach the files
mkdir -p "$W/repo"
# mkpkg NAME BYTES: a real package of BYTES random bytes (incompressible: zstd -1 stores it)
mkpkg() {
  local root=$W/pkgroot-$1
  mkdir -p "$root/usr/share/$1"
  head -c "$2" /dev/urandom > "$root/usr/share/$1/blob"
  printf 'pkgname = %s\npkgbase = %s\npkgver = 1.0-1\npkgdesc = flocon bench\nurl = https://example.invalid\nbuilddate = 1700000000\npackager = bench\nsize = %s\narch = %s\nlicense = MIT\n' \
    "$1" "$1" "$2" "$ARCH" > "$root/.PKGINFO"
  bsdtar -cf - -C "$root" .PKGINFO usr | zstd -1 -q -T0 -o "$W/repo/$(pkgfile "$1")"
  rm -rf "$root"
}
log "creating $((LAN_MBIT > 0 ? 2 * RUNS : RUNS)) x $BIG_MB MiB and $((2 * N + 3)) x 1 MiB packages and the sync db in $W"
for i in $(seq "$RUNS"); do
  mkpkg big$i $((BIG_MB * 1048576)) &
  (( LAN_MBIT > 0 )) && mkpkg lan$i $((BIG_MB * 1048576)) &
done
for i in $(seq 0 "$N"); do mkpkg hit$i 1048576; mkpkg miss$i 1048576; done
wait
repo-add -q "$W/repo/$REPO.db.tar.gz" "$W/repo/"*.pkg.tar.zst 2>&1 | grep -v '^$' >&2 || true
[[ -f $W/repo/$REPO.db.tar.gz ]] || die "repo-add made no db"
mkpkg notindb 1048576    # on the mirror, in no sync db
# the mirror serves the repo dir; A's pacman cache holds the hit packages (hard links)
mkdir -p "$W/mirror/$REPO/os" "$W/a/cache" "$W/b/cache"
ln -s "$W/repo" "$W/mirror/$REPO/os/$ARCH"
for f in "$W/repo/"{big,lan,hit}*.pkg.tar.zst; do [[ -e $f ]] && ln "$f" "$W/a/cache/"; done
for h in a b; do
  mkdir -p "$W/$h/db/sync"
  cp "$W/repo/$REPO.db.tar.gz" "$W/$h/db/sync/$REPO.db"
  cat > "$W/$h/pacman.conf" <<EOF
[options]
DBPath = $W/$h/db/
CacheDir = $W/$h/cache/
Architecture = $ARCH

[$REPO]
Server = http://localhost:$FRONT_PORT/\$repo/os/\$arch
Server = http://$MIRROR/\$repo/os/\$arch
EOF
done
bsdtar -xOf "$W/repo/$REPO.db.tar.gz" > "$W/desc-all"   # for the package count
log "packages ready after $((SECONDS - t_start)) s"

"$ROOT/tests/netns.sh" bash "$ROOT/bench/front.sh" --inside "$W"
log "done in $((SECONDS - t_start)) s"
