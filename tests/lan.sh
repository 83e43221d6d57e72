#!/usr/bin/env bash
# lan.sh - a throw-away LAN of N hosts in network namespaces, for flocon's end-to-end tests.
#
#   host i  netns ${FLAN_PREFIX}h<i>: eth0 with MAC 02:77:00:00:00:<i>, 10.77.0.<i>/24,
#           fd77::<i>/64 (hex) and link-local fe80::77:ff:fe00:<i>; lo up; a route
#           224.0.0.0/4 dev eth0; NO default route, so nothing outside the LAN is reachable.
#   switch  netns ${FLAN_PREFIX}sw: bridge br0 (plain flooding, no STP, no snooping), one port
#           h<i> per host. The bridge is connected to nothing else.
#
#   routed  `lan.sh routed N M` adds a second segment: hosts 101..100+M on switch
#           ${FLAN_PREFIX}sw2 with 10.78.0.<i-100>/24 and fd78::<i-100>/64, and a router
#           netns ${FLAN_PREFIX}rt (r1 10.77.0.254 on the first switch, r2 10.78.0.254 on
#           the second, IPv4 forwarding on, no multicast routing: TTL-1 discovery stays on
#           each side). Hosts of each side get a route to the other side via the router.
#
# Usage (as root, or wrapped in `lan.sh isolated ...`, which needs no root):
#   lan.sh up N              create hosts 1..N (idempotent; removes hosts above N)
#   lan.sh routed N M        hosts 1..N on one segment, 101..100+M on another, a router between
#   lan.sh down              kill everything running in the LAN and delete it (idempotent)
#   lan.sh exec I CMD...     run CMD in host I (env FLAN_HOST=I, FLAN_ADDR=its IPv4)
#   lan.sh cut I             unplug host I (its eth0 goes NO-CARRIER)
#   lan.sh heal I            plug it back in (as on a real LAN, an ARP resolution that began
#                            while cut still fails up to ~3 s later: EHOSTUNREACH meanwhile)
#   lan.sh shape I RATE|off  limit host I's link to RATE (tc syntax: 100mbit, 500kbit) in both
#                            directions with tbf; "off" removes the limit
#   lan.sh addr I [-6|-6ll]  print host I's IPv4, ULA or link-local address
#   lan.sh status            hosts, addresses, link state, shaping
#   lan.sh isolated CMD...   run CMD as root in a private user+net+mount+pid namespace with
#                            a tmpfs /run: the LAN and every process die with CMD
#   lan.sh selftest          check all of the above, print "N passed, N failed"
#
# Environment: FLAN_PREFIX (default "flan-", one per concurrent LAN), FLAN_STATE (scratch
# dir, default ${TMPDIR:-/tmp}/flan.<prefix>), FLAN_QUEUE_MS (tbf queue, default 50).
# Needs iproute2 (ip, tc, bridge) and util-linux; selftest also python3 and iputils-ping.
set -euo pipefail

PREFIX=${FLAN_PREFIX:-flan-}
[[ $PREFIX =~ ^[a-z][a-z0-9-]{0,15}$ ]] || { echo "lan.sh: bad FLAN_PREFIX '$PREFIX'" >&2; exit 2; }
SW=${PREFIX}sw
STATE=${FLAN_STATE:-${TMPDIR:-/tmp}/flan.${PREFIX%-}}
SELF=$(readlink -f "${BASH_SOURCE[0]}")
MAX_HOSTS=200   # the last IPv4 octet and the MAC byte hold the index

die() { echo "lan.sh: $*" >&2; exit 1; }
need_root() { [[ $(id -u) == 0 ]] || die "needs root (or: $0 isolated $0 ...)"; }
ns() { echo "${PREFIX}h$1"; }
v4() { if (( $1 > 100 )); then echo "10.78.0.$(($1 - 100))"; else echo "10.77.0.$1"; fi; }
ula() { if (( $1 > 100 )); then printf 'fd78::%x\n' $(($1 - 100)); else printf 'fd77::%x\n' "$1"; fi; }
sw_of() { if (( $1 > 100 )); then echo "${PREFIX}sw2"; else echo "$SW"; fi; }
RT=${PREFIX}rt
ll() { printf 'fe80::77:ff:fe00:%x\n' "$1"; }
exists() { [[ -e /run/netns/$1 ]]; }
hosts() { local f; for f in /run/netns/"${PREFIX}"h*; do [[ -e $f ]] && echo "${f##*/"${PREFIX}"h}"; done | grep -xE '[0-9]+' | sort -n || true; }
index() { [[ ${1:-} =~ ^[1-9][0-9]*$ ]] && (( $1 <= MAX_HOSTS )) || die "bad host index '${1:-}' (1..$MAX_HOSTS)"; }
host() { index "$1"; exists "$(ns "$1")" || die "no host $1 (run: $0 up N)"; }
sysctl_ns() { ip netns exec "$1" sh -c "echo $3 > /proc/sys/net/$2"; }

