// The node-local chunk store: objects (a blob, or one version of an origin
// file) cached in fixed-size chunks, each object in one sparse file at its own
// offsets, with a RocksDB index of what is present. Every read path in Strata
// goes through it; it never serves bytes whose checksum it has not checked
// since the process started.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/clock.h"
#include "base/io_buffer.h"
#include "cache/store_fs.h"

namespace rocksdb {
class Env;
}

namespace strata::cache {

inline constexpr uint32_t kDefaultChunkSize = 4u << 20;
// Alignment of chunk buffers, chunk offsets and chunk sizes, so that chunks
// can be written with O_DIRECT (no page cache copy of what is written).
inline constexpr size_t kIoAlign = IoBuffer::kAlign;

// A chunk's bytes in memory: a fixed-capacity buffer for direct I/O.
class ChunkBytes {
 public:
  explicit ChunkBytes(size_t capacity);
  ~ChunkBytes();
  ChunkBytes(const ChunkBytes&) = delete;
  ChunkBytes& operator=(const ChunkBytes&) = delete;

  char* data() { return buf_.data(); }
  const char* data() const { return buf_.data(); }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  void resize(size_t n);  // n <= capacity(); the bytes are not touched
  std::string_view view() const { return {buf_.data(), size_}; }

 private:
  IoBuffer buf_;
  size_t size_ = 0;
  size_t capacity_;
};

struct StoreOptions {
  std::string dir;  // holds objects/ (data files) and index/ (RocksDB)
  uint32_t chunk_size = kDefaultChunkSize;
  // Byte budget for cached data. 0: 80% of the file system holding `dir`.
  uint64_t capacity_bytes = 0;
  // Eviction starts above high * capacity and stops below low * capacity.
  double high_watermark = 0.90;
  double low_watermark = 0.80;
  // When the directory or index cannot be used, open anyway and serve
  // without caching (health() says why) instead of failing.
  bool degrade_on_error = false;
  // Data files kept open at most; idle objects' files are closed past it.
  // Each open file may hold two descriptors (one for direct writes).
  uint64_t max_open_files = 4096;
  // Bytes of recently filled chunks, and of chunks passed on (ReadChunk),
  // kept in memory (oldest dropped first): a sequential reader arriving just
  // behind readahead, or the next peer asking, is served from here, and
  // chunks written with O_DIRECT are not read back from disk. 0: none.
  uint64_t memory_bytes = 64ull << 20;
  // Run the background evictor and verify-ahead threads. Tools that only
  // inspect a store turn them off.
  bool background_work = true;
  // Objects held as LeaseWhole(key, as_is) holds them from the moment the
  // store opens, before any eviction, until ReleaseOpenHolds(): the backing
  // files a killed daemon gave the kernel, which reads them on (and never
  // marks them used) until its successor holds them again per open.
  std::vector<std::string> held_at_open;
  std::shared_ptr<StoreFs> fs;        // null: the real io_uring file system
  rocksdb::Env* index_env = nullptr;  // the index's RocksDB I/O; null: the real one
  // What last-use stamps (eviction order, the open-file budget) and the
  // evictor's flush and scrub intervals are read from. Not owned.
  Clock* clock = RealClock();
};

// What a caller says about an object when it first uses it.
struct ObjectSpec {
  std::string key;  // immutable name; no NUL, at most 4096 bytes
  uint64_t size = 0;
  std::string identity;     // origin and version, for operators and logs
  uint32_t chunk_size = 0;  // 0: the store's default
  // None of the object is served before all of it is present and checked
  // (a whole-object digest): every chunk is read back as soon as the last
  // lands, so chunks are written through the page cache, not around it.
  bool whole_before_use = false;
};

struct ObjectInfo {
  std::string key;
  std::string identity;
  uint64_t size = 0;
  uint32_t chunk_size = 0;
  uint32_t chunks = 0;
  uint32_t chunks_present = 0;
  uint64_t bytes_present = 0;
  int64_t last_use_us = 0;
  int pins = 0;
  bool digest_verified = false;  // see MarkDigestVerified
};

// What an origin last said about one of its objects, and the object key
// that version is cached under (see ChunkStore::RecordSeen).
struct SeenVersion {
  std::string key;
  uint64_t size = 0;
  std::string version;
  int64_t mtime_ns = 0;
  std::string digest;  // "sha256:<hex>" when the object is addressed by it
};

// A read is all or nothing: either every byte of the range was copied, or
// nothing was and `missing` lists the chunks to fill first.
struct ReadResult {
  size_t bytes = 0;
  std::vector<uint32_t> missing;
};

// The bytes of one chunk after a Fill. `bytes` is set when this fill (or the
// one it waited for) fetched them, so a caller can serve them even if they
// could not be cached; it is null when the chunk was already present.
struct FillResult {
  std::shared_ptr<const ChunkBytes> bytes;
  bool cached = false;
};

// Produces a chunk's bytes into `out` (exactly the chunk's length).
using ChunkSource = absl::FunctionRef<absl::Status(absl::Span<char> out)>;

struct StoreStats {
  uint64_t capacity_bytes = 0;
  uint64_t used_bytes = 0;
  uint64_t objects = 0;
  uint64_t chunks_present = 0;
  uint64_t reads = 0;
  uint64_t read_hits = 0;
  uint64_t read_misses = 0;
  uint64_t memory_hits = 0;  // reads and leases answered from the memory tier
  // Chunks passed on (ReadChunk) that another asker was reading from disk
  // already: they waited for its bytes rather than read them again.
  uint64_t read_waits = 0;
  uint64_t memory_bytes = 0;  // bytes of chunks held in the memory tier
  uint64_t bytes_read = 0;
  uint64_t chunks_written = 0;
  uint64_t bytes_written = 0;
  uint64_t write_errors = 0;
  uint64_t checksum_failures = 0;
  uint64_t chunks_verified = 0;
  uint64_t fills = 0;
  uint64_t fill_waits = 0;
  uint64_t evicted_objects = 0;
  uint64_t evicted_chunks = 0;
  uint64_t evicted_bytes = 0;
  uint64_t corrupt_index_records = 0;
  uint64_t open_files = 0;
  uint64_t kernel_held_objects = 0;  // whole objects the kernel reads itself (LeaseWhole)
  bool degraded = false;
  std::string health;  // "ok" or why the store is not caching
};

struct EvictRequest {
  enum class Mode { kToTarget, kAll, kKey };
  Mode mode = Mode::kToTarget;
  uint64_t target_bytes = 0;  // kToTarget: evict until used <= target
  std::string key;            // kKey
};

struct EvictReport {
  uint64_t objects = 0;  // removed whole
  uint64_t chunks = 0;   // punched out of objects that stay
  uint64_t bytes = 0;
  uint64_t skipped_busy = 0;  // objects being read or pinned
};

struct VerifyReport {
  uint64_t objects = 0;
  uint64_t chunks_checked = 0;
  uint64_t chunks_bad = 0;            // wrong checksum or unreadable: dropped
  uint64_t objects_missing_file = 0;  // data file deleted behind the store
};

// The bytes of a leased range that are in memory: `head`, then `tail` (the
// start of the next chunk, for a range that crosses into it). Both empty
// when the range is read from the cache file.
struct MemoryParts {
  std::string_view head, tail;
  bool empty() const { return head.empty(); }
};

// A range of an object that is present and verified, held against eviction
// until the lease is destroyed: the FUSE layer splices from (fd, offset).
// When the range is still in the store's memory, `memory()` holds it too,
// and a reader should copy from there rather than read the file (chunks are
// written around the page cache, so the file's copy is on disk).
class ReadLease {
 public:
  ReadLease() = default;
  // `chunk` (from `chunk_offset`) and `next` hold the range when it is in
  // memory; `next` only for a range that ends in the chunk after `chunk`.
  ReadLease(int fd, uint64_t offset, size_t length, std::function<void()> release,
            std::shared_ptr<const ChunkBytes> chunk = nullptr, size_t chunk_offset = 0,
            std::shared_ptr<const ChunkBytes> next = nullptr)
      : release_(std::move(release)),
        chunk_(std::move(chunk)),
        next_(std::move(next)),
        fd_(fd),
        offset_(offset),
        length_(length),
        chunk_offset_(chunk_offset) {}
  ReadLease(ReadLease&&) noexcept;
  ReadLease& operator=(ReadLease&&) noexcept;
  ReadLease(const ReadLease&) = delete;
  ReadLease& operator=(const ReadLease&) = delete;
  ~ReadLease();

