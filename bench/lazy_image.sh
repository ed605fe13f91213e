#!/usr/bin/env bash
# Lazy image: how soon a container of an image with a large layer runs, and
# how soon it has read that layer, when containerd pulls through Strata's
# proxy snapshotter (`ctr-remote images rpull`: uncompressed tar layers are
# served lazily from the registry through Strata's chunk cache, the pull does
# not download them) against containerd's own overlayfs snapshotter (`ctr
# images pull`: every layer downloaded and unpacked before the container
# starts). The image is make_image.sh's: a small busybox base (2 layers) and
# a SIZE_MIB weights layer (/models/weights.bin), all layers uncompressed
# tar, in a local registry (Debian's docker-registry). In one run, for both
# snapshotters:
#   1. first command: from pull start until `ctr run --rm REF c /bin/true`
#      has run and returned (goal: Strata <= 1 s);
#   2. full read: from pull start until `ctr run --rm REF c sh -c 'cat
#      /models/weights.bin > /dev/null'` has returned (goal: Strata <=
#      0.5x overlayfs's pull plus read);
#   3. both again with the registry behind the test fault proxy, throttled
#      to RATE_MIB MiB/s (a registry across a network); the image is pushed
#      to the registry itself and pulled by the proxy's port;
#   4. the strata daemon's peak RSS (VmHWM) over all its runs.
# Every measurement starts cold: a fresh containerd (its own directory, no
# image, no content), a fresh `strata node` state directory, and the page
# cache dropped. Untimed checks: containerd's content store holds no weights
# layer after an rpull (else Strata did not serve it lazily), and Strata's
# read of the weights matches their sha256 (once). Everything is on
# 127.0.0.1; needs root.
#   SIZE_MIB=1024 RATE_MIB=100 bench/lazy_image.sh
# STRATA_BENCH_NO_BUILD=1 skips installing and building (binaries from
# STRATA_BUILD_DIR, default build/); MEASURE_TIMEOUT bounds each command (s).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${STRATA_BENCH_NO_BUILD:-}" ]; then
  scripts/install-deps.sh
  scripts/build.sh release
fi
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE_MIB=${SIZE_MIB:-1024}
RATE_MIB=${RATE_MIB:-100}
MEASURE_TIMEOUT=${MEASURE_TIMEOUT:-900}
build=${STRATA_BUILD_DIR:-build}
strata=$build/cmd/strata
fault_proxy=$build/tests/util/fault_proxy
ctd_sh=tests/util/containerd.sh
reg_sh=tests/util/registry.sh
img_sh=tests/util/make_image.sh
[ "$(id -u)" -eq 0 ] || { echo "lazy_image.sh: needs root (containerd, mounts)" >&2; exit 1; }
if [ ! -x "$strata" ] || [ ! -x "$fault_proxy" ]; then
  echo "lazy_image.sh: no $strata or $fault_proxy" >&2; exit 1
fi
command -v ctr-remote >/dev/null || { echo "lazy_image.sh: no ctr-remote (stargz-snapshotter)" >&2; exit 1; }

# Short: unix sockets live under it (<= 107 bytes).
work=$(mktemp -d /tmp/lzb.XXXXXX)
cur_ctd=         # the containerd directory of the running measurement
node_pid=        # its strata node
proxy_pid=
reg_started=0

