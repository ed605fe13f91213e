#!/usr/bin/env bash
# Test fixture: builds multi-layer OCI images with umoci from busybox-static
# (no Docker, no downloads), pushes them, converts them to eStargz.
#
#   make_image.sh OUT_LAYOUT_DIR base
#   make_image.sh OUT_LAYOUT_DIR weights SIZE_MIB
#       Builds an OCI image layout in OUT_LAYOUT_DIR (replaced), tag "latest",
#       its index.json naming the image manifest directly (no image index).
#       base, layer 1: /bin/busybox (from busybox-static) and /bin/{sh,ls,cat,
#         sha256sum,stat,find,readlink,md5sum,head,wc,sleep,echo,true,grep,du}
#         symlinks to it; /etc/passwd, /etc/group; /data/a.txt ("one\n"),
#         /data/b.txt ("two\n"), /data/sub/c.txt ("three\n"),
#         /data/owned.txt ("owned\n", mode 0640, uid:gid 1000:1000),
#         /data/link -> a.txt (symlink), /data/hard (hard link of a.txt),
#         /data/fifo (a fifo); empty /tmp, /root, /proc, /sys, /dev.
#       base, layer 2: deletes /data/b.txt (whiteout .wh.b.txt), replaces
#         /data/sub by a new directory holding only d.txt ("four\n") (umoci
#         writes data/sub/.wh.c.txt, no opaque marker), adds /data/e.txt
#         ("five\n").
#       weights, layer 3: /models/weights.bin, SIZE_MIB MiB of AES-128-CTR
#         keystream (openssl, fixed key and iv) - the same bytes every run.
#   make_image.sh OUT_LAYOUT_DIR hostile
#       base plus a third layer no honest tool writes: hostile/ok.txt, an
#       entry named ../../escape.txt and a hard link hostile/linkout to
#       ../../../hostile/ok.txt (containerd keeps both inside the layer).
#   make_image.sh OUT_LAYOUT_DIR base-gzip
#       base with umoci's own tar+gzip layers (no eStargz TOC).
#       Config: cmd ["/bin/sh"], linux/amd64, all times 1970-01-01T00:00:00Z.
#       Layers are uncompressed tar (application/vnd.oci.image.layer.v1.tar):
#       umoci 0.4.7 can only write gzip, so each layer is gunzipped afterwards
#       and the manifest rewritten (diff_ids already are the tar digests).
#       The same KIND (and SIZE_MIB) gives the same digests every run.
#       Prints, one per line: manifest=sha256:.. manifest_size=N
#       config=sha256:.. layers=sha256:..,sha256:.. layer_media_type=..
#       and for weights: weights_sha256=HEX weights_size=BYTES
#   make_image.sh push OUT_LAYOUT_DIR REGISTRY REPO:TAG [--creds USER:PASS]
#       skopeo copy --preserve-digests oci:OUT_LAYOUT_DIR:latest to
#       docker://REGISTRY/REPO:TAG over plain HTTP (layers stay uncompressed:
#       --preserve-digests forbids skopeo to recompress), then checks with curl
#       that the registry serves the same manifest digest and layer types.
#       Prints manifest=sha256:.. ref=REGISTRY/REPO:TAG
#   make_image.sh estargz REGISTRY SRC_REPO:TAG DST_REPO:TAG CONTAINERD_DIR
#       With the containerd of tests/util/containerd.sh in CONTAINERD_DIR:
#       ctr images pull --plain-http REGISTRY/SRC, ctr-remote images convert
#       --estargz --oci to REGISTRY/DST, ctr images push --plain-http; checks
#       every pushed layer is tar+gzip with a containerd.io/snapshot/stargz/
#       toc.digest annotation. Prints manifest=sha256:.. layers=..
#       toc_digests=sha256:..,.. ref=REGISTRY/DST
set -euo pipefail

die() { echo "make_image.sh: $*" >&2; exit 1; }

# shellcheck source=tests/util/fixture_lib.sh
. "$(dirname "$0")/fixture_lib.sh"

