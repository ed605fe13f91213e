#!/usr/bin/env bash
# Test fixture: an S3-compatible server on 127.0.0.1 that VERIFIES AWS
# Signature V4 (header auth and presigned URLs): s3rver, the maintained fork
# published on npm as @20minutes/s3rver (pinned below), run on the machine's
# Node.js (>= 20) through a small launcher this script writes into DIR.
#
#   s3_server.sh start DIR PORT ACCESS_KEY SECRET
#       Starts the server in the background on 127.0.0.1:PORT with its data in
#       DIR/data, waits until it answers and prints its pid on stdout.
#       PORT 0 picks a free port; the port in use is in DIR/s3rver.port.
#       Only ACCESS_KEY/SECRET are accepted (the stock S3RVER/S3RVER key is
#       revoked); a wrong secret gets 403 SignatureDoesNotMatch, an unknown key
#       403 InvalidAccessKeyId, an unsigned request 403 AccessDenied
#       (S3_SERVER_ALLOW_ANONYMOUS=1 lets unsigned requests through).
#       Any region in the credential scope is accepted (sign with us-east-1).
#   s3_server.sh stop DIR
#       Stops the server started in DIR (SIGTERM, then SIGKILL after 10 s).
#       Data is kept.
#   s3_server.sh install
#       Only installs what is missing.
#
# Addressing: path style http://127.0.0.1:PORT/BUCKET/KEY, and virtual-host
# style with Host: BUCKET.s3.localhost:PORT (the service endpoint is
# "localhost"; connect to 127.0.0.1, e.g. curl --connect-to
# BUCKET.s3.localhost:PORT:127.0.0.1:PORT).
#
# Install location: npm install --prefix "$S3_SERVER_NPM_PREFIX"
# (default /opt/strata-test/npm) @20minutes/s3rver@4.0.4. Node.js/npm come from
# the machine (nodesource nodejs 20 here); if missing, Debian's nodejs+npm are
# installed with apt-get. Installing is skipped, silently, when the pinned
# version is already there; concurrent installs are serialised with flock.
#
# Files in DIR: s3rver.json (address, port, credentials, options),
# s3rver-launch.js (launcher with the compatibility patches described in it),
# data/ (buckets: data/BUCKET/KEY._S3rver_object, ..._metadata.json,
# ..._object.md5; multipart parts in data/BUCKET/._S3rver_uploads/),
# s3rver.log (one line per request), s3rver.pid, s3rver.port.
#
# Known gaps (differences from S3, as of 4.0.4 plus the launcher's patches):
# ETag of a multipart object is the plain MD5 of the whole object (S3:
# md5-of-part-md5s "-N"); CompleteMultipartUpload checks neither part ETags nor
# the 5 MiB minimum part size; no ListParts, AbortMultipartUpload or
# ListMultipartUploads (405/501); UploadPart with an unknown uploadId succeeds;
# payload hashes (x-amz-content-sha256), Content-MD5 and chunk signatures are
# not checked; STREAMING-UNSIGNED-PAYLOAD-TRAILER (the AWS SDKs' default
# checksum uploads) is refused with 400; list XML double-escapes & < > in
# keys; CreateBucket on an existing bucket is 409 BucketAlreadyExists.
# curl 7.88's --aws-sigv4 neither sorts query parameters nor signs a
# valueless one as "name=": write them sorted, as ?uploads= not ?uploads, and
# add -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' (the server requires it).
set -euo pipefail

S3RVER_PKG=@20minutes/s3rver
S3RVER_VERSION=4.0.4
NPM_PREFIX=${S3_SERVER_NPM_PREFIX:-/opt/strata-test/npm}
MODULE_DIR=$NPM_PREFIX/node_modules/$S3RVER_PKG

die() { echo "s3_server.sh: $*" >&2; exit 1; }

pid_alive() {  # PID: running and not a zombie (a reparented zombie may linger)
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  [ "$(sed -n 's/^State:[[:space:]]*\(.\).*/\1/p' "/proc/$1/status" 2>/dev/null)" != "Z" ]
}

