#!/usr/bin/env bash
# Test fixture: a private containerd (Debian's 1.6) with everything it keeps
# under one directory, optionally with proxy snapshotters and the CRI plugin.
#
#   containerd.sh start DIR [--proxy-snapshotter NAME=SOCKET]... [--cri]
#                 [--registry HOST:PORT]...
#       Writes DIR/config.toml, starts containerd in the background, waits
#       (30 s at most) until `ctr version` answers and prints its pid.
#         --proxy-snapshotter  a [proxy_plugins.NAME] snapshotter at SOCKET
#                              (may be up later: containerd dials lazily)
#         --cri                keep the CRI plugin (disabled otherwise); its
#                              snapshotter is the first proxy's NAME (else
#                              overlayfs), with snapshot annotations on
#         --registry H:P       DIR/certs.d/H:P/hosts.toml: plain HTTP, pull,
#                              resolve and push (the CRI plugin's config_path;
#                              for ctr pass --hosts-dir DIR/certs.d)
#   containerd.sh stop DIR
#       Kills and removes every task and container in every namespace, stops
#       containerd (TERM, KILL after 10 s), kills shims left for DIR and their
#       containers, removes their sockets from /run/containerd/s and the
#       per-namespace cgroups that appeared, lazily unmounts whatever is
#       mounted under DIR (umount -l -n: -n keeps util-linux from making
#       /run/mount). Idempotent; every step that could block has a timeout.
#       Images and content are kept.
#   containerd.sh ctr DIR ARG...
#       Runs ctr against DIR's containerd. For `run`, `containers create`,
#       `tasks start` and `tasks exec` it adds --runc-root DIR/runc and/or
#       --fifo-dir DIR/fifo, so runc state and IO fifos stay under DIR too.
#   containerd.sh install
#       Only installs what is missing (containerd, runc).
#
# Paths: root DIR/root, state DIR/state, grpc DIR/containerd.sock, ttrpc
# DIR/containerd.sock.ttrpc (<= 107 bytes, the unix socket limit, else start
# fails), opt plugin DIR/opt, temp DIR/tmp, runc v1 root DIR/runc-v1, CRI's
# runc root DIR/runc, CRI CNI dirs DIR/cni/{bin,net.d}, CRI netns under
# DIR/state. Debug and metrics listeners are off. One path is fixed in
# containerd 1.6 and cannot be moved: each runc-v2 shim listens on
# /run/containerd/s/<sha256(DIR/containerd.sock/NS/ID)>; stop removes those of
# DIR's shims (and the directories if this fixture created them).
# Plain `ctr run` without --runc-root would keep runc state in
# /run/containerd/runc and fifos in /run/containerd/fifo: use `containerd.sh ctr`.
#
# runc (ctr's default cgroups path /NS/ID) leaves /sys/fs/cgroup/[CTRL/]NS
# behind; stop removes the empty ones that were not there at start.
#
# Files in DIR: config.toml, containerd.log, containerd.pid, made_run_dirs
# (the /run/containerd dirs this fixture created), cgroups_before, certs.d/,
# root/, state/, runc/, fifo/, opt/, tmp/, cni/.
set -euo pipefail

die() { echo "containerd.sh: $*" >&2; exit 1; }

# shellcheck source=tests/util/fixture_lib.sh
. "$(dirname "$0")/fixture_lib.sh"

SHIM_SOCKET_DIR=/run/containerd/s   # fixed in containerd 1.6 (shim.SocketAddress)
SOCK_MAX=107                         # sizeof(sockaddr_un.sun_path) - 1

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# ctr against DIR's socket; bounded.
ctrd() {  # DIR ARG...
  local d=$1; shift
  timeout -k 5 20 ctr --address "$d/containerd.sock" "$@"
}

