#!/usr/bin/env bash
# lookup.sh - "who has this file?" lookup cost, over loopback, in one private network
# namespace: cache digests (docs/PROTOCOL.md §14) against the full fan-out, side by side.
#
# For each LAN size in BENCH_PEERS (default "3 20 100 250") and each of two modes, starts 1 + N
# daemons on lo: the asker on 127.0.0.2, its N peers on 127.0.0.3.., all alive and listing
# each other; the last peer holds one package in its cache.
#   - digest: as shipped. The asker waits until it holds every peer's digest; a lookup then
#     asks only the peers whose digest may hold the file, and a miss sends one INTENT to the
#     group and decides after the miss wait (digest.rs MISS_WAIT, or more while answers come late).
#   - fanout: every daemon with FLOCON_NO_DIGEST=1: no digest published, one QUERY per peer
#     (flocon before digests; also what a LAN of daemons without digests gets).
# Then, on one keep-alive connection to the asker's front, BENCH_LOOKUPS lookups (after a
# warm-up) through the debug endpoint `GET /.flocon/lookup/<file>[?size=N]`:
#   - hit:  the package the last peer has (with its size): exactly one "have" expected
#   - miss: a fresh name per lookup that nobody has
# Per row: median and p99 of the daemon's own `micros` (start of the lookup to its decision)
# and of the whole HTTP request as a Python client sees it; the hits found (have = 1) out of
# the lookups; the peers asked; the datagrams and bytes the asker sent per lookup (its
# status.json counters before and after the run; they include the odd announcement).
#
# Reference, same run: the fanout rows, and a plain UDP round trip on the same loopback
# (Python echo server in its own process, Python client, 64-byte datagrams, paced like the
# lookups).
#
# Lookups are paced at BENCH_RATE per second: peers rate-limit datagrams per source (100/s
# sustained, burst 200, src/peers.rs), a digest hit costs the holder two (its QUERY and the
# INTENT), and this measures latency, not the limiter.
# 250 daemons on this 2-core machine: ~3 MiB each, and each lookup of the fanout mode wakes
# all of them; BENCH_LOOKUPS_BIG (default 200) lookups per row are run from 100 peers up.
#
# "Each peer is its own host", as far as one machine allows (BENCH_SCHED=host, the default;
# both modes alike). On a LAN every peer has its own CPU and the wire fans a multicast out;
# here N daemons share 2 cores, and without care the simulation, not flocon, is measured:
# every INTENT (digest) or QUERY (fanout) wakes N daemons at once and the asker is not
# scheduled when its timer fires, the kernel delivers the N copies of a datagram inside the
# asker's own sendto, and the answer delays a digest miss's wait follows (peers.rs
# AnswerDelay) are those of N processes queueing for 2 cores. So:
#   - the asker, its client (Python) and the holder run at normal priority pinned to the
#     last CPU (the requesting host and the one host whose answer a hit waits for);
#   - the other N-1 peers are kept off that CPU (taskset) and run at nice 19 (the holder,
#     when it wakes there, is picked before them: weight 1024 against 15). Not SCHED_IDLE:
#     any other process on the machine preempts those at once, and a fanout miss then
#     waited tens of ms for a peer starved by someone else's compile (p99 50 ms at 3 peers);
#   - lo's receive side (RPS) is steered to the peers' CPUs: the delivery of what the asker
#     sends is done off its CPU, as a wire would (the kernel still spends time in the
#     asker's sendto for a multicast to N listeners: 1.3-2.4 ms of system time per lookup
#     at 250 peers, see BENCH_DEBUG);
#   - the UDP echo server is a peer, its client the asker's.
# What this cannot model: the peers' own work is serialised on the remaining CPU(s), where
# on a LAN it runs in parallel. A fanout miss waits for all N answers and pays that in full
# (one core for 250 peers); BENCH_SCHED=hostshare lets the peers use the asker's CPU too
# (fanout misses faster, everything of the asker slower: at 250 peers, its run-queue wait
# per lookup 4.9-5.8 ms against 1.2-1.4 ms, a digest hit 6.5-7.7 ms against 1.9 ms).
# Pinning shields nothing from other users' processes: run it on a quiet machine, and read
# the load average printed under the table. BENCH_SCHED=none runs everything as plain
# processes (the figures before this model); BENCH_SCHED=nice only the nice 19 part (no
# pinning, no RPS: the asker then pays the delivery of its datagrams and queues with the
# peers: 2.2 ms of system time and 4.6-5.8 ms of run-queue wait per lookup at 250 peers).
#
# BENCH_DEBUG=1 also prints, per phase, where the time goes: the asker's chosen miss waits
# (its --debug log), its user/system CPU per lookup (/proc/PID/stat), CPU and run-queue wait
# per lookup of the asker, the holder and the other peers together (/proc/PID/schedstat),
# the same per second while idle, and the holder's rate_limited counter.
#
# Environment:
#   BENCH_PEERS="3 20 100 250" BENCH_LOOKUPS=500 BENCH_LOOKUPS_BIG=200 BENCH_RATE=40
#   BENCH_SCHED=host|nice|none BENCH_DEBUG=0|1 BENCH_MODES="digest fanout"
#   FLOCON_BIN=target/release/flocon
# Needs: cargo, curl, python3, util-linux (taskset), iproute2. Runtime a few minutes.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${BENCH_PEERS:-3 20 100 250}
LOOKUPS=${BENCH_LOOKUPS:-500}
LOOKUPS_BIG=${BENCH_LOOKUPS_BIG:-200}
RATE=${BENCH_RATE:-40}
FLOCON_BIN=${FLOCON_BIN:-$ROOT/target/release/flocon}
SCHED=${BENCH_SCHED:-host}
DEBUG=${BENCH_DEBUG:-0}
MODES=${BENCH_MODES:-digest fanout}
HIT_NAME=hit-1.0-1-any.pkg.tar.zst
HIT_SIZE=12345
PHASE_MAX_S=60   # no measured phase takes more than ~10 s: the client gives up after this
UDP_ADDR=127.0.0.200

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }

