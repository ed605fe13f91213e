// Peer credentials: gRPC's TLS with a client certificate required and
// verified by both sides against the cluster's peer CA.
#include "peer/tls.h"

#include <grpcpp/security/credentials.h>

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
  grpc::SslServerCredentialsOptions so(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  so.pem_root_certs = *ca;
  so.pem_key_cert_pairs.push_back({*key, *crt});
  c.server = grpc::SslServerCredentials(so);
  grpc::SslCredentialsOptions co;
  co.pem_root_certs = *ca;
  co.pem_private_key = *key;
  co.pem_cert_chain = *crt;
  c.channel = grpc::SslCredentials(co);
  c.server_name = o.server_name;
  return c;
}

}  // namespace strata::peer
