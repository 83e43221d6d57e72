#!/usr/bin/env bash
# fixtures.sh OUTDIR - build the signed test repository "flocontest" for the end-to-end suite,
# with the real tools (makepkg, repo-add, gpg). Nothing outside OUTDIR is touched.
#
# OUTDIR/
#   repo/flocontest/os/x86_64/   packages + .sig, flocontest.db/.files (+ .sig): the mirror
#                                tree, served as  Server = http://MIRROR/$repo/os/$arch
#   alt/<file>(.sig)             another build of an `any` package, SAME file name, other
#                                content (what an Arch ARM peer holds), signed by the same key
#   corrupt/<file>(.sig)         a package with one byte flipped (same size) + its genuine .sig
#   update/                      the next release of one package (pkgrel 2, signed) and the
#                                repo's db/files naming it (+ .sig): published on the mirror
#                                for the `pacman -Syu` scenario
#   signer.asc, signer.fpr       the throw-away signing key (public) and its fingerprint
#   packages.tsv                 name, arch, file, size, sha256 of every package
#   fixtures.env                 shell variables naming all of the above (source it)
#
# Environment: FIXTURE_BIG_MB size of the largest package (default 200).
# Idempotent: skipped when OUTDIR/.done matches this script and the inputs. makepkg refuses
# to run as root; as root it runs in a user namespace of its own (`unshare --user`, where it
# is the overflow uid), so no build user has to exist.
# Needs (Debian): pacman-package-manager makepkg libarchive-tools fakeroot gnupg zstd xz-utils
set -euo pipefail

