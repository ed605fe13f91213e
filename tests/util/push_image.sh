#!/usr/bin/env bash
# Test fixture: builds a one-layer OCI image from a directory, by hand (no
# Docker), and pushes it to a registry on 127.0.0.1.
#
#   push_image.sh REGISTRY REPO:TAG SRC_DIR [--creds USER:PASS] [--gzip]
#                 [--curl | --skopeo] [--layout DIR]
#
#   REGISTRY   host:port, plain HTTP (e.g. 127.0.0.1:5000)
#   --creds    Basic creds for the registry, or for its token server when the
#              registry asks for a Bearer token
#   --gzip     the layer is tar+gzip (application/vnd.oci.image.layer.v1.tar+gzip);
#              default is an uncompressed tar (application/vnd.oci.image.layer.v1.tar)
#   --curl     push with curl through the distribution API (the default)
#   --skopeo   push with `skopeo copy --all --preserve-digests` from the OCI layout
#   --layout   keep the OCI image layout in DIR (default: a temp dir, removed)
#   --modelpack  a ModelPack-style model artifact instead of an image: each
#              regular file of SRC_DIR is a raw layer
#              (application/vnd.cncf.model.weight.v1.raw) annotated with its
#              path (org.cncf.model.filepath), the config is
#              application/vnd.cncf.model.config.v1+json
#
# The tag names an image index (application/vnd.oci.image.index.v1+json) with
# one entry, platform linux/amd64, pointing at the image manifest
# (application/vnd.oci.image.manifest.v1+json); clients must resolve
# index -> manifest -> layer. The tar is reproducible (sorted names, mtime 0,
# uid/gid 0, ustar/pax), so the same SRC_DIR gives the same digests.
#
# Prints, one per line:  index=sha256:...  manifest=sha256:...
#   config=sha256:...  layer=sha256:...  layer_size=N  layer_media_type=...
#   diff_id=sha256:...  manifest_size=N  index_size=N
set -euo pipefail

die() { echo "push_image.sh: $*" >&2; exit 1; }

MT_INDEX=application/vnd.oci.image.index.v1+json
MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_CONFIG=application/vnd.oci.image.config.v1+json

# shellcheck source=tests/util/fixture_lib.sh
. "$(dirname "$0")/fixture_lib.sh"

[ $# -ge 3 ] || { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
REG=$1 REF=$2 SRC=$3
shift 3
CREDS="" GZIP=0 METHOD=curl LAYOUT="" MODELPACK=0
while [ $# -gt 0 ]; do
  case $1 in
    --creds) [ $# -ge 2 ] || die "--creds needs USER:PASS"; CREDS=$2; shift 2 ;;
    --gzip) GZIP=1; shift ;;
    --curl) METHOD=curl; shift ;;
    --skopeo) METHOD=skopeo; shift ;;
    --layout) [ $# -ge 2 ] || die "--layout needs DIR"; LAYOUT=$2; shift 2 ;;
    --modelpack) MODELPACK=1; shift ;;
    *) die "unknown option $1" ;;
  esac
