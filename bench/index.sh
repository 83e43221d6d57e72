#!/usr/bin/env bash
# index.sh - sync-db index memory against `pacman -Sl` on the same files, and the static
# binaries' sizes (issue 14's "Must show").
#
# Generates dbs of Arch's shape with bench/archdb.py (core 280 + extra 14,450 + multilib 270
# packages, realistic desc files with %PGPSIG%; extra.db ~10 MB gzip, ~34 MB tar), then in
# one run:
#   - pacman -Sl --dbpath on those files: wall time and peak RSS (median of BENCH_RUNS)
#   - flocon (the static x86_64 binary when `make static` works), in a private network
#     namespace, with those three repos: VmRSS once indexed; peak (VmHWM) during the startup
#     parse; peak and time of each of BENCH_REREADS SIGHUP re-reads (the peak is reset before
#     each with /proc/PID/clear_refs); VmRSS after them; the same for re-reads the way
#     `pacman -Sy` causes them (new files renamed into place: old and new index coexist);
#     then a crafted db of BENCH_HOSTILE entries in place of extra.db (refused at its bound)
#   - the sizes of `make static`, `make aarch64`, `make armv7` (n/a when a build fails)
# Targets (issue 14): resident <= 3 MiB indexed, peak during a re-read <= 6 MiB, resident
# after 10 re-reads <= 3 MiB, static binary <= 700,000 bytes.
#
# Environment: BENCH_RUNS=3 BENCH_REREADS=10 BENCH_HOSTILE=499000 BENCH_SIZES=1 (0: skip the
#   three builds) FLOCON_BIN=... (skip `make static`, measure that binary)
# Needs: python3, pacman (Debian: pacman-package-manager), util-linux, iproute2, GNU time.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${BENCH_RUNS:-3}
REREADS=${BENCH_REREADS:-10}
HOSTILE=${BENCH_HOSTILE:-499000}
SIZES=${BENCH_SIZES:-1}
WAIT_S=60   # one parse of Arch's dbs takes well under a second; a hang is a failure

