// The chunk store's insides, shared by the files that implement it (the core
// read/write/lease paths, the memory tier, the buffer pool, the open-file
// budget, eviction, verification, opening). Internal to cache/: everything
// else includes cache/chunk_store.h.
#pragma once

#ifndef STRATA_CACHE_INTERNAL
#error "cache/chunk_store_impl.h is internal to cache/; include cache/chunk_store.h"
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cache/chunk_index.h"
#include "cache/chunk_store.h"
#include "cache/store_fs.h"

namespace strata::cache::internal {

inline constexpr size_t kMaxKeyLength = 4096;
inline constexpr uint32_t kMinChunkSize = 4096;
inline constexpr uint32_t kMaxChunkSize = 256u << 20;
// 1 PiB. Sizes come from origins (a Content-Length); the chunk arithmetic
// must never see one near 2^64, where rounding up to chunks wraps around.
inline constexpr uint64_t kMaxObjectSize = uint64_t{1} << 50;

// ---------------------------------------------------------------------------
// Objects and their chunks, as the store holds them in memory (under its
// mutex). A chunk moves kAbsent -> kFilling -> kPresent, and kPresent ->
// kDropping -> kAbsent when it is evicted or found corrupt.

enum class ChunkState : uint8_t { kAbsent, kFilling, kPresent, kDropping };

struct Chunk {
  ChunkState state = ChunkState::kAbsent;
  bool verified = false;   // checksum checked (or written) by this process
  bool verifying = false;  // a check is under way; readers wait for it
  uint64_t checksum = 0;
  int64_t last_use_us = 0;
};

// One fill of one chunk, shared by the callers that wait for it.
struct Flight {
  bool done = false;
  absl::Status status;
  std::shared_ptr<const ChunkBytes> bytes;
  bool cached = false;
};

struct Object {
  std::string key;
  ObjectRecord rec;
  std::vector<Chunk> chunks;
  absl::flat_hash_map<uint32_t, std::shared_ptr<Flight>> flights;
  int fd = -1;
  int readers = 0;       // ranges lent out, including whole-object leases
  int kernel_holds = 0;  // whole-object leases (LeaseWhole): never punched
  int pins = 0;
  uint64_t bytes_present = 0;
  uint64_t next_offset = 0;       // where the last read ended: sequential reads verify ahead
  uint64_t allocated_to = 0;      // disk blocks are reserved up to here (AllocationFor)
  uint64_t alloc_window = 0;      // how far past a sequential fill to reserve
  uint32_t read_ahead_chunk = 0;  // chunks before it were read ahead for a sequential reader
  bool removing = false;
  bool last_use_dirty = false;
  bool buffered_writes = false;  // ObjectSpec::whole_before_use
  StoreFs* fs = nullptr;

  ~Object() {
    if (fd >= 0) fs->Close(fd);
  }
  uint32_t ChunkLength(uint32_t i) const {
    uint64_t start = static_cast<uint64_t>(i) * rec.chunk_size;
    return static_cast<uint32_t>(std::min<uint64_t>(rec.chunk_size, rec.size - start));
  }
  bool Busy() const { return readers > 0 || pins > 0 || !flights.empty() || removing; }
};

using ObjectPtr = std::shared_ptr<Object>;

struct Counters {
  std::atomic<uint64_t> reads{0}, read_hits{0}, read_misses{0}, bytes_read{0}, memory_hits{0};
  std::atomic<uint64_t> read_waits{0};
  std::atomic<uint64_t> chunks_written{0}, bytes_written{0}, write_errors{0};
  std::atomic<uint64_t> checksum_failures{0}, chunks_verified{0}, fills{0}, fill_waits{0};
  std::atomic<uint64_t> evicted_objects{0}, evicted_chunks{0}, evicted_bytes{0};
  std::atomic<uint64_t> corrupt_index_records{0};
};

// ---------------------------------------------------------------------------
// BufferPool (chunk_store_buffers.cc): chunk buffers for fills, recycled:
// fresh memory per chunk (page faults and zeroing) costs as much as the copy
// that fills it. Thread-safe; the buffers it hands out keep it alive.

class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  std::shared_ptr<ChunkBytes> Get(size_t len);

 private:
  void Put(ChunkBytes* b);

  static constexpr size_t kKeep = 8;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<ChunkBytes>> free_ ABSL_GUARDED_BY(mu_);
};

// ---------------------------------------------------------------------------
// MemoryTier (chunk_store_memory.cc): the bytes of recently filled chunks,
// oldest dropped first once over budget. An entry costs its buffer's whole
// allocation plus its bookkeeping, so a tier of many small chunks stays
// within its budget too. Not thread-safe: the store guards it with its mutex,
// since a chunk's entry changes together with the chunk's state.

