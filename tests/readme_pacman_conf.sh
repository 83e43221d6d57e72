#!/usr/bin/env bash
# readme_pacman_conf.sh [TREE] - the README's pacman.conf snippet and etc/pacman.d-flocon, read
# by the real pacman-conf: the host's (pacman 6.0 on bookworm) and, with TREE (made by
# tests/trixie.sh), pacman 7's through chroot. Prints what each pacman-conf makes of the
# repositories, and fails unless both accept the file, both see the mirror, and pacman 7 sees
# flocon as the CacheServer of every repository. (pacman 6.0 warns about CacheServer, a key it
# does not know, and ignores it: the README says to use the Server form there.)
#
# The pacman.conf around the snippet is Arch's own [options] (Architecture = auto, SigLevel);
# /etc/pacman.d/ in the snippet points at a temp dir holding etc/pacman.d-flocon as `flocon`
# and a one-line mirrorlist. Needs pacman-package-manager; TREE needs root (chroot, mount).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
TREE=${1:-}
die() { echo "readme_pacman_conf.sh: $*" >&2; exit 1; }
command -v pacman-conf >/dev/null || die "pacman-conf is missing (apt-get install pacman-package-manager)"
[[ -z $TREE || -x $TREE/usr/bin/pacman-conf ]] || die "no pacman-conf in $TREE (tests/trixie.sh $TREE)"

D=$(mktemp -d /tmp/flocon-readme.XXXXXX)
trap 'rm -rf "$D"' EXIT
mkdir -p "$D/pacman.d"
cp "$here/../etc/pacman.d-flocon" "$D/pacman.d/flocon"
echo 'Server = https://geo.mirror.pkgbuild.com/$repo/os/$arch' > "$D/pacman.d/mirrorlist"
snippet=$(awk '/^```ini$/ { on = 1; next } on && /^```$/ { exit } on' "$here/../README.md")
[[ -n $snippet ]] || die "no \`\`\`ini block in README.md"
{
  printf '[options]\nHoldPkg = pacman glibc\nArchitecture = auto\nCheckSpace\n'
  printf 'SigLevel = Required DatabaseOptional\nLocalFileSigLevel = Optional\n\n'
  echo "${snippet//\/etc\/pacman.d\//$D/pacman.d/}"
} > "$D/pacman.conf"
echo "--- README.md's snippet in an Arch pacman.conf ($D/pacman.conf):"
sed -n '/^\[core\]/,$p' "$D/pacman.conf" | sed 's/^/    /'
repos=$(grep -o '^\[[a-z-]*\]' <<< "$snippet" | tr -d '[]' | grep -vx options)

fail=0
run() { # run LABEL MAJOR CMD...
  local label=$1 major=$2 out rc r; shift 2
  out=$("$@" --config "$D/pacman.conf" 2>&1) && rc=0 || rc=$?
  echo "--- $label: pacman-conf --config pacman.conf: exit $rc"
  grep -E '^(\[|Server|CacheServer|warning|error)' <<< "$out" | grep -v '^\[options\]' | sed 's/^/    /'
  (( rc == 0 )) || { echo "FAIL: $label refuses the README's snippet"; fail=1; return; }
  for r in $repos; do
    local sect; sect=$(awk -v s="[$r]" '$0 == s { on = 1; next } /^\[/ { on = 0 } on' <<< "$out")
    grep -q "^Server = https://geo.mirror.pkgbuild.com/$r/os/" <<< "$sect" ||
      { echo "FAIL: $label: [$r] has no mirror"; fail=1; }
    if (( major >= 7 )); then
      grep -q "^CacheServer = http://localhost:19433/$r/os/" <<< "$sect" ||
        { echo "FAIL: $label: [$r] has no CacheServer = flocon"; fail=1; }
    fi
  done
}
v=$(pacman --version | grep -o 'Pacman v[0-9.]*')
run "host $v" "$(grep -o '[0-9]*' <<< "$v" | head -1)" pacman-conf
if [[ -n $TREE ]]; then
  v=$(chroot "$TREE" pacman --version | grep -o 'Pacman v[0-9.]*')
  # the temp dir appears at the same path inside the tree, in a mount namespace of its own
  run "chroot $TREE $v" "$(grep -o '[0-9]*' <<< "$v" | head -1)" \
    unshare --mount --propagation private -- sh -c \
      'mount -t tmpfs tmpfs "$0/tmp" && mkdir -p "$0$1" && mount --bind "$1" "$0$1" && shift && exec chroot "$0" pacman-conf "$@"' \
      "$TREE" "$D"
fi
(( fail == 0 )) && echo "README.md's snippet: accepted by every pacman-conf, flocon the CacheServer of every repo (pacman >= 7)"
exit $fail
