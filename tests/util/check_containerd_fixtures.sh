#!/usr/bin/env bash
# Self-check of the containerd.sh and make_image.sh fixtures, with containerd's
# own overlayfs snapshotter (no Strata): builds base and weights images, pushes
# them to registry.sh's registry, pulls and runs them and checks the files,
# converts base to eStargz, leaves a task running for `containerd.sh stop`.
#
#   check_containerd_fixtures.sh [PORT]     (default 5392; needs root)
#
# Prints ALL OK at the end; exits non-zero on the first mismatch. Cleans up
# (containerd, registry, mounts, its temp dir) on any exit.
set -euo pipefail
U=$(cd "$(dirname "$0")" && pwd)
PORT=${1:-5392}; R=127.0.0.1:$PORT
T=$(mktemp -d /tmp/ctdchk.XXXXXX)
cleanup() { $U/containerd.sh stop $T/ctd || true; $U/registry.sh stop $T/reg || true; rm -rf "$T"; }
trap cleanup EXIT
$U/registry.sh start $T/reg $PORT >/dev/null
$U/make_image.sh $T/base base | tee $T/base.facts
$U/make_image.sh $T/w weights 32 | tee $T/w.facts
$U/make_image.sh push $T/base $R test/base:1
$U/make_image.sh push $T/w $R test/weights:1
for r in base weights; do
  curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' http://$R/v2/test/$r/manifests/1 | jq -c '[.mediaType, (.layers[]|.mediaType)]'
done
echo "ctd pid $($U/containerd.sh start $T/ctd --registry $R)"
C="$U/containerd.sh ctr $T/ctd"
timeout 120 $C images pull --hosts-dir $T/ctd/certs.d $R/test/base:1 >/dev/null
timeout 120 $C images pull --plain-http $R/test/weights:1 >/dev/null
out=$(timeout 60 $C run --rm $R/test/base:1 t1 /bin/sh -c '
  cd /data; ls -A . | tr "\n" " "; echo; ls -A sub | tr "\n" " "; echo
  cat a.txt hard link; readlink link; cat sub/d.txt e.txt
  stat -c "%n %a %u:%g %F %h %i" a.txt hard owned.txt fifo link
  [ -e b.txt ] && echo "b.txt present" || echo "b.txt gone"; [ -e sub/c.txt ] && echo "c.txt present" || echo "c.txt gone"')
echo "$out"
exp=$(cat <<'X'
a.txt e.txt fifo hard link owned.txt sub 
d.txt 
one
one
one
a.txt
four
five
X
)
[ "$(echo "$out" | head -8)" = "$exp" ] || { echo "MISMATCH"; exit 1; }
echo "$out" | grep -q '^owned.txt 640 1000:1000 regular file 1' && echo "$out" | grep -q '^fifo 644 0:0 fifo' &&
  echo "$out" | grep -q '^link 777 0:0 symbolic link' && echo "$out" | grep -q 'b.txt gone' && echo "$out" | grep -q 'c.txt gone' || { echo "MISMATCH2"; exit 1; }
ia=$(echo "$out" | awk '$1=="a.txt" && $2==644 {print $7}'); ih=$(echo "$out" | awk '$1=="hard" && $2==644 {print $7}')
[ "$ia" = "$ih" ] || { echo "hard link broken"; exit 1; }
ws=$(timeout 60 $C run --rm $R/test/weights:1 t2 /bin/sha256sum /models/weights.bin | cut -d' ' -f1)
echo "weights in container: $ws"
[ "$ws" = "$(sed -n 's/^weights_sha256=//p' $T/w.facts)" ] || { echo "weights mismatch"; exit 1; }
# eStargz
$U/make_image.sh estargz $R test/base:1 test/base:esgz $T/ctd | tee $T/esgz.facts
curl -s -H 'Accept: application/vnd.oci.image.manifest.v1+json' http://$R/v2/test/base/manifests/esgz | jq -c '[.layers[] | [.mediaType, .annotations]]'
timeout 60 $C images pull --plain-http $R/test/base:esgz >/dev/null
timeout 60 $C run --rm $R/test/base:esgz t3 /bin/sh -c 'ls -A /data | tr "\n" " "; cat /data/sub/d.txt'
# a running task left for stop
timeout 60 $C run -d $R/test/base:1 t4 /bin/sleep 1000
ls /run/containerd/s
echo ALL OK
