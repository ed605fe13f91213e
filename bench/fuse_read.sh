#!/usr/bin/env bash
# Reads through a read-only Strata mount of a file:// origin against the same
# file read natively, in one run, with fio, in two columns: every read
# through the daemon (--no-fuse-passthrough) and FUSE passthrough (files
# whole in the cache are read by the kernel from the cache's file). Each at
# queue depth 1 (psync) and 32 (io_uring):
#   first (cold) read from the origin, cached sequential read (page cache
#   dropped), page-cache-hot read, 4k random-read IOPS;
# then a metadata-heavy case (stat, then open and close, of 10,000 small
# files) and the daemon's peak RSS.
# Native is the same bytes as a local file: the origin's file for the cold
# read and the metadata case, and for cached, hot and random reads the
# cache's own file of it, read directly. (On this VM the host's cache holds
# a file written moments ago, as the cache's is, and not one written long
# before: against the origin's file, the cached figures measured the host.)
# Targets (issue 15, passthrough): cached, hot and 4k random >= 0.95x
# native at both depths, first read >= 0.8x, RSS < 300 MiB.
#   SIZE_MIB=2048 RUNTIME=10 REPS=5 bench/fuse_read.sh (the disk here is noisy: medians)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE_MIB=${SIZE_MIB:-2048}
RUNTIME=${RUNTIME:-10}
REPS=${REPS:-5}
SMALL_FILES=${SMALL_FILES:-10000}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-fuse.XXXXXX")
mnt="$work/mnt"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  grep -q " $mnt " /proc/mounts && umount -l "$mnt" || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/origin/small" "$mnt" "$work/r"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$work/origin/data.bin"
for i in $(seq "$SMALL_FILES"); do printf 'file %s\n' "$i" > "$work/origin/small/f$i"; done
sync