MT_MANIFEST=application/vnd.oci.image.manifest.v1+json
MT_TAR=application/vnd.oci.image.layer.v1.tar
EPOCH=1970-01-01T00:00:00Z
# Fixed key and iv: weights.bin is the same keystream every run.
WEIGHTS_KEY=000102030405060708090a0b0c0d0e0f
WEIGHTS_IV=f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }

sha() { sha256sum "$1" | cut -d' ' -f1; }

# Sets every mtime under ROOT to the epoch (symlinks themselves included), so
# the tar umoci writes is the same every run.
fix_times() { find "$1" -exec touch -h -d "$EPOCH" {} +; }

repack() {  # LAYOUT BUNDLE WHAT
  umoci repack --refresh-bundle --image "$1:latest" \
    --history.created "$EPOCH" --history.created_by "make_image.sh: $3" "$2" \
    || die "umoci repack ($3) failed"
}

layer1() {  # ROOTFS
  local r=$1 t
  mkdir -p "$r/bin" "$r/etc" "$r/data/sub" "$r/tmp" "$r/root" "$r/proc" "$r/sys" "$r/dev"
  chmod 1777 "$r/tmp"; chmod 0700 "$r/root"
  cp /bin/busybox "$r/bin/busybox"; chmod 0755 "$r/bin/busybox"
  for t in sh ls cat sha256sum stat find readlink md5sum head wc sleep echo true grep du; do
    ln -s busybox "$r/bin/$t"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/tmp:/bin/sh\n' >"$r/etc/passwd"
  printf 'root:x:0:\nuser:x:1000:\n' >"$r/etc/group"
  printf 'one\n' >"$r/data/a.txt"
  printf 'two\n' >"$r/data/b.txt"
  printf 'three\n' >"$r/data/sub/c.txt"
  printf 'owned\n' >"$r/data/owned.txt"
  chown 1000:1000 "$r/data/owned.txt"; chmod 0640 "$r/data/owned.txt"
  ln -s a.txt "$r/data/link"
  ln "$r/data/a.txt" "$r/data/hard"
  mkfifo -m 0644 "$r/data/fifo"
  chmod 0644 "$r/data/a.txt" "$r/data/b.txt" "$r/data/sub/c.txt"
  chmod 0755 "$r/data" "$r/data/sub" "$r/bin" "$r/etc"
  fix_times "$r"
}

layer2() {  # ROOTFS
  local r=$1
  rm -f "$r/data/b.txt"
  rm -rf "$r/data/sub"
  mkdir -m 0755 "$r/data/sub"
  printf 'four\n' >"$r/data/sub/d.txt"
  printf 'five\n' >"$r/data/e.txt"
  chmod 0644 "$r/data/sub/d.txt" "$r/data/e.txt"
  fix_times "$r"
}

layer3() {  # ROOTFS SIZE_MIB
  local r=$1
  mkdir -m 0755 "$r/models"
  openssl enc -aes-128-ctr -K "$WEIGHTS_KEY" -iv "$WEIGHTS_IV" -nosalt -in /dev/zero 2>/dev/null |
    head -c "$(($2 * 1024 * 1024))" >"$r/models/weights.bin" || true
  [ "$(stat -c %s "$r/models/weights.bin")" -eq $(($2 * 1024 * 1024)) ] || die "could not write weights.bin"
  chmod 0644 "$r/models/weights.bin"
  fix_times "$r"
}

