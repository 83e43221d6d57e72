#!/usr/bin/env bash
# netns.sh [--veth] CMD... - run CMD inside a fresh, private network namespace.
#
# Every test that opens a multicast socket runs through this (docs/DESIGN.md, "Testing"): inside, the only
# interface is a loopback that is up, with a route 224.0.0.0/4 dev lo, so an IPv4 multicast
# join or send can only ever reach this namespace. Nothing is created outside of it, and
# it disappears with CMD.
#
#   not root: unshare --user --map-root-user --net --mount  (CMD runs as uid 0 in there)
#   root:     unshare --net --mount
#
# IPv6 multicast does NOT work on lo (Linux 6.x: a send to ff02::/16 or ff05::/16 via lo
# fails with ENETUNREACH, and with a route for ff00::/8 on lo it is counted as sent but never
# delivered). --veth adds a veth pair inside the namespace, where both IPv4 and IPv6 multicast
# work (a member on one end receives the sender's own looped-back copy, the other end
# receives the wire copy):
#   fl0: 10.77.1.1/24 fd77:1::1/64 + link-local     fl1: 10.77.1.2/24 fd77:1::2/64 + link-local
# DAD is off so the addresses are usable at once; no default route.
#
# It refuses to run CMD (exit 125) unless it verifiably got a new network namespace.
# Needs util-linux (unshare) and iproute2 (ip).
set -euo pipefail

die() { echo "netns.sh: $*" >&2; exit 125; }

if [[ ${1:-} == --inside ]]; then
  shift
  # $1 = the caller's netns identity, $2 = veth wanted (0/1), then CMD
  outer=$1 veth=$2; shift 2
  inner=$(readlink /proc/self/ns/net) || die "cannot read /proc/self/ns/net"
  [[ -n $outer && $inner != "$outer" ]] || die "still in the caller's network namespace: refusing to run $1"
  ip link set lo up || die "cannot bring lo up"
  ip route add 224.0.0.0/4 dev lo || die "cannot add the multicast route on lo"
  if [[ $veth == 1 ]]; then
    for f in all default; do echo 0 > "/proc/sys/net/ipv6/conf/$f/accept_dad"; done
    ip link add fl0 type veth peer name fl1 || die "cannot create the veth pair"
    ip addr add 10.77.1.1/24 dev fl0 && ip addr add fd77:1::1/64 dev fl0 nodad
    ip addr add 10.77.1.2/24 dev fl1 && ip addr add fd77:1::2/64 dev fl1 nodad
    ip link set fl0 up && ip link set fl1 up
  fi
  # belt and braces: any interface other than ours means a real one could be reached
  others=$(ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | grep -vxE 'lo|fl0|fl1' || true)
  [[ -z $others ]] || die "unexpected interfaces in the namespace: $others"
  if [[ $veth == 1 ]]; then
    # link-local addresses appear when the carrier comes up: wait until they can be used
    for _ in $(seq 50); do
      n=$(ip -6 -o addr show scope link | grep -cv tentative || true)
      (( n >= 2 )) && break
      sleep 0.02
    done
  fi
  exec "$@"
fi

veth=0
if [[ ${1:-} == --veth ]]; then veth=1; shift; fi
[[ $# -ge 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
command -v unshare >/dev/null || die "unshare (util-linux) is not installed"
command -v ip >/dev/null || die "ip (iproute2) is not installed"

outer=$(readlink /proc/self/ns/net) || die "cannot read /proc/self/ns/net"
userns=()
[[ $(id -u) == 0 ]] || userns=(--user --map-root-user)
exec unshare "${userns[@]}" --net --mount --propagation private -- \
  bash "$(readlink -f "${BASH_SOURCE[0]}")" --inside "$outer" "$veth" "$@"
