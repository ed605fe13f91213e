#!/usr/bin/env bash
# Peers: what the origin serves and how long nodes take when many start the
# same file at once. Nodes are `strata node` daemons on 127.0.0.x, each with
# its own state and cache, warmed through their admin sockets (`strata
# prefetch --node-socket`, no mounts). The origin is nginx behind the test
# fault proxy, throttled to RATE_MIB MiB/s (a shared registry or filer under
# load), which counts the body bytes it serves. In one run:
#   1. one node alone, cold: the time every other figure is compared with;
#   2. four nodes without peers, all at once: origin bytes / size (about 4);
#   3. four nodes with peers, all at once: origin bytes / size (goal <= 1.05)
#      and the time until the last is done / the lone node's (goal <= 1.3);
#   4. a fifth node joining the warm four: its read from peers against the
#      same read by a lone node from the loopback nginx, unthrottled (goal:
#      peer rate >= 0.9x nginx rate), taken JOIN_SAMPLES (5) times in pairs,
#      with the mean wait per chunk of each read (a peer's answer; nginx's)
#      and the disk traffic of each, bytes and requests (both read the file
#      from this one disk and write it to it: on one machine this read is
#      bound by the disk, and by how many requests carry its chunks);
#   5. a scale run: SCALE_NODES nodes (16) start a SCALE_MIB file at once:
#      origin bytes / size, the largest share of the chunks served between
#      nodes that one node served (1/SCALE_NODES is even), the time to the
#      last node done;
# and every daemon's peak RSS (goal < 300 MiB). On one machine every node
# writes its own copy to the one shared disk, so the time of 4 nodes is also
# given against what this machine can do for four nodes at all (four lone
# nodes on the unthrottled origin).
#   SIZE_MIB=2048 SCALE_MIB=1024 RATE_MIB=200 JOIN_SAMPLES=5 bench/peers.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
# shellcheck source=bench/lib.sh
. bench/lib.sh

SIZE_MIB=${SIZE_MIB:-2048}
SCALE_MIB=${SCALE_MIB:-1024}
SCALE_NODES=${SCALE_NODES:-16}
JOIN_SAMPLES=${JOIN_SAMPLES:-5}
RATE_MIB=${RATE_MIB:-200}
strata=build/cmd/strata
work=$(mktemp -d "${BENCH_DIR:-/var/tmp}/strata-peers.XXXXXX")
pids=()
node_pids=()
proxy_pid=
cleanup() {
  for p in "${node_pids[@]}" "${pids[@]}" $proxy_pid; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc -l; }

mkdir -p "$work/www" "$work/nginx"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$work/www/model.bin"
head -c "$((SCALE_MIB << 20))" /dev/urandom > "$work/www/scale.bin"
port=$(free_port)
cat > "$work/nginx/nginx.conf" <<CONF
user root root;
daemon off; worker_processes 2; pid $work/nginx/nginx.pid; error_log $work/nginx/error.log warn;
events { worker_connections 1024; }
http { access_log off; sendfile on; keepalive_requests 100000;
  server { listen 127.0.0.1:$port; root $work/www; } }
CONF
nginx -c "$work/nginx/nginx.conf" -p "$work/nginx" & pids+=($!)

# A fresh throttled proxy per phase, so that each phase's origin bytes are
# its own; sets pport to its port. stop_proxy prints the bytes it served.
start_proxy() {
  rm -f "$work/proxy.out"
  build/tests/util/fault_proxy "$port" --rate "$((RATE_MIB << 20))" > "$work/proxy.out" &
  proxy_pid=$!
  for _ in $(seq 200); do grep -q port= "$work/proxy.out" 2>/dev/null && break; sleep 0.05; done
  pport=$(sed -n 's/port=//p' "$work/proxy.out")
}
stop_proxy() {
  kill "$proxy_pid"
  wait "$proxy_pid" 2>/dev/null || true
  sed -n 's/.*body_bytes=//p' "$work/proxy.out" | tail -1
}
# What the running proxy served so far.
proxy_bytes() {
  local before
  before=$(grep -c body_bytes= "$work/proxy.out" || true)
  kill -USR1 "$proxy_pid"
  for _ in $(seq 200); do
    [ "$(grep -c body_bytes= "$work/proxy.out" || true)" -gt "$before" ] && break
    sleep 0.02
  done
  sed -n 's/.*body_bytes=//p' "$work/proxy.out" | tail -1
}