# --- start -------------------------------------------------------------------
cmd_start() {
  [ $# -ge 1 ] || die "usage: containerd.sh start DIR [--proxy-snapshotter NAME=SOCKET]... [--cri] [--registry HOST:PORT]..."
  local dir=$1 cri=0 p
  local proxies=() registries=()
  shift
  while [ $# -gt 0 ]; do
    case $1 in
      --proxy-snapshotter)
        [ $# -ge 2 ] || die "--proxy-snapshotter needs NAME=SOCKET"
        [[ $2 =~ ^[A-Za-z0-9_.-]+=/.+ ]] || die "--proxy-snapshotter wants NAME=/abs/socket, got $2"
        proxies+=("$2"); shift 2 ;;
      --cri) cri=1; shift ;;
      --registry)
        [ $# -ge 2 ] || die "--registry needs HOST:PORT"
        [[ $2 =~ ^[A-Za-z0-9.-]+:[0-9]+$ ]] || die "--registry wants HOST:PORT, got $2"
        registries+=("$2"); shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  ensure_packages containerd runc

  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local sock=$dir/containerd.sock
  [ ${#sock} -le $((SOCK_MAX - 6)) ] ||
    die "socket path $sock.ttrpc is $((${#sock} + 6)) bytes; unix sockets allow $SOCK_MAX: use a shorter DIR"
  for p in "${proxies[@]}"; do
    p=${p#*=}
    [ ${#p} -le $SOCK_MAX ] || die "proxy socket $p is ${#p} bytes; unix sockets allow $SOCK_MAX"
  done
  if [ -f "$dir/containerd.pid" ] && pid_alive "$(cat "$dir/containerd.pid")"; then
    die "a containerd already runs from $dir (pid $(cat "$dir/containerd.pid")); stop it first"
  fi
  [ -S "$sock" ] && ! timeout 5 ctr --address "$sock" version >/dev/null 2>&1 && rm -f "$sock" "$sock.ttrpc"
  [ -S "$sock" ] && die "something already answers on $sock"

  mkdir -p "$dir/root" "$dir/state" "$dir/opt" "$dir/tmp" "$dir/runc" "$dir/runc-v1" "$dir/fifo"

  local disabled='"io.containerd.grpc.v1.cri"'
  [ "$cri" -eq 1 ] && disabled=''
  {
    cat <<EOF
# Written by tests/util/containerd.sh
version = 2
root = "$dir/root"
state = "$dir/state"
temp = "$dir/tmp"
plugin_dir = ""
disabled_plugins = [$disabled]
required_plugins = []
oom_score = 0

[grpc]
  address = "$sock"
  tcp_address = ""

[ttrpc]
  address = "$sock.ttrpc"

[debug]
  address = ""
  level = "${CONTAINERD_FIXTURE_LOG_LEVEL:-info}"

[metrics]
  address = ""

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "$dir/opt"
  [plugins."io.containerd.runtime.v1.linux"]
    runtime_root = "$dir/runc-v1"
EOF
    if [ "$cri" -eq 1 ]; then
      local sn=overlayfs
      [ ${#proxies[@]} -gt 0 ] && sn=${proxies[0]%%=*}
      mkdir -p "$dir/cni/bin" "$dir/cni/net.d" "$dir/certs.d"
      cat <<EOF
  [plugins."io.containerd.grpc.v1.cri"]
    netns_mounts_under_state_dir = true
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "$dir/cni/bin"
      conf_dir = "$dir/cni/net.d"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "$sn"
      disable_snapshot_annotations = false
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          Root = "$dir/runc"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "$dir/certs.d"
EOF
    fi
    for p in "${proxies[@]}"; do
      printf '\n[proxy_plugins."%s"]\n  type = "snapshot"\n  address = "%s"\n' "${p%%=*}" "${p#*=}"
    done
  } >"$dir/config.toml"

  for p in "${registries[@]}"; do
    mkdir -p "$dir/certs.d/$p"
    cat >"$dir/certs.d/$p/hosts.toml" <<EOF
server = "http://$p"

[host."http://$p"]
  capabilities = ["pull", "resolve", "push"]
  skip_verify = true
EOF
  done

  # Remember which of the shims' fixed directories did not exist before, so
  # that stop can remove them again when they are empty.
  local d
  for d in /run/containerd "$SHIM_SOCKET_DIR"; do
    [ -e "$d" ] || grep -qxF "$d" "$dir/made_run_dirs" 2>/dev/null || echo "$d" >>"$dir/made_run_dirs"
  done

  # Likewise the top-level cgroups runc makes per namespace (/sys/fs/cgroup/[CTRL/]NS).
  [ -f "$dir/cgroups_before" ] ||
    find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d 2>/dev/null | sort >"$dir/cgroups_before"

  setsid containerd --config "$dir/config.toml" </dev/null >>"$dir/containerd.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/containerd.pid"
  local _
  for _ in $(seq 1 300); do
    if ! pid_alive "$pid"; then
      tail -n 20 "$dir/containerd.log" >&2
      rm -f "$dir/containerd.pid"
      die "containerd exited during start (log: $dir/containerd.log)"
    fi
    if timeout 2 ctr --address "$sock" version >/dev/null 2>&1; then
      echo "$pid"; return 0
    fi
    sleep 0.1
  done
  stop_pidfile "$dir/containerd.pid"
  die "containerd did not answer on $sock within 30 s (log: $dir/containerd.log)"
}

# --- stop --------------------------------------------------------------------
shim_pids() {  # DIR: pids of runc-v2 shims whose -address is DIR's socket
  local sock=$1/containerd.sock f pid args
  for f in /proc/[0-9]*/cmdline; do
    pid=${f#/proc/}; pid=${pid%/cmdline}
    args=$(tr '\0' '\n' <"$f" 2>/dev/null) || continue
    case $args in *containerd-shim*) ;; *) continue ;; esac
    printf '%s\n' "$args" | grep -qxF -- "$sock" && echo "$pid"
  done
  return 0
}

shim_arg() {  # PID FLAG: the value after FLAG in the shim's command line
  tr '\0' '\n' <"/proc/$1/cmdline" 2>/dev/null | sed -n "/^$2\$/{n;p;q}"
}

children_of() {  # PID
  local f
  for f in /proc/[0-9]*/stat; do
    # field 4 is the parent pid; comm (field 2) may hold spaces, so cut after ')'
    [ "$(sed 's/.*) //' "$f" 2>/dev/null | cut -d' ' -f2)" = "$1" ] && { f=${f#/proc/}; echo "${f%/stat}"; }
  done
  return 0
}

kill_shims() {  # DIR
  local dir=$1 pid ns id kid hash
  for pid in $(shim_pids "$dir"); do
    ns=$(shim_arg "$pid" -namespace); id=$(shim_arg "$pid" -id)
    # The container's init (and so its pid namespace) is a child of the shim.
    for kid in $(children_of "$pid"); do kill -9 "$kid" 2>/dev/null || true; done
    kill -9 "$pid" 2>/dev/null || true
    if [ -n "$ns" ] && [ -n "$id" ]; then
      hash=$(printf '%s' "$dir/containerd.sock/$ns/$id" | sha256sum | cut -d' ' -f1)
      rm -f "$SHIM_SOCKET_DIR/$hash"
    fi
  done
}

# Removes the shim sockets of containers DIR's containerd knew (a shim that
# exited cleanly removes its own; one killed does not).
# rmdir's the per-namespace cgroups that appeared while DIR's containerd ran
# (only empty ones can go: rmdir fails on a cgroup with tasks or children).
remove_ns_cgroups() {  # DIR NS...
  local dir=$1 ns c; shift
  [ -f "$dir/cgroups_before" ] || return 0
  for ns in "$@"; do
    for c in /sys/fs/cgroup/"$ns" /sys/fs/cgroup/*/"$ns"; do
      [ -d "$c" ] || continue
      grep -qxF "$c" "$dir/cgroups_before" || rmdir "$c" 2>/dev/null || true
    done
  done
}

remove_shim_sockets() {  # DIR
  local dir=$1 t ns id hash
  [ -d "$dir/state/io.containerd.runtime.v2.task" ] || return 0
  for t in "$dir"/state/io.containerd.runtime.v2.task/*/*; do
    [ -d "$t" ] || continue
    id=${t##*/}; ns=${t%/*}; ns=${ns##*/}
    hash=$(printf '%s' "$dir/containerd.sock/$ns/$id" | sha256sum | cut -d' ' -f1)
    rm -f "$SHIM_SOCKET_DIR/$hash"
  done
}

kill_runc_containers() {  # DIR: whatever runc still tracks under DIR/runc*
  local dir=$1 root id
  for root in "$dir"/runc/* "$dir"/runc-v1/*; do
    [ -d "$root" ] || continue
    for id in "$root"/*; do
      [ -f "$id/state.json" ] || continue
      timeout -k 2 10 runc --root "$root" kill "${id##*/}" KILL >/dev/null 2>&1 || true
      timeout -k 2 10 runc --root "$root" delete -f "${id##*/}" >/dev/null 2>&1 || true
    done
  done
}

unmount_under() {  # DIR: lazily, deepest first
  local dir=$1 mp _
  for _ in 1 2 3; do
    local mps=()
    while IFS= read -r mp; do
      mp=$(printf '%b' "$mp")   # mountinfo escapes space, tab, newline, backslash in octal
      case $mp in "$dir"/*) mps+=("$mp") ;; esac
    done < <(awk '{print $5}' /proc/self/mountinfo)
    [ ${#mps[@]} -eq 0 ] && return 0
    printf '%s\n' "${mps[@]}" | awk -F/ '{print NF "\t" $0}' | sort -rn | cut -f2- |
      while IFS= read -r mp; do timeout -k 2 10 umount -l -n "$mp" 2>/dev/null || true; done
  done
  return 0
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: containerd.sh stop DIR"
  [ -d "$1" ] || return 0
  local dir ns t c nss=()
  dir=$(cd "$1" && pwd)
  if [ -f "$dir/containerd.pid" ] && pid_alive "$(cat "$dir/containerd.pid")" &&
     timeout 5 ctr --address "$dir/containerd.sock" version >/dev/null 2>&1; then
    for ns in $(ctrd "$dir" namespaces ls -q 2>/dev/null || true); do
      nss+=("$ns")
      for t in $(ctrd "$dir" -n "$ns" tasks ls -q 2>/dev/null || true); do
        ctrd "$dir" -n "$ns" tasks kill -a -s KILL "$t" >/dev/null 2>&1 || true
      done
      for t in $(ctrd "$dir" -n "$ns" tasks ls -q 2>/dev/null || true); do
        ctrd "$dir" -n "$ns" tasks rm -f "$t" >/dev/null 2>&1 || true
      done
      for c in $(ctrd "$dir" -n "$ns" containers ls -q 2>/dev/null || true); do
        ctrd "$dir" -n "$ns" containers rm "$c" >/dev/null 2>&1 || true
      done
    done
  fi
  stop_pidfile "$dir/containerd.pid"
  kill_shims "$dir"
  kill_runc_containers "$dir"
  remove_shim_sockets "$dir"
  unmount_under "$dir"
  for t in "$dir"/state/io.containerd.runtime.v2.task/* "$dir"/runc/*; do
    [ -d "$t" ] && nss+=("${t##*/}")
  done
  [ ${#nss[@]} -eq 0 ] || remove_ns_cgroups "$dir" "${nss[@]}"
  rm -f "$dir/containerd.sock" "$dir/containerd.sock.ttrpc"
  # The fixed /run/containerd dirs, when this fixture made them and they are empty.
  if [ -f "$dir/made_run_dirs" ]; then
    local d
    for d in "$SHIM_SOCKET_DIR" /run/containerd; do
      grep -qxF "$d" "$dir/made_run_dirs" && rmdir "$d" 2>/dev/null || true
    done
    [ -e /run/containerd ] || rm -f "$dir/made_run_dirs"
  fi
  return 0
}

# --- ctr -----------------------------------------------------------------------
cmd_ctr() {
  [ $# -ge 1 ] || die "usage: containerd.sh ctr DIR ARG..."
  local dir
  dir=$(cd "$1" && pwd) || die "no directory $1"
  shift
  # Global flags before the command (e.g. -n NS) are passed through as they are.
  local pre=() a
  while [ $# -gt 0 ]; do
    case $1 in
      -n|--namespace|--timeout|--connect-timeout) pre+=("$1" "${2:-}"); shift 2 || shift ;;
      -*) pre+=("$1"); shift ;;
      *) break ;;
    esac
  done
  local cmd=() extra=()
  case ${1:-} in
    run) cmd=(run); extra=(--runc-root "$dir/runc" --fifo-dir "$dir/fifo"); shift ;;
    c|container|containers)
      if [ "${2:-}" = create ]; then cmd=("$1" create); extra=(--runc-root "$dir/runc"); shift 2; fi ;;
    t|task|tasks)
      case ${2:-} in
        start|exec) cmd=("$1" "$2"); extra=(--fifo-dir "$dir/fifo"); shift 2 ;;
      esac ;;
  esac
  a=("${pre[@]}" "${cmd[@]}" "${extra[@]}" "$@")
  exec ctr --address "$dir/containerd.sock" "${a[@]}"
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  ctr) shift; cmd_ctr "$@" ;;
  install) ensure_packages containerd runc ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