# (Re)mounts read-only with an empty cache, so a first read can be measured
# again; $1 is the column: daemon or passthrough.
mount_fresh() {
  if [ -n "$pid" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; fi
  rm -rf "$work/cache"
  local flags=(--read-only)
  [ "$1" = daemon ] && flags+=(--no-fuse-passthrough)
  build/cmd/strata --log-level warn mount "file://$work/origin" "$mnt" --cache-dir "$work/cache" \
    --chunk-size 4MiB --metrics-port -1 "${flags[@]}" > "$work/mount.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q " $mnt " /proc/mounts && break; sleep 0.1; done
}
# fio bandwidth (MiB/s) or IOPS of one job: $1 file, $2 rw, $3 bs,
# $4 invalidate, $5 depth, $6 extra options
fio_run() {
  local engine=(--ioengine=psync)
  [ "$5" -gt 1 ] && engine=(--ioengine=io_uring "--iodepth=$5")
  # shellcheck disable=SC2086
  fio --name=j --filename="$1" --readonly --rw="$2" --bs="$3" "${engine[@]}" --invalidate="$4" \
      --size="${SIZE_MIB}M" ${6:-} --minimal |
    awk -F';' -v bs="$3" '{ if (bs == "4k") print $8; else printf "%.1f\n", $7 / 1024 }'
}
# Seconds to stat every small file, then to open and close each.
metadata_s() {
  python3 - "$1" "$SMALL_FILES" <<'EOF'
import os, sys, time
d, n = sys.argv[1], int(sys.argv[2])
names = [os.path.join(d, "f%d" % i) for i in range(1, n + 1)]
t = time.monotonic()
for p in names: os.stat(p)
s = time.monotonic() - t
t = time.monotonic()
for p in names: os.close(os.open(p, os.O_RDONLY))
print("%.3f %.3f" % (s, time.monotonic() - t))
EOF
}
rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
peak_rss=0
note_rss() { local r; r=$(rss_mib); [ "$r" -gt "$peak_rss" ] && peak_rss=$r; true; }

origin_file="$work/origin/data.bin"
through="$mnt/data.bin"
# The cache's file of data.bin (the largest object), once it is filled.
store_file() { find "$work/cache/objects" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-; }
r="$work/r"
# The disk is noisy: every strata figure is interleaved with a native one,
# REPS times, and medians are kept. Each first read starts from an empty cache.
for col in daemon passthrough; do
  for _ in $(seq "$REPS"); do
    mount_fresh "$col"
    drop_caches; fio_run "$origin_file" read 1M 1 1 >> "$r/native_cold"
    drop_caches; fio_run "$through" read 1M 1 1 >> "$r/${col}_first"   # origin -> cache -> reader
    native=$(store_file)
    for d in 1 32; do
      drop_caches; fio_run "$native" read 1M 1 "$d" >> "$r/native_cached_$d"
      drop_caches; fio_run "$through" read 1M 1 "$d" >> "$r/${col}_cached_$d"   # from the cache's file
    done
    note_rss
  done
  fio_run "$native" read 1M 0 1 > /dev/null; fio_run "$through" read 1M 0 1 > /dev/null  # warm both
  for d in 1 32; do
    for _ in $(seq "$REPS"); do
      fio_run "$native" read 1M 0 "$d" >> "$r/native_hot_$d"
      fio_run "$through" read 1M 0 "$d" >> "$r/${col}_hot_$d"
    done
    drop_caches; fio_run "$native" randread 4k 1 "$d" "--runtime=$RUNTIME --time_based" >> "$r/native_iops_$d"
    drop_caches; fio_run "$through" randread 4k 1 "$d" "--runtime=$RUNTIME --time_based" >> "$r/${col}_iops_$d"
  done
  note_rss
  # Metadata: a first pass (the origin asked for every name), then REPS
  # more, whose median is kept (seconds to stat, seconds to open+close).
  metadata_s "$work/origin/small" > /dev/null; metadata_s "$mnt/small" > /dev/null
  for _ in $(seq "$REPS"); do
    metadata_s "$work/origin/small" >> "$r/native_meta_$col"
    metadata_s "$mnt/small" >> "$r/${col}_meta"
  done
  for f in "native_meta_$col" "${col}_meta"; do
    printf '%s %s\n' "$(awk '{print $1}' "$r/$f" | median)" "$(awk '{print $2}' "$r/$f" | median)" > "$r/$f.m"
    mv "$r/$f.m" "$r/$f"
  done
  note_rss
done

m() { median < "$r/$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
res="RESULT"
echo "native: cold $(m native_cold) MiB/s; cached $(m native_cached_1)/$(m native_cached_32) MiB/s," \
  "hot $(m native_hot_1)/$(m native_hot_32) MiB/s, 4k random $(m native_iops_1)/$(m native_iops_32) IOPS" \
  "(depth 1/32); stat $(awk '{print $1}' "$r/native_meta_daemon") s, open+close $(awk '{print $2}' "$r/native_meta_daemon") s"
for col in daemon passthrough; do
  p=$([ "$col" = daemon ] && echo d || echo pt)
  echo "$col: first $(m "${col}_first") MiB/s; cached $(m "${col}_cached_1")/$(m "${col}_cached_32") MiB/s," \
    "hot $(m "${col}_hot_1")/$(m "${col}_hot_32") MiB/s, 4k random $(m "${col}_iops_1")/$(m "${col}_iops_32") IOPS;" \
    "stat $(awk '{print $1}' "$r/${col}_meta") s, open+close $(awk '{print $2}' "$r/${col}_meta") s"
  res+=" ${p}_first_ratio=$(ratio "$(m "${col}_first")" "$(m native_cold)")"
  for d in 1 32; do
    res+=" ${p}_cached${d}_ratio=$(ratio "$(m "${col}_cached_$d")" "$(m "native_cached_$d")")"
    res+=" ${p}_hot${d}_ratio=$(ratio "$(m "${col}_hot_$d")" "$(m "native_hot_$d")")"
    res+=" ${p}_rand4k${d}_iops_ratio=$(ratio "$(m "${col}_iops_$d")" "$(m "native_iops_$d")")"
  done
  res+=" ${p}_stat_slowdown=$(ratio "$(awk '{print $1}' "$r/${col}_meta")" "$(awk '{print $1}' "$r/native_meta_$col")")"
  res+=" ${p}_openclose_slowdown=$(ratio "$(awk '{print $2}' "$r/${col}_meta")" "$(awk '{print $2}' "$r/native_meta_$col")")"
done
echo "daemon peak RSS: ${peak_rss} MiB"
echo "$res peak_rss_mib=$peak_rss"
