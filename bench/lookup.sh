#!/usr/bin/env bash
# lookup.sh - "who has this file?" lookup latency, over loopback, in one private network
# namespace (issue 3's "Must show").
#
# For each LAN size in BENCH_PEERS (default "3 20"), starts 1 + N daemons on lo: the asker on
# 127.0.0.2, its N peers on 127.0.0.3.., all alive and listing each other; the last peer
# holds one package in its cache. Then, on one keep-alive connection to the asker's front,
# BENCH_LOOKUPS lookups (after a warm-up) through the debug endpoint
# `GET /.flocon/lookup/<file>[?size=N]`:
#   - hit:  the package the last peer has (with its size), so exactly one "have"
#   - miss: a fresh name per lookup that nobody has
# and reports median and p99 of two measures:
#   - daemon: the `micros` the daemon reports (start of the lookup to its decision)
#   - client: the whole HTTP request as a Python client on the keep-alive connection sees it
# Every answer is checked: all N peers asked and answered (a lookup that ran out its budget
# instead would show as ~50 ms), and the right "have" list.
#
# Reference, same run: a plain UDP round trip on the same loopback (Python echo server in its
# own process, Python client, 64-byte datagrams, paced like the lookups). The ratio column is lookup / UDP round
# trip: how many "bare round trips" a lookup costs. The old tools (pacserve, pacredir) waited
# a fixed 1-3 s for a miss; that is quoted in the table, not measured.
#
# Lookups are paced at BENCH_RATE per second: peers rate-limit queries per source (100/s
# sustained, burst 200, src/peers.rs), and this measures latency, not the limiter. The last
# row, an unpaced burst of BENCH_BURST misses with 3 peers, shows what the limiter does.
#
# Environment:
#   BENCH_PEERS="3 20" BENCH_LOOKUPS=500 BENCH_RATE=80 BENCH_BURST=300
#   FLOCON_BIN=target/release/flocon
# Needs: cargo, curl, python3, util-linux, iproute2. Runtime about a minute.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${BENCH_PEERS:-3 20}
LOOKUPS=${BENCH_LOOKUPS:-500}
RATE=${BENCH_RATE:-80}
BURST=${BENCH_BURST:-300}
FLOCON_BIN=${FLOCON_BIN:-$ROOT/target/release/flocon}
HIT_NAME=hit-1.0-1-any.pkg.tar.zst
HIT_SIZE=12345
PHASE_MAX_S=40   # no measured phase takes more than ~10 s: the client gives up after this
UDP_ADDR=127.0.0.200

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# ============================================================================ inside the netns
if [[ ${1:-} == --inside ]]; then
  W=$2
  pids=()
  stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
  trap stop_all EXIT
  ip addr add $UDP_ADDR/32 dev lo 2>/dev/null || true   # 127/8 is on lo anyway; harmless

  # the UDP echo reference, in its own process so the client does not share its GIL
  python3 - "$UDP_ADDR" > "$W/echo.log" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
