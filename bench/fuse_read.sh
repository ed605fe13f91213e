#!/usr/bin/env bash
# Reads through a Strata mount of a file:// origin against the same file read
# natively, in one run, with fio: first (cold) read, cached sequential read
# (page cache dropped), page-cache-hot read, 4k random-read IOPS, and the
# daemon's peak RSS. Targets (Debian's libfuse 3.14): cached >= 0.65x native,
# hot >= 0.6x, 4k random IOPS >= 0.65x, first read >= 0.5x, RSS < 300 MiB.
#   SIZE_MIB=2048 RUNTIME=10 REPS=3 bench/fuse_read.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE_MIB=${SIZE_MIB:-2048}
RUNTIME=${RUNTIME:-10}
REPS=${REPS:-3}
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-fuse.XXXXXX")
mnt="$work/mnt"
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
  grep -q " $mnt " /proc/mounts && umount -l "$mnt" || true
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/origin" "$mnt"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$work/origin/data.bin"
sync

# (Re)mounts with an empty cache, so a first read can be measured again.
mount_fresh() {
  if [ -n "$pid" ]; then kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""; fi
  rm -rf "$work/cache"
  build/cmd/strata --log-level warn mount "file://$work/origin" "$mnt" --cache-dir "$work/cache" \
    --chunk-size 4MiB --metrics-port -1 > "$work/mount.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q " $mnt " /proc/mounts && break; sleep 0.1; done
}
# fio bandwidth (MiB/s) or IOPS of one job; $1 file, $2 rw, $3 bs, $4 invalidate
fio_run() {
  fio --name=j --filename="$1" --readonly --rw="$2" --bs="$3" --ioengine=psync --invalidate="$4" \
      --size="${SIZE_MIB}M" ${5:-} --minimal | awk -F';' -v bs="$3" '{ if (bs == "4k") print $8; else printf "%.1f\n", $7 / 1024 }'
}
rss_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$pid/status"; }
peak_rss=0
note_rss() { local r; r=$(rss_mib); [ "$r" -gt "$peak_rss" ] && peak_rss=$r; true; }

native="$work/origin/data.bin"
through="$mnt/data.bin"
# The disk is noisy: every strata figure is interleaved with a native one,
# REPS times, and medians are kept. Each first read starts from an empty cache.
for _ in $(seq "$REPS"); do
  mount_fresh
  drop_caches; fio_run "$native" read 1M 1 >> "$work/native_cold"
  drop_caches; fio_run "$through" read 1M 1 >> "$work/first"     # origin -> cache -> reader
  drop_caches; fio_run "$through" read 1M 1 >> "$work/cached"    # from the chunk cache, page cache dropped
  note_rss
done
first=$(median < "$work/first")
native_cold=$(median < "$work/native_cold"); cached=$(median < "$work/cached")
fio_run "$native" read 1M 0 > /dev/null; fio_run "$through" read 1M 0 > /dev/null  # warm both
for _ in $(seq "$REPS"); do
  fio_run "$native" read 1M 0 >> "$work/native_hot"
  fio_run "$through" read 1M 0 >> "$work/hot"
done
native_hot=$(median < "$work/native_hot"); hot=$(median < "$work/hot")
drop_caches; native_iops=$(fio_run "$native" randread 4k 1 "--runtime=$RUNTIME --time_based")
drop_caches; iops=$(fio_run "$through" randread 4k 1 "--runtime=$RUNTIME --time_based")
note_rss
rss=$peak_rss

echo "native: cold ${native_cold} MiB/s, hot ${native_hot} MiB/s, 4k random ${native_iops} IOPS"
echo "strata: first read ${first} MiB/s, cached ${cached} MiB/s, hot ${hot} MiB/s, 4k random ${iops} IOPS"
echo "daemon peak RSS: ${rss} MiB"
awk -v nc="$native_cold" -v f="$first" -v c="$cached" -v nh="$native_hot" -v h="$hot" -v ni="$native_iops" \
    -v i="$iops" -v r="$rss" 'BEGIN {
  printf "RESULT cached_ratio=%.2f hot_ratio=%.2f rand4k_iops_ratio=%.2f first_read_ratio=%.2f cached_mibps=%s hot_mibps=%s first_mibps=%s native_mibps=%s native_hot_mibps=%s iops=%s native_iops=%s peak_rss_mib=%s\n",
    c / nc, h / nh, i / ni, f / nc, c, h, f, nc, nh, i, ni, r }'