# shellcheck source=tests/util/fixture_lib.sh
. "$(dirname "$0")/fixture_lib.sh"

# --- install ----------------------------------------------------------------
installed_version() {
  [ -f "$MODULE_DIR/package.json" ] || return 0
  node -p 'require(process.argv[1]).version' "$MODULE_DIR/package.json" 2>/dev/null || true
}

ensure_node() {
  if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    return 0
  fi
  [ "$(id -u)" -eq 0 ] || die "node/npm missing; install Node.js >= 20 (run as root to apt-get it)"
  echo "s3_server.sh: installing nodejs npm with apt-get" >&2
  (
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
    }
  ) || die "apt-get install nodejs npm failed"
}

ensure_curl() {
  command -v curl >/dev/null 2>&1 && return 0
  [ "$(id -u)" -eq 0 ] || die "curl missing"
  (
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null 2>&1 || {
      apt-get update -qq >/dev/null 2>&1
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends curl >/dev/null
    }
  ) || die "apt-get install curl failed"
}

ensure_s3rver() {
  ensure_node
  ensure_curl
  [ "$(installed_version)" = "$S3RVER_VERSION" ] && return 0
  mkdir -p "$NPM_PREFIX"
  (
    flock -w 300 9 || die "timed out waiting for the install lock"
    # another process may have installed it while we waited
    [ "$(installed_version)" = "$S3RVER_VERSION" ] && exit 0
    echo "s3_server.sh: installing $S3RVER_PKG@$S3RVER_VERSION into $NPM_PREFIX" >&2
    [ -f "$NPM_PREFIX/package.json" ] || echo '{"name":"strata-test-npm","private":true}' >"$NPM_PREFIX/package.json"
    npm install --prefix "$NPM_PREFIX" --save-exact --no-audit --no-fund \
      --loglevel=error "$S3RVER_PKG@$S3RVER_VERSION" >&2 \
      || die "npm install $S3RVER_PKG@$S3RVER_VERSION failed"
  ) 9>"$NPM_PREFIX/.install.lock"
  [ "$(installed_version)" = "$S3RVER_VERSION" ] || die "$S3RVER_PKG@$S3RVER_VERSION not found in $MODULE_DIR after install"
}

