#!/usr/bin/env bash
# Chunk store hit path against fio, in one run, on the same file and disk:
# sequential 1 MiB reads over a 2 GiB cached object with the page cache
# dropped (cold) and then warm (hot), plus hit-path index lookups per second.
# Target: strata >= 0.9x fio. Needs root (drops the page cache).
#   SIZE=2GiB REPS=3 bench/store_read.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE=${SIZE:-2GiB}
REPS=${REPS:-3}
strata=build/cmd/strata
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT


$strata --log-level warn bench store-read --cache-dir "$work/cache" --size "$SIZE" --populate --passes 0
file=$(ls "$work"/cache/objects/*)

fio_mibps() {  # fio's read bandwidth in MiB/s (terse field 7 is KiB/s); $1: invalidate the page cache?
  fio --name=seq --filename="$file" --readonly --rw=read --bs=1M --ioengine=psync \
      --invalidate="$1" --minimal | awk -F';' '{printf "%.1f\n", $7 / 1024}'
}
strata_mibps() {  # pass number $1 of a `strata bench store-read --passes $1`
  $strata --log-level warn bench store-read --cache-dir "$work/cache" --size "$SIZE" --passes "$1" \
    | awk -v p="$1" -F'[ =]' '$2 == p {for (i = 1; i <= NF; i++) if ($i == "mibps") print $(i + 1)}'
}

: > "$work/fio_cold"; : > "$work/strata_cold"; : > "$work/fio_hot"; : > "$work/strata_hot"
for r in $(seq "$REPS"); do
  drop_caches; fio_mibps 1 >> "$work/fio_cold"
  drop_caches; strata_mibps 1 >> "$work/strata_cold"
  fio_mibps 0 >> "$work/fio_hot"        # page cache now holds the whole object
  strata_mibps 2 >> "$work/strata_hot"  # pass 1 verifies from page cache, pass 2 is hot
done
fio_cold=$(median < "$work/fio_cold"); strata_cold=$(median < "$work/strata_cold")
fio_hot=$(median < "$work/fio_hot"); strata_hot=$(median < "$work/strata_hot")

lookups=$($strata --log-level warn bench index-lookups --cache-dir "$work/lookups" --seconds 3 \
  | sed -n 's/.*per_second=\([0-9.]*\).*/\1/p')

echo "cold (page cache dropped): fio ${fio_cold} MiB/s, strata ${strata_cold} MiB/s"
echo "hot  (page cache warm):    fio ${fio_hot} MiB/s, strata ${strata_hot} MiB/s"
echo "index lookups: ${lookups}/s"
awk -v fc="$fio_cold" -v sc="$strata_cold" -v fh="$fio_hot" -v sh="$strata_hot" -v l="$lookups" 'BEGIN {
  printf "RESULT store_cold_mibps=%s fio_cold_mibps=%s cold_ratio=%.2f store_hot_mibps=%s fio_hot_mibps=%s hot_ratio=%.2f index_lookups_per_s=%s\n",
    sc, fc, sc / fc, sh, fh, sh / fh, l }'