# Lazily unmounts everything under $1, deepest first.
unmount_under() {
  local mp
  awk '{print $5}' /proc/self/mountinfo | while IFS= read -r mp; do
    mp=$(printf '%b' "$mp")
    case $mp in "$1"/*) echo "$mp" ;; esac
  done | awk -F/ '{print NF "\t" $0}' | sort -rn | cut -f2- |
    while IFS= read -r mp; do timeout -k 2 10 umount -l -n "$mp" 2>/dev/null || true; done
}
# Stops the strata node: TERM, KILL after 30 s.
stop_node() {
  [ -n "$node_pid" ] || return 0
  kill "$node_pid" 2>/dev/null || true
  local _
  for _ in $(seq 300); do kill -0 "$node_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$node_pid" 2>/dev/null || true
  wait "$node_pid" 2>/dev/null || true
  node_pid=
}
stop_ctd() {
  [ -n "$cur_ctd" ] || return 0
  timeout -k 5 120 "$ctd_sh" stop "$cur_ctd" >/dev/null 2>&1 || true
  cur_ctd=
}
cleanup() {
  set +e
  stop_ctd
  stop_node
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null; wait "$proxy_pid" 2>/dev/null; fi
  [ "$reg_started" -eq 1 ] && timeout -k 5 60 "$reg_sh" stop "$work/reg" >/dev/null 2>&1
  unmount_under "$work"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }
# logged NAME CMD...: runs CMD (bounded) with its output in $work/NAME.log;
# on failure shows the log's end and fails.
logged() {
  local name=$1; shift
  if ! timeout -k 5 "$MEASURE_TIMEOUT" "$@" > "$work/$name.log" 2>&1; then
    echo "lazy_image.sh: $name failed: $*" >&2
    tail -n 30 "$work/$name.log" >&2
    return 1
  fi
}

# The image, in the registry.
reg_port=$(free_port)
mkdir -p "$work/reg"
reg_started=1
logged registry "$reg_sh" start "$work/reg" "$reg_port"
registry=127.0.0.1:$reg_port
echo "building the image (busybox base + $SIZE_MIB MiB weights layer)..."
logged make_image "$img_sh" "$work/layout" weights "$SIZE_MIB"
weights_sha=$(sed -n 's/^weights_sha256=//p' "$work/make_image.log")
weights_layer=$(sed -n 's/^layers=.*,//p' "$work/make_image.log")
if [ -z "$weights_sha" ] || [ -z "$weights_layer" ]; then
  echo "lazy_image.sh: make_image.sh named no weights" >&2; exit 1
fi
logged push "$img_sh" push "$work/layout" "$registry" bench/weights:1
rm -rf "$work/layout"

# The throttled way to the same registry.
"$fault_proxy" "$reg_port" --rate "$((RATE_MIB << 20))" > "$work/proxy.out" &
proxy_pid=$!
for _ in $(seq 200); do grep -q port= "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
pport=$(sed -n 's/^port=//p' "$work/proxy.out")
[ -n "$pport" ] || { echo "lazy_image.sh: fault_proxy did not start" >&2; exit 1; }

ref_direct=$registry/bench/weights:1
ref_throttled=127.0.0.1:$pport/bench/weights:1
full_read='cat /models/weights.bin > /dev/null'
: > "$work/rss_kib"
n=0

# measure SNAPSHOTTER REF WHAT [verify]: one cold measurement; WHAT is first
# (/bin/true) or full (cat the weights); sets $result to its seconds.
measure() {
  local sn=$1 ref=$2 what=$3 verify=${4:-}
  n=$((n + 1))
  local cdir=$work/c$n sdir=$work/s$n tag="$n-$sn-$what"
  local start_args=()
  if [ "$sn" = strata ]; then
    mkdir -p "$sdir"
    $strata --log-level warn node --state-dir "$sdir" --fd-keeper off --admin-socket off \
      --snapshotter-address "$sdir/sn.sock" > "$work/node$n.log" 2>&1 &
    node_pid=$!
    local _ up=0
    for _ in $(seq 600); do grep -qs running "$work/node$n.log" && { up=1; break; }; sleep 0.05; done
    [ "$up" -eq 1 ] || { echo "strata node did not start:" >&2; cat "$work/node$n.log" >&2; exit 1; }
    start_args=(--proxy-snapshotter "strata=$sdir/sn.sock")
  fi
  cur_ctd=$cdir
  logged "ctd$n" "$ctd_sh" start "$cdir" "${start_args[@]}"
  local cmd=(/bin/true)
  [ "$what" = full ] && cmd=(/bin/sh -c "$full_read")
  drop_caches
  local t0 t1
  t0=$(now)
  if [ "$sn" = strata ]; then
    logged "pull$tag" ctr-remote --address "$cdir/containerd.sock" images rpull --plain-http \
      --snapshotter strata "$ref"
  else
    logged "pull$tag" "$ctd_sh" ctr "$cdir" images pull --plain-http --snapshotter overlayfs "$ref"
  fi
  logged "run$tag" "$ctd_sh" ctr "$cdir" run --rm --snapshotter "$sn" "$ref" c1 "${cmd[@]}"
  t1=$(now)
  result=$(secs "$t0" "$t1")
  if [ "$sn" = strata ]; then
    # Lazy indeed: containerd did not download the weights layer.
    logged "content$tag" "$ctd_sh" ctr "$cdir" content ls -q
    if grep -qF "$weights_layer" "$work/content$tag.log"; then
      echo "lazy_image.sh: rpull downloaded the weights layer $weights_layer (not served lazily)" >&2
      exit 1
    fi
  fi
  if [ -n "$verify" ]; then
    logged "verify$tag" "$ctd_sh" ctr "$cdir" run --rm --snapshotter "$sn" "$ref" c2 \
      sha256sum /models/weights.bin
    grep -q "^$weights_sha " "$work/verify$tag.log" ||
      { echo "lazy_image.sh: $sn read wrong weights: $(cat "$work/verify$tag.log")" >&2; exit 1; }
  fi
  stop_ctd
  if [ -n "$node_pid" ]; then
    awk '/VmHWM/ {print $2}' "/proc/$node_pid/status" >> "$work/rss_kib" 2>/dev/null || true
    stop_node
  fi
  unmount_under "$cdir"
  unmount_under "$sdir"
  rm -rf "$cdir" "$sdir"
  printf '  %-8s %-10s %-5s %8.3f s\n' "$sn" "$([ "$ref" = "$ref_direct" ] && echo direct || echo throttled)" \
    "$what" "$result"
}

echo "measuring (snapshotter, registry, what, seconds from pull start):"
measure overlayfs "$ref_direct" first; o_first=$result
measure strata "$ref_direct" first; s_first=$result
measure overlayfs "$ref_direct" full; o_full=$result
measure strata "$ref_direct" full verify; s_full=$result
measure overlayfs "$ref_throttled" first; to_first=$result
measure strata "$ref_throttled" first; ts_first=$result
measure overlayfs "$ref_throttled" full; to_full=$result
measure strata "$ref_throttled" full; ts_full=$result

rss_mib=$(sort -n "$work/rss_kib" | tail -1 | awk '{printf "%.0f", $1 / 1024}')
met() { awk -v a="$1" -v b="$2" 'BEGIN {print (a <= b) ? "met" : "missed"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }

echo "image: busybox base + $SIZE_MIB MiB weights layer, uncompressed tar; throttled registry: $RATE_MIB MiB/s"
echo "first command, pull start to /bin/true run: Strata $(printf %.3f "$s_first") s, overlayfs $(printf %.3f "$o_first") s (ratio $(ratio "$s_first" "$o_first"); goal Strata <= 1 s: $(met "$s_first" 1))"
echo "full read, pull start to weights read: Strata $(printf %.3f "$s_full") s, overlayfs $(printf %.3f "$o_full") s (ratio $(ratio "$s_full" "$o_full"); goal <= 0.5: $(met "$(ratio "$s_full" "$o_full")" 0.5)); Strata's bytes checked by sha256"
echo "throttled first command: Strata $(printf %.3f "$ts_first") s, overlayfs $(printf %.3f "$to_first") s (ratio $(ratio "$ts_first" "$to_first"); goal Strata <= 1 s: $(met "$ts_first" 1))"
echo "throttled full read: Strata $(printf %.3f "$ts_full") s, overlayfs $(printf %.3f "$to_full") s (ratio $(ratio "$ts_full" "$to_full"); goal <= 0.5: $(met "$(ratio "$ts_full" "$to_full")" 0.5))"
echo "strata daemon peak RSS: ${rss_mib} MiB"
awk -v sf="$s_first" -v of="$o_first" -v sr="$s_full" -v or_="$o_full" \
    -v tsf="$ts_first" -v tof="$to_first" -v tsr="$ts_full" -v tor="$to_full" -v r="$rss_mib" 'BEGIN {
  printf "RESULT strata_first_cmd_s=%.3f overlay_first_cmd_s=%.3f first_cmd_ratio=%.3f strata_full_read_s=%.3f overlay_full_read_s=%.3f full_read_ratio=%.3f throttled_strata_first_cmd_s=%.3f throttled_overlay_first_cmd_s=%.3f throttled_first_cmd_ratio=%.3f throttled_strata_full_read_s=%.3f throttled_overlay_full_read_s=%.3f throttled_full_read_ratio=%.3f peak_rss_mib=%s\n",
    sf, of, sf / of, sr, or_, sr / or_, tsf, tof, tsf / tof, tsr, tor, tsr / tor, r }'