# umoci wrote tar+gzip layers: replace each by its tar, rewrite the manifest
# and point the layout's index.json at the new one.
uncompress_layers() {  # LAYOUT
  local l=$1 b=$1/blobs/sha256 man mhex n i mt dig hex tar newhex diffid
  man=$(jq -r '.manifests[0].digest' "$l/index.json"); mhex=${man#sha256:}
  cp "$b/$mhex" "$WORK/manifest.json"
  local cfg; cfg=$(jq -r '.config.digest' "$WORK/manifest.json")
  n=$(jq '.layers | length' "$WORK/manifest.json")
  for ((i = 0; i < n; i++)); do
    mt=$(jq -r ".layers[$i].mediaType" "$WORK/manifest.json")
    dig=$(jq -r ".layers[$i].digest" "$WORK/manifest.json"); hex=${dig#sha256:}
    case $mt in
      "$MT_TAR") continue ;;
      "$MT_TAR+gzip") ;;
      *) die "unexpected layer media type $mt" ;;
    esac
    tar=$WORK/layer.tar
    gzip -dc "$b/$hex" >"$tar"
    newhex=$(sha "$tar")
    diffid=$(jq -r ".rootfs.diff_ids[$i]" "$b/${cfg#sha256:}")
    [ "sha256:$newhex" = "$diffid" ] || die "layer $i: tar is sha256:$newhex but diff_id is $diffid"
    mv -f "$tar" "$b/$newhex"
    jq -c --argjson i "$i" --arg d "sha256:$newhex" --arg mt "$MT_TAR" --argjson s "$(stat -c %s "$b/$newhex")" \
      '.layers[$i].mediaType = $mt | .layers[$i].digest = $d | .layers[$i].size = $s' \
      "$WORK/manifest.json" >"$WORK/m2" && mv "$WORK/m2" "$WORK/manifest.json"
  done
  # umoci leaves out the manifest's (optional) mediaType; name it, as image-spec 1.1 asks.
  jq -c --arg mt "$MT_MANIFEST" '{schemaVersion: .schemaVersion, mediaType: $mt} + .' \
    "$WORK/manifest.json" >"$WORK/m1"
  printf '%s' "$(cat "$WORK/m1")" >"$WORK/m2"  # no trailing newline
  newhex=$(sha "$WORK/m2"); mv -f "$WORK/m2" "$b/$newhex"
  jq -c --arg d "sha256:$newhex" --argjson s "$(stat -c %s "$b/$newhex")" \
    '.manifests[0].digest = $d | .manifests[0].size = $s' "$l/index.json" >"$WORK/i2"
  printf '%s' "$(cat "$WORK/i2")" >"$l/index.json"
  umoci gc --layout "$l" || die "umoci gc failed"
}

