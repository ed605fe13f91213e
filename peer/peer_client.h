// The asking side of the peer protocol: the fetcher's ChunkPeers. A missed
// chunk is asked of its owner (Membership); the owner answers with the
// bytes, or grants this node the fetch lease, in which case this node reads
// the origin with its own credentials and hands the chunk to the owner for
// everyone else. A peer that is down, slow past the deadline, or sends bytes
// that do not check is set aside and the next candidate asked; when this
// node is the next candidate, it reads the origin itself. An owner that
// lacks a chunk first asks the runner-up whether it has it (only if
// present, never waiting): when a node joins, the chunks it takes over
// were the runner-up's, so a new node does not send the cluster's warm
// chunks back to the origin.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/rpc_method.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/latency.h"
#include "cache/chunk_peers.h"
#include "peer/membership.h"
#include "peer/tls.h"
#include "peer/wire.h"

namespace strata::peer {

struct PeerClientOptions {
  // A whole exchange with one peer (waiting for a lease holder included).
  absl::Duration timeout = absl::Seconds(20);
  // Connecting to a peer that is not connected yet (a refusing peer fails
  // at once; this is for a silent or a busy one).
  absl::Duration connect_timeout = absl::Seconds(5);
  // Members asked, in rendezvous order, before this node reads the origin.
  size_t max_candidates = 2;
  bool zstd = true;  // accept zstd pieces
};

struct PeerLinkStats {
  std::string address;
  uint64_t requests = 0;
  uint64_t failures = 0;  // down, deadline, refused, malformed
  uint64_t corrupt = 0;   // bytes that did not match their checksum
  uint64_t chunks = 0;    // received from it
  uint64_t bytes = 0;     // uncompressed
  uint64_t wire_bytes = 0;
  uint64_t leases = 0;  // granted to this node by it
  uint64_t link_bytes_per_second = 0;
};

struct PeerClientStats {
  std::vector<PeerLinkStats> peers;
  uint64_t owned_chunks = 0;      // misses this node was the owner of
  uint64_t runner_up_chunks = 0;  // of those, found at the runner-up
  uint64_t leased_chunks = 0;     // fetched from the origin under a lease
  uint64_t fallback_chunks = 0;   // read from the origin after peers failed
  // From asking a peer to its answer: the chunk's last byte, or a fetch
  // lease (the wait for another holder's fetch included).
  LatencyCounts chunk_answers, lease_answers;
};

class PeerClient final : public cache::ChunkPeers {
 public:
  // `membership` must outlive the client.
  PeerClient(Membership& membership, PeerCredentials credentials, PeerClientOptions options = {});
  ~PeerClient() override;

  absl::StatusOr<cache::ChunkFrom> Fetch(
      const cache::ChunkId& chunk, absl::Span<char> out,
      absl::FunctionRef<absl::Status(absl::Span<char>)> from_origin) override;
  std::string Owner(const cache::ChunkId& chunk) const override;
  uint64_t Epoch() const override { return membership_.Epoch(); }

  PeerClientStats Stats() const;

 private:
  enum class Outcome { kGot, kLeased, kOriginFailed, kPeerFailed, kAbsent };
  struct Link {
    std::shared_ptr<grpc::Channel> channel;
    // Fetch on this channel, registered once, as a generated stub does; its
    // messages go as byte buffers (peer/wire.h).
    std::unique_ptr<grpc::internal::RpcMethod> fetch;
    PeerLinkStats stats;
  };

  // One exchange with `address`. A probe asks only for a chunk the peer has
  // now (kAbsent when it has not) and never takes a lease.
  Outcome Ask(const std::string& address, const cache::ChunkId& chunk, absl::Span<char> out,
              absl::FunctionRef<absl::Status(absl::Span<char>)> from_origin,
              absl::Status* origin_status, bool probe = false);
  // The link to `address`, connected; Unavailable, saying why, when the
  // peer refuses or does not answer within the connect timeout.
  absl::StatusOr<std::shared_ptr<Link>> Connect(const std::string& address);
  // Drops the links to peers that are no longer members (a Service's pod
  // that is gone), with their channels and their series in the metrics;
  // looked at whenever the members changed. Without it a node kept a
  // channel and a set of series for every pod that ever served the Service.
  void ForgetDeparted();
  template <typename F>
  void Update(const std::string& address, F f);

  Membership& membership_;
  const PeerCredentials creds_;
  const PeerClientOptions opts_;
  const std::shared_ptr<PiecePool> pieces_ = PiecePool::Create();
  std::atomic<uint64_t> owned_{0}, runner_up_{0}, leased_{0}, fallback_{0};
  LatencyHistogram chunk_answers_, lease_answers_;
  mutable absl::Mutex mu_;
  // An Ask holds its link's reference: a link dropped meanwhile lives on
  // until that exchange is over.
  absl::flat_hash_map<std::string, std::shared_ptr<Link>> links_ ABSL_GUARDED_BY(mu_);
  uint64_t links_epoch_ ABSL_GUARDED_BY(mu_) = 0;  // the members' Epoch last looked at
};

}  // namespace strata::peer