OUT=${1:-}
[[ -n $OUT && $# == 1 ]] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
BIG_MB=${FIXTURE_BIG_MB:-200}
[[ $BIG_MB =~ ^[1-9][0-9]{0,4}$ ]] || { echo "fixtures.sh: FIXTURE_BIG_MB must be 1..99999" >&2; exit 2; }
REPO=flocontest
MARK=.flocon-fixtures   # only a directory carrying this may be wiped and rebuilt

# ------------------------------------------------------------------------------ tools
missing=()
for t in makepkg:makepkg repo-add:pacman-package-manager pacman:pacman-package-manager \
         bsdtar:libarchive-tools fakeroot:fakeroot gpg:gnupg zstd:zstd xz:xz-utils; do
  command -v "${t%%:*}" >/dev/null || missing+=("${t#*:}")
done
if (( ${#missing[@]} )); then
  echo "fixtures.sh: missing tools; on Debian: apt-get install -y $(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi

# ------------------------------------------------------------------------------ package set
# name  arch  size(KiB)  compression. Sizes span a few KiB to FIXTURE_BIG_MB; seven packages
# so that ParallelDownloads = 5 has more work than slots.
PACKAGES=(
  "flocon-tiny   any    4                 zst"
  "flocon-small  any    100               zst"
  "flocon-anyalt any    300               zst"
  "flocon-xz     any    600               xz"
  "flocon-mid    x86_64 2048              zst"
  "flocon-large  x86_64 20480             zst"
  "flocon-big    x86_64 $((BIG_MB * 1024)) zst"
)
ALT_PKG=flocon-anyalt       # rebuilt with other content into alt/
UPDATE_PKG=flocon-tiny      # rebuilt as pkgrel 2 into update/
CORRUPT_PKG=flocon-mid      # copied with one byte flipped into corrupt/
BIG_PKG=flocon-big

self_sum=$(sha256sum "$0" | cut -d' ' -f1)
inputs="$self_sum big=$BIG_MB $(pacman --version | grep -o 'Pacman v[^ ]*')"
if [[ -f $OUT/.done && $(cat "$OUT/.done") == "$inputs" ]]; then
  echo "fixtures.sh: $OUT is up to date"
  exit 0
fi
if [[ -e $OUT ]]; then
  [[ -d $OUT && ( -e $OUT/$MARK || -z $(ls -A "$OUT") ) ]] ||
    { echo "fixtures.sh: $OUT exists and was not made by fixtures.sh: refusing to wipe it" >&2; exit 1; }
  rm -rf "$OUT"
fi
mkdir -p "$OUT"
OUT=$(readlink -f "$OUT")
touch "$OUT/$MARK"
DB=$OUT/repo/$REPO/os/x86_64
B=$OUT/build
mkdir -p "$DB" "$OUT/alt" "$OUT/corrupt" "$OUT/update" "$B/pkgdb" "$B/home" "$B/out"
t_start=$(date +%s.%N)
since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

# makepkg asks `pacman -Q` for .BUILDINFO: point it at a private, empty db.
# (no shebang: makepkg runs it with bash)
printf 'exec pacman --dbpath %q "$@"\n' "$B/pkgdb" > "$B/pacman"
chmod 755 "$B/pacman"
# our own makepkg.conf: no stripping/docs juggling, fast zstd (random content does not
# compress anyway), no colour in logs
{
  cat /etc/makepkg.conf
  echo "BUILDENV=(!distcc !color !ccache !check !sign)"
  echo "OPTIONS=(!strip docs !libtool !staticlibs emptydirs !zipman !purge !debug !lto)"
  echo "COMPRESSZST=(zstd -c -T0 -1 -q -)"
  echo "COMPRESSXZ=(xz -c -T0 -1 -)"
  echo "CARCH=x86_64"
} > "$B/makepkg.conf"

as_builder() {
  if [[ $(id -u) == 0 ]]; then unshare --user -- "$@"; else "$@"; fi
}

# build NAME ARCH KIB EXT VARIANT [PKGREL]: makepkg one package in $B/<name>.<variant>, echo
# its path
build() {
  local name=$1 arch=$2 kib=$3 ext=$4 variant=$5 rel=${6:-1} d t0
  d=$B/$name.$variant
  mkdir -p "$d"
  t0=$(date +%s.%N)
  head -c "$((kib * 1024))" /dev/urandom > "$d/blob"
  cat > "$d/PKGBUILD" <<EOF
pkgname=$name
pkgver=1.0
pkgrel=$rel
pkgdesc="flocon test package ($variant build, $kib KiB)"
arch=('$arch')
license=('MIT')
package() {
  mkdir -p "\$pkgdir/usr/share/$name"
  # a hard link, not a copy: a 200 MB blob must not be written twice
  ln "\$startdir/blob" "\$pkgdir/usr/share/$name/blob" 2>/dev/null || cp "\$startdir/blob" "\$pkgdir/usr/share/$name/blob"
  echo "$name $variant" > "\$pkgdir/usr/share/$name/VARIANT"
}
EOF
  (cd "$d" && as_builder env HOME="$B/home" MAKEPKG_CONF="$B/makepkg.conf" PACMAN="$B/pacman" \
     PKGDEST="$d/out" PKGEXT=".pkg.tar.$ext" makepkg -f -d >"$d/makepkg.log" 2>&1) ||
    { echo "fixtures.sh: makepkg failed for $name ($variant):" >&2; tail -20 "$d/makepkg.log" >&2; exit 1; }
  rm -rf "$d/pkg" "$d/src" "$d/blob"
  local f; f=$(echo "$d"/out/*.pkg.tar.*)
  [[ -f $f ]] || { echo "fixtures.sh: makepkg made no package for $name" >&2; exit 1; }
  echo "  $(basename "$f"): $(stat -c %s "$f") bytes in $(since "$t0")" >&2
  echo "$f"
}

echo "fixtures.sh: building ${#PACKAGES[@]} packages + 1 alternative build into $OUT" >&2
# all builds at once: each makepkg run is ~2 s of mostly fixed cost
jobs=()
for p in "${PACKAGES[@]}"; do
  read -r name arch kib ext <<<"$p"
  build "$name" "$arch" "$kib" "$ext" main > "$B/$name.main.path" & jobs+=($!)
  if [[ $name == "$ALT_PKG" ]]; then
    build "$name" "$arch" "$kib" "$ext" alt > "$B/$name.alt.path" & jobs+=($!)
  fi
  if [[ $name == "$UPDATE_PKG" ]]; then
    build "$name" "$arch" "$kib" "$ext" update 2 > "$B/$name.update.path" & jobs+=($!)
  fi
done
for j in "${jobs[@]}"; do wait "$j" || { echo "fixtures.sh: a build failed" >&2; exit 1; }; done
for p in "${PACKAGES[@]}"; do
  read -r name _ <<<"$p"
  mv "$(cat "$B/$name.main.path")" "$DB/"
  [[ $name == "$ALT_PKG" ]] && mv "$(cat "$B/$name.alt.path")" "$OUT/alt/"
  [[ $name == "$UPDATE_PKG" ]] && mv "$(cat "$B/$name.update.path")" "$OUT/update/"
done
echo "  built in $(since "$t_start")" >&2

# ------------------------------------------------------------------------------ signing
t0=$(date +%s.%N)
export GNUPGHOME=$B/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg --batch --quiet --pinentry-mode loopback --passphrase '' \
  --quick-generate-key "flocon fixtures <fixtures@flocon.invalid>" ed25519 sign never 2>/dev/null
FPR=$(gpg --with-colons --list-keys 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
[[ $FPR =~ ^[0-9A-F]{40}$ ]] || { echo "fixtures.sh: no signing key" >&2; exit 1; }
echo "$FPR" > "$OUT/signer.fpr"
gpg --armor --export "$FPR" > "$OUT/signer.asc"

# The db is made BEFORE the packages are signed: repo-add 6.0 would embed a .sig lying next
# to a package as %PGPSIG%, and then pacman never downloads .sig files. Arch's own dbs carry
# no embedded signatures, so pacman fetches `<package>.sig` from the server, the path the
# end-to-end tests must exercise.
(cd "$DB" && repo-add --quiet --sign --key "$FPR" "$REPO.db.tar.gz" ./*.pkg.tar.* >"$B/repo-add.log" 2>&1) ||
  { echo "fixtures.sh: repo-add failed:" >&2; cat "$B/repo-add.log" >&2; exit 1; }
# the update's db: the repo's, with the new release replacing the old (repo-add does that)
cp "$DB"/"$REPO".{db,files}.tar.gz "$OUT/update/"
(cd "$OUT/update" && repo-add --quiet --sign --key "$FPR" "$REPO.db.tar.gz" ./*.pkg.tar.* >"$B/repo-add.log" 2>&1 &&
   rm -f ./*.old ./*.old.sig) ||
  { echo "fixtures.sh: repo-add (update) failed:" >&2; cat "$B/repo-add.log" >&2; exit 1; }
for f in "$DB"/*.pkg.tar.* "$OUT"/alt/*.pkg.tar.* "$OUT"/update/*.pkg.tar.*; do
  [[ $f == *.sig ]] && continue
  gpg --batch --yes --quiet --detach-sign --no-armor -u "$FPR" --output "$f.sig" "$f"
done
echo "  key $FPR, dbs and $(ls "$DB"/*.pkg.tar.*.sig "$OUT"/alt/*.sig "$OUT"/update/*.pkg.tar.*.sig | wc -l) signatures in $(since "$t0")" >&2
gpgconf --kill all 2>/dev/null || true
unset GNUPGHOME

# ------------------------------------------------------------------------------ variants
pkg_in() { local f; for f in "$@"; do [[ $f == *.sig ]] || echo "${f##*/}"; done; }
alt=$(pkg_in "$OUT"/alt/*.pkg.tar.*)
[[ -f $DB/$alt ]] || { echo "fixtures.sh: alt build $alt has no twin in the repo" >&2; exit 1; }
cmp -s "$DB/$alt" "$OUT/alt/$alt" && { echo "fixtures.sh: alt build is identical" >&2; exit 1; }
corrupt=$(pkg_in "$DB/$CORRUPT_PKG"-1.0-1-*.pkg.tar.*)
cp "$DB/$corrupt" "$DB/$corrupt.sig" "$OUT/corrupt/"
size=$(stat -c %s "$OUT/corrupt/$corrupt")
# flip every bit of the middle byte: same size, different SHA-256, invalid signature
byte=$(od -An -tu1 -j $((size / 2)) -N1 "$OUT/corrupt/$corrupt" | tr -d ' ')
printf "\\$(printf '%03o' $((byte ^ 255)))" |
  dd of="$OUT/corrupt/$corrupt" bs=1 seek=$((size / 2)) conv=notrunc status=none
cmp -s "$DB/$corrupt" "$OUT/corrupt/$corrupt" && { echo "fixtures.sh: corruption failed" >&2; exit 1; }

# ------------------------------------------------------------------------------ manifest
: > "$OUT/packages.tsv"
for f in "$DB"/*.pkg.tar.*; do
  [[ $f == *.sig ]] && continue
  b=$(basename "$f")
  n=$(bsdtar -xOf "$f" .PKGINFO | awk -F' = ' '$1 == "pkgname" { print $2 }')
  a=$(bsdtar -xOf "$f" .PKGINFO | awk -F' = ' '$1 == "arch" { print $2 }')
  printf '%s\t%s\t%s\t%s\t%s\n' "$n" "$a" "$b" "$(stat -c %s "$f")" "$(sha256sum "$f" | cut -d' ' -f1)" >> "$OUT/packages.tsv"
done
big=$(awk -F'\t' -v n="$BIG_PKG" '$1 == n { print $3 }' "$OUT/packages.tsv")
cat > "$OUT/fixtures.env" <<EOF
# written by tests/fixtures.sh; source it
FIXTURE_DIR=$OUT
FIXTURE_REPO=$REPO
FIXTURE_MIRROR_ROOT=$OUT/repo
FIXTURE_DB_DIR=$DB
FIXTURE_FPR=$FPR
FIXTURE_SIGNER_ASC=$OUT/signer.asc
FIXTURE_PACKAGES="$(cut -f1 "$OUT/packages.tsv" | tr '\n' ' ' | sed 's/ $//')"
FIXTURE_BIG_PKG=$BIG_PKG
FIXTURE_BIG_FILE=$big
FIXTURE_ALT_PKG=$ALT_PKG
FIXTURE_ALT_FILE=$alt
FIXTURE_CORRUPT_PKG=$CORRUPT_PKG
FIXTURE_CORRUPT_FILE=$corrupt
FIXTURE_UPDATE_PKG=$UPDATE_PKG
FIXTURE_UPDATE_FILE=$(pkg_in "$OUT"/update/*.pkg.tar.*)
FIXTURE_UPDATE_DIR=$OUT/update
EOF
rm -rf "$B"
echo "$inputs" > "$OUT/.done"
echo "fixtures.sh: done in $(since "$t_start"): $(wc -l < "$OUT/packages.tsv") packages, $(du -sh "$OUT" | cut -f1) in $OUT" >&2
