// ChunkStore implementation. One mutex guards the in-memory map of objects and
// their chunk states; all I/O (io_uring, RocksDB) runs outside it. A chunk moves
// kAbsent -> kFilling -> kPresent, and kPresent -> kDropping -> kAbsent when it
// is evicted or found corrupt; fills of a dropping chunk wait for it to settle,
// so an index record and the bytes on disk always change in that order.
#include "cache/chunk_store.h"

#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#include <algorithm>
#include <cassert>
#include <chrono>
#include <cstdlib>
#include <deque>
#include <list>
#include <random>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "base/logging.h"
#include "cache/chunk_index.h"

namespace strata::cache {

ReadLease::ReadLease(ReadLease&& o) noexcept { *this = std::move(o); }
ReadLease& ReadLease::operator=(ReadLease&& o) noexcept {
  if (this != &o) {
    if (release_) release_();
    release_ = std::move(o.release_);
    o.release_ = nullptr;
    chunk_ = std::move(o.chunk_);
    fd_ = o.fd_;
    offset_ = o.offset_;
    length_ = o.length_;
    chunk_offset_ = o.chunk_offset_;
  }
  return *this;
}
ReadLease::~ReadLease() {
  if (release_) release_();
}

ChunkBytes::ChunkBytes(size_t capacity)
    : data_(static_cast<char*>(std::aligned_alloc(
          kIoAlign, (std::max<size_t>(capacity, 1) + kIoAlign - 1) / kIoAlign * kIoAlign))),
      capacity_(capacity) {
  if (data_ == nullptr) throw std::bad_alloc();
}
ChunkBytes::~ChunkBytes() { std::free(data_); }
void ChunkBytes::resize(size_t n) {
  assert(n <= capacity_);
  size_ = n;
}

absl::StatusOr<FillResult> ChunkStore::WriteChunk(const std::string& key, uint32_t index,
                                                  absl::Span<const char> data) {
  return Fill(key, index, [&](absl::Span<char> out) -> absl::Status {
    if (out.size() != data.size()) {
      return absl::InvalidArgumentError(absl::StrFormat("chunk %u of %s is %u bytes, got %u", index,
                                                        key, out.size(), data.size()));
    }
    std::copy(data.begin(), data.end(), out.begin());
    return absl::OkStatus();
  });
}

namespace {

constexpr size_t kMaxKeyLength = 4096;
constexpr uint32_t kMinChunkSize = 4096;
constexpr uint32_t kMaxChunkSize = 256u << 20;
// 1 PiB. Sizes come from origins (a Content-Length); the chunk arithmetic
// must never see one near 2^64, where rounding up to chunks wraps around.
constexpr uint64_t kMaxObjectSize = uint64_t{1} << 50;
constexpr auto kLastUseFlushInterval = std::chrono::seconds(30);
constexpr auto kScrubInterval = std::chrono::seconds(10);

enum class ChunkState : uint8_t { kAbsent, kFilling, kPresent, kDropping };

struct Chunk {
  ChunkState state = ChunkState::kAbsent;
  bool verified = false;   // checksum checked (or written) by this process
  bool verifying = false;  // a check is under way; readers wait for it
  uint64_t checksum = 0;
  int64_t last_use_us = 0;
};

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
  int readers = 0;
  int pins = 0;
  uint64_t bytes_present = 0;
  uint64_t next_offset = 0;       // where the last read ended: sequential reads verify ahead
  uint64_t allocated_to = 0;      // disk blocks are reserved up to here (AllocationFor)
  uint64_t alloc_window = 0;      // how far past a sequential fill to reserve
  uint32_t read_ahead_chunk = 0;  // chunks before it were read ahead for a sequential reader
  bool removing = false;
  bool last_use_dirty = false;
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
  std::atomic<uint64_t> chunks_written{0}, bytes_written{0}, write_errors{0};
  std::atomic<uint64_t> checksum_failures{0}, chunks_verified{0}, fills{0}, fill_waits{0};
  std::atomic<uint64_t> evicted_objects{0}, evicted_chunks{0}, evicted_bytes{0};
  std::atomic<uint64_t> corrupt_index_records{0};
};

// Per-thread scratch space for chunk verification: a fresh zero-filled
// buffer per chunk costs more than the read it holds.
// A chunk's checksum (XXH3-64). On x86-64 through libxxhash's dispatcher,
// which picks AVX2 or AVX-512 where the CPU has them: the same value, at
// about twice the speed of the baseline SSE2 build on the fill path.
uint64_t ChunkChecksum(const char* data, size_t len) {
#if defined(__x86_64__)
  return XXH3_64bits_dispatch(data, len);
#else
  return XXH3_64bits(data, len);
#endif
}

char* Scratch(size_t len) {
  static thread_local std::unique_ptr<char[]> buf;
  static thread_local size_t cap = 0;
  if (cap < len) {
    buf.reset(new char[len]);
    cap = len;
  }
  return buf.get();
}

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return absl::StrFormat("%016x", rng());
}

// Chunk buffers for fills, recycled: fresh memory per chunk (page faults
// and zeroing) costs as much as the copy that fills it.
class BufferPool : public std::enable_shared_from_this<BufferPool> {
 public:
  std::shared_ptr<ChunkBytes> Get(size_t len) {
    std::unique_ptr<ChunkBytes> b;
    {
      absl::MutexLock l(&mu_);
      // The smallest free buffer that fits, unless it is over twice the
      // size: a small chunk must not pin (and be counted as) a large one.
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i) {
        size_t cap = free_[i]->capacity();
        if (cap >= len && cap <= 2 * std::max(len, kIoAlign) &&
            (best == free_.size() || cap < free_[best]->capacity())) {
          best = i;
        }
      }
      if (best < free_.size()) {
        b = std::move(free_[best]);
        free_.erase(free_.begin() + static_cast<ptrdiff_t>(best));
      }
    }
    if (!b) b = std::make_unique<ChunkBytes>(len);
    b->resize(len);
    // The deleter keeps the pool alive: a fill's bytes may outlive the store.
    return std::shared_ptr<ChunkBytes>(
        b.release(), [pool = shared_from_this()](ChunkBytes* p) { pool->Put(p); });
  }

 private:
  void Put(ChunkBytes* b) {
    absl::MutexLock l(&mu_);
    if (free_.size() < kKeep) {
      free_.emplace_back(b);
      return;
    }
    delete b;
  }
  static constexpr size_t kKeep = 8;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<ChunkBytes>> free_ ABSL_GUARDED_BY(mu_);
};

// A chunk in the memory tier.
struct Recent {
  std::string key;
  uint32_t index = 0;
  std::shared_ptr<const ChunkBytes> bytes;
  uint64_t cost = 0;  // its buffer and bookkeeping, in bytes
};

class ChunkStoreImpl final : public ChunkStore {
 public:
  explicit ChunkStoreImpl(StoreOptions opts) : opts_(std::move(opts)), fs_(opts_.fs) {
    if (!opts_.clock_us) {
      opts_.clock_us = [] {
        return std::chrono::duration_cast<std::chrono::microseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
            .count();
      };
    }
    objects_dir_ = opts_.dir + "/objects";
  }