# A third layer no honest tool writes, added by hand: a name that climbs
# out of the layer and a hard link to a file outside it.
add_hostile_layer() {  # LAYOUT
  local l=$1 b=$1/blobs/sha256 man mhex cfg chex tarhex
  python3 - "$WORK/hostile.tar" <<'PY'
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    def add(name, data=b"", **kw):
        i = tarfile.TarInfo(name)
        i.size = len(data)
        for k, v in kw.items():
            setattr(i, k, v)
        t.addfile(i, io.BytesIO(data) if data else None)
    add("hostile/ok.txt", b"fine\n")
    add("../../escape.txt", b"escaped\n")
    add("hostile/linkout", type=tarfile.LNKTYPE, linkname="../../../hostile/ok.txt")
PY
  tarhex=$(sha "$WORK/hostile.tar")
  mv "$WORK/hostile.tar" "$b/$tarhex"
  man=$(jq -r '.manifests[0].digest' "$l/index.json"); mhex=${man#sha256:}
  cfg=$(jq -r '.config.digest' "$b/$mhex"); chex=${cfg#sha256:}
  jq -c --arg d "sha256:$tarhex" '.rootfs.diff_ids += [$d]' "$b/$chex" >"$WORK/c2"
  printf '%s' "$(cat "$WORK/c2")" >"$WORK/c3"; chex=$(sha "$WORK/c3"); mv "$WORK/c3" "$b/$chex"
  jq -c --arg d "sha256:$tarhex" --argjson s "$(stat -c %s "$b/$tarhex")" --arg mt "$MT_TAR" \
    --arg c "sha256:$chex" --argjson cs "$(stat -c %s "$b/$chex")" \
    '.config.digest = $c | .config.size = $cs | .layers += [{mediaType: $mt, digest: $d, size: $s}]' \
    "$b/$mhex" >"$WORK/m2"
  printf '%s' "$(cat "$WORK/m2")" >"$WORK/m3"; mhex=$(sha "$WORK/m3"); mv "$WORK/m3" "$b/$mhex"
  jq -c --arg d "sha256:$mhex" --argjson s "$(stat -c %s "$b/$mhex")" \
    '.manifests[0].digest = $d | .manifests[0].size = $s' "$l/index.json" >"$WORK/i2"
  printf '%s' "$(cat "$WORK/i2")" >"$l/index.json"
  umoci gc --layout "$l" || die "umoci gc failed"
}

cmd_build() {  # OUT KIND [SIZE_MIB]
  local out=$1 kind=$2 size=0
  case $kind in
    base | base-gzip | hostile) [ $# -eq 2 ] || usage ;;
    weights)
      [ $# -eq 3 ] || usage
      size=$3; [[ $size =~ ^[0-9]+$ ]] && [ "$size" -ge 1 ] || die "SIZE_MIB must be a positive number"
      ;;
    *) die "unknown KIND $kind (base, base-gzip, weights, hostile)" ;;
  esac
  [ "$(id -u)" -eq 0 ] || die "must run as root (owners 1000:1000, device-free unpack)"
  ensure_packages umoci busybox-static jq openssl coreutils findutils gzip
  [ -x /bin/busybox ] || die "/bin/busybox missing (busybox-static)"

  rm -rf "$out"
  mkdir -p "$(dirname "$out")"
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
  local b=$WORK/bundle
  umoci init --layout "$out" || die "umoci init failed"
  umoci new --image "$out:latest" || die "umoci new failed"
  umoci unpack --image "$out:latest" "$b" >/dev/null || die "umoci unpack failed"
  layer1 "$b/rootfs"; repack "$out" "$b" "base layer 1"
  layer2 "$b/rootfs"; repack "$out" "$b" "base layer 2"
  if [ "$kind" = weights ]; then
    layer3 "$b/rootfs" "$size"; repack "$out" "$b" "weights layer ($size MiB)"
  fi
  umoci config --image "$out:latest" --no-history --created "$EPOCH" \
    --architecture amd64 --os linux --config.cmd /bin/sh || die "umoci config failed"
  local wsha=""
  [ "$kind" = weights ] && wsha=$(sha "$b/rootfs/models/weights.bin")
  local mt=$MT_TAR
  if [ "$kind" = base-gzip ]; then mt=$MT_TAR+gzip; else uncompress_layers "$out"; fi
  [ "$kind" = hostile ] && add_hostile_layer "$out"

  local bl=$out/blobs/sha256 man mhex
  man=$(jq -r '.manifests[0].digest' "$out/index.json"); mhex=${man#sha256:}
  echo "manifest=$man"
  echo "manifest_size=$(stat -c %s "$bl/$mhex")"
  echo "config=$(jq -r '.config.digest' "$bl/$mhex")"
  echo "layers=$(jq -r '[.layers[].digest] | join(",")' "$bl/$mhex")"
  echo "layer_media_type=$mt"
  if [ "$kind" = weights ]; then
    echo "weights_sha256=$wsha"
    echo "weights_size=$((size * 1024 * 1024))"
  fi
}

# GET a manifest by tag from a plain-HTTP registry; headers to $WORK/hdr.
get_manifest() {  # REGISTRY REPO TAG [CURL_AUTH...]
  local reg=$1 repo=$2 tag=$3; shift 3
  curl -sf --max-time 20 -D "$WORK/hdr" "$@" \
    -H "Accept: $MT_MANIFEST, application/vnd.oci.image.index.v1+json" \
    "http://$reg/v2/$repo/manifests/$tag"
}

cmd_push() {  # OUT REGISTRY REPO:TAG [--creds U:P]
  [ $# -ge 3 ] || usage
  local out=$1 reg=$2 ref=$3 creds=""
  shift 3
  while [ $# -gt 0 ]; do
    case $1 in
      --creds) [ $# -ge 2 ] || die "--creds needs USER:PASS"; creds=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [[ $ref == *:* ]] || die "want REPO:TAG, got $ref"
  local repo=${ref%:*} tag=${ref##*:}
  [ -f "$out/index.json" ] || die "$out is not an OCI image layout"
  ensure_packages skopeo curl jq
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
  local man; man=$(jq -r '.manifests[0].digest' "$out/index.json")
  local args=(copy -q --preserve-digests --insecure-policy --dest-tls-verify=false)
  [ -n "$creds" ] && args+=(--dest-creds "$creds")
  timeout -k 5 600 skopeo "${args[@]}" "oci:$out:latest" "docker://$reg/$repo:$tag" >"$WORK/skopeo.log" 2>&1 ||
    { cat "$WORK/skopeo.log" >&2; die "skopeo copy failed"; }
  local auth=(); [ -n "$creds" ] && auth=(-u "$creds")
  # (a token registry would want a Bearer token; then only skopeo's check stands)
  if get_manifest "$reg" "$repo" "$tag" "${auth[@]}" >"$WORK/pushed.json" 2>/dev/null; then
    local got
    got=$(tr -d '\r' <"$WORK/hdr" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')
    [ "$got" = "$man" ] || die "registry holds $reg/$repo:$tag as $got, not $man"
    cmp -s "$WORK/pushed.json" "$out/blobs/sha256/${man#sha256:}" || die "registry's manifest differs from the layout's"
  fi
  echo "manifest=$man"
  echo "ref=$reg/$repo:$tag"
}

cmd_estargz() {  # REGISTRY SRC DST CONTAINERD_DIR
  [ $# -eq 4 ] || usage
  local reg=$1 src=$2 dst=$3 cdir=$4
  [[ $src == *:* && $dst == *:* ]] || die "want REPO:TAG for SRC and DST"
  local sock; sock=$(cd "$cdir" && pwd)/containerd.sock
  [ -S "$sock" ] || die "no containerd socket at $sock (start tests/util/containerd.sh first)"
  command -v ctr-remote >/dev/null || ensure_packages stargz-snapshotter
  ensure_packages curl jq
  WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
  local c=(timeout -k 5 600 ctr --address "$sock") cr=(timeout -k 5 600 ctr-remote --address "$sock")
  "${c[@]}" images pull --plain-http "$reg/$src" >"$WORK/log" 2>&1 ||
    { cat "$WORK/log" >&2; die "ctr images pull $reg/$src failed"; }
  "${c[@]}" images rm "$reg/$dst" >/dev/null 2>&1 || true
  "${cr[@]}" images convert --estargz --oci "$reg/$src" "$reg/$dst" >"$WORK/log" 2>&1 ||
    { cat "$WORK/log" >&2; die "ctr-remote images convert --estargz failed"; }
  "${c[@]}" images push --plain-http "$reg/$dst" >"$WORK/log" 2>&1 ||
    { cat "$WORK/log" >&2; die "ctr images push $reg/$dst failed"; }
  local repo=${dst%:*} tag=${dst##*:}
  get_manifest "$reg" "$repo" "$tag" >"$WORK/m.json" || die "cannot read back $reg/$dst"
  local man
  man=$(tr -d '\r' <"$WORK/hdr" | sed -n 's/^[Dd]ocker-[Cc]ontent-[Dd]igest: *//p')
  jq -e --arg mt "$MT_TAR+gzip" \
    '.layers | length > 0 and all(.mediaType == $mt and (.annotations["containerd.io/snapshot/stargz/toc.digest"] // "" | startswith("sha256:")))' \
    "$WORK/m.json" >/dev/null || die "$reg/$dst is not an eStargz image: $(cat "$WORK/m.json")"
  echo "manifest=$man"
  echo "layers=$(jq -r '[.layers[].digest] | join(",")' "$WORK/m.json")"
  echo "toc_digests=$(jq -r '[.layers[].annotations["containerd.io/snapshot/stargz/toc.digest"]] | join(",")' "$WORK/m.json")"
  echo "ref=$reg/$dst"
}

case ${1:-} in
  ""|-h|--help) usage ;;
  push) shift; cmd_push "$@" ;;
  estargz) shift; cmd_estargz "$@" ;;
  *) [ $# -ge 2 ] || usage; cmd_build "$@" ;;
esac
