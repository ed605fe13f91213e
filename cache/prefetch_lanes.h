// The order in which a prefetch queues an object's chunks when nodes share
// them: two lanes, each with its own window of chunks in flight, so that
// the origin and the links between nodes are busy at the same time.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"

namespace strata::cache {

// Lane kOwn holds the chunks this node owns, in the object's order: it
// reads them from the origin. Lane kTheirs holds the rest, in the order
// their owners read them (each owner's first chunk, then each one's
// second...), so that they are asked for as they land. Nodes that warm one
// object at once (a DaemonSet's prefetch, a scale-out) so read their shares
// from the origin all at once, each straight into its own store, while the
// shares that have landed flow between them. In one lane in the object's
// order they moved in step, all waiting on the same few chunks' origin
// reads; with owned chunks first, the links between nodes were idle until
// the origin was done. Without an owner function there is one lane.
class PrefetchLanes {
 public:
  enum Lane { kOwn = 0, kTheirs = 1 };
  // `owner(chunk)`: the chunk's owner now, "" for this node; empty: one lane.
  using OwnerFn = std::function<std::string(uint32_t chunk)>;

  PrefetchLanes(std::vector<uint32_t> chunks, OwnerFn owner);

  bool Empty() const { return Left(kOwn) == 0 && Left(kTheirs) == 0; }
  size_t Left(Lane lane) const { return lanes_[lane].size() - next_[lane]; }
  // The next chunk of `lane`, which must not be empty.
  uint32_t Take(Lane lane) { return lanes_[lane][next_[lane]++]; }
  // Drops every chunk not taken yet.
  void Clear();
  // Splits the chunks not taken yet again, after owners changed (a peer
  // set aside, back, joined or left).
  void Resplit();
  // How many chunks `lane` may have queued on a pool of `workers` threads.
  // With both lanes busy, the owned lane at most half the workers: its
  // origin reads are slow, and with all the workers in them the chunks
  // that have landed at other nodes waited (and 8 origin reads per node
  // made four nodes slower than 4 did: more CPU for the same bytes); the
  // other lane all of them. Alone, twice the workers, so that the pool
  // never waits for the next chunk to be queued.
  int Window(Lane lane, int workers) const;
  // Up to `n` chunks of lane kTheirs that follow `chunk` (one of that lane)
  // at its owner, in the order they will be asked for: what that owner may
  // read from its disk ahead of the asks (Want.next in proto/peer.proto).
  std::vector<uint32_t> NextAtOwner(uint32_t chunk, size_t n) const;

 private:
  void Split(std::vector<uint32_t> chunks);

  OwnerFn owner_;
  std::vector<uint32_t> lanes_[2];
  size_t next_[2] = {0, 0};
  // Lane kTheirs's chunks by owner (in the object's order), and where each
  // chunk is in its owner's list.
  std::vector<std::vector<uint32_t>> at_owner_;
  absl::flat_hash_map<uint32_t, std::pair<uint32_t, uint32_t>> place_;  // chunk: (owner, place)
};

}  // namespace strata::cache