# start_node NAME IP [PEERS]: a node daemon; PEERS empty: no peers.
peer_port=$(free_port)
start_node() {
  local name=$1 ip=$2 peers=${3:-}
  local args=(--log-level warn node --state-dir "$work/$name" --fd-keeper off --metrics-port 0)
  if [ -n "$peers" ]; then
    args+=(--peer-address "$ip:$peer_port" --peers "$peers" --peer-insecure)
  fi
  mkdir -p "$work/$name"
  $strata "${args[@]}" > "$work/$name.log" 2>&1 &
  node_pids+=($!)
  echo $! > "$work/$name.pid"
  for _ in $(seq 600); do grep -qs running "$work/$name.log" && return 0; sleep 0.05; done
  echo "node $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1
}
# Records the peak RSS (KiB) of every node started so far under the phase
# name $1, then stops them all.
stop_nodes() {
  for p in "${node_pids[@]}"; do
    awk -v phase="$1" '/VmHWM/ {print phase, $2}' "/proc/$p/status" >> "$work/rss_kib" 2>/dev/null || true
    kill "$p" 2>/dev/null || true
  done
  for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  node_pids=()
}
prefetch() { $strata prefetch "$1" --node-socket "$work/$2/admin.sock" > /dev/null; }
# Prefetches URL on every NAME at once; prints the seconds until the last.
prefetch_all() {
  local url=$1; shift
  local t0 ps=() n
  t0=$(now)
  for n in "$@"; do prefetch "$url" "$n" & ps+=($!); done
  for p in "${ps[@]}"; do wait "$p"; done
  secs "$t0" "$(now)"
}
peer_list() { local i out=""; for i in "$@"; do out+="${out:+,}127.0.0.$i:$peer_port"; done; echo "$out"; }
metric() { curl -s "http://127.0.0.1:$(sed -n 's/.*metrics on http:\/\/127.0.0.1:\([0-9]*\).*/\1/p' "$work/$1.log")/metrics" | awk -v m="$2" '$1 == m {print $2}'; }
: > "$work/rss_kib"
size=$((SIZE_MIB << 20))

# 1. one node alone, cold, through the throttled origin
start_proxy
start_node alone 127.0.0.1
t_alone=$(prefetch_all "http://127.0.0.1:$pport/model.bin" alone)
stop_proxy > /dev/null
stop_nodes alone

# 2. four nodes without peers
start_proxy
for i in 1 2 3 4; do start_node "solo$i" "127.0.0.$i"; done
t_nopeers=$(prefetch_all "http://127.0.0.1:$pport/model.bin" solo1 solo2 solo3 solo4)
bytes_nopeers=$(stop_proxy)
stop_nodes nopeers

# 2b. what this one machine can do for four nodes: four lone nodes reading
#     the unthrottled loopback origin at once (each writes its own copy to
#     the one disk all of them share here, as they would not in a cluster)
for i in 1 2 3 4; do start_node "bound$i" "127.0.0.$i"; done
drop_caches
t_bound=$(prefetch_all "http://127.0.0.1:$port/model.bin" bound1 bound2 bound3 bound4)
stop_nodes bound

# 3. four nodes with peers (kept for 4.)
start_proxy
list=$(peer_list 1 2 3 4 5)
for i in 1 2 3 4; do start_node "peer$i" "127.0.0.$i" "$list"; done
t_peers=$(prefetch_all "http://127.0.0.1:$pport/model.bin" peer1 peer2 peer3 peer4)
bytes_peers=$(proxy_bytes)

