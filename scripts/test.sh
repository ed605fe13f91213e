#!/usr/bin/env bash
# The whole test suite from a fresh Debian 12 machine: installs what is
# missing, builds (release, ASan+UBSan, and TSan for the libraries' own
# tests), checks formatting and runs every test. Exits non-zero on any
# failure.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh

echo "== format"
files=$(git ls-files '*.cc' '*.h' 2>/dev/null || find . -name '*.cc' -o -name '*.h')
if ! clang-format --dry-run --Werror $files; then
  echo "clang-format: the files above are not formatted (run: clang-format -i \$(git ls-files '*.cc' '*.h'))" >&2
  exit 1
fi

echo "== build (release)"
scripts/build.sh release
echo "== tests (release)"
(cd build && ctest --output-on-failure --timeout 600 -j2)

echo "== build (asan+ubsan)"
scripts/build.sh asan
echo "== tests (asan+ubsan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --output-on-failure --timeout 900 -j2)

echo "== build (tsan)"
scripts/build.sh tsan
echo "== tests (tsan: origins, store, fetcher, volume trees, FD keeper)"
(cd build-tsan && TSAN_OPTIONS="suppressions=$PWD/../tests/tsan.supp halt_on_error=1 second_deadlock_stack=1" \
  ctest --output-on-failure --timeout 900 -j2)