  int fd() const { return fd_; }
  uint64_t offset() const { return offset_; }
  size_t length() const { return length_; }
  // The leased bytes when they are in memory; empty otherwise.
  MemoryParts memory() const {
    if (!chunk_) return {};
    std::string_view head = chunk_->view().substr(chunk_offset_, length_);
    return {head, next_ ? next_->view().substr(0, length_ - head.size()) : std::string_view()};
  }

 private:
  std::function<void()> release_;
  std::shared_ptr<const ChunkBytes> chunk_, next_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  size_t length_ = 0;
  size_t chunk_offset_ = 0;
};

// A present chunk to be passed on as it is stored (to a peer): its bytes,
// checked, and the checksum (XXH3-64 of them) it was stored with.
struct StoredChunk {
  std::shared_ptr<const ChunkBytes> bytes;
  uint64_t checksum = 0;
  bool read_from_disk = false;  // by this call (not from memory, nor another's read)
};

class ChunkStore {
 public:
  static absl::StatusOr<std::unique_ptr<ChunkStore>> Open(StoreOptions options);
  virtual ~ChunkStore() = default;

  // Declares an object, or confirms one already cached. A known key whose
  // size or chunk size differ is dropped and started anew (and logged).
  // A size above 2^50 bytes is InvalidArgument.
  virtual absl::Status Register(const ObjectSpec& spec) = 0;
  virtual std::optional<ObjectInfo> Lookup(const std::string& key) const = 0;
  virtual std::vector<ObjectInfo> List() const = 0;

