#!/usr/bin/env bash
# Fetches and unpacks a Debian source package into DEST/<package>-<version>
# with `apt-get source`, through a private apt configuration whose archive
# address is read from this machine's own apt sources (the machine's sources
# list is never changed, and no host name is written here). Prints the
# unpacked directory. Idempotent: an unpacked tree is reused.
#   scripts/fetch-source.sh PACKAGE VERSION DEST [SUITE]
# An empty VERSION takes the version SUITE has now (a stable release's
# point updates change the Debian revision, not what is built).
set -euo pipefail
pkg=$1 version=$2 dest=$3
suite=${4:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
tree_of() {
  local upstream=${1#*:}
  echo "$dest/$pkg-${upstream%-*}"
}
if [ -n "$version" ] && [ -f "$(tree_of "$version")/.strata-fetched" ]; then
  tree_of "$version"
  exit 0
fi

# The archive this machine installs Debian from: deb822 sources first, then
# the one-line format.
uri=""
for f in /etc/apt/sources.list.d/*.sources; do
  [ -f "$f" ] || continue
  uri=$(awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) {print $i; exit}}' "$f")
  [ -n "$uri" ] && break
done
if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
  uri=$(sed -E 's/\[[^]]*\]//' /etc/apt/sources.list |
    awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}')
fi
if [ -z "$uri" ]; then
  echo "fetch-source: no Debian archive found in this machine's apt sources" >&2
  exit 1
fi

apt_dir=$(mktemp -d)
trap 'rm -rf "$apt_dir"' EXIT
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
  "$uri" "$suite" >"$apt_dir/parts/strata-src.sources"
opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/parts"
  -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache=$apt_dir/cache"
  -o APT::Sandbox::User=root -qq)
apt-get "${opts[@]}" update >/dev/null
if [ -z "$version" ]; then
  version=$(apt-cache "${opts[@]}" showsrc "$pkg" | awk '/^Version:/ {print $2; exit}')
  if [ -z "$version" ]; then
    echo "fetch-source: $suite has no source package $pkg" >&2
    exit 1
  fi
fi
upstream=${version#*:}
upstream=${upstream%-*}
tree=$(tree_of "$version")
if [ -f "$tree/.strata-fetched" ]; then
  echo "$tree"
  exit 0
fi
mkdir -p "$dest"
work=$(mktemp -d "$dest/.fetch.XXXXXX")
(cd "$work" && apt-get "${opts[@]}" source "$pkg=$version" >/dev/null 2>&1) || {
  rm -rf "$work"
  echo "fetch-source: apt-get source $pkg=$version failed" >&2
  exit 1
}
rm -rf "$tree"
mv "$work/$pkg-$upstream" "$tree"
rm -rf "$work"
touch "$tree/.strata-fetched"
echo "$tree"