# ============================================================================ inside the netns
if [[ ${1:-} == --inside ]]; then
  W=$2
  pids=()
  # how the peers and the asker share the CPUs (see the header)
  load0=$(cut -d' ' -f1-3 /proc/loadavg)
  cpus=$(nproc)
  if [[ $SCHED == host ]] && (( cpus < 2 )); then
    log "one CPU: BENCH_SCHED=host needs two; running as BENCH_SCHED=nice"
    SCHED=nice
  fi
  case $SCHED in
    host)
      PEER_RUN="taskset -c 0-$((cpus - 2)) nice -n 19" ASKER_RUN="taskset -c $((cpus - 1))" HOLDER_RUN=$ASKER_RUN
      printf '%x\n' $(( (1 << (cpus - 1)) - 1 )) > /sys/class/net/lo/queues/rx-0/rps_cpus ||
        die "cannot steer lo's receive side (RPS) off CPU $((cpus - 1))" ;;
    hostshare)
      PEER_RUN="nice -n 19" ASKER_RUN="taskset -c $((cpus - 1))" HOLDER_RUN=$ASKER_RUN
      printf '%x\n' $(( (1 << (cpus - 1)) - 1 )) > /sys/class/net/lo/queues/rx-0/rps_cpus ||
        die "cannot steer lo's receive side (RPS) off CPU $((cpus - 1))" ;;
    nice) PEER_RUN="nice -n 19" ASKER_RUN="" HOLDER_RUN="" ;;
    none) PEER_RUN="" ASKER_RUN="" HOLDER_RUN="" ;;
    *) die "BENCH_SCHED=$SCHED: host, hostshare, nice or none" ;;
  esac
  stop_all() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
  trap stop_all EXIT
  ip addr add $UDP_ADDR/32 dev lo 2>/dev/null || true   # 127/8 is on lo anyway; harmless

  # the UDP echo reference, in its own process so the client does not share its GIL
  $PEER_RUN python3 - "$UDP_ADDR" > "$W/echo.log" 2>&1 <<'PY' &
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 9999))
while True:
    d, a = s.recvfrom(2048)
    s.sendto(d, a)