add_host() {
  local i=$1 h sw; h=$(ns "$1"); sw=$(sw_of "$1")
  exists "$h" || ip netns add "$h"
  ip -n "$h" link set lo up
  if ! ip -n "$h" link show eth0 >/dev/null 2>&1; then
    ip -n "$sw" link del "h$i" 2>/dev/null || true
    ip -n "$sw" link add "h$i" type veth peer name eth0 netns "$h" address "$(printf '02:77:00:00:00:%02x' "$i")"
  fi
  sysctl_ns "$h" ipv6/conf/eth0/accept_dad 0   # addresses usable at once
  ip -n "$h" addr replace "$(v4 "$i")/24" dev eth0
  ip -n "$h" addr replace "$(ula "$i")/64" dev eth0 nodad
  ip -n "$h" link set eth0 up
  ip -n "$h" route replace 224.0.0.0/4 dev eth0
  ip -n "$sw" link set "h$i" master br0 up
}

add_switch() {  # add_switch NETNS: a netns with a plain bridge br0
  if ! exists "$1"; then
    ip netns add "$1"
    sysctl_ns "$1" ipv6/conf/all/disable_ipv6 1     # the switch itself stays silent
    sysctl_ns "$1" ipv6/conf/default/disable_ipv6 1
  fi
  ip -n "$1" link show br0 >/dev/null 2>&1 ||
    ip -n "$1" link add br0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0
  ip -n "$1" link set br0 up
}

kill_in() {  # kill_in NETNS: TERM, then KILL what is left after 2 s
  local pids
  pids=$(ip netns pids "$1" 2>/dev/null || true); [[ -n $pids ]] || return 0
  kill $pids 2>/dev/null || true
  for _ in $(seq 20); do
    pids=$(ip netns pids "$1" 2>/dev/null || true); [[ -n $pids ]] || return 0; sleep 0.1
  done
  kill -9 $pids 2>/dev/null || true
}

del_host() {
  local sw; sw=$(sw_of "$1")
  exists "$sw" && { ip -n "$sw" link del "h$1" 2>/dev/null || true; }
  kill_in "$(ns "$1")"
  ip netns del "$(ns "$1")" 2>/dev/null || true
}

cmd_up() {
  local n=${1:-} i
  [[ $n =~ ^[0-9]+$ ]] && (( n >= 1 && n <= MAX_HOSTS )) || die "usage: up N (1..$MAX_HOSTS)"
  need_root
  add_switch "$SW"
  for i in $(hosts); do (( i > n )) && del_host "$i"; done
  for i in $(seq "$n"); do add_host "$i"; done
  mkdir -p "$STATE"
}

cmd_routed() {
  local n=${1:-} m=${2:-} i
  [[ $m =~ ^[0-9]+$ ]] && (( m >= 1 && m <= 99 )) || die "usage: routed N M (M: 1..99)"
  cmd_up "$n"
  add_switch "${PREFIX}sw2"
  for i in $(seq 101 $((100 + m))); do add_host "$i"; done
  exists "$RT" || ip netns add "$RT"
  ip -n "$RT" link set lo up
  local side sw addr ula_r
  for side in 1 2; do
    if (( side == 1 )); then sw=$SW addr=10.77.0.254 ula_r=fd77::fe; else sw=${PREFIX}sw2 addr=10.78.0.254 ula_r=fd78::fe; fi
    if ! ip -n "$RT" link show "r$side" >/dev/null 2>&1; then
      ip -n "$sw" link add rt type veth peer name "r$side" netns "$RT"
    fi
    sysctl_ns "$RT" "ipv6/conf/r$side/accept_dad" 0
    ip -n "$RT" addr replace "$addr/24" dev "r$side"
    ip -n "$RT" addr replace "$ula_r/64" dev "r$side" nodad
    ip -n "$RT" link set "r$side" up
    ip -n "$sw" link set rt master br0 up
  done
  sysctl_ns "$RT" ipv4/ip_forward 1
  sysctl_ns "$RT" ipv6/conf/all/forwarding 1
  for i in $(hosts); do
    if (( i > 100 )); then
      ip -n "$(ns "$i")" route replace 10.77.0.0/24 via 10.78.0.254
      ip -n "$(ns "$i")" -6 route replace fd77::/64 via fd78::fe
    else
      ip -n "$(ns "$i")" route replace 10.78.0.0/24 via 10.77.0.254
      ip -n "$(ns "$i")" -6 route replace fd78::/64 via fd77::fe
    fi
  done
}

