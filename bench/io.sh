#!/usr/bin/env bash
# io.sh - what the requesting daemon spends on moving bytes, in one private network namespace,
# each figure beside a reference from the same run:
#
#   (a) memory: BENCH_SLOW_N (256) clients download a BENCH_SLOW_MB (8) MiB package through
#       B's front at the same time, each reading at BENCH_SLOW_RATE (1 MB/s, a slow link or an
#       SD card). The package is in no sync db, so B proxies it from the mirror: every client
#       has its own stream. B's peak VmRSS during the run (sampled every 100 ms) against its
#       idle VmRSS just before; target <= 16 MiB.
#   (b) CPU: a BENCH_CPU_MB (1024) MiB LAN hit relayed by B (lookup, copy from A into
#       staging while hashing, verify, hand out to curl), B's user+system CPU seconds per GiB,
#       against the same work done by tools in the same run: `curl -o file` from A's peer
#       server (receive + write) plus `openssl dgst -sha256 file` (hash). BENCH_RUNS (3) fresh
#       packages; the median of the per-run ratios; target <= 0.9x. With BENCH_CPU_MBIT > 0
#       the same again with A's uploads shaped to that rate (smaller reads, as on a LAN).
#
# The LAN, on lo inside the namespace: A (127.0.0.2) holds the (b) packages in its pacman
# cache; B (127.0.0.3) has the sync db and an empty cache; the mirror is nginx on
# 127.0.0.100:80. Every package is real (bsdtar, .PKGINFO, zstd -1 of random data) and the
# (b) ones are listed in the sync db by repo-add. Each (b) hit is checked: 200, full size,
# B's lan_hits went up by one, the mirror never saw it; the tools' file hashes to the db's
# SHA-256.
#
# Environment:
#   BENCH_SLOW_N=256 BENCH_SLOW_MB=8 BENCH_SLOW_RATE=1000000   (a)
#   BENCH_CPU_MB=1024 BENCH_RUNS=3 BENCH_CPU_MBIT=0           (b)
#   FLOCON_BIN=target/release/flocon   FLOCON_BIN_PREBUILT=1 (skip `cargo build --release`)
#   BENCH_DIR=/tmp/dir   keep the packages there (not removed) and reuse them next time:
#                        two binaries measured on the same packages
# Needs: cargo, curl, openssl, nginx (Debian: nginx-light), bsdtar (libarchive-tools), zstd,
# repo-add (pacman-package-manager), python3, util-linux, iproute2 (+ tc, sch_htb, cls_u32
# when BENCH_CPU_MBIT > 0). Runtime about a minute and a half.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SLOW_N=${BENCH_SLOW_N:-256}
SLOW_MB=${BENCH_SLOW_MB:-8}
SLOW_RATE=${BENCH_SLOW_RATE:-1000000}
CPU_MB=${BENCH_CPU_MB:-1024}
RUNS=${BENCH_RUNS:-3}
CPU_MBIT=${BENCH_CPU_MBIT:-0}
FLOCON_BIN=${FLOCON_BIN:-$ROOT/target/release/flocon}
REPO=flocontest
ARCH=x86_64
A=127.0.0.2 B=127.0.0.3 MIRROR=127.0.0.100
PEER_PORT=19432 FRONT_PORT=19433
CURL_MAX_S=120

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
events { worker_connections 2048; }
http {
  sendfile on;
  tcp_nopush on;
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
  rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
  # cpu_s PID: user + system CPU seconds of the whole process so far (all its threads)
  tck=$(getconf CLK_TCK)
  cpu_s() { awk -v t="$tck" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$1/stat"; }
  # tool_cpu CMD...: runs CMD, prints its user + system CPU seconds
  tool_cpu() {
    python3 -c 'import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
r = resource.getrusage(resource.RUSAGE_CHILDREN)
print(f"{r.ru_utime + r.ru_stime:.3f}")' "$@"
  }
  mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
  verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo MISSED; fi; }

  # ---- (a) slow clients
  slow=$(pkgfile slow)
  sleep 1
  rss_idle=$(rss_kib "$b_pid")
  log "(a) $SLOW_N clients x $SLOW_MB MiB through B's front, each reading at $SLOW_RATE B/s"
  out=$(python3 "$ROOT/bench/slow_clients.py" $B $FRONT_PORT "/$REPO/os/$ARCH/$slow" \
    "$SLOW_N" "$SLOW_RATE" "$(stat -c %s "$W/repo/$slow")" "$b_pid") || die "slow clients failed"
  read -r slow_ok slow_n rss_peak slow_s <<<"$out"
  (( slow_ok == slow_n )) || die "(a): $slow_ok of $slow_n downloads complete"
  log "  $slow_ok/$slow_n complete in $slow_s s, B's peak VmRSS $(mib "$rss_peak")"
  sleep 0.5

  # ---- (b) relayed hits
  # cpu_runs PREFIX: per run, "B's s/GiB, curl s/GiB, openssl s/GiB" in $W/PREFIX.txt
  cpu_runs() {
    local i f size want before after hits code got c1 c2 cb gib
    : > "$W/$1.txt"
    for i in $(seq "$RUNS"); do
      f=$(pkgfile "$1$i")
      size=$(stat -c %s "$W/repo/$f")
      want=$(awk -v f="$f" '$0 == "%FILENAME%" { getline; n = $0 } $0 == "%SHA256SUM%" { getline; if (n == f) print }' "$W/desc-all")
      gib=$(awk -v s="$size" 'BEGIN { print s / 1073741824 }')
      # the tools: receive and write, then hash, the same bytes from A's peer server
      c1=$(tool_cpu curl -sS --max-time $CURL_MAX_S -o "$W/tools.out" "http://$A:$PEER_PORT/$f")
      [[ $(stat -c %s "$W/tools.out") == "$size" ]] || die "$f: curl got a short file"
      c2=$(tool_cpu openssl dgst -sha256 -out "$W/tools.sha" "$W/tools.out")
      grep -q "$want" "$W/tools.sha" || die "$f: openssl's digest is not the db's"
      rm -f "$W/tools.out"
      # B: the same file as a relayed LAN hit
      hits=$(counter lan_hits)
      before=$(cpu_s "$b_pid")
      # -L: like pacman, follow the 307 a client gets after waiting 7 s for a copy
      r=$(curl -sS -L -o /dev/null --max-time $CURL_MAX_S -w '%{http_code} %{size_download}' \
        "http://$B:$FRONT_PORT/$REPO/os/$ARCH/$f") || die "GET $f through B failed"
      after=$(cpu_s "$b_pid")
      read -r code got <<<"$r"
      [[ $code == 200 && $got == "$size" ]] || die "$f through B: HTTP $code, $got of $size bytes"
      (( $(counter lan_hits) == hits + 1 )) || die "$f: not a LAN hit"
      grep -q " /$REPO/os/$ARCH/$f " "$W/nginx/access.log" && die "$f: the mirror was asked"
      cb=$(awk -v a="$before" -v b="$after" 'BEGIN { print b - a }')
      echo "$cb $c1 $c2" | awk -v g="$gib" '{ printf "%.3f %.3f %.3f\n", $1 / g, $2 / g, $3 / g }' >> "$W/$1.txt"
      log "  run $i: B $(awk -v c="$cb" -v g="$gib" 'BEGIN { printf "%.2f", c / g }') s/GiB; curl $(awk -v c="$c1" -v g="$gib" 'BEGIN { printf "%.2f", c / g }') + openssl $(awk -v c="$c2" -v g="$gib" 'BEGIN { printf "%.2f", c / g }') s/GiB"
    done
  }
  log "(b) $RUNS x $CPU_MB MiB relayed LAN hits on loopback, and the same files by curl + openssl"
  cpu_runs cpu
  if (( CPU_MBIT > 0 )); then
    tc qdisc add dev lo root handle 1: htb default 10 r2q 100000
    tc class add dev lo parent 1: classid 1:10 htb rate 40gbit burst 8mb cburst 8mb
    tc class add dev lo parent 1: classid 1:20 htb rate "${CPU_MBIT}mbit" burst 512k cburst 512k
    tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip sport $PEER_PORT 0xffff flowid 1:20
    log "(b) again with A's uploads shaped to $CPU_MBIT Mbit/s"
    cpu_runs lan
    tc qdisc del dev lo root
  fi
  rss_hwm=$(awk '/^VmHWM:/ { print $2 }' "/proc/$b_pid/status")

  echo
  printf '%-40s %14s %14s %9s   %s\n' "" reference "B" ratio target
  r=$(ratio "$rss_peak" "$rss_idle")
  printf '%-40s %14s %14s %9s   %s\n' "(a) $SLOW_N slow clients, peak VmRSS" "$(mib "$rss_idle")" "$(mib "$rss_peak")" "$r" \
    "<= 16 MiB $(verdict "$rss_peak <= 16384") (reference: B idle, just before)"
  cpu_row() {  # cpu_row PREFIX LABEL
    local b t o sum rr
    b=$(awk '{ print $1 }' "$W/$1.txt" | median)
    t=$(awk '{ print $2 }' "$W/$1.txt" | median)
    o=$(awk '{ print $3 }' "$W/$1.txt" | median)
    sum=$(awk -v t="$t" -v o="$o" 'BEGIN { printf "%.2f", t + o }')
    rr=$(awk '{ printf "%.4f\n", $1 / ($2 + $3) }' "$W/$1.txt" | median)
    printf '%-40s %14s %14s %9s   %s\n' "$2" "$sum" "$b" "$(printf '%.2fx' "$rr")" \
      "<= 0.9x $(verdict "$rr <= 0.9") (reference: curl $t + openssl $o)"
  }
  cpu_row cpu "(b) relayed hit, lo, CPU s/GiB"
  (( CPU_MBIT > 0 )) && cpu_row lan "    A->B at $CPU_MBIT Mbit/s, CPU s/GiB"
  echo "(a): $SLOW_N x $SLOW_MB MiB proxied from the mirror (in no sync db), $slow_s s; B's VmHWM over the whole bench $(mib "$rss_hwm")."
  echo "(b): medians of $RUNS runs (ratio: median of per-run ratios); B's CPU is the whole process (all threads),"
  echo "    lookup to hand-out; the tools write to the same file system as B's staging dir."
  exit 0
fi

# ============================================================================ outside
for c in curl openssl nginx bsdtar zstd repo-add python3 unshare ip; do
  command -v $c >/dev/null || die "needs $c (Debian: apt-get install -y curl openssl nginx-light libarchive-tools zstd pacman-package-manager python3 util-linux iproute2)"
done
cd "$ROOT"
t_start=$SECONDS
if [[ -z ${FLOCON_BIN_PREBUILT:-} ]]; then
  log "building (release)"
  cargo build --release --quiet
fi
[[ -x $FLOCON_BIN ]] || die "no binary at $FLOCON_BIN"

if [[ -n ${BENCH_DIR:-} && -f ${BENCH_DIR:-}/desc-all ]]; then
  # packages made by an earlier run with BENCH_DIR set (same settings): measure again
  W=$BENCH_DIR
  rm -rf "$W/nginx" "$W/a/state" "$W/b/state"
  log "reusing the packages in $W"
  "$ROOT/tests/netns.sh" bash "$ROOT/bench/io.sh" --inside "$W"
  exit 0
fi
if [[ -n ${BENCH_DIR:-} ]]; then
  W=$BENCH_DIR
  mkdir -p "$W"
else
  W=$(mktemp -d /tmp/flocon-io.XXXXXX)
  trap 'rm -rf "$W"' EXIT
fi
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
log "creating $((CPU_MBIT > 0 ? 2 * RUNS : RUNS)) x $CPU_MB MiB and 1 x $SLOW_MB MiB packages and the sync db in $W"
for i in $(seq "$RUNS"); do
  mkpkg cpu$i $((CPU_MB * 1048576))
  if (( CPU_MBIT > 0 )); then mkpkg lan$i $((CPU_MB * 1048576)); fi
done
repo-add -q "$W/repo/$REPO.db.tar.gz" "$W/repo/"*.pkg.tar.zst 2>&1 | grep -v '^$' >&2 || true
[[ -f $W/repo/$REPO.db.tar.gz ]] || die "repo-add made no db"
mkpkg slow $((SLOW_MB * 1048576))    # on the mirror, in no sync db
mkdir -p "$W/mirror/$REPO/os" "$W/a/cache" "$W/b/cache"
ln -s "$W/repo" "$W/mirror/$REPO/os/$ARCH"
for f in "$W/repo/"{cpu,lan}*.pkg.tar.zst; do if [[ -e $f ]]; then ln "$f" "$W/a/cache/"; fi; done
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
bsdtar -xOf "$W/repo/$REPO.db.tar.gz" > "$W/desc-all.tmp"   # for the package count and hashes
mv "$W/desc-all.tmp" "$W/desc-all"    # last: marks the packages complete for BENCH_DIR
log "packages ready after $((SECONDS - t_start)) s"

"$ROOT/tests/netns.sh" bash "$ROOT/bench/io.sh" --inside "$W"
log "done in $((SECONDS - t_start)) s"