class MemoryTier {
 public:
  explicit MemoryTier(uint64_t budget) : budget_(budget) {}

  void Remember(const std::string& key, uint32_t index, std::shared_ptr<const ChunkBytes> bytes);
  // The bytes of chunk `index` of `key` when they are in the tier.
  const std::shared_ptr<const ChunkBytes>* Find(const std::string& key, uint32_t index) const;
  void Forget(const std::string& key, uint32_t index);
  void ForgetObject(const std::string& key);
  uint64_t bytes() const { return bytes_; }

 private:
  struct Entry {
    std::string key;
    uint32_t index = 0;
    std::shared_ptr<const ChunkBytes> bytes;
    uint64_t cost = 0;  // its buffer and bookkeeping, in bytes
  };
  static uint64_t Cost(const std::string& key, const ChunkBytes& bytes);
  void Erase(std::list<Entry>::iterator it);

  const uint64_t budget_;
  std::list<Entry> entries_;  // oldest first
  // key -> chunk index -> entry (looked up by the key without a copy)
  absl::flat_hash_map<std::string, absl::flat_hash_map<uint32_t, std::list<Entry>::iterator>> at_;
  uint64_t bytes_ = 0;
};

// ---------------------------------------------------------------------------
// ChunkStoreImpl: the store. One mutex guards the in-memory map of objects
// and their chunk states; all I/O (io_uring, RocksDB) runs outside it. Fills
// of a dropping chunk wait for it to settle, so an index record and the
// bytes on disk always change in that order. Its members are defined in the
// file named above each group.

class ChunkStoreImpl final : public ChunkStore {
 public:
  // chunk_store_open.cc
  explicit ChunkStoreImpl(StoreOptions opts);
  ~ChunkStoreImpl() override;
  absl::Status Init();

  // chunk_store_impl.cc
  absl::Status Register(const ObjectSpec& spec) override;
  std::optional<ObjectInfo> Lookup(const std::string& key) const override;
  std::vector<ObjectInfo> List() const override;
  absl::StatusOr<ReadResult> Read(const std::string& key, uint64_t offset,
                                  absl::Span<char> out) override;
  absl::StatusOr<std::vector<uint32_t>> MissingChunks(const std::string& key, uint64_t offset,
                                                      uint64_t length) const override;
  absl::StatusOr<ReadLease> Lease(const std::string& key, uint64_t offset, size_t length) override;
  absl::StatusOr<StoredChunk> ReadChunk(const std::string& key, uint32_t index) override;
  absl::StatusOr<ReadLease> LeaseWhole(const std::string& key, bool as_is) override;
  void ReleaseOpenHolds() override;
  absl::StatusOr<FillResult> Fill(const std::string& key, uint32_t index,
                                  ChunkSource source) override;
  absl::Status MarkDigestVerified(const std::string& key) override;
  bool DigestVerified(const std::string& key) const override;
  absl::Status RecordSeen(const std::string& name, const SeenVersion& seen) override;
  std::optional<SeenVersion> LastSeen(const std::string& name) const override;
  absl::Status Pin(const std::string& key) override;
  absl::Status Unpin(const std::string& key) override;
  absl::Status Remove(const std::string& key) override;
  StoreStats Stats() const override;
  absl::Status health() const override;
  void Flush() override;

  // chunk_store_evict.cc
  EvictReport Evict(const EvictRequest& req) override;

  // chunk_store_verify.cc
  VerifyReport Verify() override;

 private:
  // A range of an object with its chunks checked: either all present (the
  // object's reader count is raised; call Release) or `missing` is set.
  struct Acquired {
    ObjectPtr obj;
    int fd = -1;
    size_t length = 0;
    uint32_t first = 0, last = 0;
    std::vector<uint32_t> missing;
    // The chunk's bytes when the range lies in one chunk, or in two, that
    // are in memory (`memory_next`: the second).
    std::shared_ptr<const ChunkBytes> memory, memory_next;
    size_t memory_offset = 0;
  };

  // What a drop decided under the lock; FinishDrop does its I/O.
  struct DropPlan {
    std::vector<uint32_t> chunks;  // moved to kDropping
    bool was_verified = false;
    ObjectRecord rec;
    int fd = -1;  // when >= 0, pinned (a reader count) and its holes are punched
  };

  struct VerifyItem {
    ObjectPtr obj;
    uint32_t index = 0;
    uint64_t checksum = 0;
  };