# --- launcher -----------------------------------------------------------------
write_launcher() {  # FILE
  cat >"$1" <<'EOF'
'use strict';
// Generated by tests/util/s3_server.sh. Usage: node s3rver-launch.js CONFIG.json
// Runs @20minutes/s3rver with custom credentials and these patches, each of
// which makes it behave like S3 where the pinned version (4.0.4) does not:
//  1. ListObjectsV2 continuation tokens use single DES, which OpenSSL 3 only has
//     in its legacy provider (500 ERR_OSSL_EVP_UNSUPPORTED). 3DES-EDE with
//     K1=K2=K3 is bit-identical and in the default provider.
//  2. Unsigned requests are refused with 403 AccessDenied (s3rver serves them).
//  3. SigV4 canonical request built as AWS does: canonical URI from the path
//     as sent (s3rver used /bucket/key even for virtual-host requests),
//     canonical query from the raw query string (RFC 3986 encoding, sorted by
//     name then value), header values trimmed with inner spaces collapsed.
//  4. GET/HEAD Range: suffix ranges (bytes=-N) and bytes=0-0 return the right
//     bytes (s3rver returned bytes 0-N and the whole object); an unparsable or
//     multi-range header is ignored (200, as S3); a range starting past the end
//     gets 416 InvalidRange.
//  5. GET/HEAD If-Match / If-Unmodified-Since -> 412 PreconditionFailed.
//  6. CopyObject / UploadPartCopy: x-amz-copy-source fully URL-decoded.
const fs = require('fs');
const path = require('path');
const crypto = require('crypto');

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const mod = (p) => require(path.join(cfg.moduleDir, p));
const pkg = mod('package.json');
if (pkg.version !== cfg.expectVersion) {
  console.error(`s3rver ${pkg.version} found, launcher written for ${cfg.expectVersion}`);
  process.exit(2);
}

// 1. DES -> 3DES-EDE (same output)
for (const fn of ['createCipheriv', 'createDecipheriv']) {
  const orig = crypto[fn];
  crypto[fn] = function (alg, key, iv, ...rest) {
    if (String(alg).toLowerCase() === 'des') {
      const k = Buffer.from(key);
      return orig.call(this, 'des-ede3-cbc', Buffer.concat([k, k, k]), iv, ...rest);
    }
    return orig.call(this, alg, key, iv, ...rest);
  };
}

const S3rver = mod('lib/s3rver.js');
const AWSAccount = mod('lib/models/account.js');
const S3Error = mod('lib/models/error.js');
const S3Object = mod('lib/models/object.js');
const FilesystemStore = mod('lib/stores/filesystem.js');
const objectCtrl = mod('lib/controllers/object.js');
const v4 = mod('lib/signature/v4.js');

AWSAccount.DUMMY_ACCOUNT.revokeAccessKey('S3RVER');
AWSAccount.DUMMY_ACCOUNT.createKeyPair(cfg.accessKey, cfg.secret);

// 3. AWS SigV4 canonical request
// keyed by the request's headers object (lodash pickBy would trip over a symbol on it)
const RAW = new WeakMap();
const enc3986 = (s) =>
  encodeURIComponent(s).replace(/[!'()*]/g, (c) => '%' + c.charCodeAt(0).toString(16).toUpperCase());
const dec = (s) => {
  try { return decodeURIComponent(s); } catch (e) { return s; }
};
v4.getStringToSign = function (canonicalRequest, { credential, signedHeaders }) {
  const raw = RAW.get(canonicalRequest.headers) || { path: canonicalRequest.uri, query: '' };
  const uri = raw.path.split('/').map((seg) => enc3986(dec(seg))).join('/') || '/';
  const query = raw.query
    .split('&')
    .filter((p) => p !== '')
    .map((p) => {
      const i = p.indexOf('=');
      return i < 0 ? [dec(p), ''] : [dec(p.slice(0, i)), dec(p.slice(i + 1))];
    })
    .filter(([k]) => k !== 'X-Amz-Signature')
    .map(([k, v]) => [enc3986(k), enc3986(v)])
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : a[1] < b[1] ? -1 : a[1] > b[1] ? 1 : 0))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
  const headers = signedHeaders
    .map((h) => `${h}:${String(canonicalRequest.headers[h] ?? '').trim().replace(/\s+/g, ' ')}\n`)
    .join('');
  const contentHash = canonicalRequest.headers['x-amz-content-sha256'] || 'UNSIGNED-PAYLOAD';
  const creq = [canonicalRequest.method, uri, query, headers, signedHeaders.join(';'), contentHash].join('\n');
  return [
    'AWS4-HMAC-SHA256',
    canonicalRequest.timestamp,
    [credential.date, credential.region, credential.service, credential.termination].join('/'),
    crypto.createHash('sha256').update(creq).digest('hex'),
  ].join('\n');
};

// 4. store.getObject honouring end === 0 (s3rver treated 0 as "to the end")
FilesystemStore.prototype.getObject = async function (bucket, key, options) {
  try {
    const metadata = await this.getMetadata(bucket, key);
    const lastByte = Math.max(0, Number(metadata['content-length']) - 1);
    const hasRange = !!options && (options.start !== undefined || options.end !== undefined);
    const range = {
      start: (options && options.start) || 0,
      end: Math.min(options && options.end !== undefined ? options.end : Infinity, lastByte),
    };
    if (range.start < 0 || range.end < range.start ||
        (hasRange && range.start >= Number(metadata['content-length']))) {
      const object = new S3Object(bucket, key, null, metadata);
      if (hasRange) object.range = range;
      return object;
    }
    const content = await new Promise((resolve, reject) => {
      const stream = fs.createReadStream(this.getResourcePath(bucket, key, 'object'), range)
        .on('error', reject)
        .on('open', () => resolve(stream));
    });
    const object = new S3Object(bucket, key, content, metadata);
    if (hasRange) object.range = range;
    return object;
  } catch (err) {
    if (err.code === 'ENOENT') return null;
    throw err;
  }
};

// 4 + 5. normalise Range, evaluate If-Match / If-Unmodified-Since
const origGetObject = objectCtrl.getObject;
objectCtrl.getObject = async function (ctx) {
  const rangeHdr = ctx.get('range');
  const ifMatch = ctx.get('if-match');
  const ifUnmodifiedSince = ctx.get('if-unmodified-since');
  if (rangeHdr || ifMatch || ifUnmodifiedSince) {
    let md;
    try {
      md = await ctx.store.getMetadata(ctx.params.bucket, ctx.params.key);
    } catch (err) {
      if (err.code !== 'ENOENT') throw err;
      return origGetObject(ctx); // -> 404 NoSuchKey
    }
    const etag = String(md.etag).replace(/"/g, '');
    if (ifMatch) {
      const ok = ifMatch.split(',').map((t) => t.trim().replace(/^W\//, '').replace(/"/g, ''))
        .some((t) => t === '*' || t === etag);
      if (!ok) {
        throw new S3Error('PreconditionFailed',
          'At least one of the pre-conditions you specified did not hold', { Condition: 'If-Match' });
      }
    } else if (ifUnmodifiedSince) {
      const since = new Date(ifUnmodifiedSince);
      if (!isNaN(since) && new Date(md['last-modified']) > since) {
        throw new S3Error('PreconditionFailed',
          'At least one of the pre-conditions you specified did not hold',
          { Condition: 'If-Unmodified-Since' });
      }
    }
    if (rangeHdr) {
      const size = Number(md['content-length']);
      const m = /^bytes=(\d*)-(\d*)$/.exec(rangeHdr.trim());
      let start, end;
      if (m && m[1] !== '') {
        start = Number(m[1]);
        end = m[2] !== '' ? Math.min(Number(m[2]), size - 1) : size - 1;
        if (m[2] !== '' && Number(m[2]) < start) start = undefined; // invalid: ignored
      } else if (m && m[2] !== '') {
        const n = Number(m[2]);
        start = n === 0 ? size : Math.max(0, size - n); // bytes=-0: unsatisfiable
        end = size - 1;
      }
      if (start === undefined) {
        delete ctx.headers.range; // not a single valid byte range: whole object, 200
      } else if (start >= size) {
        throw new S3Error('InvalidRange', 'The requested range is not satisfiable',
          { RangeRequested: rangeHdr, ActualObjectSize: size });
      } else {
        ctx.headers.range = `bytes=${start}-${end}`;
      }
    }
  }
  return origGetObject(ctx);
};

// 6. x-amz-copy-source: s3rver decodes it with decodeURI, which leaves %2B,
//    %3D, %26, %2C, %3A, %40, %24, %3B, %3F, %23 encoded (-> NoSuchKey for keys
//    with those characters) and keeps ?versionId. Hand it a value for which
//    decodeURI gives the exact key.
for (const name of ['putObjectCopy', 'uploadPartCopy']) {
  const orig = objectCtrl[name];
  objectCtrl[name] = function (ctx) {
    const src = ctx.headers['x-amz-copy-source'];
    if (typeof src === 'string') {
      ctx.headers['x-amz-copy-source'] = encodeURI(src.split('?')[0].split('/').map(dec).join('/'));
    }
    return orig(ctx);
  };
}

const server = new S3rver({
  address: cfg.address,
  port: cfg.port,
  directory: cfg.dataDir,
  silent: false,
  serviceEndpoint: cfg.serviceEndpoint, // vhost: <bucket>.s3.<serviceEndpoint>
  vhostBuckets: false,                  // other Host names never mean a bucket
  allowMismatchedSignatures: false,
});

// runs before s3rver's vhost rewrite: keep the path and query as sent (3),
// and refuse unsigned requests (2)
server.middleware.splice(1, 0, async function strataPreamble(ctx, next) {
  RAW.set(ctx.headers, { path: ctx.path, query: ctx.querystring });
  if (!cfg.allowAnonymous && ctx.method !== 'OPTIONS') {
    const q = ctx.query;
    if (!ctx.get('authorization') && !('X-Amz-Algorithm' in q) && !('Signature' in q)) {
      throw new S3Error('AccessDenied', 'Access Denied');
    }
  }
  return next();
});

server.run().then(({ address, port }) => {
  fs.writeFileSync(cfg.portFile + '.tmp', String(port) + '\n');
  fs.renameSync(cfg.portFile + '.tmp', cfg.portFile);
  console.log('S3rver listening on %s:%d', address, port);
}, (err) => {
  console.error('s3rver failed to start:', err);
  process.exit(1);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    setTimeout(() => process.exit(0), 2000).unref();
    server.close().then(() => process.exit(0), () => process.exit(0));
    // don't wait for idle keep-alive connections to time out
    if (server.httpServer) server.httpServer.closeAllConnections();
  });
}
EOF
}

# --- commands -----------------------------------------------------------------
cmd_start() {
  [ $# -eq 4 ] || die "usage: s3_server.sh start DIR PORT ACCESS_KEY SECRET"
  local dir=$1 port=$2 key=$3 secret=$4
  [[ "$port" =~ ^[0-9]+$ ]] || die "bad port: $port"
  ensure_s3rver
  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/s3rver.pid" ] && pid_alive "$(cat "$dir/s3rver.pid")"; then
    die "already running in $dir (pid $(cat "$dir/s3rver.pid"))"
  fi
  rm -f "$dir/s3rver.pid" "$dir/s3rver.port"
  write_launcher "$dir/s3rver-launch.js"
  (umask 077; node -e '
    const [dir, port, key, secret, moduleDir, version, anon] = process.argv.slice(1);
    require("fs").writeFileSync(dir + "/s3rver.json", JSON.stringify({
      address: "127.0.0.1", port: Number(port), accessKey: key, secret,
      dataDir: dir + "/data", portFile: dir + "/s3rver.port",
      serviceEndpoint: "localhost", allowAnonymous: anon === "1",
      moduleDir, expectVersion: version }, null, 2) + "\n");
  ' "$dir" "$port" "$key" "$secret" "$MODULE_DIR" "$S3RVER_VERSION" "${S3_SERVER_ALLOW_ANONYMOUS:-0}")
  setsid node "$dir/s3rver-launch.js" "$dir/s3rver.json" >>"$dir/s3rver.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/s3rver.pid"
  local code
  for _ in $(seq 1 300); do  # 30 s
    pid_alive "$pid" || { tail -n 20 "$dir/s3rver.log" >&2; rm -f "$dir/s3rver.pid"; die "server exited during startup"; }
    if [ -s "$dir/s3rver.port" ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$(cat "$dir/s3rver.port")/" 2>/dev/null || true)
      if [ -n "$code" ] && [ "$code" != "000" ]; then
        echo "$pid"
        return 0
      fi
    fi
    sleep 0.1
  done
  kill "$pid" 2>/dev/null || true
  tail -n 20 "$dir/s3rver.log" >&2
  die "server did not answer within 30 s"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: s3_server.sh stop DIR"
  stop_pidfile "$1/s3rver.pid"
  rm -f "$1/s3rver.port"
}

case "${1:-}" in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  install) ensure_s3rver ;;
  *) die "usage: s3_server.sh start DIR PORT ACCESS_KEY SECRET | stop DIR | install" ;;
esac