  ~ChunkStoreImpl() override { Flush(); }

  absl::Status Init() {
    if (opts_.chunk_size < kMinChunkSize || opts_.chunk_size > kMaxChunkSize ||
        opts_.chunk_size % kMinChunkSize != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chunk size %u must be a multiple of 4096 between 4 KiB and 256 MiB", opts_.chunk_size));
    }
    if (!(opts_.low_watermark > 0 && opts_.low_watermark < opts_.high_watermark &&
          opts_.high_watermark <= 1.0)) {
      return absl::InvalidArgumentError("watermarks must satisfy 0 < low < high <= 1");
    }
    absl::Status st = OpenDisk();
    if (!st.ok()) {
      if (!opts_.degrade_on_error) return st;
      spdlog::error("chunk store at {} cannot cache ({}); serving without caching", opts_.dir,
                    st.message());
      absl::MutexLock l(&mu_);
      health_ = st;
    }
    if (opts_.background_work) {
      evictor_ = std::thread([this] { EvictorLoop(); });
      verifier_ = std::thread([this] { VerifierLoop(); });
    }
    return absl::OkStatus();
  }

  absl::Status Register(const ObjectSpec& spec) override {
    if (spec.key.empty() || spec.key.size() > kMaxKeyLength ||
        spec.key.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          "object key must be 1 to 4096 bytes without NUL characters");
    }
    uint32_t cs = spec.chunk_size ? spec.chunk_size : opts_.chunk_size;
    if (cs < kMinChunkSize || cs > kMaxChunkSize || cs % kMinChunkSize != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "chunk size %u of %s must be a multiple of 4096 up to 256 MiB", cs, spec.key));
    }
    if (spec.size > kMaxObjectSize || (spec.size + cs - 1) / cs > UINT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrFormat("object %s is too large (%u bytes; at most 2^50)", spec.key, spec.size));
    }
    int64_t now = opts_.clock_us();
    ObjectPtr obj;
    {
      absl::MutexLock l(&mu_);
      for (;;) {
        auto it = objects_.find(spec.key);
        if (it == objects_.end()) break;
        Object& o = *it->second;
        if (o.removing) {  // an eviction of this key is finishing
          cv_.Wait(&mu_);
          continue;
        }
        if (o.rec.size == spec.size && o.rec.chunk_size == cs) {
          o.rec.last_use_us = now;
          o.last_use_dirty = true;
          return absl::OkStatus();
        }
        if (o.Busy()) {
          return absl::FailedPreconditionError(
              absl::StrFormat("object %s is in use with size %u; cannot replace it with size %u",
                              spec.key, o.rec.size, spec.size));
        }
        spdlog::warn("object {} changed size ({} -> {}); dropping its cached chunks", spec.key,
                     o.rec.size, spec.size);
        ObjectPtr old = it->second;
        BeginRemoveLocked(*old);
        mu_.Unlock();
        FinishRemove(old).IgnoreError();  // logged inside
        mu_.Lock();
      }
      obj = std::make_shared<Object>();
      obj->key = spec.key;
      obj->fs = fs_.get();
      obj->rec.size = spec.size;
      obj->rec.chunk_size = cs;
      obj->rec.last_use_us = now;
      obj->rec.identity = spec.identity;
      obj->rec.file = absl::StrFormat("%016x-%s", XXH3_64bits(spec.key.data(), spec.key.size()),
                                      RandomSuffix());
      obj->chunks.resize((spec.size + cs - 1) / cs);
      objects_[spec.key] = obj;
      if (!health_.ok()) return absl::OkStatus();  // memory only: nothing is cached
    }
    absl::Status st = index_->PutObject(spec.key, obj->rec);
    if (!st.ok()) {
      spdlog::error("cannot record object {}: {}", spec.key, st.message());
      absl::MutexLock l(&mu_);
      auto it = objects_.find(spec.key);
      if (it != objects_.end() && it->second == obj && !obj->Busy()) objects_.erase(it);
      return st;
    }
    return absl::OkStatus();
  }

  std::optional<ObjectInfo> Lookup(const std::string& key) const override {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    if (it == objects_.end() || it->second->removing) return std::nullopt;
    return InfoLocked(*it->second);
  }

  std::vector<ObjectInfo> List() const override {
    absl::MutexLock l(&mu_);
    std::vector<ObjectInfo> out;
    for (const auto& [k, o] : objects_) {
      if (!o->removing) out.push_back(InfoLocked(*o));
    }
    std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
    return out;
  }

  absl::StatusOr<ReadResult> Read(const std::string& key, uint64_t offset,
                                  absl::Span<char> out) override {
    ++ctr_.reads;
    auto acquired = Acquire(key, offset, out.size());
    if (!acquired.ok()) return acquired.status();
    Acquired& a = *acquired;
    if (!a.missing.empty()) {
      ++ctr_.read_misses;
      return ReadResult{0, std::move(a.missing)};
    }
    absl::Cleanup release = [&] { Release(a.obj); };
    if (a.length == 0) return ReadResult{};
    if (a.memory) {
      std::memcpy(out.data(), a.memory->data() + a.memory_offset, a.length);
      ++ctr_.read_hits;
      ctr_.bytes_read += a.length;
      return ReadResult{a.length, {}};
    }
    IoOp op{IoOp::Kind::kRead, a.fd, offset, out.data(), a.length, 0};
    absl::Status st = fs_->Submit(absl::MakeSpan(&op, 1));
    if (!st.ok() || op.result != static_cast<ssize_t>(a.length)) {
      std::string why = !st.ok() ? std::string(st.message())
                        : op.result < 0
                            ? ErrnoStatus(op.result, "read").ToString()
                            : absl::StrFormat("short read (%d of %u bytes)", op.result, a.length);
      spdlog::error("cannot read {} [{}, +{}) from {}: {}; dropping its chunks", key, offset,
                    a.length, a.obj->rec.file, why);
      std::vector<uint32_t> all;
      for (uint32_t i = a.first; i <= a.last; ++i) all.push_back(i);
      ++ctr_.read_misses;
      return ReadResult{0, Drop(a.obj, all, /*corrupt=*/true)};
    }
    ++ctr_.read_hits;
    ctr_.bytes_read += a.length;
    return ReadResult{a.length, {}};
  }

  absl::StatusOr<std::vector<uint32_t>> MissingChunks(const std::string& key, uint64_t offset,
                                                      uint64_t length) const override {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    if (it == objects_.end() || it->second->removing) {
      return absl::NotFoundError(absl::StrCat("object not in the cache: ", key));
    }
    const Object& o = *it->second;
    std::vector<uint32_t> missing;
    if (offset >= o.rec.size || length == 0) return missing;
    uint64_t end = offset + std::min(o.rec.size - offset, length);
    if ((end - 1) / o.rec.chunk_size >= o.chunks.size()) return OutOfChunks(o);
    for (uint64_t i = offset / o.rec.chunk_size; i <= (end - 1) / o.rec.chunk_size; ++i) {
      if (o.chunks[i].state != ChunkState::kPresent) missing.push_back(static_cast<uint32_t>(i));
    }
    return missing;
  }

  absl::StatusOr<ReadLease> Lease(const std::string& key, uint64_t offset, size_t length) override {
    auto acquired = Acquire(key, offset, length);
    if (!acquired.ok()) return acquired.status();
    if (!acquired->missing.empty()) {
      return absl::UnavailableError(
          absl::StrFormat("%s [%u, +%u) is not fully cached", key, offset, length));
    }
    return ReadLease(
        acquired->fd, offset, acquired->length, [this, obj = acquired->obj] { Release(obj); },
        std::move(acquired->memory), acquired->memory_offset);
  }

  absl::StatusOr<FillResult> Fill(const std::string& key, uint32_t index,
                                  ChunkSource source) override {
    ObjectPtr obj;
    std::shared_ptr<Flight> flight;
    {
      absl::MutexLock l(&mu_);
      for (;;) {
        auto it = objects_.find(key);
        if (it == objects_.end() || it->second->removing) {
          return absl::NotFoundError(absl::StrCat("object not registered in the cache: ", key));
        }
        obj = it->second;
        if (index >= obj->chunks.size()) {
          return absl::OutOfRangeError(absl::StrFormat("chunk %u of %s is past its end (%u chunks)",
                                                       index, key, obj->chunks.size()));
        }
        Chunk& c = obj->chunks[index];
        if (c.state == ChunkState::kPresent) return FillResult{nullptr, true};
        if (c.state == ChunkState::kFilling) {
          ++ctr_.fill_waits;
          std::shared_ptr<Flight> f = obj->flights[index];
          while (!f->done) cv_.Wait(&mu_);
          if (!f->status.ok()) return f->status;
          return FillResult{f->bytes, f->cached};
        }
        if (c.state == ChunkState::kDropping) {
          cv_.Wait(&mu_);
          continue;
        }
        c.state = ChunkState::kFilling;
        flight = std::make_shared<Flight>();
        obj->flights[index] = flight;
        break;
      }
    }
    ++ctr_.fills;
    uint32_t len = obj->ChunkLength(index);
    std::shared_ptr<ChunkBytes> bytes = buffers_->Get(len);
    absl::Status st = source(absl::MakeSpan(bytes->data(), len));
    bool cached = false;
    if (st.ok()) {
      absl::Status wst = Store(obj, index, *bytes);
      cached = wst.ok();
    }
    absl::MutexLock l(&mu_);
    flight->done = true;
    flight->status = st;
    flight->cached = cached;
    if (st.ok()) flight->bytes = bytes;
    obj->chunks[index].state = cached ? ChunkState::kPresent : ChunkState::kAbsent;
    if (cached) RememberLocked(*obj, index, bytes);
    obj->flights.erase(index);
    cv_.SignalAll();
    if (!st.ok()) return st;
    return FillResult{std::move(bytes), cached};
  }

  absl::Status MarkDigestVerified(const std::string& key) override {
    ObjectRecord rec;
    {
      absl::MutexLock l(&mu_);
      auto it = objects_.find(key);
      if (it == objects_.end() || it->second->removing) {
        return absl::NotFoundError(absl::StrCat("object not in the cache: ", key));
      }
      Object& o = *it->second;
      for (const Chunk& c : o.chunks) {
        if (c.state != ChunkState::kPresent) {
          return absl::FailedPreconditionError(absl::StrCat("object ", key, " is not complete"));
        }
      }
      o.rec.flags |= kObjectDigestVerified;
      rec = o.rec;
      if (!health_.ok()) return absl::OkStatus();
    }
    return index_->PutObject(key, rec);
  }

  absl::Status RecordSeen(const std::string& name, const SeenVersion& seen) override {
    if (name.empty() || name.size() > kMaxKeyLength) {
      return absl::InvalidArgumentError("an object name must be 1 to 4096 bytes");
    }
    {
      absl::MutexLock l(&mu_);
      if (!health_.ok()) return absl::OkStatus();  // nothing is kept
      auto it = objects_.find(seen.key);
      if (it == objects_.end() || it->second->removing) {
        return absl::FailedPreconditionError(
            absl::StrCat("object not in the cache: ", seen.key, " (seen as ", name, ")"));
      }
    }
    // Written after the object's own record (Register): a crash that loses
    // that record loses this one too, and a record that survives its object
    // is dropped at the next open.
    return index_->PutName(
        name, NameRecord{seen.key, seen.size, seen.version, seen.mtime_ns, seen.digest});
  }

  std::optional<SeenVersion> LastSeen(const std::string& name) const override {
    if (!health_ok_) return std::nullopt;
    auto rec = index_->GetName(name);
    if (!rec.ok()) {
      spdlog::warn("cannot look up {} in the cache index: {}", name, rec.status().message());
      return std::nullopt;
    }
    if (!rec->has_value()) return std::nullopt;
    const NameRecord& r = **rec;
    return SeenVersion{r.key, r.size, r.version, r.mtime_ns, r.digest};
  }

  bool DigestVerified(const std::string& key) const override {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    return it != objects_.end() && !it->second->removing &&
           (it->second->rec.flags & kObjectDigestVerified) != 0;
  }

  absl::Status Pin(const std::string& key) override {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    if (it == objects_.end() || it->second->removing) {
      return absl::NotFoundError(absl::StrCat("cannot pin unknown object ", key));
    }
    ++it->second->pins;
    return absl::OkStatus();
  }

  absl::Status Unpin(const std::string& key) override {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    if (it == objects_.end() || it->second->pins == 0) {
      return absl::FailedPreconditionError(absl::StrCat("object ", key, " is not pinned"));
    }
    --it->second->pins;
    return absl::OkStatus();
  }

  absl::Status Remove(const std::string& key) override {
    ObjectPtr obj;
    {
      absl::MutexLock l(&mu_);
      auto it = objects_.find(key);
      if (it == objects_.end() || it->second->removing) {
        return absl::NotFoundError(absl::StrCat("object not in the cache: ", key));
      }
      if (it->second->Busy()) {
        return absl::FailedPreconditionError(
            absl::StrCat("object ", key, " is being read, filled or is pinned"));
      }
      obj = it->second;
      BeginRemoveLocked(*obj);
    }
    return FinishRemove(obj);
  }

  EvictReport Evict(const EvictRequest& req) override {
    EvictReport rep;
    if (req.mode == EvictRequest::Mode::kKey) {
      absl::Status st = Remove(req.key);
      if (st.ok()) {
        ++rep.objects;
      } else if (absl::IsFailedPrecondition(st)) {
        ++rep.skipped_busy;
      }
      return rep;
    }
    uint64_t need;
    {
      absl::MutexLock l(&mu_);
      need = req.mode == EvictRequest::Mode::kAll ? UINT64_MAX
             : used_ > req.target_bytes           ? used_ - req.target_bytes
                                                  : 0;
    }
    if (need > 0) EvictBytes(need, req.mode == EvictRequest::Mode::kAll, &rep);
    return rep;
  }

  VerifyReport Verify() override {
    VerifyReport rep;
    std::vector<ObjectPtr> objs;
    {
      absl::MutexLock l(&mu_);
      for (auto& [k, o] : objects_) objs.push_back(o);
    }
    for (const ObjectPtr& obj : objs) {
      ++rep.objects;
      std::vector<std::pair<uint32_t, uint64_t>> present;  // index, checksum
      int fd;
      {
        absl::MutexLock l(&mu_);
        if (obj->removing) continue;
        for (uint32_t i = 0; i < obj->chunks.size(); ++i) {
          if (obj->chunks[i].state == ChunkState::kPresent)
            present.emplace_back(i, obj->chunks[i].checksum);
        }
        if (present.empty()) continue;
        auto fd_or = EnsureFdLocked(*obj);
        if (!fd_or.ok()) continue;
        fd = *fd_or;
        ++obj->readers;
      }
      absl::Cleanup release = [&] { Release(obj); };
      uint64_t size = 0, links = 1;
      if (fs_->FileState(fd, &size, &links).ok() && links == 0) ++rep.objects_missing_file;
      std::vector<uint32_t> bad;
      for (auto [i, sum] : present) {
        ++rep.chunks_checked;
        if (!CheckChunk(*obj, fd, i, sum) || links == 0) bad.push_back(i);
      }
      rep.chunks_bad += bad.size();
      if (!bad.empty()) Drop(obj, bad, /*corrupt=*/true);
    }
    return rep;
  }

  StoreStats Stats() const override {
    StoreStats s;
    {
      absl::MutexLock l(&mu_);
      s.capacity_bytes = capacity_;
      s.used_bytes = used_;
      for (const auto& [k, o] : objects_) {
        if (o->removing) continue;
        ++s.objects;
        for (const Chunk& c : o->chunks) s.chunks_present += c.state == ChunkState::kPresent;
      }
      s.open_files = open_files_;
      s.memory_bytes = recent_bytes_;
      s.degraded = !health_.ok();
      s.health = health_.ok() ? "ok" : std::string(health_.message());
    }
    s.reads = ctr_.reads;
    s.read_hits = ctr_.read_hits;
    s.read_misses = ctr_.read_misses;
    s.memory_hits = ctr_.memory_hits;
    s.bytes_read = ctr_.bytes_read;
    s.chunks_written = ctr_.chunks_written;
    s.bytes_written = ctr_.bytes_written;
    s.write_errors = ctr_.write_errors;
    s.checksum_failures = ctr_.checksum_failures;
    s.chunks_verified = ctr_.chunks_verified;
    s.fills = ctr_.fills;
    s.fill_waits = ctr_.fill_waits;
    s.evicted_objects = ctr_.evicted_objects;
    s.evicted_chunks = ctr_.evicted_chunks;
    s.evicted_bytes = ctr_.evicted_bytes;
    s.corrupt_index_records = ctr_.corrupt_index_records;
    return s;
  }

  absl::Status health() const override {
    absl::MutexLock l(&mu_);
    return health_;
  }

  void Flush() override {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
      evict_cv_.SignalAll();
    }
    stop_verify_ = true;  // queued checks are released unchecked
    if (evictor_.joinable()) evictor_.join();
    if (verifier_.joinable()) verifier_.join();
    FlushLastUse();
  }

 private:
  // A range of an object with its chunks checked: either all present (the
  // object's reader count is raised; call Release) or `missing` is set.
  struct Acquired {
    ObjectPtr obj;
    int fd = -1;
    size_t length = 0;
    uint32_t first = 0, last = 0;
    std::vector<uint32_t> missing;
    // The chunk's bytes when the range lies in one chunk that is in memory.
    std::shared_ptr<const ChunkBytes> memory;
    size_t memory_offset = 0;
  };

  // The memory tier: the bytes of recently filled chunks, oldest first. An
  // entry costs its buffer's whole allocation plus its bookkeeping, so a
  // tier of many small chunks stays within its budget too.
  static uint64_t MemoryCost(const std::string& key, const ChunkBytes& bytes) {
    constexpr uint64_t kEntryOverhead = 192;  // list node, map slot, control block
    return (bytes.capacity() + kIoAlign - 1) / kIoAlign * kIoAlign + 2 * key.size() +
           kEntryOverhead;
  }

  void RememberLocked(const Object& o, uint32_t index, std::shared_ptr<const ChunkBytes> bytes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    uint64_t cost = MemoryCost(o.key, *bytes);
    if (cost > opts_.memory_bytes) return;
    ForgetLocked(o.key, index);
    recent_bytes_ += cost;
    recent_.push_back(Recent{o.key, index, std::move(bytes), cost});
    recent_at_[o.key][index] = std::prev(recent_.end());
    while (recent_bytes_ > opts_.memory_bytes) EraseRecentLocked(recent_.begin());
  }

  // The bytes of chunk `index` of `key` when they are in the memory tier.
  const std::shared_ptr<const ChunkBytes>* FindRecentLocked(const std::string& key,
                                                            uint32_t index) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto object = recent_at_.find(key);
    if (object == recent_at_.end()) return nullptr;
    auto chunk = object->second.find(index);
    return chunk == object->second.end() ? nullptr : &chunk->second->bytes;
  }

  void EraseRecentLocked(std::list<Recent>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto object = recent_at_.find(it->key);
    object->second.erase(it->index);
    if (object->second.empty()) recent_at_.erase(object);
    recent_bytes_ -= it->cost;
    recent_.erase(it);
  }

  void ForgetLocked(const std::string& key, uint32_t index) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto object = recent_at_.find(key);
    if (object == recent_at_.end()) return;
    auto chunk = object->second.find(index);
    if (chunk != object->second.end()) EraseRecentLocked(chunk->second);
  }

  void ForgetObjectLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto object = recent_at_.find(key);
    if (object == recent_at_.end()) return;
    std::vector<std::list<Recent>::iterator> entries;
    for (const auto& [index, it] : object->second) entries.push_back(it);
    for (auto it : entries) EraseRecentLocked(it);
  }

  absl::StatusOr<Acquired> Acquire(const std::string& key, uint64_t offset, size_t length) {
    Acquired a;
    std::vector<std::pair<uint32_t, uint64_t>> unverified;
    std::pair<uint64_t, uint64_t> ahead;  // a range of the file to read ahead
    int64_t now = opts_.clock_us();
    {
      absl::MutexLock l(&mu_);
      Object* op = nullptr;
      for (;;) {
        auto it = objects_.find(key);
        if (it == objects_.end()) {
          return absl::NotFoundError(absl::StrCat("object not in the cache: ", key));
        }
        Object& o = *it->second;
        if (offset > o.rec.size) {
          return absl::OutOfRangeError(absl::StrFormat("offset %u is past the end of %s (%u bytes)",
                                                       offset, key, o.rec.size));
        }
        a.length = std::min<uint64_t>(length, o.rec.size - offset);
        if (a.length == 0) return a;
        a.first = offset / o.rec.chunk_size;
        a.last = (offset + a.length - 1) / o.rec.chunk_size;
        if (a.last >= o.chunks.size()) return OutOfChunks(o);
        bool checking = false;
        for (uint32_t i = a.first; i <= a.last; ++i) checking |= o.chunks[i].verifying;
        if (!checking) {
          op = &o;
          a.obj = it->second;
          break;
        }
        cv_.Wait(&mu_);  // another thread is checking one of these chunks
      }
      Object& o = *op;
      for (uint32_t i = a.first; i <= a.last; ++i) {
        if (o.removing || o.chunks[i].state != ChunkState::kPresent) a.missing.push_back(i);
      }
      if (!a.missing.empty()) {
        a.obj = nullptr;
        return a;
      }
      auto fd = EnsureFdLocked(o);
      if (!fd.ok()) {
        for (uint32_t i = a.first; i <= a.last; ++i) a.missing.push_back(i);
        a.obj = nullptr;
        return a;
      }
      a.fd = *fd;
      for (uint32_t i = a.first; i <= a.last; ++i) {
        Chunk& c = o.chunks[i];
        c.last_use_us = now;
        if (!c.verified) {
          unverified.emplace_back(i, c.checksum);
          c.verifying = true;
        }
      }
      o.rec.last_use_us = now;
      o.last_use_dirty = true;
      ++o.readers;
      if (a.first == a.last) {
        if (const auto* bytes = FindRecentLocked(key, a.first)) {
          ++ctr_.memory_hits;
          a.memory = *bytes;
          a.memory_offset = offset - uint64_t{a.first} * o.rec.chunk_size;
        }
      }
      if (offset == o.next_offset) {
        if (opts_.background_work) VerifyAheadLocked(a.obj, a.last);
        ahead = ReadAheadLocked(o, a.last);
      }
      o.next_offset = offset + a.length;
    }
    if (ahead.second > 0) fs_->WillNeed(a.fd, ahead.first, ahead.second);
    if (!unverified.empty()) {
      std::vector<uint32_t> bad;
      for (auto [i, sum] : unverified) {
        if (!CheckChunk(*a.obj, a.fd, i, sum)) bad.push_back(i);
      }
      EndVerify(*a.obj, unverified);
      if (!bad.empty()) {
        Release(a.obj);
        a.missing = Drop(a.obj, bad, /*corrupt=*/true);
        a.obj = nullptr;
      }
    }
    return a;
  }

  // A sequential reader will want the next chunks soon: the range of the
  // file to read into the page cache ahead of it (chunks are written around
  // the page cache), once per chunk, for the present chunks not in memory.
  std::pair<uint64_t, uint64_t> ReadAheadLocked(Object& o, uint32_t last)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    constexpr uint64_t kAhead = 2;
    const uint64_t next = uint64_t{last} + 1;
    if (o.read_ahead_chunk > next + kAhead) o.read_ahead_chunk = 0;  // a new pass
    uint64_t from = std::max<uint64_t>(next, o.read_ahead_chunk);
    uint64_t to = std::min<uint64_t>(next + kAhead, o.chunks.size());
    auto wanted = [&](uint64_t i) {
      return o.chunks[i].state == ChunkState::kPresent &&
             FindRecentLocked(o.key, static_cast<uint32_t>(i)) == nullptr;
    };
    while (from < to && !wanted(from)) ++from;
    uint64_t stop = from;
    while (stop < to && wanted(stop)) ++stop;
    if (from >= stop) return {0, 0};
    o.read_ahead_chunk = static_cast<uint32_t>(stop);
    uint64_t start = from * o.rec.chunk_size;
    return {start, std::min(o.rec.size, stop * o.rec.chunk_size) - start};
  }

  // A sequential reader will want the next chunks soon: check them on the
  // verifier thread now, so the first read after a start overlaps the disk
  // reads of verification with serving.
  void VerifyAheadLocked(const ObjectPtr& obj, uint32_t last) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    constexpr uint32_t kAhead = 2;
    for (uint32_t j = last + 1; j <= last + kAhead && j < obj->chunks.size(); ++j) {
      Chunk& c = obj->chunks[j];
      if (c.state != ChunkState::kPresent || c.verified || c.verifying) continue;
      c.verifying = true;
      ++obj->readers;
      verify_queue_.push_back({obj, j, c.checksum});
    }
  }

  void EndVerify(Object& obj, const std::vector<std::pair<uint32_t, uint64_t>>& chunks) {
    absl::MutexLock l(&mu_);
    for (auto [i, sum] : chunks) obj.chunks[i].verifying = false;
    cv_.SignalAll();
  }

  void VerifierLoop() {
    for (;;) {
      VerifyItem item;
      {
        absl::MutexLock l(&mu_);
        mu_.Await(absl::Condition(
            +[](ChunkStoreImpl* s)
                 ABSL_NO_THREAD_SAFETY_ANALYSIS { return s->stop_ || !s->verify_queue_.empty(); },
            this));
        if (verify_queue_.empty()) return;  // stopping, nothing left
        item = std::move(verify_queue_.front());
        verify_queue_.pop_front();
      }
      // Keep the disk busy with the chunk after this one while this one is
      // read and hashed.
      uint64_t cs = item.obj->rec.chunk_size;
      uint64_t next = (uint64_t{item.index} + 1) * cs;
      if (next < item.obj->rec.size) fs_->WillNeed(item.obj->fd, next, cs);
      if (!stop_verify_ && !CheckChunk(*item.obj, item.obj->fd, item.index, item.checksum)) {
        EndVerify(*item.obj, {{item.index, item.checksum}});
        Release(item.obj);
        Drop(item.obj, {item.index}, /*corrupt=*/true);
        continue;
      }
      EndVerify(*item.obj, {{item.index, item.checksum}});
      Release(item.obj);
    }
  }

  void Release(const ObjectPtr& obj) {
    if (obj == nullptr) return;  // an empty range holds nothing
    absl::MutexLock l(&mu_);
    --obj->readers;
  }

  // Reads chunk `i` and compares its checksum; marks it verified on success.
  // The read is split so that several parts are in flight at once.
  bool CheckChunk(Object& obj, int fd, uint32_t i, uint64_t want) {
    constexpr uint32_t kPart = 1u << 20;
    uint32_t len = obj.ChunkLength(i);
    char* buf = Scratch(len);
    uint64_t base = static_cast<uint64_t>(i) * obj.rec.chunk_size;
    std::vector<IoOp> ops;
    for (uint32_t off = 0; off < len; off += kPart) {
      ops.push_back({IoOp::Kind::kRead, fd, base + off, buf + off, std::min(kPart, len - off), 0});
    }
    absl::Status st = fs_->Submit(absl::MakeSpan(ops));
    ssize_t got_bytes = 0;
    for (const IoOp& op : ops) got_bytes += op.result == static_cast<ssize_t>(op.len) ? op.len : 0;
    if (!st.ok() || got_bytes != static_cast<ssize_t>(len)) {
      spdlog::error("chunk {} of {} is unreadable in {} ({}); treating it as missing", i, obj.key,
                    obj.rec.file,
                    !st.ok() ? std::string(st.message())
                             : absl::StrFormat("read %d of %u bytes", got_bytes, len));
      return false;
    }
    uint64_t got = ChunkChecksum(buf, len);
    if (got != want) {
      spdlog::error(
          "chunk {} of {} failed its checksum in {} (want {:016x}, got {:016x}); refetching", i,
          obj.key, obj.rec.file, want, got);
      return false;
    }
    ++ctr_.chunks_verified;
    absl::MutexLock l(&mu_);
    Chunk& c = obj.chunks[i];
    if (c.state == ChunkState::kPresent && c.checksum == want) c.verified = true;
    return true;
  }

  // What a drop decided under the lock; FinishDrop does its I/O.
  struct DropPlan {
    std::vector<uint32_t> chunks;  // moved to kDropping
    bool was_verified = false;
    ObjectRecord rec;
    int fd = -1;  // when >= 0, pinned (a reader count) and its holes are punched
  };

  // Moves the present chunks of `indexes` to kDropping. Holes are punched
  // only when no reader holds the object: one that acquired a chunk before
  // this must still find its bytes (a refill overwrites the range anyway).
  DropPlan BeginDropLocked(Object& obj, const std::vector<uint32_t>& indexes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    DropPlan p;
    for (uint32_t i : indexes) {
      Chunk& c = obj.chunks[i];
      if (c.state != ChunkState::kPresent) continue;
      c.state = ChunkState::kDropping;
      c.verified = false;
      ForgetLocked(obj.key, i);
      uint32_t len = obj.ChunkLength(i);
      obj.bytes_present -= len;
      used_ -= len;
      p.chunks.push_back(i);
    }
    if (p.chunks.empty()) return p;
    p.was_verified = (obj.rec.flags & kObjectDigestVerified) != 0;
    obj.rec.flags &= ~kObjectDigestVerified;
    p.rec = obj.rec;
    if (obj.readers == 0 && obj.fd >= 0) {
      p.fd = obj.fd;
      ++obj.readers;  // keeps the fd from being closed (and reused) while punching
    }
    return p;
  }

  // Takes the planned chunks out of the index (and the file), then marks
  // them absent.
  void FinishDrop(const ObjectPtr& obj, const DropPlan& p, bool corrupt) {
    if (corrupt) ctr_.checksum_failures += p.chunks.size();
    if (!p.chunks.empty() && health_ok_) {
      // The mark goes first: a crash between the two leaves the object
      // unverified, never a refetched chunk trusted.
      if (p.was_verified) index_->PutObject(obj->key, p.rec).IgnoreError();
      if (auto st = index_->DeleteChunks(obj->key, p.chunks); !st.ok()) {
        spdlog::error("cannot drop chunks of {} from the index: {}", obj->key, st.message());
      }
      if (p.fd >= 0) {
        for (uint32_t i : p.chunks) {
          fs_->PunchHole(p.fd, static_cast<uint64_t>(i) * obj->rec.chunk_size, obj->ChunkLength(i))
              .IgnoreError();  // the index no longer claims it; a hole only saves space
        }
      }
    }
    absl::MutexLock l(&mu_);
    if (p.fd >= 0) --obj->readers;
    for (uint32_t i : p.chunks) obj->chunks[i].state = ChunkState::kAbsent;
    cv_.SignalAll();
  }

  // Drops chunks found bad. Returns `indexes`: all of them are now missing.
  std::vector<uint32_t> Drop(const ObjectPtr& obj, const std::vector<uint32_t>& indexes,
                             bool corrupt) {
    DropPlan p;
    {
      absl::MutexLock l(&mu_);
      p = BeginDropLocked(*obj, indexes);
    }
    FinishDrop(obj, p, corrupt);
    return indexes;
  }

  // Writes one chunk's bytes and records them. The chunk is kFilling, owned
  // by the caller, so nothing else touches it meanwhile.
  absl::Status Store(const ObjectPtr& obj, uint32_t index, const ChunkBytes& bytes) {
    uint32_t len = static_cast<uint32_t>(bytes.size());
    int fd;
    std::pair<uint64_t, uint64_t> alloc;
    {
      absl::MutexLock l(&mu_);
      if (!health_.ok()) return health_;
      if (used_ + len > capacity_) {
        evict_kick_ = true;
        evict_cv_.Signal();
        ++ctr_.write_errors;
        return absl::ResourceExhaustedError(absl::StrFormat(
            "cache is full (%u of %u bytes); serving %s uncached", used_, capacity_, obj->key));
      }
      auto fd_or = EnsureFdLocked(*obj);
      if (!fd_or.ok()) {
        ++ctr_.write_errors;
        return fd_or.status();
      }
      fd = *fd_or;
      used_ += len;  // reserved; given back if the write fails
      alloc = AllocationFor(*obj, index, len);
      if (used_ > HighLocked()) {
        evict_kick_ = true;
        evict_cv_.Signal();
      }
    }
    auto unreserve = [&](const absl::Status& why) {
      ++ctr_.write_errors;
      absl::MutexLock l(&mu_);
      used_ -= len;
      if (absl::IsResourceExhausted(why)) {
        disk_full_ = true;
        evict_kick_ = true;
        evict_cv_.Signal();
      }
      return why;
    };
    if (alloc.second > 0) fs_->Allocate(fd, alloc.first, alloc.second).IgnoreError();  // a hint
    uint64_t sum = ChunkChecksum(bytes.data(), len);
    IoOp op{IoOp::Kind::kWrite,
            fd,
            static_cast<uint64_t>(index) * obj->rec.chunk_size,
            const_cast<char*>(bytes.data()),
            len,
            0};
    absl::Status st = fs_->Submit(absl::MakeSpan(&op, 1));
    if (st.ok() && op.result != static_cast<ssize_t>(len)) {
      st = op.result < 0 ? ErrnoStatus(op.result, absl::StrCat("write ", opts_.dir, "/objects/",
                                                               obj->rec.file))
                         : absl::DataLossError("short write");
    }
    if (!st.ok()) {
      spdlog::error("cannot cache chunk {} of {}: {}", index, obj->key, st.message());
      return unreserve(st);
    }
    st = index_->PutChunk(obj->key, index, ChunkRecord{sum, len});
    if (!st.ok()) {
      spdlog::error("cannot record chunk {} of {}: {}", index, obj->key, st.message());
      return unreserve(st);
    }
    ++ctr_.chunks_written;
    ctr_.bytes_written += len;
    absl::MutexLock l(&mu_);
    Chunk& c = obj->chunks[index];
    c.checksum = sum;
    c.verified = true;
    c.last_use_us = opts_.clock_us();
    obj->bytes_present += len;
    return absl::OkStatus();
  }

  // The range of the object's file to reserve before writing chunk `index`,
  // so that chunks fetched in parallel and written in any order still lie on
  // disk in file order and read back sequentially. A fill at the reserved
  // frontier is sequential: it reserves a window past itself that doubles
  // with each such fill, up to 64 MiB (a reader of a file's header reserves
  // no more than its chunk). Any other fill reserves nothing and starts the
  // window over. What is reserved and not yet written is bounded by the
  // window, per object being read sequentially.
  std::pair<uint64_t, uint64_t> AllocationFor(Object& o, uint32_t index, uint32_t len)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    constexpr uint64_t kMaxWindow = 64ull << 20;
    uint64_t start = uint64_t{index} * o.rec.chunk_size;
    uint64_t end = start + len;
    if (end <= o.allocated_to) return {0, 0};  // reserved by an earlier fill
    if (start > o.allocated_to) {
      o.alloc_window = 0;
      return {0, 0};
    }
    uint64_t from = o.allocated_to;
    o.allocated_to = std::min(o.rec.size, end + o.alloc_window);
    o.alloc_window = std::min(kMaxWindow, std::max<uint64_t>(2 * o.alloc_window, len));
    return {from, o.allocated_to - from};
  }

  absl::StatusOr<int> EnsureFdLocked(Object& o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (o.fd >= 0) return o.fd;
    if (open_files_ >= opts_.max_open_files) CloseIdleFilesLocked();
    auto fd = fs_->Open(objects_dir_ + "/" + o.rec.file, /*create=*/true);
    if (!fd.ok()) {
      spdlog::error("cannot open data file of {}: {}", o.key, fd.status().message());
      return fd.status();
    }
    o.fd = *fd;
    ++open_files_;
    return o.fd;
  }

  // Closes the files of the least recently used idle objects (an eighth of
  // the budget at a time): a cache of many small objects must not run out of
  // file descriptors. Objects being read, filled or verified keep theirs.
  void CloseIdleFilesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<std::pair<int64_t, Object*>> idle;
    for (auto& [k, o] : objects_) {
      if (o->fd >= 0 && o->readers == 0 && o->flights.empty() && !o->removing) {
        idle.emplace_back(o->rec.last_use_us, o.get());
      }
    }
    size_t n = std::min(idle.size(), std::max<size_t>(1, opts_.max_open_files / 8));
    std::partial_sort(idle.begin(), idle.begin() + n, idle.end(),
                      [](const auto& a, const auto& b) { return a.first < b.first; });
    for (size_t i = 0; i < n; ++i) {
      fs_->Close(idle[i].second->fd);
      idle[i].second->fd = -1;
      --open_files_;
    }
  }

  // A chunk index past the object's chunks: never indexed, whatever record
  // (one kept from before sizes were bounded, say) led to it.
  static absl::Status OutOfChunks(const Object& o) {
    return absl::DataLossError(absl::StrFormat("object %s has %u chunks, too few for its %u bytes",
                                               o.key, o.chunks.size(), o.rec.size));
  }

  ObjectInfo InfoLocked(const Object& o) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ObjectInfo info{o.key,
                    o.rec.identity,
                    o.rec.size,
                    o.rec.chunk_size,
                    static_cast<uint32_t>(o.chunks.size()),
                    0,
                    o.bytes_present,
                    o.rec.last_use_us,
                    o.pins,
                    (o.rec.flags & kObjectDigestVerified) != 0};
    for (const Chunk& c : o.chunks) info.chunks_present += c.state == ChunkState::kPresent;
    return info;
  }

  uint64_t HighLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return static_cast<uint64_t>(capacity_ * opts_.high_watermark);
  }

  void BeginRemoveLocked(Object& o) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    o.removing = true;
    ForgetObjectLocked(o.key);
    used_ -= o.bytes_present;
  }

  // Second half of a removal: index first, then the file, then the map.
  absl::Status FinishRemove(const ObjectPtr& obj) {
    spdlog::debug("removing {} ({} bytes cached)", obj->key, obj->bytes_present);
    absl::Status st;
    if (health_ok_) {
      st = index_->DeleteObject(obj->key, static_cast<uint32_t>(obj->chunks.size()));
      if (st.ok()) st = fs_->Unlink(objects_dir_ + "/" + obj->rec.file);
      if (!st.ok()) spdlog::error("removing {} from the cache: {}", obj->key, st.message());
    }
    ++ctr_.evicted_objects;
    ctr_.evicted_bytes += obj->bytes_present;
    absl::MutexLock l(&mu_);
    auto it = objects_.find(obj->key);
    if (it != objects_.end() && it->second == obj) {
      if (obj->fd >= 0) --open_files_;  // closed when the last holder lets go
      objects_.erase(it);
    }
    cv_.SignalAll();
    return st;
  }

  // Frees at least `need` bytes, least recently used objects first. An
  // object larger than what is still needed loses only its coldest chunks.
  void EvictBytes(uint64_t need, bool whole_objects, EvictReport* rep) {
    std::vector<std::pair<int64_t, ObjectPtr>> cands;
    {
      absl::MutexLock l(&mu_);
      for (auto& [k, o] : objects_) {
        if (o->removing) continue;
        if (o->Busy()) {
          ++rep->skipped_busy;
          continue;
        }
        if (o->bytes_present > 0 || whole_objects) cands.emplace_back(o->rec.last_use_us, o);
      }
    }
    std::sort(cands.begin(), cands.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
    uint64_t freed = 0;
    for (auto& [lu, obj] : cands) {
      if (freed >= need) break;
      uint64_t remaining = need - freed;
      std::vector<uint32_t> punch;
      DropPlan plan;
      {
        absl::MutexLock l(&mu_);
        if (obj->Busy()) {
          ++rep->skipped_busy;
          continue;
        }
        if (whole_objects || obj->bytes_present <= remaining) {
          freed += obj->bytes_present;
          rep->bytes += obj->bytes_present;
          ++rep->objects;
          BeginRemoveLocked(*obj);
        } else {
          std::vector<std::pair<int64_t, uint32_t>> present;
          for (uint32_t i = 0; i < obj->chunks.size(); ++i) {
            if (obj->chunks[i].state == ChunkState::kPresent)
              present.emplace_back(obj->chunks[i].last_use_us, i);
          }
          std::sort(present.begin(), present.end());
          uint64_t got = 0;
          for (auto [t, i] : present) {
            if (got >= remaining) break;
            got += obj->ChunkLength(i);
            punch.push_back(i);
          }
          // Marked under the same lock that saw no reader: none can start
          // reading these chunks before they are gone.
          plan = BeginDropLocked(*obj, punch);
        }
      }
      if (punch.empty()) {
        FinishRemove(obj).IgnoreError();  // logged inside
        continue;
      }
      uint64_t before = 0;
      for (uint32_t i : plan.chunks) before += obj->ChunkLength(i);
      FinishDrop(obj, plan, /*corrupt=*/false);
      freed += before;
      rep->bytes += before;
      rep->chunks += plan.chunks.size();
      ctr_.evicted_chunks += plan.chunks.size();
      ctr_.evicted_bytes += before;
    }
  }

  void FlushLastUse() {
    if (!health_ok_) return;
    std::vector<std::pair<std::string, ObjectRecord>> dirty;
    {
      absl::MutexLock l(&mu_);
      for (auto& [k, o] : objects_) {
        if (o->last_use_dirty && !o->removing) {
          dirty.emplace_back(k, o->rec);
          o->last_use_dirty = false;
        }
      }
    }
    if (dirty.empty()) return;
    if (auto st = index_->PutObjects(dirty); !st.ok()) {
      spdlog::warn("cannot record last use of {} objects: {}", dirty.size(), st.message());
    }
  }

  // Drops objects whose data file was deleted behind the store's back. The
  // fstat calls run outside the lock: readers never wait on a scrub.
  void Scrub() {
    std::vector<std::pair<ObjectPtr, int>> open;
    {
      absl::MutexLock l(&mu_);
      for (auto& [k, o] : objects_) {
        if (o->fd >= 0) {
          ++o->readers;  // the fd stays open (not reused) during the check
          open.emplace_back(o, o->fd);
        }
      }
    }
    std::vector<ObjectPtr> gone;
    for (auto& [o, fd] : open) {
      uint64_t size, links;
      if (fs_->FileState(fd, &size, &links).ok() && links == 0) gone.push_back(o);
    }
    {
      absl::MutexLock l(&mu_);
      for (auto& [o, fd] : open) --o->readers;
      std::erase_if(gone, [](const ObjectPtr& o) { return o->Busy(); });
      for (auto& o : gone) BeginRemoveLocked(*o);
    }
    for (auto& o : gone) {
      spdlog::error("data file {} of {} was deleted behind the store's back; dropping the object",
                    o->rec.file, o->key);
      FinishRemove(o).IgnoreError();
    }
  }

  void EvictorLoop() {
    auto last_flush = std::chrono::steady_clock::now();
    auto last_scrub = last_flush;
    for (;;) {
      uint64_t need = 0;
      {
        absl::MutexLock l(&mu_);
        if (!stop_ && !evict_kick_) evict_cv_.WaitWithTimeout(&mu_, absl::Seconds(1));
        if (stop_) return;
        evict_kick_ = false;
        if (disk_full_) {
          // The file system filled before the budget did (it is shared, or
          // smaller than configured): what fit is the real capacity.
          disk_full_ = false;
          uint64_t cap = std::max<uint64_t>(used_, opts_.chunk_size);
          if (cap < capacity_) {
            spdlog::warn(
                "cache file system is full at {} bytes cached; lowering capacity from {} to {}",
                used_, capacity_, cap);
            capacity_ = cap;
          }
        }
        if (used_ > HighLocked()) {
          spdlog::debug("evicting: {} of {} bytes used", used_, capacity_);
          need = used_ - static_cast<uint64_t>(capacity_ * opts_.low_watermark);
        }
      }
      if (need > 0) {
        EvictReport rep;
        EvictBytes(need, /*whole_objects=*/false, &rep);
        spdlog::debug("evicted {} objects and {} chunks ({} bytes); {} busy objects skipped",
                      rep.objects, rep.chunks, rep.bytes, rep.skipped_busy);
      }
      auto now = std::chrono::steady_clock::now();
      if (now - last_flush > kLastUseFlushInterval) {
        FlushLastUse();
        last_flush = now;
      }
      if (now - last_scrub > kScrubInterval) {
        Scrub();
        last_scrub = now;
      }
    }
  }

  absl::Status OpenDisk() {
    if (auto st = fs_->MakeDirs(objects_dir_); !st.ok()) return st;
    auto idx = ChunkIndex::Open(opts_.dir + "/index", opts_.index_env);
    if (!idx.ok()) return idx.status();
    index_ = std::move(*idx);
    auto files = fs_->ListFiles(objects_dir_);
    if (!files.ok()) return files.status();
    absl::flat_hash_set<std::string> on_disk(files->begin(), files->end());

    absl::flat_hash_map<std::string, ObjectPtr> loaded;
    absl::flat_hash_map<std::string, std::vector<uint32_t>> bad_chunks;
    absl::flat_hash_set<std::string> referenced;
    auto stats = index_->Load(
        [&](const std::string& key, const ObjectRecord& rec) {
          auto o = std::make_shared<Object>();
          o->key = key;
          o->rec = rec;
          o->fs = fs_.get();
          o->chunks.resize((rec.size + rec.chunk_size - 1) / rec.chunk_size);
          referenced.insert(rec.file);
          loaded[key] = std::move(o);
        },
        [&](const std::string& key, uint32_t index, const ChunkRecord& rec) {
          Object& o = *loaded[key];
          if (index >= o.chunks.size() || rec.length != o.ChunkLength(index) ||
              !on_disk.contains(o.rec.file)) {
            bad_chunks[key].push_back(index);
            return;
          }
          Chunk& c = o.chunks[index];
          c.state = ChunkState::kPresent;
          c.checksum = rec.checksum;
          c.last_use_us = o.rec.last_use_us;
          o.bytes_present += rec.length;
        });
    if (!stats.ok()) return stats.status();
    ctr_.corrupt_index_records += stats->corrupt_records;
    for (auto& [key, idxs] : bad_chunks) {
      spdlog::error("cache: {} chunk records of {} do not match its data file {}; dropped",
                    idxs.size(), key, loaded[key]->rec.file);
      ctr_.corrupt_index_records += idxs.size();
      index_->DeleteChunks(key, idxs).IgnoreError();
    }
    int orphans = 0;
    for (const std::string& f : *files) {
      if (!referenced.contains(f)) {
        fs_->Unlink(objects_dir_ + "/" + f).IgnoreError();
        ++orphans;
      }
    }
    if (orphans > 0) spdlog::info("cache: removed {} data files no index record names", orphans);

    uint64_t used = 0;
    for (auto& [k, o] : loaded) used += o->bytes_present;
    uint64_t capacity = opts_.capacity_bytes;
    if (capacity == 0) {
      auto space = fs_->Space(opts_.dir);
      if (!space.ok()) return space.status();
      capacity = space->total_bytes / 10 * 8;
    }
    absl::MutexLock l(&mu_);
    objects_ = std::move(loaded);
    used_ = used;
    capacity_ = capacity;
    health_ok_ = true;
    if (used_ > HighLocked()) evict_kick_ = true;
    return absl::OkStatus();
  }

  StoreOptions opts_;
  std::shared_ptr<StoreFs> fs_;
  std::string objects_dir_;
  std::unique_ptr<ChunkIndex> index_;
  bool health_ok_ = false;  // set once at open: the index and directory work

  mutable absl::Mutex mu_;
  absl::CondVar cv_;        // fills finished, drops finished, removals finished
  absl::CondVar evict_cv_;  // wakes the evictor
  absl::flat_hash_map<std::string, ObjectPtr> objects_ ABSL_GUARDED_BY(mu_);
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t open_files_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t capacity_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status health_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool evict_kick_ ABSL_GUARDED_BY(mu_) = false;
  bool disk_full_ ABSL_GUARDED_BY(mu_) = false;
  struct VerifyItem {
    ObjectPtr obj;
    uint32_t index = 0;
    uint64_t checksum = 0;
  };
  std::deque<VerifyItem> verify_queue_ ABSL_GUARDED_BY(mu_);
  std::list<Recent> recent_ ABSL_GUARDED_BY(mu_);
  // key -> chunk index -> entry (looked up by the key without a copy)
  absl::flat_hash_map<std::string, absl::flat_hash_map<uint32_t, std::list<Recent>::iterator>>
      recent_at_ ABSL_GUARDED_BY(mu_);
  uint64_t recent_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<bool> stop_verify_{false};
  Counters ctr_;
  std::shared_ptr<BufferPool> buffers_ = std::make_shared<BufferPool>();
  std::thread evictor_;
  std::thread verifier_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ChunkStore>> ChunkStore::Open(StoreOptions options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("the cache directory is not set");
  if (!options.fs) options.fs = NewPosixStoreFs();
  auto store = std::make_unique<ChunkStoreImpl>(std::move(options));
  if (auto st = store->Init(); !st.ok()) return st;
  return store;
}

}  // namespace strata::cache