PY
  pids+=($!)

  # ip I: the address of host I (2 = the asker); hosts 2..256 fit in 127.0.0.0/24, more
  # go on in 127.0.1.x
  hip() { echo "127.0.$(( $1 / 256 )).$(( $1 % 256 ))"; }
  # sjson I EXPR: a python expression over host I's status.json (s)
  sjson() {
    curl -s --max-time 2 "http://$(hip "$1"):19433/.flocon/status.json" |
      python3 -c 'import json, sys; s = json.load(sys.stdin); print('"$2"')' 2>/dev/null || echo -1
  }

  # start_lan N MODE: the asker and N peers; the last peer holds $HIT_NAME
  start_lan() {
    local n=$1 mode=$2 i ip last=$(($1 + 2)) envs=()
    [[ $mode == fanout ]] && envs=(FLOCON_NO_DIGEST=1)
    lan_pids=()
    for i in $(seq 2 "$last"); do
      ip=$(hip "$i")
      rm -rf "$W/h$i"; mkdir -p "$W/h$i/cache" "$W/h$i/state" "$W/h$i/db/sync"
      (( i == last )) && head -c $HIT_SIZE /dev/urandom > "$W/h$i/cache/$HIT_NAME"
      : > "$W/empty.conf"
      run=$PEER_RUN dbg=()
      (( i == 2 )) && run=$ASKER_RUN
      (( i == last )) && run=$HOLDER_RUN
      (( i == 2 && DEBUG )) && dbg=(--debug)
      $run env "${envs[@]}" "$FLOCON_BIN" "${dbg[@]}" --config "$W/empty.conf" --pacman-conf "$W/empty.conf" \
        --cache-dir "$W/h$i/cache" --db-path "$W/h$i/db" --state-dir "$W/h$i/state" \
        --listen "$ip:19433" --peer-addr "$ip" --interface lo --name "h$i" > "$W/h$i.log" 2>&1 &
      lan_pids+=($!)
      pids+=($!)
    done
    # everyone must list everyone else, and in digest mode the asker must hold every
    # peer's digest (the steady state the targets are about)
    local t0=$SECONDS seen ok limit=$((40 + n))
    while :; do
      ok=1
      for i in $(seq 2 "$last"); do
        kill -0 "${lan_pids[$((i - 2))]}" 2>/dev/null || { cat "$W/h$i.log" >&2; die "daemon h$i exited"; }
        seen=$(curl -s --max-time 2 "http://$(hip "$i"):19433/.flocon/status.json" | grep -o '"instance":"' | wc -l || true)
        (( seen == n + 1 )) || { ok=0; break; }
      done
      if (( ok )) && [[ $mode == digest ]]; then
        fresh=$(sjson 2 's["digest"]["peers_fresh"]')
        (( fresh == n )) || ok=0
      fi
      (( ok )) && break
      (( SECONDS - t0 < limit )) || die "after $limit s ($mode): h$i lists $((seen - 1)) of $n peers, asker holds ${fresh:-?} digests (logs: $W/h*.log)"
      sleep 0.5
    done
    log "$n peers, $mode: all $((n + 1)) daemons list each other after $((SECONDS - t0)) s; RSS $(ps -o rss= -p "$(echo "${lan_pids[@]}" | tr ' ' ',')" | awk '{ s += $1 } END { printf "%.0f MiB", s / 1024 }') in all"
  }
  # schedstats: "cpu_ns wait_ns" of the asker, the holder, the other peers summed
  schedstats() {
    local i a=(0 0) h=(0 0) o=(0 0) x
    for i in "${!lan_pids[@]}"; do
      read -r -a x < "/proc/${lan_pids[$i]}/schedstat" || continue
      if (( i == 0 )); then a=("${x[0]}" "${x[1]}")
      elif (( i == ${#lan_pids[@]} - 1 )); then h=("${x[0]}" "${x[1]}")
      else o=($((o[0] + x[0])) $((o[1] + x[1]))); fi
    done
    echo "${a[*]} ${h[*]} ${o[*]}"
  }
  stop_lan() {
    kill "${lan_pids[@]}" 2>/dev/null || true
    wait "${lan_pids[@]}" 2>/dev/null || true
  }

  # lookups N MODE COUNT RATE: one line per lookup, "daemon_us client_us asked have"
  lookups() {
    $ASKER_RUN python3 - "$1" "$2" "$3" "$4" "$HIT_NAME" "$HIT_SIZE" "$PHASE_MAX_S" <<'PY'
import http.client, json, sys, time
n, mode, count, rate = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
hit, hit_size, phase_max = sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
c = http.client.HTTPConnection("127.0.0.2", 19433, timeout=5)
gap = 1.0 / rate if rate > 0 else 0.0
t_start = time.monotonic()
next_at = t_start
out = []
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
        path = "/.flocon/lookup/%s%d-%d-%d-1.0-1-any.pkg.tar.zst" % (mode, n, int(t_start), i)
    t0 = time.perf_counter_ns()
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    t1 = time.perf_counter_ns()
    if r.status != 200:
        sys.exit("lookups: HTTP %d for %s" % (r.status, path))
    j = json.loads(body)
    out.append("%d %.1f %d %d" % (j["micros"], (t1 - t0) / 1000, j["asked"], len(j["have"])))
print("\n".join(out))
PY
  }
  # udp_rtts COUNT RATE: microseconds of each round trip to the echo server, paced like the
  # lookups (a paced round trip pays the same wake-ups from idle as a paced lookup)
  udp_rtts() {
    $ASKER_RUN python3 - "$UDP_ADDR" "$1" "$2" <<'PY'
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
gap = 1.0 / float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
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
  # stats COLUMN < lines: "median p99"
  stats() {
    awk -v c="$1" '{ print $c }' | sort -g | awk '{ v[NR] = $1 }
      END { p = int(NR * 0.99 + 0.999); if (p < 1) p = 1; if (p > NR) p = NR
            printf "%s %s\n", v[int((NR + 1) / 2)], v[p] }'
  }
  ms() { awk -v u="$1" 'BEGIN { printf "%.3f", u / 1000 }'; }
  sent() { sjson 2 '"%d %d" % (s["digest"]["datagrams_out"], s["digest"]["bytes_out"])'; }

  udp=$(udp_rtts "$LOOKUPS" "$RATE" | stats 1)
  read -r udp_med udp_p99 <<<"$udp"
  rows=()
  for n in $PEERS; do
    count=$LOOKUPS
    (( n >= 100 )) && count=$LOOKUPS_BIG
    for mode in $MODES; do
      start_lan "$n" "$mode"
      if (( DEBUG )); then
        s0=$(schedstats); sleep 2
        log "$n $mode idle: µs per second, cpu/runq-wait: $(python3 -c '
import sys
a, b = [list(map(int, x.split())) for x in sys.argv[1:3]]
print(" ".join("%s %.0f/%.0f" % (w, (b[i] - a[i]) / 2e3, (b[i + 1] - a[i + 1]) / 2e3)
               for w, i in (("asker", 0), ("holder", 2), ("others", 4))))' "$s0" "$(schedstats)")"
      fi
      for kind in hit miss; do
        lookups "$n" "$kind" 20 "$RATE" > /dev/null     # warm-up: connection, page cache
        read -r d0 b0 <<<"$(sent)"
        l0=$(wc -l < "$W/h2.log")
        s0=$(schedstats)
        u0=$(awk '{ print $14 + 0, $15 + 0 }' "/proc/${lan_pids[0]}/stat")
        lookups "$n" "$kind" "$count" "$RATE" > "$W/$mode-$kind-$n.txt"
        read -r d1 b1 <<<"$(sent)"
        f=$W/$mode-$kind-$n.txt
        read -r d_med d_p99 <<<"$(stats 1 < "$f")"
        read -r c_med c_p99 <<<"$(stats 2 < "$f")"
        found=$(awk '$4 >= 1' "$f" | wc -l)
        asked=$(awk '{ a += $3 } END { printf "%.1f", a / NR }' "$f")
        dg=$(awk -v a="$d0" -v b="$d1" -v c="$count" 'BEGIN { printf "%.2f", (b - a) / c }')
        by=$(awk -v a="$b0" -v b="$b1" -v c="$count" 'BEGIN { printf "%.0f", (b - a) / c }')
        if (( DEBUG )); then
          read -r ut st <<<"$(awk '{ print $14 + 0, $15 + 0 }' "/proc/${lan_pids[0]}/stat")"
          read -r ut0 st0 <<<"$u0"
          log "$n $mode $kind: holder's rate_limited so far: $(sjson $((n + 2)) 's["rate_limited"]')"
          log "$n $mode $kind: asker user/system µs per lookup $(( (ut - ut0) * 10000 / count ))/$(( (st - st0) * 10000 / count ))"
          # CPU time and run-queue wait per lookup (/proc/PID/schedstat): asker; holder; others
          log "$n $mode $kind: µs per lookup, cpu/runq-wait: $(python3 -c '
import sys
a, b, c = [list(map(int, x.split())) for x in sys.argv[1:4]]
print(" ".join("%s %.0f/%.0f" % (w, (b[i] - a[i]) / 1e3 / c[0], (b[i + 1] - a[i + 1]) / 1e3 / c[0])
               for w, i in (("asker", 0), ("holder", 2), ("others", 4))))' "$s0" "$(schedstats)" "$count")"
          # the miss waits the asker chose during this phase (its --debug log)
          log "$n $mode $kind: miss waits $(tail -n +$((l0 + 1)) "$W/h2.log" | grep -o 'miss wait [0-9.]*[µm]*s' | sort | uniq -c | sort -rn | head -5 | tr -s ' \n' ' ')"
        fi
        rows+=("$n $mode $kind $d_med $d_p99 $c_med $c_p99 $found $count $asked $dg $by")
      done
      stop_lan
    done
  done

  echo
  echo "lookup cost by LAN size: cache digests ('digest') against one QUERY per peer ('fanout'),"
  echo "same run; latency in ms (median / p99): 'daemon' = the daemon's own micros, 'client' ="
  echo "the HTTP request on a keep-alive connection (Python); 'found' = lookups that found the"
  echo "one holder; 'asked' = peers asked per lookup; sent = the asker's datagrams and bytes per"
  echo "lookup; at $RATE lookups/s ($LOOKUPS per row, $LOOKUPS_BIG from 100 peers up); scheduling:"
  case $SCHED in
    host) echo "'host' (asker, its client and the holder pinned to CPU $((cpus - 1)); the other peers kept off it, at nice 19; lo's RPS off it)" ;;
    hostshare) echo "'hostshare' (asker, its client and the holder pinned to CPU $((cpus - 1)); the other peers at nice 19 on any CPU; lo's RPS off it)" ;;
    *) echo "'$SCHED'" ;;
  esac
  printf '%-5s %-6s %-4s %19s %19s %11s %6s %6s %7s  %s\n' peers mode kind "daemon med / p99" "client med / p99" found asked dgrams bytes "target (issue 14)"
  for r in "${rows[@]}"; do
    read -r n mode kind d_med d_p99 c_med c_p99 found count asked dg by <<<"$r"
    tgt=""
    if [[ $mode == digest && $n -ge 250 ]]; then
      if [[ $kind == miss ]]; then
        tgt="median <= 1 ms: $(awk -v m="$d_med" 'BEGIN { print (m <= 1000 ? "ok" : "MISSED") }')"
      else
        tgt="found >= 99.9 %: $(awk -v f="$found" -v c="$count" 'BEGIN { print (f >= 0.999 * c ? "ok" : "MISSED") }')"
      fi
      tgt="$tgt; <= 8 datagrams: $(awk -v d="$dg" 'BEGIN { print (d <= 8 ? "ok" : "MISSED") }')"
    fi
    printf '%-5s %-6s %-4s %9s / %-7s %9s / %-7s %5s/%-5s %6s %6s %7s  %s\n' "$n" "$mode" "$kind" \
      "$(ms "$d_med")" "$(ms "$d_p99")" "$(ms "$c_med")" "$(ms "$c_p99")" "$found" "$count" "$asked" "$dg" "$by" "$tgt"
  done
  printf '%-16s %19s %9s / %-7s   %s\n' "UDP echo round trip" "" \
    "$(ms "$udp_med")" "$(ms "$udp_p99")" "(reference: Python client and echo, same lo, same pacing)"
  echo "load average (1, 5, 15 min): $load0 at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
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
