#!/usr/bin/env bash
# Test fixture: a real OCI registry (Debian's docker-registry, the CNCF
# distribution registry 2.8) on 127.0.0.1, optionally with auth.
#
#   registry.sh start DIR PORT [--htpasswd USER:PASS] [--token [TOKEN_PORT]]
#       Starts the registry in the background with its storage, config and
#       logs in DIR, waits until GET /v2/ answers (200 or 401) and prints the
#       registry's pid on stdout.
#         (no option)          anonymous pull and push
#         --htpasswd U:P       HTTP Basic auth (bcrypt htpasswd file in DIR)
#         --token [TPORT]      Bearer-token auth: the registry trusts a key made
#                              in DIR/auth; a token server (python3 stdlib) is
#                              started on 127.0.0.1:TPORT (default PORT+1),
#                              realm http://127.0.0.1:TPORT/token. With
#                              --htpasswd too, the token server wants those
#                              Basic creds; without, it hands tokens to anyone.
#   registry.sh stop DIR
#       Stops the registry (and token server) started in DIR. Data is kept.
#   registry.sh token DIR [SCOPE...]
#       Prints a JWT the registry in DIR (token mode) accepts, granting each
#       SCOPE as asked, e.g. repository:foo/bar:pull,push (default: none).
#   registry.sh install
#       Only installs what is missing (docker-registry, curl, openssl, ...).
#
# Files in DIR: config.yml, data/ (blob storage), registry.log, registry.pid,
# htpasswd, auth/{token.key,token.crt,token_server.py}, token.log, token.pid.
set -euo pipefail

SERVICE=strata-test-registry   # token mode: aud claim / service= parameter
ISSUER=strata-test-issuer      # token mode: iss claim

die() { echo "registry.sh: $*" >&2; exit 1; }

# shellcheck source=tests/util/fixture_lib.sh
. "$(dirname "$0")/fixture_lib.sh"


# --- helpers ----------------------------------------------------------------
pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

http_status() {  # URL -> HTTP status, 000 when nothing answers
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$1" 2>/dev/null || true
}


python_bin() {
  if [ -x /usr/bin/python3 ]; then echo /usr/bin/python3; else command -v python3; fi
}

