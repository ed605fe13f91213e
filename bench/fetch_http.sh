#!/usr/bin/env bash
# Cold sequential read of one object from a loopback HTTP origin (nginx):
# `strata cat` (fresh cache) against `curl -o /dev/null`, in the same run.
# Each timed run starts with the previous run's dirty pages written back
# (sync), so that runs do not pay for each other's writeback.
# Then both through a throttling proxy (25 MiB/s, 20 ms per request round
# trip): strata against the link rate. Peak RSS of strata is recorded.
# strata cat also writes every chunk to the cache directory's disk (around
# the page cache) before it exits, so the same run measures that disk's own
# sequential direct-write rate (dd oflag=direct): strata is bounded by it
# wherever it is below the network's rate.
# Targets: >= 0.9x curl, >= 0.9x the link rate, RSS < 256 MiB.
#   SIZE_MIB=2048 SLOW_MIB=256 REPS=3 bench/fetch_http.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE_MIB=${SIZE_MIB:-2048}
SLOW_MIB=${SLOW_MIB:-256}
REPS=${REPS:-3}
RATE=$((25 * 1024 * 1024))
strata=build/cmd/strata
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-fetch.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT


mkdir -p "$work/www" "$work/nginx"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$work/www/big.bin"
head -c "$((SLOW_MIB << 20))" "$work/www/big.bin" > "$work/www/slow.bin"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/nginx/nginx.conf" <<CONF
user root root;
daemon off; worker_processes 2; pid $work/nginx/nginx.pid; error_log $work/nginx/error.log warn;
events { worker_connections 512; }
http { access_log off; sendfile on; keepalive_requests 100000;
  server { listen 127.0.0.1:$port; root $work/www; } }
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)
build/tests/util/fault_proxy "$port" --rate "$RATE" --rtt-ms 20 > "$work/proxy.out" & pids+=($!)
for _ in $(seq 100); do grep -q port= "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
pport=$(sed -n 's/port=//p' "$work/proxy.out")
sleep 0.3
url="http://127.0.0.1:$port/big.bin"
slow="http://127.0.0.1:$pport/slow.bin"
drop_caches
cat "$work/www/big.bin" > /dev/null  # the origin's disk is not what is measured

mibps() { awk -v b="$1" -v s="$2" 'BEGIN {printf "%.1f\n", b / 1048576 / s}'; }
now() { date +%s.%N; }
# strata cat into /dev/null with a fresh cache; prints MiB/s, records peak RSS (KiB)
strata_cold() {
  rm -rf "$work/cache"
  sync
  local t0 t1
  t0=$(now)
  /usr/bin/time -f "%M" -o "$work/rss" $strata --log-level warn cat "$1" --cache-dir "$work/cache" > /dev/null
  t1=$(now)
  cat "$work/rss" >> "$work/rss_all"
  mibps "$2" "$(echo "$t1 - $t0" | bc -l)"
}
# the cache directory's disk: sequential 4 MiB direct writes of the object
disk_write() {
  rm -f "$work/dd.out"
  sync
  dd if="$work/www/big.bin" of="$work/dd.out" bs=4M oflag=direct 2>&1 |
    awk '/copied/ {for (i = 1; i <= NF; i++) if ($i == "s,") print $(i-1)}' |
    while read -r s; do mibps "$1" "$s"; done
  rm -f "$work/dd.out"
}
curl_cold() {
  sync
  local t0 t1
  t0=$(now)
  curl -sS -o /dev/null "$1"
  t1=$(now)
  mibps "$2" "$(echo "$t1 - $t0" | bc -l)"
}

: > "$work/rss_all"
big=$((SIZE_MIB << 20)); small=$((SLOW_MIB << 20))
for r in $(seq "$REPS"); do
  curl_cold "$url" "$big" >> "$work/curl"
  strata_cold "$url" "$big" >> "$work/strata"
  disk_write "$big" >> "$work/disk"
  strata_cold "$slow" "$small" >> "$work/strata_slow"
done
curl_mibps=$(median < "$work/curl")
strata_mibps=$(median < "$work/strata")
disk_mibps=$(median < "$work/disk")
slow_mibps=$(median < "$work/strata_slow")
link_mibps=$(mibps "$RATE" 1 | tr -d '\n')
rss_mib=$(sort -n "$work/rss_all" | tail -1 | awk '{printf "%.0f", $1 / 1024}')

echo "loopback nginx, $SIZE_MIB MiB cold: curl ${curl_mibps} MiB/s, strata cat ${strata_mibps} MiB/s"
echo "throttled proxy (25 MiB/s, 20 ms), $SLOW_MIB MiB cold: strata cat ${slow_mibps} MiB/s"
echo "cache disk, sequential 4 MiB direct writes: ${disk_mibps} MiB/s"
echo "strata peak RSS: ${rss_mib} MiB"
awk -v c="$curl_mibps" -v s="$strata_mibps" -v l="$link_mibps" -v w="$slow_mibps" -v r="$rss_mib" \
    -v d="$disk_mibps" 'BEGIN {
  printf "RESULT strata_mibps=%s curl_mibps=%s curl_ratio=%.2f disk_write_mibps=%s disk_ratio=%.2f slow_strata_mibps=%s link_mibps=%s link_ratio=%.2f peak_rss_mib=%s\n",
    s, c, s / c, d, s / d, w, l, w / l, r }'