done
[[ $REF == *:* ]] || die "want REPO:TAG, got $REF"
REPO=${REF%:*} TAG=${REF##*:}
[[ $TAG =~ ^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$ ]] || die "bad tag $TAG"
[[ $REPO =~ ^[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*$ ]] || die "bad repository name $REPO"
[ -d "$SRC" ] || die "$SRC is not a directory"

pkgs=(curl tar gzip coreutils findutils)
[ "$METHOD" = skopeo ] && pkgs+=(skopeo)
ensure_packages "${pkgs[@]}"

if [ -n "$LAYOUT" ]; then
  rm -rf "$LAYOUT"; mkdir -p "$LAYOUT"; L=$(cd "$LAYOUT" && pwd)
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
else
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
  L=$WORK/layout; mkdir -p "$L"
fi
B=$L/blobs/sha256
mkdir -p "$B"

sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }
put_blob() {  # FILE -> moves it into blobs/sha256, prints the hex digest
  local h; h=$(sha "$1"); mv -f "$1" "$B/$h"; echo "$h"
}

# --- layer ---------------------------------------------------------------
LAYERS_JSON="" PUSH_LAYERS=()
if [ "$MODELPACK" -eq 1 ]; then
  DIFF_IDS=""
  while IFS= read -r -d '' rel; do
    [[ $rel =~ ^[A-Za-z0-9._/-]+$ ]] || die "file name '$rel' needs JSON escaping; not supported"
    cp "$SRC/$rel" "$WORK/raw.blob"
    rs=$(size "$WORK/raw.blob"); rh=$(put_blob "$WORK/raw.blob")
    LAYERS_JSON+="${LAYERS_JSON:+,}{\"mediaType\":\"application/vnd.cncf.model.weight.v1.raw\",\"digest\":\"sha256:$rh\",\"size\":$rs,\"annotations\":{\"org.cncf.model.filepath\":\"$rel\"}}"
    DIFF_IDS+="${DIFF_IDS:+,}\"sha256:$rh\""
    PUSH_LAYERS+=("$rh")
    [ -n "${LAYER:-}" ] || { LAYER=$rh LAYER_SIZE=$rs DIFF_ID=$rh; }
  done < <(cd "$SRC" && find . -type f -printf '%P\0' | LC_ALL=C sort -z)
  [ ${#PUSH_LAYERS[@]} -gt 0 ] || die "$SRC holds no files"
  LAYER_MT=application/vnd.cncf.model.weight.v1.raw
  MT_CONFIG=application/vnd.cncf.model.config.v1+json
  printf '{"descriptor":{"name":"strata-test"},"config":{},"modelfs":{"type":"layers","diffIds":[%s]}}' \
    "$DIFF_IDS" >"$WORK/config.json"
else
(cd "$SRC" && find . -mindepth 1 -printf '%P\0' | LC_ALL=C sort -z |
  tar --null --verbatim-files-from --no-recursion -T - \
      --format=posix --pax-option=delete=atime,delete=ctime \
      --mtime=@0 --owner=0 --group=0 --numeric-owner -cf -) >"$WORK/layer.tar"
DIFF_ID=$(sha "$WORK/layer.tar")
if [ "$GZIP" -eq 1 ]; then
  gzip -n -6 -c "$WORK/layer.tar" >"$WORK/layer.blob"; rm -f "$WORK/layer.tar"
  LAYER_MT=application/vnd.oci.image.layer.v1.tar+gzip
else
  mv "$WORK/layer.tar" "$WORK/layer.blob"
  LAYER_MT=application/vnd.oci.image.layer.v1.tar
fi
LAYER_SIZE=$(size "$WORK/layer.blob")
LAYER=$(put_blob "$WORK/layer.blob")
LAYERS_JSON="{\"mediaType\":\"$LAYER_MT\",\"digest\":\"sha256:$LAYER\",\"size\":$LAYER_SIZE}"
PUSH_LAYERS=("$LAYER")

# --- config, manifest, index -------------------------------------------------
printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created_by":"strata tests/util/push_image.sh"}]}' \
  "$DIFF_ID" >"$WORK/config.json"
fi
CONFIG_SIZE=$(size "$WORK/config.json")
CONFIG=$(put_blob "$WORK/config.json")

printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"%s","digest":"sha256:%s","size":%s},"layers":[%s]}' \
  "$MT_MANIFEST" "$MT_CONFIG" "$CONFIG" "$CONFIG_SIZE" "$LAYERS_JSON" >"$WORK/manifest.json"
MANIFEST_SIZE=$(size "$WORK/manifest.json")
MANIFEST=$(put_blob "$WORK/manifest.json")

printf '{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s,"platform":{"architecture":"amd64","os":"linux"}}]}' \
  "$MT_INDEX" "$MT_MANIFEST" "$MANIFEST" "$MANIFEST_SIZE" >"$WORK/index.json"
INDEX_SIZE=$(size "$WORK/index.json")
INDEX=$(put_blob "$WORK/index.json")

# The layout's own index.json names the image index by tag.
printf '{"imageLayoutVersion":"1.0.0"}' >"$L/oci-layout"
printf '{"schemaVersion":2,"mediaType":"%s","manifests":[{"mediaType":"%s","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
  "$MT_INDEX" "$MT_INDEX" "$INDEX" "$INDEX_SIZE" "$TAG" >"$L/index.json"

# --- push ------------------------------------------------------------------
BASE=http://$REG/v2/$REPO
AUTH=()   # curl arguments carrying the credentials

resolve_auth() {
  local hdrs chal realm service scheme url tok
  hdrs=$(curl -s -D - -o /dev/null --max-time 10 "http://$REG/v2/") || die "cannot reach $REG"
  case $(printf '%s' "$hdrs" | sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p') in
    401) ;;
    200) return 0 ;;  # anonymous
    *) die "unexpected answer to GET http://$REG/v2/: $(printf '%s' "$hdrs" | head -1)" ;;
  esac
  chal=$(printf '%s' "$hdrs" | tr -d '\r' | sed -n 's/^[Ww][Ww][Ww]-[Aa]uthenticate: *//p' | head -1)
  scheme=${chal%% *}
  case $scheme in
    Basic)
      [ -n "$CREDS" ] || die "$REG wants Basic auth; pass --creds USER:PASS"
      AUTH=(-u "$CREDS") ;;
    Bearer)
      realm=$(printf '%s' "$chal" | sed -n 's/.*realm="\([^"]*\)".*/\1/p')
      service=$(printf '%s' "$chal" | sed -n 's/.*service="\([^"]*\)".*/\1/p')
      [ -n "$realm" ] || die "no realm in challenge: $chal"
      url="$realm?service=$service&scope=repository:$REPO:pull,push"
      local cred=(); [ -n "$CREDS" ] && cred=(-u "$CREDS")
      tok=$(curl -sf --max-time 10 "${cred[@]}" "$url") || die "token server refused: GET $url"
      tok=$(printf '%s' "$tok" | sed -n 's/.*"token" *: *"\([^"]*\)".*/\1/p')
      [ -n "$tok" ] || die "no token in the token server's answer"
      AUTH=(-H "Authorization: Bearer $tok") ;;
    *) die "unknown auth challenge: $chal" ;;
  esac
}