# The token server. Stdlib only; signs RS256 JWTs with openssl.
write_token_server() {  # PATH
  cat >"$1" <<'PY'
#!/usr/bin/env python3
"""Tiny bearer-token server for the distribution registry (token auth).

Serves GET /token?service=S&scope=SCOPE[&scope=...] (the Docker token
protocol) and POST /token (OAuth2 form, grant_type=password|refresh_token,
as containerd sends). Grants every action asked for. If a creds file is
given, the request must carry those Basic creds (GET) or username/password
(POST), else 401. `--mint SCOPE...` prints one token and exits.
"""
import argparse, base64, hashlib, json, os, subprocess, sys, time, uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs

def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

def libtrust_kid(key_path):
    """libtrust key ID: sha256 of the DER SubjectPublicKeyInfo, first 240
    bits, base32, 12 groups of 4 joined by ':'."""
    der = subprocess.run(["openssl", "pkey", "-in", key_path, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    s = base64.b32encode(hashlib.sha256(der).digest()[:30]).decode()
    return ":".join(s[i:i + 4] for i in range(0, 48, 4))

def parse_scope(scope):
    # type:name:actions; name may itself hold ':' (host:port/repo)
    t, rest = scope.split(":", 1)
    name, actions = rest.rsplit(":", 1)
    return {"type": t, "name": name, "actions": [a for a in actions.split(",") if a]}

class Minter:
    def __init__(self, key, issuer, service, ttl):
        self.key, self.issuer, self.service, self.ttl = key, issuer, service, ttl
        self.kid = libtrust_kid(key)

    def mint(self, scopes, sub=""):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "kid": self.kid}
        claims = {"iss": self.issuer, "sub": sub, "aud": self.service,
                  "exp": now + self.ttl, "nbf": now - 1, "iat": now,
                  "jti": uuid.uuid4().hex,
                  "access": [parse_scope(s) for s in scopes]}
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", self.key],
                             input=signing_input.encode(), check=True,
                             capture_output=True).stdout
        return signing_input + "." + b64url(sig)

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--key", required=True)
    ap.add_argument("--issuer", required=True)
    ap.add_argument("--service", required=True)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--creds", default="", help="file holding USER:PASS")
    ap.add_argument("--ttl", type=int, default=300)
    ap.add_argument("--mint", nargs="*")
    a = ap.parse_args()
    m = Minter(a.key, a.issuer, a.service, a.ttl)
    if a.mint is not None:
        print(m.mint(a.mint))
        return
    creds = open(a.creds).read().strip() if a.creds else ""

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _reply(self, code, body, extra=None):
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _grant(self, service, scopes, user):
            if service and service != a.service:
                return self._reply(400, {"errors": [{"code": "UNSUPPORTED", "message": "unknown service " + service}]})
            scopes = [s for sc in scopes for s in sc.split(" ") if s]
            tok = m.mint(scopes, user)
            self._reply(200, {"token": tok, "access_token": tok, "expires_in": a.ttl,
                              "issued_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})

        def _unauth(self):
            self._reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "bad credentials"}]},
                        {"WWW-Authenticate": 'Basic realm="strata-test-token"'})

        def do_GET(self):
            u = urlparse(self.path)
            if u.path != "/token":
                return self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            q = parse_qs(u.query)
            user = ""
            hdr = self.headers.get("Authorization", "")
            if hdr.startswith("Basic "):
                try:
                    got = base64.b64decode(hdr[6:]).decode()
                except Exception:
                    got = ""
                if creds and got != creds:
                    return self._unauth()
                user = got.split(":", 1)[0]
            elif creds:
                return self._unauth()
            self._grant(q.get("service", [""])[0], q.get("scope", []), user)

        def do_POST(self):
            u = urlparse(self.path)
            if u.path != "/token":
                return self._reply(404, {"errors": [{"code": "NOT_FOUND"}]})
            n = int(self.headers.get("Content-Length", "0") or 0)
            f = parse_qs(self.rfile.read(n).decode())
            g = f.get("grant_type", [""])[0]
            user = f.get("username", [""])[0]
            if g == "password":
                if creds and user + ":" + f.get("password", [""])[0] != creds:
                    return self._unauth()
            elif g == "refresh_token":
                if creds:  # no refresh tokens are issued
                    return self._unauth()
            else:
                return self._reply(400, {"error": "unsupported_grant_type"})
            self._grant(f.get("service", [""])[0], f.get("scope", []), user)

        def log_message(self, fmt, *args):
            sys.stderr.write("%s %s\n" % (datetime.now().isoformat(timespec="milliseconds"), fmt % args))

    srv = ThreadingHTTPServer(("127.0.0.1", a.port), H)
    srv.serve_forever()

if __name__ == "__main__":
    main()
PY
}