PY
  pids+=($!)

  # start_lan N: the asker and N peers; the last peer holds $HIT_NAME
  start_lan() {
    local n=$1 i ip last=$(($1 + 2))
    lan_pids=()
    for i in $(seq 2 "$last"); do
      ip=127.0.0.$i
      rm -rf "$W/h$i"; mkdir -p "$W/h$i/cache" "$W/h$i/state" "$W/h$i/db/sync"
      (( i == last )) && head -c $HIT_SIZE /dev/urandom > "$W/h$i/cache/$HIT_NAME"
      "$FLOCON_BIN" --config /dev/null --pacman-conf /dev/null \
        --cache-dir "$W/h$i/cache" --db-path "$W/h$i/db" --state-dir "$W/h$i/state" \
        --listen $ip:19433 --peer-addr $ip --interface lo --name h$i > "$W/h$i.log" 2>&1 &
      lan_pids+=($!)
      pids+=($!)
    done
    # everyone must list everyone else (not only the asker: a peer answers queries anyway,
    # but this is the "all alive" state the target is about)
    local t0=$SECONDS seen ok
    while :; do
      ok=1
      for i in $(seq 2 "$last"); do
        kill -0 "${lan_pids[$((i - 2))]}" 2>/dev/null || { cat "$W/h$i.log" >&2; die "daemon h$i exited"; }
        seen=$(curl -s --max-time 1 "http://127.0.0.$i:19433/.flocon/status.json" | grep -o '"instance":"' | wc -l || true)
        # its own instance plus one per peer
        (( seen == n + 1 )) || { ok=0; break; }
      done
      (( ok )) && break
      (( SECONDS - t0 < 20 )) || die "after 20 s, h$i lists $((seen - 1)) of $n peers (logs: $W/h*.log)"
      sleep 0.2
    done
    log "$n peers: all $((n + 1)) daemons list each other after $((SECONDS - t0)) s"
  }
  stop_lan() {
    kill "${lan_pids[@]}" 2>/dev/null || true
    wait "${lan_pids[@]}" 2>/dev/null || true
  }

  # lookups N MODE COUNT RATE: one line per lookup, "daemon_us client_us"; checks each answer
  lookups() {
    python3 - "$1" "$2" "$3" "$4" "$HIT_NAME" "$HIT_SIZE" "$PHASE_MAX_S" <<'PY'
import http.client, json, sys, time
n, mode, count, rate = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
hit, hit_size, phase_max = sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
c = http.client.HTTPConnection("127.0.0.2", 19433, timeout=5)
gap = 1.0 / rate if rate > 0 else 0.0
t_start = time.monotonic()
next_at = t_start
out, conns = [], 0
for i in range(count):
    if time.monotonic() - t_start > phase_max:
        sys.exit("lookups: %s with %d peers: only %d of %d in %.0f s" % (mode, n, i, count, phase_max))
    if gap:
        next_at += gap
        d = next_at - time.monotonic()
        if d > 0:
            time.sleep(d)
    if mode == "hit":
        path = "/.flocon/lookup/%s?size=%d" % (hit, hit_size)
    else:
        path = "/.flocon/lookup/%s%d-%d-1.0-1-any.pkg.tar.zst" % (mode, n, i)
    t0 = time.perf_counter_ns()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    t1 = time.perf_counter_ns()
    if r.status != 200:
        sys.exit("lookups: HTTP %d for %s" % (r.status, path))
    if r.getheader("Connection", "").lower() == "close" or r.will_close:
        conns += 1
    j = json.loads(body)
    want = 1 if mode == "hit" else 0
    if mode == "burst":
        pass  # rate-limited peers stay silent: the budget decides, which is what is shown
    elif j["asked"] != n or j["answered"] != n or len(j["have"]) != want:
        sys.exit("lookups: %s with %d peers, lookup %d: %s" % (mode, n, i, body.decode()))
    out.append("%d %.1f" % (j["micros"], (t1 - t0) / 1000))
if conns:
    print("lookups: the front closed the keep-alive connection %d times" % conns, file=sys.stderr)
print("\n".join(out))
PY
  }
  # udp_rtts COUNT RATE: microseconds of each round trip to the echo server, paced like the
  # lookups (a paced round trip pays the same wake-ups from idle as a paced lookup)
  udp_rtts() {
    python3 - "$UDP_ADDR" "$1" "$2" <<'PY'
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((sys.argv[1], 9999))
msg = b"x" * 64
out = []
for _ in range(100):  # the echo server may still be starting: wait up to ~2 s for it
    try:
        s.send(msg)
        s.recv(2048)
        break
    except (ConnectionRefusedError, socket.timeout):
        time.sleep(0.02)
else:
    sys.exit("udp: no echo from %s:9999" % sys.argv[1])
for i in range(20 + int(sys.argv[2])):
    t0 = time.perf_counter_ns()
    s.send(msg)
    s.recv(2048)
    t1 = time.perf_counter_ns()
    if i >= 20:
        out.append("%.1f" % ((t1 - t0) / 1000))
print("\n".join(out))
PY
  }
  # stats COLUMN < lines: "median p99" in microseconds
  stats() {
    awk -v c="$1" '{ print $c }' | sort -g | awk '{ v[NR] = $1 }
      END { p = int(NR * 0.99 + 0.999); if (p < 1) p = 1; if (p > NR) p = NR
            printf "%s %s\n", v[int((NR + 1) / 2)], v[p] }'
  }
  ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }

  udp=$(udp_rtts "$LOOKUPS" "$RATE" | stats 1)
  read -r udp_med udp_p99 <<<"$udp"
  rows=()
  for n in $PEERS; do
    start_lan "$n"
    for mode in hit miss; do
      lookups "$n" "$mode" 20 "$RATE" > /dev/null     # warm-up: connection, page cache, ARP-free lo
      lookups "$n" "$mode" "$LOOKUPS" "$RATE" > "$W/$mode-$n.txt"
      read -r d_med d_p99 <<<"$(stats 1 < "$W/$mode-$n.txt")"
      read -r c_med c_p99 <<<"$(stats 2 < "$W/$mode-$n.txt")"
      rows+=("$n $mode $d_med $d_p99 $c_med $c_p99")
    done
    if [[ $n == "${PEERS%% *}" && $BURST -gt 0 ]]; then
      sleep 2.5   # let the peers' per-source buckets refill after the paced runs
      lookups "$n" burst "$BURST" 0 > "$W/burst.txt" || true
      if [[ -s $W/burst.txt ]]; then
        read -r d_med d_p99 <<<"$(stats 1 < "$W/burst.txt")"
        read -r c_med c_p99 <<<"$(stats 2 < "$W/burst.txt")"
        slow=$(awk '$1 > 10000' "$W/burst.txt" | wc -l)
        burst_row="$n miss $d_med $d_p99 $c_med $c_p99 $slow"
      else
        burst_row="$n miss failed"
      fi
    fi
    stop_lan
  done

  ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
  verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo MISSED; fi; }
  echo
  echo "lookup latency, ms (median / p99); $LOOKUPS lookups each at $RATE/s; 'daemon' = the"
  echo "daemon's own micros, 'client' = HTTP request on a keep-alive connection (Python)"
  printf '%-6s %-5s %-7s %19s %19s %10s   %s\n' peers kind answered "daemon med / p99" "client med / p99" "daemon/UDP" target
  for r in "${rows[@]}"; do
    read -r n mode d_med d_p99 c_med c_p99 <<<"$r"
    tgt=""
    [[ $mode == miss ]] && tgt="median <= 2 ms $(verdict "$d_med <= 2000")"
    printf '%-6s %-5s %-7s %9s / %-7s %9s / %-7s %10s   %s\n' "$n" "$mode" "$n/$n" \
      "$(ms "$d_med")" "$(ms "$d_p99")" "$(ms "$c_med")" "$(ms "$c_p99")" "$(ratio "$d_med" "$udp_med")" "$tgt"
  done
  printf '%-20s %9s / %-7s %9s / %-7s %10s   %s\n' "UDP echo round trip" "" "" \
    "$(ms "$udp_med")" "$(ms "$udp_p99")" "1.0x" "(reference: Python client and echo, same lo, same pacing)"
  printf '%-20s %19s %19s %9s   %s\n' "old tools, a miss" "" "1000 - 3000" "" "(quoted fixed wait, not measured)"
  if [[ -n ${burst_row:-} ]]; then
    read -r n mode d_med d_p99 c_med c_p99 slow <<<"$burst_row"
    if [[ $d_med == failed ]]; then
      echo "burst: $BURST unpaced misses with $n peers failed (see above)"
    else
      printf '%-20s %9s / %-7s %9s / %-7s   %s\n' "burst, $n peers" "$(ms "$d_med")" "$(ms "$d_p99")" \
        "$(ms "$c_med")" "$(ms "$c_p99")" "$BURST unpaced misses: $slow took > 10 ms (peer rate limit)"
      echo
    fi
  fi
  exit 0
fi

# ============================================================================ outside
for c in curl python3 unshare ip; do
  command -v $c >/dev/null || die "needs $c (Debian: apt-get install -y curl python3 util-linux iproute2)"
done
cd "$ROOT"
t_start=$SECONDS
if [[ -z ${FLOCON_BIN_PREBUILT:-} ]]; then
  log "building (release)"
  cargo build --release --quiet
fi
[[ -x $FLOCON_BIN ]] || die "no binary at $FLOCON_BIN"
W=$(mktemp -d /tmp/flocon-lookup.XXXXXX)
trap 'rm -rf "$W"' EXIT
"$ROOT/tests/netns.sh" bash "$ROOT/bench/lookup.sh" --inside "$W"
log "done in $((SECONDS - t_start)) s"