  // chunk_store_impl.cc: reads, fills, drops and removals.
  int64_t NowUs() const;  // the store's clock, as last-use stamps hold it
  // Submits `op` alone: OK only when it moved all its bytes; `what` names
  // it in an error.
  absl::Status SubmitOne(IoOp& op, const std::string& what);
  // `read_ahead`: a sequential reader's next chunks are read into the page
  // cache (not for a chunk read whole around it).
  absl::StatusOr<Acquired> Acquire(const std::string& key, uint64_t offset, size_t length,
                                   bool read_ahead = true);
  // Reads chunk `index` of `a` (held, present, not in memory) whole around
  // the page cache, checks it against `checksum`, and keeps it in the
  // memory tier. An error (logged) when it cannot be read or is not right.
  absl::StatusOr<std::shared_ptr<const ChunkBytes>> ReadIntoMemory(const Acquired& a,
                                                                   uint32_t index,
                                                                   uint64_t checksum);
  std::pair<uint64_t, uint64_t> ReadAheadLocked(Object& o, uint32_t last)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Release(const ObjectPtr& obj);
  ReadLease LeaseOf(Acquired&& a, uint64_t offset);
  absl::Status Store(const ObjectPtr& obj, uint32_t index, const ChunkBytes& bytes);
  std::pair<uint64_t, uint64_t> AllocationFor(Object& o, uint32_t index, uint32_t len)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  DropPlan BeginDropLocked(Object& obj, const std::vector<uint32_t>& indexes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void FinishDrop(const ObjectPtr& obj, const DropPlan& p, bool corrupt);
  std::vector<uint32_t> Drop(const ObjectPtr& obj, const std::vector<uint32_t>& indexes,
                             bool corrupt);
  void BeginRemoveLocked(Object& o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status FinishRemove(const ObjectPtr& obj);
  static absl::Status OutOfChunks(const Object& o);
  ObjectInfo InfoLocked(const Object& o) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  uint64_t HighLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // chunk_store_files.cc: the open-file budget.
  absl::StatusOr<int> EnsureFdLocked(Object& o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CloseIdleFilesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // chunk_store_evict.cc: eviction and the background evictor.
  void EvictBytes(uint64_t need, bool whole_objects, EvictReport* rep);
  void FlushLastUse();
  void EvictorLoop();

  // chunk_store_verify.cc: checksums, verify-ahead and the scrub.
  bool CheckChunk(Object& obj, int fd, uint32_t i, uint64_t want);
  void VerifyAheadLocked(const ObjectPtr& obj, uint32_t last) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndVerify(Object& obj, const std::vector<std::pair<uint32_t, uint64_t>>& chunks);
  void VerifierLoop();
  void Scrub();

  // chunk_store_open.cc: opening the directory and index, recovery.
  absl::Status OpenDisk();

  StoreOptions opts_;
  std::shared_ptr<StoreFs> fs_;
  std::string objects_dir_;
  std::unique_ptr<ChunkIndex> index_;
  bool health_ok_ = false;  // set once at open: the index and directory work

  mutable absl::Mutex mu_;
  absl::CondVar cv_;        // fills, drops, removals and ReadChunk's disk reads finished
  absl::CondVar evict_cv_;  // wakes the evictor
  absl::flat_hash_map<std::string, ObjectPtr> objects_ ABSL_GUARDED_BY(mu_);
  std::vector<ObjectPtr> open_holds_ ABSL_GUARDED_BY(mu_);  // StoreOptions::held_at_open
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t open_files_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t capacity_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status health_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool evict_kick_ ABSL_GUARDED_BY(mu_) = false;
  bool disk_full_ ABSL_GUARDED_BY(mu_) = false;
  std::deque<VerifyItem> verify_queue_ ABSL_GUARDED_BY(mu_);
  MemoryTier memory_ ABSL_GUARDED_BY(mu_);
  // ReadChunk's reads from disk under way, by object and chunk: a chunk
  // asked for by several peers at once (or read ahead for one while it
  // asks) is read once, and the others wait for those bytes. An object
  // with a read under way is held by that reader, so its address is its
  // own while it is in here.
  struct DiskRead {
    bool done = false;
    absl::StatusOr<std::shared_ptr<const ChunkBytes>> bytes;
  };
  absl::flat_hash_map<std::pair<const Object*, uint32_t>, std::shared_ptr<DiskRead>> disk_reads_
      ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stop_verify_{false};
  Counters ctr_;
  std::shared_ptr<BufferPool> buffers_ = std::make_shared<BufferPool>();
  std::thread evictor_;
  std::thread verifier_;
};

}  // namespace strata::cache::internal
