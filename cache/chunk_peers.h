// The fetcher's seam to the cluster: where a missed chunk of an object whose
// version every node shares comes from before (or instead of) the origin.
// peer/ implements it; nothing in cache/ knows how peers are reached.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace strata::cache {

// One chunk by its cluster-wide key (see StoreKey).
struct ChunkId {
  std::string_view key;
  uint32_t index = 0;
  uint64_t object_size = 0;
  uint32_t chunk_size = 0;
  // Chunks of the same object this node will ask the chunk's owner for
  // next, in order (a prefetch knows them): the owner may read them from
  // its disk ahead of those asks. A hint; empty when not known.
  absl::Span<const uint32_t> next;
};

enum class ChunkFrom { kPeer, kOrigin };

class ChunkPeers {
 public:
  virtual ~ChunkPeers() = default;

  // Fills `out` (exactly the chunk's length) with the chunk: from the peer
  // that has it, or through `from_origin` (the fetcher's own origin read,
  // with its retries and checks) when this node is to fetch it (it owns the
  // chunk, or holds its fetch lease, or no peer could help). Says where the
  // bytes came from; an error only when `from_origin` failed, since a peer's
  // problem costs time, never a read.
  virtual absl::StatusOr<ChunkFrom> Fetch(
      const ChunkId& chunk, absl::Span<char> out,
      absl::FunctionRef<absl::Status(absl::Span<char>)> from_origin) = 0;

  // The node that owns the chunk now, the one every node asks for it first:
  // its address, or "" when it is this node.
  virtual std::string Owner(const ChunkId& chunk) const = 0;

  // A value that changes whenever chunks may have changed owners (a peer
  // was set aside or is back, joined or left).
  virtual uint64_t Epoch() const = 0;
};

}  // namespace strata::cache
