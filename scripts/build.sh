#!/usr/bin/env bash
# Configures and builds Strata with Ninja and ccache.
#   scripts/build.sh            release build in build/
#   scripts/build.sh asan       ASan + UBSan build in build-asan/
#   scripts/build.sh tsan       ThreadSanitizer build of the libraries and their
#                               in-process tests in build-tsan/ (with abseil
#                               built from Debian's source package, see
#                               STRATA_TSAN in CMakeLists.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
kind=${1:-release}
case "$kind" in
  release) dir=build; flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo) ;;
  asan) dir=build-asan; flags=(-DCMAKE_BUILD_TYPE=Debug -DSTRATA_SANITIZE=ON) ;;
  tsan)
    absl=$(scripts/fetch-source.sh abseil "$(dpkg-query -W -f='${Version}' libabsl-dev)" "$PWD/.deps")
    dir=build-tsan
    flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DSTRATA_TSAN=ON "-DSTRATA_ABSL_SOURCE=$absl") ;;
  *) echo "usage: $0 [release|asan|tsan]" >&2; exit 2 ;;
esac
if [ ! -f "$dir/build.ninja" ]; then
  cmake -S . -B "$dir" -G Ninja "${flags[@]}" >/dev/null
fi
ninja -C "$dir" --quiet
