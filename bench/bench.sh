#!/usr/bin/env bash
# bench.sh - the peer server against nginx, over loopback, in one private network namespace.
#
# Measures, for flocon's peer server (TCP 19432) and nginx (sendfile on, tcp_nopush off, one
# worker, no access log, 127.0.0.1:18080), serving the same directory in the same run:
#   - one 1 GiB file: GET with curl to /dev/null, median of BENCH_RUNS runs after a warm-up
#   - 1,000 files of 100 KiB: one curl process fetching all of them over one keep-alive
#     connection, median of BENCH_RUNS runs after a warm-up
#   - flocon's VmRSS after 1 s idle after startup (and after the runs)
#   - the stripped static x86_64 musl binary's size (`make static`; else the glibc release
#     binary, said so)
# and prints them with the ratio flocon/nginx. Runtime well under 3 minutes.
#
# nginx runs with `tcp_nopush off`: with it on, nginx corks the socket (TCP_CORK) around
# header + sendfile, and on a keep-alive connection the last, partly filled segment of a
# response can sit in the cork until a timer or an ACK releases it: ~44 ms per Range response
# was measured (issue 14), which made small and ranged responses look slow for reasons that
# have nothing to do with serving files. flocon sends with TCP_NODELAY and never corks; the
# reference now sends the same way.
#
# Environment:
#   BENCH_BIG_MB=1024 BENCH_SMALL_N=1000 BENCH_SMALL_KB=100 BENCH_RUNS=3   workload
#   BENCH_CANDIDATE=flocon|nginx|python   what listens on 19432 (nginx/python: to check
#                                         this script's own mechanics without flocon)
#   FLOCON_BIN=target/release/flocon      the daemon to measure
# Needs: cargo, curl, nginx (Debian: nginx-light), python3, util-linux, iproute2.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIG_MB=${BENCH_BIG_MB:-1024}
SMALL_N=${BENCH_SMALL_N:-1000}
SMALL_KB=${BENCH_SMALL_KB:-100}
RUNS=${BENCH_RUNS:-3}
CANDIDATE=${BENCH_CANDIDATE:-flocon}
FLOCON_BIN=${FLOCON_BIN:-$ROOT/target/release/flocon}
PEER_PORT=19432
NGINX_PORT=18080
BIG_NAME=big-1.0-1-x86_64.pkg.tar.zst
CURL_MAX_S=60   # no single transfer here takes more than a few seconds: a hang is a failure

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# ============================================================================ inside the netns
if [[ ${1:-} == --inside ]]; then
  W=$2
  pids=()
  stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
  trap stop_all EXIT

  nginx_conf() {  # nginx_conf PORT NAME: a config serving $W/files on 127.0.0.1:PORT
    mkdir -p "$W/$2"
    cat > "$W/$2/nginx.conf" <<EOF
user root;
worker_processes 1;
daemon off;
pid $W/$2/nginx.pid;
error_log $W/$2/error.log warn;
events { worker_connections 1024; }
http {
  sendfile on;
  tcp_nopush off;
  access_log off;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  client_body_temp_path $W/$2/tmp;
  proxy_temp_path $W/$2/tmp;
  fastcgi_temp_path $W/$2/tmp;
  uwsgi_temp_path $W/$2/tmp;
  scgi_temp_path $W/$2/tmp;
  server { listen 127.0.0.1:$1; root $W/files; }
}
EOF
  }
  start() {  # start NAME CMD...: run in the background, log to $W/NAME.log, pid in $started
    "${@:2}" > "$W/$1.log" 2>&1 &
    started=$!
    pids+=("$started")
  }
  ready() {  # ready PORT PID NAME: wait until something answers HTTP on PORT
    local code
    for _ in $(seq 100); do
      kill -0 "$2" 2>/dev/null || { cat "$W/$3.log" "$W/$3/error.log" >&2 2>/dev/null; die "$3 exited during startup"; }
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1/" || true)
      [[ $code != 000 ]] && return 0
      sleep 0.1
    done
    die "$3 does not answer on port $1 after 10 s (log: $W/$3.log)"
  }
  rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

  nginx_conf $NGINX_PORT nginx
  start nginx nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log"
  nginx_pid=$started
  case $CANDIDATE in
    flocon)
      mkdir -p "$W/state" "$W/db/sync"
      start flocon "$FLOCON_BIN" --config /dev/null --pacman-conf /dev/null \
        --cache-dir "$W/files" --db-path "$W/db" --state-dir "$W/state" \
        --listen 127.0.0.1:19433 --peer-addr 127.0.0.1 --port $PEER_PORT --interface lo;;
    nginx)
      nginx_conf $PEER_PORT nginx2
      start nginx2 nginx -p "$W/nginx2" -c "$W/nginx2/nginx.conf" -e "$W/nginx2/error.log";;
    python)
      start python python3 -m http.server --bind 127.0.0.1 --directory "$W/files" $PEER_PORT;;
    *) die "BENCH_CANDIDATE must be flocon, nginx or python";;
  esac
  cand_pid=$started
  ready $NGINX_PORT "$nginx_pid" nginx
  ready $PEER_PORT "$cand_pid" "$CANDIDATE"
  sleep 1
  rss_idle=$(rss_kib "$cand_pid")

  # big PORT: MB/s of each run, one per line (the first, warm-up, run is dropped)
  big() {
    local i out
    for i in $(seq 0 "$RUNS"); do
      out=$(curl -sS -o /dev/null --max-time $CURL_MAX_S -w '%{http_code} %{size_download} %{speed_download}' \
        "http://127.0.0.1:$1/$BIG_NAME") || die "GET $BIG_NAME from port $1 failed"
      read -r code size speed <<<"$out"
      [[ $code == 200 && $size == $((BIG_MB * 1048576)) ]] || die "port $1: $BIG_NAME gave HTTP $code, $size bytes"
      (( i == 0 )) || awk -v s="$speed" 'BEGIN { printf "%.1f\n", s / 1e6 }'
    done
  }
  # small PORT: MB/s of each run over all SMALL_N files (one curl, one connection)
  small() {
    local i t0 t1 ok conns
    for i in $(seq 0 "$RUNS"); do
      t0=$(date +%s.%N)
      curl -sS --max-time $CURL_MAX_S -K "$W/small-$1.curl" > "$W/small.out" || die "small files from port $1: curl failed"
      t1=$(date +%s.%N)
      ok=$(grep -c '^200 ' "$W/small.out" || true)
      [[ $ok == "$SMALL_N" ]] || die "port $1: only $ok of $SMALL_N small files answered 200"
      # curl reports, per transfer, how many NEW connections it opened
      conns=$(awk '{ n += $3 } END { print n }' "$W/small.out")
      (( i == 0 )) && log "port $1: $SMALL_N small files over $conns connection(s)"
      (( i == 0 )) || awk -v a="$t0" -v b="$t1" -v n="$SMALL_N" -v k="$SMALL_KB" \
        'BEGIN { printf "%.1f\n", n * k * 1024 / (b - a) / 1e6 }'
    done
  }
  for port in $NGINX_PORT $PEER_PORT; do
    for n in $(seq "$SMALL_N"); do
      printf 'url = "http://127.0.0.1:%s/small-%s-1.0-1-any.pkg.tar.zst"\noutput = "/dev/null"\nwrite-out = "%%{http_code} %%{size_download} %%{num_connects}\\n"\n' "$port" "$n"
    done > "$W/small-$port.curl"
  done

  log "1 x $BIG_MB MiB file, $RUNS runs each"
  big_nginx=$(big $NGINX_PORT | median)
  big_cand=$(big $PEER_PORT | median)
  log "$SMALL_N x $SMALL_KB KiB files, $RUNS runs each"
  small_nginx=$(small $NGINX_PORT | median)
  small_cand=$(small $PEER_PORT | median)
  rss_after=$(rss_kib "$cand_pid")

  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2fx", a / b }'; }
  mib() { awk -v k="$1" 'BEGIN { printf "%.2f MiB", k / 1024 }'; }
  verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo MISSED; fi; }
  r_big=$(ratio "$big_cand" "$big_nginx")
  r_small=$(ratio "$small_cand" "$small_nginx")
  echo
  printf '%-28s %12s %12s %8s   %s\n' "" nginx "$CANDIDATE" ratio "target"
  printf '%-28s %12s %12s %8s   %s\n' "1 x $BIG_MB MiB (MB/s)" "$big_nginx" "$big_cand" "$r_big" \
    ">= 0.95x $(verdict "${r_big%x} >= 0.95")"
  printf '%-28s %12s %12s %8s   %s\n' "$SMALL_N x $SMALL_KB KiB (MB/s)" "$small_nginx" "$small_cand" "$r_small" \
    "(same method for both)"
  printf '%-28s %12s %12s %8s   %s\n' "$CANDIDATE idle RSS" "" "$(mib "$rss_idle")" "" \
    "<= 2 MiB $(verdict "$rss_idle <= 2048")"
  printf '%-28s %12s %12s\n' "$CANDIDATE RSS after the runs" "" "$(mib "$rss_after")"
  size_ok=MISSED
  [[ $BENCH_SIZE =~ ^[0-9]+$ ]] && size_ok=$(verdict "$BENCH_SIZE <= 700000")
  printf '%-28s %12s %12s %8s   %s\n' "binary, bytes" "" "$BENCH_SIZE" "" "<= 700,000 $size_ok ($BENCH_SIZE_WHAT)"
  exit 0