# --- commands ---------------------------------------------------------------
cmd_start() {
  [ $# -ge 2 ] || die "usage: registry.sh start DIR PORT [--htpasswd USER:PASS] [--token [TOKEN_PORT]]"
  local dir=$1 port=$2 creds="" token=0 tport=""
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --htpasswd) [ $# -ge 2 ] || die "--htpasswd needs USER:PASS"; creds=$2; shift 2 ;;
      --token)
        token=1; shift
        if [ $# -gt 0 ] && [[ $1 =~ ^[0-9]+$ ]]; then tport=$1; shift; fi ;;
      *) die "unknown option $1" ;;
    esac
  done
  [[ $port =~ ^[0-9]+$ ]] || die "PORT must be a number"
  [ -z "$creds" ] || [[ $creds == *:* ]] || die "--htpasswd wants USER:PASS"
  [ -n "$tport" ] || tport=$((port + 1))

  local pkgs=(docker-registry curl ca-certificates)
  [ -n "$creds" ] && [ "$token" -eq 0 ] && pkgs+=(apache2-utils)
  [ "$token" -eq 1 ] && pkgs+=(openssl python3)
  ensure_packages "${pkgs[@]}"

  mkdir -p "$dir/data"
  dir=$(cd "$dir" && pwd)
  if [ -f "$dir/registry.pid" ] && pid_alive "$(cat "$dir/registry.pid")"; then
    die "a registry already runs from $dir (pid $(cat "$dir/registry.pid")); stop it first"
  fi
  local st
  st=$(http_status "http://127.0.0.1:$port/v2/")
  [ "$st" = 000 ] || die "something already answers on 127.0.0.1:$port (HTTP $st)"
  rm -f "$dir/htpasswd"

  local auth=""
  if [ "$token" -eq 1 ]; then
    st=$(http_status "http://127.0.0.1:$tport/")
    [ "$st" = 000 ] || die "something already answers on 127.0.0.1:$tport (HTTP $st)"
    mkdir -p "$dir/auth"
    if [ ! -f "$dir/auth/token.crt" ]; then
      openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=$ISSUER" \
        -keyout "$dir/auth/token.key" -out "$dir/auth/token.crt" >/dev/null 2>&1 \
        || die "openssl could not make the token signing key"
    fi
    write_token_server "$dir/auth/token_server.py"
    auth="auth:
  token:
    realm: http://127.0.0.1:$tport/token
    service: $SERVICE
    issuer: $ISSUER
    rootcertbundle: $dir/auth/token.crt"
  elif [ -n "$creds" ]; then
    # bcrypt is the only scheme the registry accepts; cost 4 (the minimum)
    # because the registry re-checks the hash on every request.
    htpasswd -Bbn -C 4 "${creds%%:*}" "${creds#*:}" | sed '/^$/d' >"$dir/htpasswd"
    auth="auth:
  htpasswd:
    realm: strata-test-registry
    path: $dir/htpasswd"
  fi

  cat >"$dir/config.yml" <<EOF
version: 0.1
log:
  level: info
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $dir/data
  delete:
    enabled: true
  cache:
    blobdescriptor: inmemory
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:$port
  secret: strata-test-registry-secret
  headers:
    X-Content-Type-Options: [nosniff]
$auth
EOF

  if [ "$token" -eq 1 ]; then
    local credarg=()
    if [ -n "$creds" ]; then
      printf '%s\n' "$creds" >"$dir/auth/token_creds"
      credarg=(--creds "$dir/auth/token_creds")
    else
      rm -f "$dir/auth/token_creds"
    fi
    setsid "$(python_bin)" -u "$dir/auth/token_server.py" --key "$dir/auth/token.key" \
      --issuer "$ISSUER" --service "$SERVICE" --port "$tport" "${credarg[@]}" \
      </dev/null >>"$dir/token.log" 2>&1 &
    echo $! >"$dir/token.pid"
  fi

  setsid docker-registry serve "$dir/config.yml" </dev/null >>"$dir/registry.log" 2>&1 &
  local pid=$!
  echo "$pid" >"$dir/registry.pid"

  local ok=0 tok_ok=1 _
  [ "$token" -eq 1 ] && tok_ok=0
  for _ in $(seq 1 300); do
    if ! pid_alive "$pid"; then
      tail -n 20 "$dir/registry.log" >&2
      rm -f "$dir/registry.pid"; stop_pidfile "$dir/token.pid"
      die "docker-registry exited during start (log: $dir/registry.log)"
    fi
    if [ "$token" -eq 1 ] && [ "$tok_ok" -eq 0 ]; then
      pid_alive "$(cat "$dir/token.pid")" || { tail -n 20 "$dir/token.log" >&2; stop_pidfile "$dir/registry.pid"; die "token server exited (log: $dir/token.log)"; }
      st=$(http_status "http://127.0.0.1:$tport/")
      [ "$st" = 000 ] || tok_ok=1
    fi
    if [ "$ok" -eq 0 ]; then
      st=$(http_status "http://127.0.0.1:$port/v2/")
      { [ "$st" = 200 ] || [ "$st" = 401 ]; } && ok=1
    fi
    [ "$ok" -eq 1 ] && [ "$tok_ok" -eq 1 ] && { echo "$pid"; return 0; }
    sleep 0.1
  done
  stop_pidfile "$dir/registry.pid"; stop_pidfile "$dir/token.pid"
  die "registry on 127.0.0.1:$port did not answer within 30 s (log: $dir/registry.log)"
}

cmd_stop() {
  [ $# -eq 1 ] || die "usage: registry.sh stop DIR"
  [ -d "$1" ] || return 0
  stop_pidfile "$1/registry.pid"
  stop_pidfile "$1/token.pid"
}

cmd_token() {
  [ $# -ge 1 ] || die "usage: registry.sh token DIR [SCOPE...]"
  local dir=$1; shift
  [ -f "$dir/auth/token.key" ] || die "$dir has no token key (start it with --token)"
  "$(python_bin)" "$dir/auth/token_server.py" --key "$dir/auth/token.key" \
    --issuer "$ISSUER" --service "$SERVICE" --mint "$@"
}

case ${1:-} in
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  token) shift; cmd_token "$@" ;;
  install) ensure_packages docker-registry curl ca-certificates apache2-utils openssl python3 ;;
  *) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2 ;;
esac
