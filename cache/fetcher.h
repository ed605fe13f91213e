// The fetcher turns a read of (object, offset, length) into chunk fetches
// from the object's origin, through the chunk store: one fetch per chunk at a
// time, bounded concurrency per origin, retries with backoff, readahead for
// sequential readers and low-priority prefetch. It never returns bytes it
// could not check when the object's digest (or its chunks' digests) is known.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "base/clock.h"
#include "base/latency.h"
#include "cache/chunk_peers.h"
#include "cache/chunk_store.h"
#include "origin/origin.h"

namespace strata::cache {

// One object of one origin, as read. `stat` pins the version read.
struct FetchTarget {
  std::shared_ptr<origin::Origin> origin;
  std::string path;
  origin::ObjectStat stat;
  uint32_t chunk_size = 0;  // 0: the store's default
  // Lowercase hex sha256 of each chunk, when a table of contents gives them;
  // otherwise a `stat.digest` is checked over the whole object before any of
  // it is served.
  std::vector<std::string> chunk_sha256;
};

// A target's object by name, as logs and errors give it and as the store
// records the version last seen (ChunkStore::RecordSeen): origin URL and
// path, without a version.
std::string ObjectName(const FetchTarget& target);

// The store key of a target: its digest when content-addressed (so the same
// blob is shared across origins), else origin URL, path and version.
std::string StoreKey(const FetchTarget& target);

struct FetcherOptions {
  int demand_workers = 8;      // threads that fetch for readers
  int background_workers = 8;  // threads for readahead and prefetch
  int max_inflight_per_origin = 8;
  uint64_t readahead_max_bytes = 64ull << 20;
  absl::Duration read_deadline = absl::Minutes(2);  // per chunk, retries included
  int max_attempts = 6;
  absl::Duration backoff_initial = absl::Milliseconds(50);
  absl::Duration backoff_max = absl::Seconds(5);
  // Record each target's version as the one last seen for its object
  // (ChunkStore::RecordSeen). Off for a reader whose targets come from
  // those records rather than from their origins.
  bool record_seen = true;
  // What deadlines, retry backoff (its sleeps too) and request latencies are
  // measured on. Not owned.
  Clock* clock = RealClock();
  // Asked for every missed chunk of an object whose version the cluster
  // shares (Origin::SharedVersion) before its origin; null: origin only.
  // Not owned.
  ChunkPeers* peers = nullptr;
};

struct FetcherStats {
  uint64_t origin_requests = 0;
  uint64_t origin_bytes = 0;
  uint64_t peer_bytes = 0;
  uint64_t peer_corrupt_chunks = 0;  // from a peer, not matching their digest
  uint64_t retries = 0;
  uint64_t failures = 0;         // reads that ended in an error
  uint64_t corrupt_chunks = 0;   // chunk digest mismatches
  uint64_t digest_failures = 0;  // whole-object digest mismatches
  uint64_t readahead_chunks = 0;
  uint64_t prefetch_chunks = 0;
  LatencyCounts latency;  // of origin requests
};

class Fetcher {
 public:
  explicit Fetcher(ChunkStore& store, FetcherOptions options = {});
  ~Fetcher();
  Fetcher(const Fetcher&) = delete;
  Fetcher& operator=(const Fetcher&) = delete;

  // Reads [offset, offset + out.size()) clipped at the object's end; returns
  // the bytes read. Errors name the origin, the object and the cause. Every
  // read, like Ensure and Prefetch, records the target's version as the one
  // last seen for its object (FetcherOptions::record_seen).
  absl::StatusOr<size_t> Read(const FetchTarget& target, uint64_t offset, absl::Span<char> out);
  // Read, but without waiting for a content-addressed object to be checked
  // against its whole digest: only for bytes whose use is itself checked
  // later, such as the tar headers a layer is indexed from (no file of the
  // layer is served before the layer matches its digest). Chunk digests
  // (FetchTarget::chunk_sha256) are checked as always.
  absl::StatusOr<size_t> ReadUnverified(const FetchTarget& target, uint64_t offset,
                                        absl::Span<char> out);

  // Makes [offset, offset + length) present in the store as a read would
  // (reader priority, readahead), without copying it out: the caller then
  // serves it from the store (FUSE splices it). False when the store could
  // not keep it (full, degraded): use Read then.
  absl::StatusOr<bool> Ensure(const FetchTarget& target, uint64_t offset, uint64_t length);

  // Warms the chunks under `ranges` ({offset, length} pairs; none: the whole
  // object) at low priority; `progress(done, total)` is called from this
  // thread as chunks land, in bytes of chunks, and last with done == total
  // when every chunk landed. `stop()`, asked on this thread before each
  // chunk is queued and whenever one lands, ends it early: nothing more is
  // queued, the chunks in flight finish, and the answer is Cancelled.
  // Returns the first error.
  using Ranges = std::vector<std::pair<uint64_t, uint64_t>>;
  absl::Status Prefetch(const FetchTarget& target, const Ranges& ranges = {},
                        const std::function<void(uint64_t done, uint64_t total)>& progress = {},
                        const std::function<bool()>& stop = {});

  FetcherStats Stats() const;

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::cache
