#!/usr/bin/env bash
# Installs, from Debian 12's own archive, every package Strata builds, tests
# and benchmarks with, and builds libfuse 3.17+ from Debian 13's source
# package (scripts/build-libfuse.sh). Idempotent and silent when nothing is
# missing.
set -euo pipefail

PACKAGES=(
  build-essential cmake ninja-build ccache pkg-config clang-format
  libabsl-dev libspdlog-dev libcli11-dev nlohmann-json3-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  liburing-dev librocksdb-dev libxxhash-dev libzstd-dev zlib1g-dev
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  fuse3 libcurl4-openssl-dev libssl-dev
  # libfuse 3.17+ is built from source (FUSE passthrough): see build-libfuse.sh
  meson dpkg-dev
  fio procps util-linux curl time bc
  # a test holds a daemon at one syscall (strace fault injection)
  strace
  # servers the integration tests and benchmarks run on 127.0.0.1
  nginx-light docker-registry skopeo apache2-utils openssl python3 nodejs npm
  # tests/deploy/manifest_test.py parses the Kubernetes manifests
  python3-yaml
  # the snapshotter's tests: a real containerd with runc, images made by
  # ordinary tools (umoci, ctr-remote of the stargz-snapshotter package)
  containerd runc stargz-snapshotter busybox-static umoci
)

here=$(cd "$(dirname "$0")" && pwd)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm may already come with the machine's own Node.js (not from apt).
if command -v npm >/dev/null 2>&1; then
  missing=("${missing[@]/nodejs}")
  missing=("${missing[@]/npm}")
  read -r -a missing <<<"${missing[*]}"
fi
if [ ${#missing[@]} -eq 0 ]; then
  "$here/build-libfuse.sh"
  exec "$here/../tests/util/s3_server.sh" install
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "strata: missing packages: ${missing[*]}; run this script as root (or with sudo)" >&2
  exit 1
fi
echo "strata: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
# Packages such as nginx and docker-registry start a system service when
# installed; the tests start their own on 127.0.0.1, so keep those off.
made_policy=0
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
  made_policy=1
fi
trap '[ "$made_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
"$here/build-libfuse.sh"
"$here/../tests/util/s3_server.sh" install