  // Copies [offset, offset + out.size()) of the object into `out`, clipped at
  // the object's end. NotFound for an unknown object, OutOfRange past its end.
  virtual absl::StatusOr<ReadResult> Read(const std::string& key, uint64_t offset,
                                          absl::Span<char> out) = 0;

  // The chunks of [offset, offset + length) that are not present (clipped
  // at the object's end). NotFound for an unknown object.
  virtual absl::StatusOr<std::vector<uint32_t>> MissingChunks(const std::string& key,
                                                              uint64_t offset,
                                                              uint64_t length) const = 0;

  // Makes chunk `index` present. Only one fill per chunk runs at a time:
  // concurrent callers wait for it and share its bytes and its status.
  virtual absl::StatusOr<FillResult> Fill(const std::string& key, uint32_t index,
                                          ChunkSource source) = 0;
  // Fill with bytes already in hand.
  absl::StatusOr<FillResult> WriteChunk(const std::string& key, uint32_t index,
                                        absl::Span<const char> data);

  // A verified, present range held against eviction (for splicing).
  virtual absl::StatusOr<ReadLease> Lease(const std::string& key, uint64_t offset,
                                          size_t length) = 0;
  // Chunk `index` whole, to be passed on: from the memory tier, or read
  // from its file around the page cache, checked, and kept in the memory
  // tier for the next asker. Unavailable when it is not present, or when it
  // cannot be read or fails its checksum (it is then dropped, as a read
  // drops it).
  virtual absl::StatusOr<StoredChunk> ReadChunk(const std::string& key, uint32_t index) = 0;
  // The whole object, for the kernel to read from its file itself (FUSE
  // passthrough): while the lease lives, the object is not evicted,
  // removed, replaced, nor are holes punched in its file, whatever the
  // scrub finds. Unless `as_is`, every chunk must be present and checked
  // by this process (FailedPrecondition otherwise: the caller serves the
  // object through Lease); `as_is` holds an object the kernel already
  // reads (after a restart), whatever its state. NotFound for an unknown
  // or empty object.
  virtual absl::StatusOr<ReadLease> LeaseWhole(const std::string& key, bool as_is = false) = 0;
  // Lets go of StoreOptions::held_at_open (once; later calls do nothing).
  virtual void ReleaseOpenHolds() = 0;

  // Records that the complete object was checked against its content
  // digest. The mark is persisted and dropped as soon as any chunk is (a
  // refetched chunk has not been checked). FailedPrecondition if a chunk is
  // missing.
  virtual absl::Status MarkDigestVerified(const std::string& key) = 0;
  // Whether the object carries that mark (cheaper than Lookup).
  virtual bool DigestVerified(const std::string& key) const = 0;

  // Records, durably, that the origin object `name` (origin URL and path;
  // at most 4096 bytes) was last seen as `seen`, whose key is an object of
  // this store: a later process can then find the cached version of `name`
  // when its origin cannot be asked. A record outlives its object only
  // until the store is next opened. Nothing is recorded by a degraded store.
  virtual absl::Status RecordSeen(const std::string& name, const SeenVersion& seen) = 0;
  // What RecordSeen last recorded for `name`, if anything.
  virtual std::optional<SeenVersion> LastSeen(const std::string& name) const = 0;

  // Pinned objects are never evicted. Pins live as long as the process.
  virtual absl::Status Pin(const std::string& key) = 0;
  virtual absl::Status Unpin(const std::string& key) = 0;

  virtual absl::Status Remove(const std::string& key) = 0;
  virtual EvictReport Evict(const EvictRequest& req) = 0;
  // Reads every present chunk and checks it; bad ones are dropped.
  virtual VerifyReport Verify() = 0;
  virtual StoreStats Stats() const = 0;
  // OK, or why the store is serving without caching.
  virtual absl::Status health() const = 0;
  // Writes last-use times and stops the evictor; also done on destruction.
  virtual void Flush() = 0;
};

}  // namespace strata::cache
