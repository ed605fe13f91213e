#!/usr/bin/env bash
# Strata's main job on a fresh Debian 12 machine (as root): installs what is
# missing, builds, and mounts a demo volume -- a local origin directory with
# sample files -- through the node-local chunk cache, in the foreground.
#   scripts/run.sh                 # Ctrl-C unmounts and stops
#   STATE_DIR=/srv/strata scripts/run.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release

state=${STATE_DIR:-/var/lib/strata}
origin="$state/demo-origin"
mnt=${DEMO_MOUNT:-/mnt/strata-demo}
mkdir -p "$origin/models/tiny-llm" "$origin/datasets/shards" "$mnt"

# Sample files, made once: a model's weights and config, a few dataset shards.
if [ ! -f "$origin/README.txt" ]; then
  cat > "$origin/README.txt" <<TXT
This directory is the origin of Strata's demo volume. Reads of the mount
go through the node-local chunk cache in $state/cache; writes go through to
this directory. Try:
  ls -l $mnt/models/tiny-llm
  sha256sum $mnt/models/tiny-llm/weights.bin $origin/models/tiny-llm/weights.bin
  curl -s http://127.0.0.1:9464/metrics | grep strata_read
TXT
  head -c $((64 << 20)) /dev/urandom > "$origin/models/tiny-llm/weights.bin"
  printf '{"layers": 4, "hidden": 256, "vocab": 32000}\n' > "$origin/models/tiny-llm/config.json"
  for i in 0 1 2 3; do head -c $((8 << 20)) /dev/urandom > "$origin/datasets/shards/shard-00$i.bin"; done
fi

# A mount left behind by a daemon that was killed is detached first.
if grep -q " $mnt fuse.strata " /proc/mounts; then build/cmd/strata unmount "$mnt"; fi

echo "demo origin: $origin"
echo "mount:       $mnt   (ls $mnt; cat $mnt/README.txt)"
echo "stop:        Ctrl-C here, or: kill -TERM <pid>; a dead mount: build/cmd/strata unmount $mnt"
exec build/cmd/strata mount "file://$origin" "$mnt" --cache-dir "$state/cache" --metrics-port "${METRICS_PORT:-9464}"