die() { echo "bench: $*" >&2; exit 1; }
log() { echo "bench: $*" >&2; }
median() { sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.2f MiB", k / 1024 }'; }
verdict() { if awk "BEGIN { exit !($1) }"; then echo ok; else echo MISSED; fi; }

# ============================================================================ inside the netns
if [[ ${1:-} == --inside ]]; then
  W=$2
  pid=
  trap '[[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true' EXIT
  status_kib() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
  # loaded N [PATTERN]: wait until the log has N lines of PATTERN (default: a db read);
  # echo the seconds it took
  loaded() {
    local t0=$EPOCHREALTIME
    for _ in $(seq $((WAIT_S * 200))); do
      kill -0 "$pid" 2>/dev/null || { cat "$W/flocon.log" >&2; die "flocon exited"; }
      (( $(grep -c "${2:-sync db [a-z]*: [0-9]* packages}" "$W/flocon.log") >= $1 )) && {
        awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }'; return; }
      sleep 0.005
    done
    die "no 'sync db' line $1 after $WAIT_S s"
  }
  mkdir -p "$W/state" "$W/cache"
  "$FLOCON_BIN" --config /dev/null --pacman-conf "$W/pacman.conf" --cache-dir "$W/cache" \
    --db-path "$W/db" --state-dir "$W/state" --listen 127.0.0.1:19433 \
    --peer-addr 127.0.0.1 --port 19432 --interface lo > "$W/flocon.log" 2>&1 &
  pid=$!
  n=3
  loaded $n > /dev/null
  sleep 1
  grep 'sync db' "$W/flocon.log" | sed 's/^/bench:   /' >&2
  rss_indexed=$(status_kib "$pid" VmRSS)
  hwm_start=$(status_kib "$pid" VmHWM)

  : > "$W/hup"
  for i in $(seq "$REREADS"); do
    echo 5 > "/proc/$pid/clear_refs"
    kill -HUP "$pid"
    n=$((n + 3))
    t=$(loaded $n)
    echo "$t $(status_kib "$pid" VmHWM)" >> "$W/hup"
  done
  sleep 1
  rss_after=$(status_kib "$pid" VmRSS)
  hup_time=$(awk '{ print $1 }' "$W/hup" | median)
  hup_peak=$(awk '{ print $2 }' "$W/hup" | sort -g | tail -1)

  # pacman -Sy's way: new files renamed over the old ones; the old index serves meanwhile
  : > "$W/sy"
  for i in 1 2 3; do
    echo 5 > "/proc/$pid/clear_refs"
    for r in core extra multilib; do
      cp "$W/db/sync/$r.db" "$W/db/sync/$r.db.part" && mv "$W/db/sync/$r.db.part" "$W/db/sync/$r.db"
    done
    n=$((n + 3))
    loaded $n > /dev/null
    status_kib "$pid" VmHWM >> "$W/sy"
  done
  sleep 1
  sy_peak=$(sort -g "$W/sy" | tail -1)
  rss_sy=$(status_kib "$pid" VmRSS)

  # a crafted extra.db with far more entries than any repo
  echo 5 > "/proc/$pid/clear_refs"
  mv "$W/hostile.db" "$W/db/sync/extra.db"
  loaded 1 "refused\|extra: $HOSTILE packages" > /dev/null
  sleep 1
  hostile_line=$(grep "refused\|extra: $HOSTILE packages" "$W/flocon.log" | tail -1)
  hostile_line=${hostile_line##*: sync db }
  hostile_peak=$(status_kib "$pid" VmHWM)
  hostile_rss=$(status_kib "$pid" VmRSS)

  cat > "$W/flocon.results" <<EOF
rss_indexed=$rss_indexed
hwm_start=$hwm_start
hup_time=$hup_time
hup_peak=$hup_peak
rss_after=$rss_after
sy_peak=$sy_peak
rss_sy=$rss_sy
hostile_peak=$hostile_peak
hostile_rss=$hostile_rss
hostile_line="$hostile_line"
EOF
  exit 0
fi

# ============================================================================ outside
for c in python3 pacman unshare ip /usr/bin/time; do
  command -v $c >/dev/null || die "needs $c (Debian: apt-get install -y python3 pacman-package-manager util-linux iproute2 time)"
done
cd "$ROOT"
t_start=$SECONDS

sizes=()
size_of() {  # size_of TARGET TRIPLE: bytes of the static build, or n/a
  if make --no-print-directory "$1" > "/tmp/bench-$1.$$.log" 2>&1; then
    stat -c %s "target/$2/static/flocon"
  else
    log "make $1 failed (see /tmp/bench-$1.$$.log)"; echo n/a; return
  fi
  rm -f "/tmp/bench-$1.$$.log"
}
if [[ -z ${FLOCON_BIN:-} ]]; then
  log "make static"
  static_size=$(size_of static x86_64-unknown-linux-musl)
  if [[ $static_size == n/a ]]; then
    cargo build --release --quiet
    FLOCON_BIN=$ROOT/target/release/flocon WHAT="x86_64 glibc (make static failed)"
  else
    FLOCON_BIN=$ROOT/target/x86_64-unknown-linux-musl/static/flocon WHAT="x86_64 musl static"
  fi
else
  static_size=n/a WHAT=$FLOCON_BIN
fi
[[ -x $FLOCON_BIN ]] || die "no binary at $FLOCON_BIN"
if [[ $SIZES == 1 ]]; then
  log "make aarch64, make armv7"
  aarch64_size=$(size_of aarch64 aarch64-unknown-linux-musl)
  armv7_size=$(size_of armv7 armv7-unknown-linux-musleabihf)
else
  aarch64_size=skipped armv7_size=skipped
fi

W=$(mktemp -d /tmp/flocon-bench-index.XXXXXX)
trap 'rm -rf "$W"' EXIT
log "generating Arch-size dbs in $W"
python3 bench/archdb.py "$W/db" | sed 's/^/bench:   /' >&2
extra_gz=$(stat -c %s "$W/db/sync/extra.db")
python3 bench/archdb.py --hostile "$HOSTILE" "$W/hostile.db" | sed 's/^/bench:   /' >&2
mkdir -p "$W/db/local"
cat > "$W/pacman.conf" <<EOF
[options]
SigLevel = Never
[core]
Server = http://127.0.0.1:9/
[extra]
Server = http://127.0.0.1:9/
[multilib]
Server = http://127.0.0.1:9/
EOF

log "pacman -Sl, $RUNS runs"
: > "$W/pacman.times"
for i in $(seq "$RUNS"); do
  /usr/bin/time -f '%e %M' -o "$W/t" pacman --config "$W/pacman.conf" --dbpath "$W/db" -Sl > "$W/sl"
  lines=$(wc -l < "$W/sl")
  [[ $lines == 15000 ]] || die "pacman -Sl listed $lines packages, not 15000"
  cat "$W/t" >> "$W/pacman.times"
done
pm_time=$(awk '{ print $1 }' "$W/pacman.times" | median)
pm_peak=$(awk '{ print $2 }' "$W/pacman.times" | median)

log "flocon ($WHAT), $REREADS SIGHUP re-reads, 3 replacements, one crafted db"
export FLOCON_BIN WAIT_S REREADS HOSTILE
"$ROOT/tests/netns.sh" bash "$ROOT/bench/index.sh" --inside "$W"
# shellcheck disable=SC1091
source "$W/flocon.results"

echo
echo "sync-db index, Arch-size dbs (15,000 packages; extra.db $extra_gz bytes gzip)"
printf '%-40s %14s %14s %8s   %s\n' "" "pacman -Sl" "flocon" ratio target
printf '%-40s %14s %14s %8s   %s\n' "wall time of one read (s)" "$pm_time" "$hup_time" \
  "$(awk -v a="$hup_time" -v b="$pm_time" 'BEGIN { printf "%.2fx", a / b }')" "(SIGHUP re-read, median)"
printf '%-40s %14s %14s %8s   %s\n' "peak RSS while reading" "$(mib "$pm_peak")" "$(mib "$hwm_start")" \
  "$(awk -v a="$hwm_start" -v b="$pm_peak" 'BEGIN { printf "%.2fx", a / b }')" "(flocon: startup)"
printf '%-40s %14s %14s %8s   %s\n' "flocon resident, indexed" "" "$(mib "$rss_indexed")" "" \
  "<= 3 MiB $(verdict "$rss_indexed <= 3072")"
printf '%-40s %14s %14s %8s   %s\n' "flocon peak during a SIGHUP re-read" "" "$(mib "$hup_peak")" "" \
  "<= 6 MiB $(verdict "$hup_peak <= 6144") (max of $REREADS)"
printf '%-40s %14s %14s %8s   %s\n' "flocon resident after $REREADS re-reads" "" "$(mib "$rss_after")" "" \
  "<= 3 MiB $(verdict "$rss_after <= 3072")"
printf '%-40s %14s %14s %8s   %s\n' "flocon peak, dbs replaced (pacman -Sy)" "" "$(mib "$sy_peak")" "" \
  "<= 6 MiB $(verdict "$sy_peak <= 6144") (old + new index)"
printf '%-40s %14s %14s\n' "flocon resident after 3 replacements" "" "$(mib "$rss_sy")"
printf '%-40s %14s %14s   %s\n' "crafted db, $HOSTILE entries: peak" "" "$(mib "$hostile_peak")" "$hostile_line"
printf '%-40s %14s %14s\n' "crafted db: resident after" "" "$(mib "$hostile_rss")"
echo
echo "static binaries (stripped, bytes)"
printf '%-40s %14s   %s\n' "make static (x86_64 musl)" "$static_size" \
  "<= 700,000 $( [[ $static_size =~ ^[0-9]+$ ]] && verdict "$static_size <= 700000" || echo n/a)"
printf '%-40s %14s\n' "make aarch64" "$aarch64_size"
printf '%-40s %14s\n' "make armv7" "$armv7_size"
log "done in $((SECONDS - t_start)) s"