fi

# ============================================================================ outside
for c in curl nginx python3 unshare ip; do
  command -v $c >/dev/null || die "needs $c (Debian: apt-get install -y curl nginx-light python3 util-linux iproute2)"
done
cd "$ROOT"
t_start=$SECONDS

if [[ $CANDIDATE == flocon ]]; then
  log "building (release)"
  cargo build --release --quiet
  [[ -x $FLOCON_BIN ]] || die "no binary at $FLOCON_BIN"
fi
if make --no-print-directory static > /tmp/bench-static.$$.log 2>&1; then
  BENCH_SIZE=$(stat -c %s target/x86_64-unknown-linux-musl/static/flocon)
  BENCH_SIZE_WHAT="x86_64 musl static"
  # measure what hosts run: the static binary (its RSS is the one that matters on a Pi)
  [[ -n ${BENCH_KEEP_BIN:-} ]] || FLOCON_BIN=$ROOT/target/x86_64-unknown-linux-musl/static/flocon
else
  log "make static failed (see /tmp/bench-static.$$.log): sizing the glibc release binary instead"
  if cargo build --release --quiet; then
    BENCH_SIZE=$(stat -c %s target/release/flocon)
    BENCH_SIZE_WHAT="x86_64 glibc, NOT musl"
  else
    BENCH_SIZE=n/a BENCH_SIZE_WHAT="does not build"
  fi
fi
rm -f /tmp/bench-static.$$.log
export BENCH_SIZE BENCH_SIZE_WHAT

W=$(mktemp -d /tmp/flocon-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
chmod 755 "$W"     # nginx workers must reach the files
mkdir -p "$W/files"
log "creating 1 x $BIG_MB MiB and $SMALL_N x $SMALL_KB KiB files in $W"
head -c $((BIG_MB * 1048576)) /dev/urandom > "$W/files/$BIG_NAME"
python3 - "$W/files" "$SMALL_N" "$SMALL_KB" <<'PY'
import os, sys
d, n, kib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(1, n + 1):
    with open(os.path.join(d, 'small-%d-1.0-1-any.pkg.tar.zst' % i), 'wb') as f:
        f.write(os.urandom(kib * 1024))
PY

export FLOCON_BIN
"$ROOT/tests/netns.sh" bash "$ROOT/bench/bench.sh" --inside "$W"
log "done in $((SECONDS - t_start)) s"
