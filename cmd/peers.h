// The node's peers as a daemon wires them: the --peer-* flags, the member
// list and client the fetcher asks (opened before the cache), the service
// that serves the store to the others (started once the store is open), and
// their metrics.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "cache/chunk_store.h"
#include "peer/membership.h"
#include "peer/peer_client.h"
#include "peer/peer_service.h"

namespace strata::cmd {

struct PeerFlags {
  std::string address;  // empty: no peers
  std::vector<std::string> peers;
  std::string service;
  double resolve_interval = 30;
  std::string tls_dir;
  std::string tls_name = "strata-peer";
  bool insecure = false;
  double timeout = 20;
};

void AddPeerFlags(CLI::App& command, PeerFlags& flags);

// Members (self first), client, service and server, torn down in reverse:
// the server stops before the store it serves goes (call Stop first).
struct Peers {
  std::unique_ptr<peer::Membership> membership;
  std::unique_ptr<peer::PeerClient> client;
  std::unique_ptr<peer::PeerService> service;
  std::unique_ptr<grpc::Server> server;
  peer::PeerCredentials credentials;

  bool enabled() const { return membership != nullptr; }
  // Starts serving `store`, whose memory tier holds `memory_bytes`, on the
  // peer address.
  absl::Status Serve(cache::ChunkStore& store, uint64_t memory_bytes);
  // Stops serving: chunks being sent are cut off (their askers fall back),
  // and reading ahead for askers ends.
  void Stop();
  std::string MetricsText() const;
};

// The membership and client of the flags (nothing without --peer-address);
// flag mistakes are usage errors. The fetcher is then given `client`.
absl::StatusOr<Peers> OpenPeers(const PeerFlags& flags);

}  // namespace strata::cmd
