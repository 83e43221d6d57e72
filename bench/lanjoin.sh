#!/usr/bin/env bash
# lanjoin.sh - one download per LAN, side by side (docs/DESIGN.md, "One download per LAN").
#
# The workload of tests/lan_join.sh scenario 1: 4 namespace hosts run `pacman -S` of the same
# set (6 makepkg-built signed packages, ~24 MB: tests/fixtures.sh) at the same moment, the
# mirror's link shaped to 20 Mbit/s. Four runs, each on a fresh LAN:
#   one host    host 1 alone, pacman straight to the mirror: one host's download (the unit)
#   direct      4 hosts, pacman straight to the mirror (no flocon)
#   no join     4 hosts through flocon with FLOCON_NO_JOIN=1 (flocon as it was before)
#   join        4 hosts through flocon
# Prints the mirror's package bytes (as a multiple of the set) and the wall time from the
# common start to the last pacman's end (as a multiple of one host's download).
# Targets: join = 1.0x the set, wall <= 1.3x one host's download. About 4 minutes.
# Environment: LANJOIN_RATE=20mbit, FLOCON_BIN=target/release/flocon. Needs what
# tests/lan_join.sh needs (pacman, makepkg, repo-add, gpg, iproute2, util-linux, python3).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${FLOCON_BIN:-$ROOT/target/release/flocon}
[[ -x $BIN ]] || (cd "$ROOT" && cargo build --release)
export E2E_FIXTURES=${E2E_FIXTURES:-$ROOT/target/tmp/e2e-fixtures}
mkdir -p "$ROOT/target/tmp"
declare -A WALL BYTES SET
run() { # run NAME MODE HOSTS
  local out
  out=$(LANJOIN_MODE=$2 LANJOIN_HOSTS=$3 LANJOIN_ONLY1=1 "$ROOT/tests/lan.sh" isolated "$ROOT/tests/lan_join.sh" "$BIN" 2>&1) ||
    { echo "$out" | tail -20 >&2; echo "lanjoin: the $1 run failed" >&2; exit 1; }
  local r; r=$(grep '^# RESULT' <<<"$out")
  WALL[$1]=$(sed 's/.*wall_s=\([0-9.]*\).*/\1/' <<<"$r")
  BYTES[$1]=$(sed 's/.*mirror_bytes=\([0-9]*\).*/\1/' <<<"$r")
  SET[$1]=$(sed 's/.*set_bytes=\([0-9]*\).*/\1/' <<<"$r")
  grep -q ' 0 failed' <<<"$out" || { echo "$out" | grep -E 'FAIL' >&2; echo "lanjoin: the $1 run had failures" >&2; exit 1; }
  echo "lanjoin: $1: $r" >&2
}
run one direct 1
run direct direct 4
run nojoin nojoin 4
run join join 4
printf '\n4 hosts, pacman -S of the same %s bytes at once, mirror link %s\n' "${SET[join]}" "${LANJOIN_RATE:-20mbit}"
printf '%-34s %14s %8s %9s %8s\n' run "mirror bytes" "x set" "wall s" "x one"
for k in one direct nojoin join; do
  case $k in one) name="one host, straight to the mirror";; direct) name="4 hosts, straight to the mirror";;
    nojoin) name="4 hosts, flocon without joining";; join) name="4 hosts, flocon (joining)";; esac
  printf '%-34s %14s %8.2f %9.2f %8.2f\n' "$name" "${BYTES[$k]}" \
    "$(awk -v a="${BYTES[$k]}" -v b="${SET[$k]}" 'BEGIN { print a / b }')" "${WALL[$k]}" \
    "$(awk -v a="${WALL[$k]}" -v b="${WALL[one]}" 'BEGIN { print a / b }')"
done