push_blob() {  # HEX
  local h=$1 st loc sep
  st=$(curl -s -o /dev/null -w '%{http_code}' -I "${AUTH[@]}" "$BASE/blobs/sha256:$h")
  [ "$st" = 200 ] && return 0
  loc=$(curl -s -D - -o /dev/null -X POST "${AUTH[@]}" "$BASE/blobs/uploads/" |
    tr -d '\r' | sed -n 's/^[Ll]ocation: *//p')
  [ -n "$loc" ] || die "POST $BASE/blobs/uploads/ gave no Location"
  case $loc in /*) loc=http://$REG$loc ;; esac
  case $loc in *\?*) sep='&' ;; *) sep='?' ;; esac
  st=$(curl -s -o "$WORK/resp" -w '%{http_code}' -X PUT "${AUTH[@]}" \
    -H 'Content-Type: application/octet-stream' --data-binary "@$B/$h" "$loc${sep}digest=sha256:$h")
  [ "$st" = 201 ] || die "blob upload sha256:$h: HTTP $st $(cat "$WORK/resp")"
}

push_manifest() {  # HEX MEDIATYPE REFERENCE
  local st got
  st=$(curl -s -D "$WORK/hdr" -o "$WORK/resp" -w '%{http_code}' -X PUT "${AUTH[@]}" \
    -H "Content-Type: $2" --data-binary "@$B/$1" "$BASE/manifests/$3")
  [ "$st" = 201 ] || die "manifest PUT $3: HTTP $st $(cat "$WORK/resp")"
  got=$(tr -d '\r' <"$WORK/hdr" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')
  [ "$got" = "sha256:$1" ] || die "registry stored manifest $3 as $got, not sha256:$1"
}

if [ "$METHOD" = skopeo ]; then
  args=(copy -q --all --preserve-digests --insecure-policy --dest-tls-verify=false)
  [ -n "$CREDS" ] && args+=(--dest-creds "$CREDS")
  skopeo "${args[@]}" "oci:$L:$TAG" "docker://$REG/$REPO:$TAG" >"$WORK/skopeo.log" 2>&1 ||
    { cat "$WORK/skopeo.log" >&2; die "skopeo copy failed"; }
  got=$(curl -s -D - -o /dev/null -I -H "Accept: $MT_INDEX" "${AUTH[@]}" "$BASE/manifests/$TAG" |
    tr -d '\r' | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')
  # (anonymous HEAD fails on an auth registry; only check when it answered)
  [ -z "$got" ] || [ "$got" = "sha256:$INDEX" ] || die "skopeo stored $TAG as $got, not sha256:$INDEX"
else
  resolve_auth
  for h in "${PUSH_LAYERS[@]}"; do push_blob "$h"; done
  push_blob "$CONFIG"
  push_manifest "$MANIFEST" "$MT_MANIFEST" "sha256:$MANIFEST"
  push_manifest "$INDEX" "$MT_INDEX" "$TAG"
fi

cat <<EOF
index=sha256:$INDEX
manifest=sha256:$MANIFEST
config=sha256:$CONFIG
layer=sha256:$LAYER
layer_size=$LAYER_SIZE
layer_media_type=$LAYER_MT
diff_id=sha256:$DIFF_ID
manifest_size=$MANIFEST_SIZE
index_size=$INDEX_SIZE
EOF
