#!/usr/bin/env bash
# Builds libfuse (3.17 or later: FUSE passthrough) from the fuse3 source
# package of Debian 13 (trixie), fetched with scripts/fetch-source.sh, and
# installs it as a static library under PREFIX (default .deps/libfuse of
# this repository), where CMake finds it with pkg-config. Idempotent and
# quiet: a prefix that holds a build of that version is left alone.
#   scripts/build-libfuse.sh [PREFIX]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
prefix=${1:-$root/.deps/libfuse}
suite=trixie
min_version=3.17

if [ -f "$prefix/lib/pkgconfig/fuse3.pc" ] &&
  PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --atleast-version="$min_version" fuse3; then
  exit 0
fi
echo "strata: building libfuse from Debian $suite's fuse3 source into $prefix"
src=$("$here/fetch-source.sh" fuse3 "" "$root/.deps" "$suite")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Only the library: fusermount3, mount.fuse3 and the udev rule come from
# Debian 12's fuse3 package (the daemon mounts as root, without them).
meson setup "$work" "$src" --prefix="$prefix" --libdir=lib --buildtype=release \
  -Ddefault_library=static -Db_staticpic=true \
  -Dutils=false -Dexamples=false -Dtests=false >"$work.log" 2>&1 ||
  { cat "$work.log" >&2; rm -f "$work.log"; exit 1; }
ninja -C "$work" install >>"$work.log" 2>&1 || { cat "$work.log" >&2; rm -f "$work.log"; exit 1; }
rm -f "$work.log"
PKG_CONFIG_PATH="$prefix/lib/pkgconfig" pkg-config --atleast-version="$min_version" fuse3 || {
  echo "strata: the libfuse built in $prefix is older than $min_version" >&2
  exit 1
}