cmd_down() {
  need_root
  local i
  for i in $(hosts); do del_host "$i"; done
  for i in "$RT" "${PREFIX}sw2"; do
    if exists "$i"; then kill_in "$i"; ip netns del "$i" 2>/dev/null || true; fi
  done
  if exists "$SW"; then kill_in "$SW"; ip netns del "$SW" 2>/dev/null || true; fi
  rm -rf "$STATE"
}

cmd_exec() {
  local i=${1:-}; shift || true
  [[ $# -ge 1 ]] || die "usage: exec I CMD..."
  need_root; host "$i"
  FLAN_HOST=$i FLAN_ADDR=$(v4 "$i") exec ip netns exec "$(ns "$i")" "$@"
}

cmd_cut() { need_root; host "${1:-}"; ip -n "$(sw_of "$1")" link set "h$1" down; }
cmd_heal() { need_root; host "${1:-}"; ip -n "$(sw_of "$1")" link set "h$1" up; }

cmd_shape() {
  local i=${1:-} rate=${2:-}
  need_root; host "$i"
  if [[ $rate == off ]]; then
    tc -n "$(ns "$i")" qdisc del dev eth0 root 2>/dev/null || true
    tc -n "$SW" qdisc del dev "h$i" root 2>/dev/null || true
    return 0
  fi
  [[ $rate =~ ^([0-9]+)(kbit|mbit|gbit)$ ]] || die "usage: shape I RATE|off (RATE like 100mbit, 500kbit, 1gbit)"
  local bytes_per_s burst
  case ${BASH_REMATCH[2]} in
    kbit) bytes_per_s=$(( BASH_REMATCH[1] * 125 ));;
    mbit) bytes_per_s=$(( BASH_REMATCH[1] * 125000 ));;
    gbit) bytes_per_s=$(( BASH_REMATCH[1] * 125000000 ));;
  esac
  # bucket = 10 ms worth of the rate, at least a few full-size frames
  burst=$(( bytes_per_s / 100 )); (( burst >= 16384 )) || burst=16384
  local q=${FLAN_QUEUE_MS:-50}ms
  tc -n "$(ns "$i")" qdisc replace dev eth0 root tbf rate "$rate" burst "$burst" latency "$q"
  tc -n "$SW" qdisc replace dev "h$i" root tbf rate "$rate" burst "$burst" latency "$q"
}

cmd_addr() {
  index "${1:-}"
  case ${2:-} in "") v4 "$1";; -6) ula "$1";; -6ll) ll "$1";; *) die "usage: addr I [-6|-6ll]";; esac
}

cmd_status() {
  need_root
  exists "$SW" || { echo "no LAN with prefix '$PREFIX'"; return 0; }
  local i link q
  for i in $(hosts); do
    link=$(ip -n "$SW" -br link show "h$i" 2>/dev/null | awk '{print $2}')
    [[ $link == UP ]] && link=up || link=CUT
    q=$(tc -n "$(ns "$i")" qdisc show dev eth0 | awk '$2=="tbf"{for(f=1;f<NF;f++) if($f=="rate") print "tbf", $(f+1)}')
    printf '%-14s %-12s %-10s %-5s %s\n' "$(ns "$i")" "$(v4 "$i")" "$(ula "$i")" "$link" "${q:--}"
  done
}

