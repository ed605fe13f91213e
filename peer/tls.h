// How peers reach each other: mutual TLS from a certificate directory in
// the layout of a cert-manager (kubernetes.io/tls) Secret, or plain TCP
// where an operator asked for it.
#pragma once

#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace strata::peer {

struct PeerTlsOptions {
  // Holds ca.crt (the CA every peer's certificate must chain to), tls.crt
  // and tls.key (this node's certificate, presented both when serving and
  // when asking). Empty: plain TCP, only with `insecure`.
  std::string dir;
  // The name every peer's certificate carries (a DNS SAN): what a node
  // checks the peer it connects to against, since peers are reached by IP.
  std::string server_name = "strata-peer";
  bool insecure = false;
  // How often the files are read again: a renewed certificate (cert-manager
  // rewrites the Secret, kubelet the mounted files) is used without a
  // restart.
  unsigned refresh_seconds = 60;
};

struct PeerCredentials {
  std::shared_ptr<grpc::ServerCredentials> server;
  std::shared_ptr<grpc::ChannelCredentials> channel;
  std::string server_name;  // empty when insecure
};

// Checks the certificate directory (its files must be readable PEM) and
// makes credentials that read it again every refresh_seconds.
// InvalidArgument for neither a directory nor `insecure`, or both.
absl::StatusOr<PeerCredentials> LoadPeerCredentials(const PeerTlsOptions& options);

}  // namespace strata::peer
