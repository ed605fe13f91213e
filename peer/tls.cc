// Peer credentials: gRPC's TLS with a client certificate required and
// verified by both sides against the cluster's peer CA.
#include "peer/tls.h"

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/logging.h"

namespace strata::peer {
namespace {

absl::StatusOr<std::string> ReadPem(const std::string& dir, const char* name) {
  std::string path = absl::StrCat(dir, "/", name);
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  std::string pem = ss.str();
  if (pem.find("-----BEGIN ") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(path, " holds no PEM block"));
  }
  return pem;
}

}  // namespace

absl::StatusOr<PeerCredentials> LoadPeerCredentials(const PeerTlsOptions& o) {
  if (o.dir.empty() == !o.insecure) {
    return absl::InvalidArgumentError(
        o.insecure ? "--peer-tls-dir and --peer-insecure exclude each other"
                   : "peers need --peer-tls-dir (ca.crt, tls.crt, tls.key) or, on a trusted "
                     "network only, --peer-insecure");
  }
  PeerCredentials c;
  if (o.insecure) {
    spdlog::warn(
        "peers: --peer-insecure: chunks travel over plain TCP and any host that reaches the peer "
        "port can read this node's cache; use --peer-tls-dir outside a trusted network");
    c.server = grpc::InsecureServerCredentials();
    c.channel = grpc::InsecureChannelCredentials();
    return c;
  }
  auto ca = ReadPem(o.dir, "ca.crt");
  if (!ca.ok()) return ca.status();
  auto crt = ReadPem(o.dir, "tls.crt");
  if (!crt.ok()) return crt.status();
  auto key = ReadPem(o.dir, "tls.key");
  if (!key.ok()) return key.status();
  // gRPC's file watcher reads the three files again every refresh, so
  // renewed certificates take over without a restart (a restart would be
  // cheap here, but the node's mounts make it a moment worth sparing).
  auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
      o.dir + "/tls.key", o.dir + "/tls.crt", o.dir + "/ca.crt", o.refresh_seconds);
  grpc::experimental::TlsServerCredentialsOptions so(provider);
  so.watch_root_certs();
  so.watch_identity_key_cert_pairs();
  so.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  c.server = grpc::experimental::TlsServerCredentials(so);
  grpc::experimental::TlsChannelCredentialsOptions co;
  co.set_certificate_provider(provider);
  co.watch_root_certs();
  co.watch_identity_key_cert_pairs();
  co.set_verify_server_certs(true);
  c.channel = grpc::experimental::TlsCredentials(co);
  c.server_name = o.server_name;
  return c;
}

}  // namespace strata::peer