cmd_isolated() {
  [[ $# -ge 1 ]] || die "usage: isolated CMD..."
  local user=()
  [[ $(id -u) == 0 ]] || user=(--user --map-root-user)
  # pid namespace + --kill-child: every process started under CMD dies with it;
  # a private /run: `ip netns` keeps its names there.
  exec unshare "${user[@]}" --net --mount --pid --fork --kill-child --mount-proc --propagation private \
    bash -c 'mount -t tmpfs -o mode=755 tmpfs /run && ip link set lo up &&
             ip route add 224.0.0.0/4 dev lo && export FLAN_STATE=${FLAN_STATE:-/run/flan} && exec "$@"' \
    lan-isolated "$@"
}

# ------------------------------------------------------------------------------ selftest
write_probe() {
  mkdir -p "$STATE"
  cat > "$STATE/probe.py" <<'PY'
# recv GROUP IFACE SECS EXPECT STOPFILE | send GROUP IFACE TEXT | serve PORT NBYTES | fetch ADDR PORT
import os, socket, struct, sys, time
cmd, args = sys.argv[1], sys.argv[2:]
PORT = 19432
def family(addr): return socket.AF_INET6 if ':' in addr else socket.AF_INET
if cmd in ('recv', 'send'):
    group, ifindex = args[0], socket.if_nametoindex(args[1])
    fam = family(group)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if cmd == 'recv':
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET:
            s.bind(('', PORT))
            mreqn = socket.inet_aton(group) + socket.inet_aton('0.0.0.0') + struct.pack('@i', ifindex)
            s.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreqn)
        else:
            s.bind(('::', PORT))
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_JOIN_GROUP, socket.inet_pton(fam, group) + struct.pack('@I', ifindex))
        print('joined', flush=True)
        # until the expected text arrives, or 1 s after the sender is done (STOPFILE exists:
        # its datagram is queued by then), or SECS pass: on a loaded machine the sender's own
        # start-up can take seconds, so no fixed listening window
        s.settimeout(0.1); end = time.monotonic() + float(args[2]); stop_seen = None
        while time.monotonic() < end:
            if stop_seen is None and os.path.exists(args[4]): stop_seen = time.monotonic()
            if stop_seen is not None and time.monotonic() - stop_seen > 1.0: break
            try: d = s.recv(512).decode()
            except socket.timeout: continue
            print(d, flush=True)
            if d == args[3]: break
    else:
        if fam == socket.AF_INET:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton('0.0.0.0') * 2 + struct.pack('@i', ifindex))
            s.sendto(args[2].encode(), (group, PORT))
        else:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
            s.sendto(args[2].encode(), (group, PORT, 0, ifindex))
elif cmd == 'serve':
    l = socket.socket(socket.AF_INET6); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    l.bind(('::', int(args[0]))); l.listen(1); print('listening', flush=True)
    c, _ = l.accept(); c.sendall(b'\0' * int(args[1])); c.close()
elif cmd == 'fetch':
    c = socket.create_connection((args[0], int(args[1])), timeout=20); n, t = 0, time.monotonic()
    while True:
        d = c.recv(1 << 16)
        if not d: break
        n += len(d)
    print('%d %.1f' % (n, n * 8 / (time.monotonic() - t) / 1e6))
PY
}

