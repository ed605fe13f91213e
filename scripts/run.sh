#!/usr/bin/env bash
# Installs what is missing, builds, and runs Strata's node daemon on its
# embedded defaults (state in /var/lib/strata as root). Ctrl-C stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
scripts/build.sh release
exec build/cmd/strata node "$@"
