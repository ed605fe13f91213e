// The serving side of the peer protocol (proto/peer.proto): a node answers
// other nodes' Wants for chunks from its chunk store, and coordinates the
// chunks it is asked for but lacks. The store's one-fill-per-chunk is the
// coordination: the first Want of a missing chunk becomes the chunk's fill,
// whose source is a fetch lease granted to that asker, and every later Want
// (and this node's own readers) waits on that fill and is answered with its
// bytes as soon as they arrive. A lease that fails (the asker died, gave up
// or sent bytes that do not check) fails the fill; the waiters then try
// again and the next of them is granted the lease.
#pragma once

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/service_type.h>
#include <grpcpp/support/sync_stream.h>

#include <atomic>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/grpc_status.h"
#include "cache/chunk_store.h"
#include "peer/tls.h"
#include "peer/wire.h"

namespace strata::peer {

struct PeerServiceOptions {
  // How often a Want may wait on a fill that fails before it gives up.
  int max_fill_attempts = 3;
  absl::Duration lease_timeout = absl::Seconds(30);  // told to lease holders
  // Chunks read out and sent at once: each holds a chunk's buffer and its
  // pieces in flight, so a node asked by many peers at once waits rather
  // than holding one of each per ask.
  int max_sending = 16;
  // Threads that read the chunks askers will want next (Want.next) from
  // disk into memory, and how many such reads may wait for one; hints
  // past that are dropped (they are only hints).
  int read_ahead_threads = 2;
  size_t read_ahead_queue = 16;
};

struct PeerServiceStats {
  uint64_t wants = 0;
  uint64_t refused = 0;        // malformed or conflicting Wants
  uint64_t chunks_served = 0;  // answered with bytes
  uint64_t bytes_served = 0;   // uncompressed
  uint64_t wire_bytes_served = 0;
  uint64_t compressed_chunks = 0;
  uint64_t leases_granted = 0;
  uint64_t leases_failed = 0;       // the holder failed, vanished or sent bad bytes
  uint64_t chunks_received = 0;     // lease holders' uploads stored
  uint64_t read_ahead_queued = 0;   // chunks askers said came next, queued
  uint64_t read_ahead = 0;          // of those, read from disk ahead of their asks
  uint64_t read_ahead_dropped = 0;  // hints dropped: too many waiting
};

// proto/peer.proto's Peer service, its messages taken and given as byte
// buffers (peer/wire.h says why): registered as the generated service
// would register it, under the same name, so any client of the proto
// reaches it.
class PeerService final : public grpc::Service {
 public:
  // Either way, FetchRequests up and FetchResponses down, encoded.
  using Stream = grpc::ServerReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>;

  PeerService(cache::ChunkStore& store, PeerServiceOptions options = {});
  ~PeerService() override;  // Stop()s

  // Ends the read-ahead threads (a read under way is finished first): the
  // store may go once this returns and the server has shut down.
  void Stop();

  grpc::Status Fetch(grpc::ServerContext* context, Stream* stream);

  PeerServiceStats Stats() const;

 private:
  // The source of a fill that this asker's lease makes: grant it, then take
  // the bytes the asker sends up the stream into `out`.
  absl::Status Lease(Stream* stream, const v1::Want& want, const std::string& asker,
                     absl::Span<char> out);

  // One of the max_sending slots, held while it lives.
  class SendSlot {
   public:
    explicit SendSlot(PeerService& service);
    ~SendSlot();
    SendSlot(const SendSlot&) = delete;
    SendSlot& operator=(const SendSlot&) = delete;

   private:
    PeerService& service_;
  };
  // The chunk's bytes, if this node has it now in the shape asked for.
  absl::StatusOr<cache::StoredChunk> ReadPresent(const std::string& key, const v1::ChunkRef& chunk);
  // Sends a chunk's bytes with the checksum they were stored (or just
  // checked) with: they are not hashed again.
  grpc::Status SendStored(Stream* stream, const v1::Want& want, const cache::StoredChunk& chunk);
  grpc::Status Send(Stream* stream, const v1::Want& want, size_t length, uint64_t xxh3,
                    ChunkReader read);

  // Queues the chunks `want` says come next, those this node has in the
  // shape asked for, to be read into memory by the read-ahead threads.
  void ReadAhead(const v1::Want& want);
  void ReadAheadLoop();

  cache::ChunkStore& store_;
  const PeerServiceOptions opts_;
  absl::Mutex ahead_mu_;
  std::deque<v1::ChunkRef> ahead_ ABSL_GUARDED_BY(ahead_mu_);
  bool stopping_ ABSL_GUARDED_BY(ahead_mu_) = false;
  std::vector<std::thread> ahead_threads_;
  const std::shared_ptr<PiecePool> pieces_ = PiecePool::Create();
  absl::Mutex send_mu_;
  int sending_ ABSL_GUARDED_BY(send_mu_) = 0;
  std::atomic<double> compress_rate_{300e6};  // bytes/s zstd manages here (EWMA)
  std::atomic<uint64_t> wants_{0}, refused_{0}, served_{0}, bytes_{0}, wire_{0}, compressed_{0};
  std::atomic<uint64_t> leases_{0}, leases_failed_{0}, received_{0};
  std::atomic<uint64_t> read_ahead_queued_{0}, read_ahead_{0}, read_ahead_dropped_{0};
};

// Serves `service` on `address` (host:port) with `credentials`.
absl::StatusOr<std::unique_ptr<grpc::Server>> StartPeerServer(const std::string& address,
                                                              const PeerCredentials& credentials,
                                                              PeerService& service);

}  // namespace strata::peer
