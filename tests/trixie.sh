#!/usr/bin/env bash
# trixie.sh DIR - a minimal Debian trixie tree holding pacman 7 (Debian's pacman-package-manager),
# for the end-to-end suite's CacheServer run: pacman runs in it with `chroot` inside each
# namespace host, flocon outside.
#
#   debootstrap --variant=minbase trixie DIR MIRROR, then inside (chroot):
#   apt-get install pacman-package-manager makepkg libarchive-tools fakeroot gnupg zstd
#   xz-utils ca-certificates, a system user `alpm` (for `DownloadUser = alpm`) and an
#   /etc/hosts naming localhost.
#
# MIRROR is the Debian mirror this machine's apt already uses (the first http(s) URI of a
# "debian" archive in /etc/apt/sources.list*), or TRIXIE_MIRROR. Idempotent: a finished tree
# carries DIR/.flocon-trixie holding this script's SHA-256 and is kept as it is; an unfinished
# or outdated one (made by this script) is removed and rebuilt. Prints the pacman version and
# the time taken. Needs root, debootstrap, and the network to the mirror (run it outside any
# test namespace: it downloads, nothing else).
set -euo pipefail

DIR=${1:-}
[[ -n $DIR && $# == 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
die() { echo "trixie.sh: $*" >&2; exit 1; }
[[ $(id -u) == 0 ]] || die "needs root (debootstrap, chroot)"
command -v debootstrap >/dev/null || die "debootstrap is not installed (apt-get install debootstrap)"
[[ -e /usr/share/debootstrap/scripts/trixie ]] || die "this debootstrap does not know trixie"

STAMP=.flocon-trixie
PKGS=(pacman-package-manager makepkg libarchive-tools fakeroot gnupg zstd xz-utils ca-certificates)
want="$(sha256sum "$0" | cut -d' ' -f1)"
if [[ -f $DIR/$STAMP && $(cat "$DIR/$STAMP") == "$want" ]]; then
  echo "trixie.sh: $DIR is up to date: $(chroot "$DIR" pacman --version | grep -o 'Pacman v[^ ]*')"
  exit 0
fi
if [[ -e $DIR ]]; then
  [[ -e $DIR/$STAMP || -e $DIR/.flocon-trixie-partial ]] ||
    die "$DIR exists and was not made by trixie.sh: refusing to remove it"
  # a tree left mounted by a killed run must not take the host's /proc or /dev with it
  for m in proc dev sys; do mountpoint -q "$DIR/$m" && umount -l "$DIR/$m"; done
  rm -rf --one-file-system "$DIR"
fi

mirror=${TRIXIE_MIRROR:-}
if [[ -z $mirror ]]; then
  mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -v "^[[:space:]]*#" |
    grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -1 | tr -d " " || true)
fi
[[ -n $mirror ]] || die "no Debian mirror found in /etc/apt/sources.list*; set TRIXIE_MIRROR"

t0=$SECONDS
mkdir -p "$DIR"
touch "$DIR/.flocon-trixie-partial"
echo "trixie.sh: debootstrap --variant=minbase trixie $DIR $mirror"
debootstrap --variant=minbase trixie "$DIR" "$mirror" > "$DIR.debootstrap.log" 2>&1 ||
  { tail -20 "$DIR.debootstrap.log" >&2; die "debootstrap failed (log: $DIR.debootstrap.log)"; }
t1=$SECONDS
echo "trixie.sh: base system in $((t1 - t0)) s; installing ${PKGS[*]}"
# apt inside needs /proc and /dev only while it runs; unmounted on any exit
mount --bind /proc "$DIR/proc"
mount --bind /dev "$DIR/dev"
trap 'umount -l "$DIR/proc" "$DIR/dev" 2>/dev/null || true' EXIT
cp /etc/resolv.conf "$DIR/etc/resolv.conf" 2>/dev/null || true
chroot "$DIR" env DEBIAN_FRONTEND=noninteractive LC_ALL=C apt-get install -y -qq --no-install-recommends \
  "${PKGS[@]}" > "$DIR.apt.log" 2>&1 ||
  { tail -20 "$DIR.apt.log" >&2; die "apt-get install in the tree failed (log: $DIR.apt.log)"; }
chroot "$DIR" id alpm >/dev/null 2>&1 ||
  chroot "$DIR" useradd --system --no-create-home --home-dir / --shell /usr/sbin/nologin alpm
# pacman's curl resolves "localhost" through /etc/hosts, which debootstrap does not write
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' > "$DIR/etc/hosts"
chroot "$DIR" apt-get clean
rm -rf "$DIR"/var/lib/apt/lists/*
umount -l "$DIR/proc" "$DIR/dev"
trap - EXIT
v=$(chroot "$DIR" pacman --version | grep -o 'Pacman v[^ ]*') || die "no pacman in the tree"
[[ $v == "Pacman v"[7-9]* ]] || die "the tree has $v, not pacman >= 7"
rm -f "$DIR/.flocon-trixie-partial" "$DIR.debootstrap.log" "$DIR.apt.log"
echo "$want" > "$DIR/$STAMP"
echo "trixie.sh: $v in $DIR: debootstrap $((t1 - t0)) s, packages $((SECONDS - t1)) s, $(du -sh --one-file-system "$DIR" | cut -f1)"