cmd_selftest() {
  need_root
  local c
  for c in python3 ping tc bridge; do command -v $c >/dev/null || die "selftest needs $c"; done
  export FLAN_PREFIX=${PREFIX}t- FLAN_STATE=$STATE-selftest
  PREFIX=$FLAN_PREFIX STATE=$FLAN_STATE SW=${FLAN_PREFIX}sw RT=${FLAN_PREFIX}rt
  local T=$SELF pass=0 fail=0 out G4=239.255.77.1 G6=ff02::77:1
  ok() { echo "ok   - $*"; pass=$((pass + 1)); }
  ko() { echo "FAIL - $*"; fail=$((fail + 1)); }
  check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else ko "$what"; fi; }
  eventually() {  # eventually SECS CMD...: CMD succeeds once within SECS
    local end=$((SECONDS + $1)); shift
    until "$@"; do (( SECONDS < end )) || return 1; sleep 0.2; done
  }
  # mcast GROUP SENDER RECEIVER...: print the receivers that got the message
  mcast() {
    local g=$1 s=$2 r pids=() msg=m$RANDOM; shift 2
    rm -f "$STATE/mc.sent"
    for r in "$@"; do
      "$T" exec "$r" python3 "$STATE/probe.py" recv "$g" eth0 60 "$msg" "$STATE/mc.sent" > "$STATE/mc$r" 2>&1 & pids+=($!)
    done
    # every receiver has joined before the send (bounded: 30 s on a loaded machine)
    for r in "$@"; do for _ in $(seq 1500); do grep -q joined "$STATE/mc$r" && break; sleep 0.02; done; done
    "$T" exec "$s" python3 "$STATE/probe.py" send "$g" eth0 "$msg"
    touch "$STATE/mc.sent"
    wait "${pids[@]}"
    for r in "$@"; do grep -qx "$msg" "$STATE/mc$r" && printf '%s ' "$r"; done; echo
  }
  # speed FROM TO NBYTES: "bytes mbit/s" of one TCP transfer
  speed() {
    "$T" exec "$1" python3 "$STATE/probe.py" serve 19432 "$3" > "$STATE/srv" 2>&1 &
    local p=$!
    for _ in $(seq 50); do grep -q listening "$STATE/srv" && break; sleep 0.02; done
    "$T" exec "$2" python3 "$STATE/probe.py" fetch "$(cmd_addr "$1")" 19432 || true
    wait $p || true
  }
  set +e   # a failed check is counted, not fatal
  "$T" down
  check "up 3" "$T" up 3
  check "up 3 again (idempotent)" "$T" up 3
  write_probe
  check "h1 -> h2 ping" "$T" exec 1 ping -c1 -W2 "$(cmd_addr 2)"
  check "h1 -> h3 ping -6 (ULA)" "$T" exec 1 ping -6 -c1 -W2 "$(cmd_addr 3 -6)"
  check "h2 -> h1 ping -6 (link-local)" "$T" exec 2 ping -6 -c1 -W2 "$(cmd_addr 1 -6ll)%eth0"
  check "no route out of the LAN" bash -c "! '$T' exec 1 ip route get 192.0.2.1"
  check "only lo and eth0 in a host" bash -c "[[ \$('$T' exec 1 ip -o link | wc -l) == 2 ]]"
  out=$(mcast $G4 1 2 3); [[ $out == "2 3 " ]] && ok "IPv4 multicast h1 -> h2 h3" || ko "IPv4 multicast reached [$out]"
  out=$(mcast $G6 2 1 3); [[ $out == "1 3 " ]] && ok "IPv6 multicast h2 -> h1 h3" || ko "IPv6 multicast reached [$out]"
  "$T" cut 3
  check "cut 3: h3 sees NO-CARRIER" bash -c "'$T' exec 3 ip link show eth0 | grep -q NO-CARRIER"
  check "cut 3: ping h3 fails" bash -c "! '$T' exec 1 ping -c1 -W1 $(cmd_addr 3)"
  out=$(mcast $G4 1 2 3); [[ $out == "2 " ]] && ok "cut 3: multicast reaches h2 only" || ko "cut 3: multicast reached [$out]"
  "$T" heal 3
  # an ARP resolution started while cut still fails up to ~3 s after it began, bouncing
  # packets queued meanwhile with EHOSTUNREACH: the link must work again within 5 s
  check "heal 3: ping h3 works (within 5 s)" eventually 5 "$T" exec 1 ping -c1 -W1 "$(cmd_addr 3)"
  out=$(speed 2 1 20000000)
  [[ ${out%% *} == 20000000 ]] && ok "TCP h2 -> h1 unshaped: ${out#* } Mbit/s" || ko "TCP unshaped: [$out]"
  check "shape 2 50mbit" "$T" shape 2 50mbit
  out=$(speed 2 1 6250000)
  awk -v m="${out#* }" 'BEGIN { exit !(m > 40 && m < 52) }' && ok "TCP h2 -> h1 at ${out#* } Mbit/s (shaped 50mbit)" || ko "shaped: [$out]"
  out=$(speed 1 2 6250000)
  awk -v m="${out#* }" 'BEGIN { exit !(m > 40 && m < 52) }' && ok "TCP h1 -> h2 at ${out#* } Mbit/s (shaped 50mbit, ingress side)" || ko "shaped ingress: [$out]"
  check "status shows the limit" bash -c "'$T' status | grep -q 'tbf 50Mbit'"
  "$T" shape 2 off
  out=$(speed 2 1 20000000)
  awk -v m="${out#* }" 'BEGIN { exit !(m > 200) }' && ok "shape 2 off: ${out#* } Mbit/s" || ko "unshape: [$out]"
  "$T" exec 3 sleep 300 & local s3=$!
  "$T" exec 2 sleep 300 & local s2=$!
  sleep 0.3
  check "up 2 removes h3 and kills its processes" bash -c "'$T' up 2 && [[ ! -e /run/netns/${PREFIX}h3 ]] && ! kill -0 $s3"
  "$T" down; wait 2>/dev/null
  check "down removes everything and kills its processes" bash -c "! ls /run/netns | grep -q '^${PREFIX}' && ! kill -0 $s2 && [[ ! -d '$STATE' ]]"
  check "down again (idempotent)" "$T" down
  echo "$pass passed, $fail failed"
  (( fail == 0 ))
}

sub=${1:-help}; shift || true
case $sub in
  up|routed|down|exec|cut|heal|shape|addr|status|isolated|selftest) "cmd_$sub" "$@";;
  help|-h|--help) sed -n '2,/^set -euo/p' "$SELF" | sed '$d; s/^# \{0,1\}//';;
  *) die "unknown command '$sub' (try: $0 help)";;
esac