# 4. a fifth node joins the warm four and reads through them (the same
#    origin URL: it is part of the chunk key; the origin only answers its
#    stat); a lone node reads the same from loopback nginx. Both read the
#    file from this machine's one disk and write it to that disk (the same
#    bytes either way, as the disk counters show), and that disk's speed
#    drifts by half between two identical reads. So the two are taken
#    JOIN_SAMPLES times in pairs, the nginx read right after the peer read,
#    each by a fresh node with an empty cache after the page cache is
#    dropped, and peer_vs_nginx is the median of the pairs' ratios (each
#    printed): the two reads of a pair see the disk in about the same state.
stop_one() {  # stop_one NAME PHASE: stops that node alone, recording its peak RSS
  local p
  p=$(cat "$work/$1.pid")
  awk -v phase="$2" '/VmHWM/ {print phase, $2}' "/proc/$p/status" >> "$work/rss_kib" 2>/dev/null || true
  kill "$p"
  wait "$p" 2>/dev/null || true
  rm -rf "${work:?}/$1"
}
joins=()
nginxes=()
# Per chunk: the joiner's wait for a peer's answer (strata_peer_answer_seconds)
# and the lone node's for nginx's (strata_fetch_latency_seconds), in ms.
answer_ms=()
fetch_ms=()
join_disk=()  # disk MiB read/written during each read, and in how many requests
nginx_disk=()
mean_ms() {  # mean_ms NAME HISTOGRAM [LABELS]: the histogram's mean, in ms
  local sum count
  sum=$(metric "$1" "${2}_sum${3:-}")
  count=$(metric "$1" "${2}_count${3:-}")
  awk -v s="$sum" -v c="$count" 'BEGIN {printf "%.1f", (c > 0 ? s / c * 1000 : 0)}'
}
for _ in $(seq "$JOIN_SAMPLES"); do
  start_node peer5 127.0.0.5 "$list"
  drop_caches
  d0=$(disk_sectors "$work")
  joins+=("$(prefetch_all "http://127.0.0.1:$pport/model.bin" peer5)")
  join_disk+=("$(disk_mib "$d0" "$(disk_sectors "$work")")")
  answer_ms+=("$(mean_ms peer5 strata_peer_answer_seconds '{answer="chunk"}')")
  stop_one peer5 peers
  start_node nginxread 127.0.0.6
  drop_caches
  d0=$(disk_sectors "$work")
  nginxes+=("$(prefetch_all "http://127.0.0.1:$port/model.bin" nginxread)")
  nginx_disk+=("$(disk_mib "$d0" "$(disk_sectors "$work")")")
  fetch_ms+=("$(mean_ms nginxread strata_fetch_latency_seconds)")
  stop_one nginxread nginx
done
t_join=$(printf '%s\n' "${joins[@]}" | median)
t_nginx=$(printf '%s\n' "${nginxes[@]}" | median)
pair_ratios=()  # nginx's time / the peer read's, pair by pair
for i in "${!joins[@]}"; do
  pair_ratios+=("$(awk -v g="${nginxes[$i]}" -v j="${joins[$i]}" 'BEGIN {printf "%.3f", g / j}')")
done
peer_vs_nginx=$(printf '%s\n' "${pair_ratios[@]}" | median)
bytes_join=$(( $(stop_proxy) - bytes_peers ))
stop_nodes peers

# 5. the scale run
start_proxy
ids=(); for i in $(seq 11 $((10 + SCALE_NODES))); do ids+=("$i"); done
list=$(peer_list "${ids[@]}")
names=()
for i in "${ids[@]}"; do start_node "scale$i" "127.0.0.$i" "$list"; names+=("scale$i"); done
t_scale=$(prefetch_all "http://127.0.0.1:$pport/scale.bin" "${names[@]}")
bytes_scale=$(stop_proxy)
served=()
for n in "${names[@]}"; do served+=("$(metric "$n" strata_peer_served_chunks_total)"); done
stop_nodes scale

chunks_scale=$(( (SCALE_MIB + 3) / 4 ))
max_served=$(printf '%s\n' "${served[@]}" | sort -g | tail -1)
total_served=$(printf '%s\n' "${served[@]}" | awk '{s += $1} END {print s}')
rss_mib=$(awk '{print $2}' "$work/rss_kib" | sort -n | tail -1 | awk '{printf "%.0f", $1 / 1024}')
rss_by_phase=$(awk '{if ($2 > m[$1]) m[$1] = $2} END {for (p in m) printf "%s %.0f MiB, ", p, m[p] / 1024}' "$work/rss_kib")

echo "origin throttled to $RATE_MIB MiB/s, $SIZE_MIB MiB file"
echo "one node alone: ${t_alone} s"
echo "4 nodes, no peers: ${t_nopeers} s, origin served $bytes_nopeers bytes"
echo "4 nodes, peers: ${t_peers} s, origin served $bytes_peers bytes"
echo "4 nodes, no peers, unthrottled origin (this machine's bound): ${t_bound} s"
echo "5th node from warm peers: ${joins[*]} s, median ${t_join} (origin $bytes_join bytes in all); the same from loopback nginx: ${nginxes[*]} s, median ${t_nginx}"
echo "  per chunk, waiting for a peer's answer: ${answer_ms[*]} ms; for nginx's: ${fetch_ms[*]} ms"
echo "  pair by pair, nginx's time / the peer read's: ${pair_ratios[*]}, median $peer_vs_nginx"
echo "  disk read/written during each, peers: $(printf '%s; ' "${join_disk[@]}")nginx: $(printf '%s; ' "${nginx_disk[@]}")"
echo "$SCALE_NODES nodes, $SCALE_MIB MiB: ${t_scale} s, origin served $bytes_scale bytes; chunks served to peers: max $max_served of $total_served (file: $chunks_scale chunks)"
echo "peak daemon RSS: ${rss_mib} MiB (by phase: ${rss_by_phase%, })"
awk -v size="$size" -v ssize="$((SCALE_MIB << 20))" -v ta="$t_alone" -v tn="$t_nopeers" \
    -v tp="$t_peers" -v bn="$bytes_nopeers" -v bp="$bytes_peers" -v tj="$t_join" \
    -v tg="$t_nginx" -v pvn="$peer_vs_nginx" -v ts="$t_scale" -v bs="$bytes_scale" -v ms="$max_served" \
    -v ts_="$total_served" -v tb="$t_bound" -v r="$rss_mib" -v nodes="$SCALE_NODES" 'BEGIN {
  bound = tb > ta ? tb : ta
  printf "RESULT origin_ratio_peers=%.3f origin_ratio_nopeers=%.3f time_ratio_4nodes=%.2f time_ratio_vs_machine_bound=%.2f time_alone_s=%.1f time_4nodes_peers_s=%.1f time_4nodes_nopeers_s=%.1f machine_bound_s=%.1f peer_vs_nginx=%.2f peer_mibps=%.0f nginx_mibps=%.0f scale_nodes=%d scale_origin_ratio=%.3f scale_max_share=%.3f scale_time_s=%.1f peak_rss_mib=%s\n",
    bp / size, bn / size, tp / ta, tp / bound, ta, tp, tn, tb, pvn, size / 1048576 / tj, size / 1048576 / tg,
    nodes, bs / ssize, ms / ts_, ts, r }'
