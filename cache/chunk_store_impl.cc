// The chunk store's core: registering objects, reads, leases and fills, and
// the two-step drops and removals that every path which takes bytes away
// (corruption, eviction, scrub) goes through.
#include "cache/chunk_store_impl.h"

#include <xxhash.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/digest.h"
#include "base/logging.h"

namespace strata::cache::internal {

namespace {

std::string RandomSuffix() {
  static thread_local std::mt19937_64 rng(std::random_device{}() ^
                                          std::hash<std::thread::id>{}(std::this_thread::get_id()));
  return absl::StrFormat("%016x", rng());
}

}  // namespace

int64_t ChunkStoreImpl::NowUs() const { return absl::ToUnixMicros(opts_.clock->Now()); }

absl::Status ChunkStoreImpl::Register(const ObjectSpec& spec) {
  if (spec.key.empty() || spec.key.size() > kMaxKeyLength ||
      spec.key.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("object key must be 1 to 4096 bytes without NUL characters");
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
  int64_t now = NowUs();
  ObjectPtr obj;
  ObjectRecord rec;  // what is recorded, copied under the lock: another
                     // Register of the key may stamp the object's last use
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
        o.buffered_writes |= spec.whole_before_use;
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
    obj->buffered_writes = spec.whole_before_use;
    obj->rec.size = spec.size;
    obj->rec.chunk_size = cs;
    obj->rec.last_use_us = now;
    obj->rec.identity = spec.identity;
    obj->rec.file =
        absl::StrFormat("%016x-%s", XXH3_64bits(spec.key.data(), spec.key.size()), RandomSuffix());
    obj->chunks.resize((spec.size + cs - 1) / cs);
    objects_[spec.key] = obj;
    if (!health_.ok()) return absl::OkStatus();  // memory only: nothing is cached
    rec = obj->rec;
  }
  absl::Status st = index_->PutObject(spec.key, rec);
  if (!st.ok()) {
    spdlog::error("cannot record object {}: {}", spec.key, st.message());
    absl::MutexLock l(&mu_);
    auto it = objects_.find(spec.key);
    if (it != objects_.end() && it->second == obj && !obj->Busy()) objects_.erase(it);
    return st;
  }
  return absl::OkStatus();
}

std::optional<ObjectInfo> ChunkStoreImpl::Lookup(const std::string& key) const {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end() || it->second->removing) return std::nullopt;
  return InfoLocked(*it->second);
}

std::vector<ObjectInfo> ChunkStoreImpl::List() const {
  absl::MutexLock l(&mu_);
  std::vector<ObjectInfo> out;
  for (const auto& [k, o] : objects_) {
    if (!o->removing) out.push_back(InfoLocked(*o));
  }
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.key < b.key; });
  return out;
}

absl::StatusOr<ReadResult> ChunkStoreImpl::Read(const std::string& key, uint64_t offset,
                                                absl::Span<char> out) {
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
    const size_t head = std::min(a.length, a.memory->size() - a.memory_offset);
    std::memcpy(out.data(), a.memory->data() + a.memory_offset, head);
    if (head < a.length) std::memcpy(out.data() + head, a.memory_next->data(), a.length - head);
    ++ctr_.read_hits;
    ctr_.bytes_read += a.length;
    return ReadResult{a.length, {}};
  }
  IoOp op{IoOp::Kind::kRead, a.fd, offset, out.data(), a.length, 0};
  if (absl::Status st = SubmitOne(op, "read"); !st.ok()) {
    spdlog::error("cannot read {} [{}, +{}) from {}: {}; dropping its chunks", key, offset,
                  a.length, a.obj->rec.file, st.message());
    std::vector<uint32_t> all;
    for (uint32_t i = a.first; i <= a.last; ++i) all.push_back(i);
    ++ctr_.read_misses;
    return ReadResult{0, Drop(a.obj, all, /*corrupt=*/true)};
  }
  ++ctr_.read_hits;
  ctr_.bytes_read += a.length;
  return ReadResult{a.length, {}};
}

absl::StatusOr<std::vector<uint32_t>> ChunkStoreImpl::MissingChunks(const std::string& key,
                                                                    uint64_t offset,
                                                                    uint64_t length) const {
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

absl::StatusOr<ReadLease> ChunkStoreImpl::Lease(const std::string& key, uint64_t offset,
                                                size_t length) {
  auto acquired = Acquire(key, offset, length);
  if (!acquired.ok()) return acquired.status();
  if (!acquired->missing.empty()) {
    return absl::UnavailableError(
        absl::StrFormat("%s [%u, +%u) is not fully cached", key, offset, length));
  }
  return LeaseOf(*std::move(acquired), offset);
}

ReadLease ChunkStoreImpl::LeaseOf(Acquired&& a, uint64_t offset) {
  return ReadLease(
      a.fd, offset, a.length, [this, obj = a.obj] { Release(obj); }, std::move(a.memory),
      a.memory_offset, std::move(a.memory_next));
}

absl::Status ChunkStoreImpl::SubmitOne(IoOp& op, const std::string& what) {
  absl::Status st = fs_->Submit(absl::MakeSpan(&op, 1));
  if (!st.ok() || op.result == static_cast<ssize_t>(op.len)) return st;
  if (op.result < 0) return ErrnoStatus(op.result, what);
  return absl::DataLossError(
      absl::StrFormat("%s: short (%d of %u bytes)", what, op.result, op.len));
}

absl::StatusOr<StoredChunk> ChunkStoreImpl::ReadChunk(const std::string& key, uint32_t index) {
  uint64_t offset, length;
  {
    absl::MutexLock l(&mu_);
    auto it = objects_.find(key);
    if (it == objects_.end())
      return absl::NotFoundError(absl::StrCat("object not in the cache: ", key));
    const ObjectRecord& rec = it->second->rec;
    offset = uint64_t{index} * rec.chunk_size;
    // Past the end, Acquire says OutOfRange.
    length = offset < rec.size ? std::min<uint64_t>(rec.chunk_size, rec.size - offset) : 1;
  }
  // The whole chunk, as a reader of it would: the object's sequential-read
  // mark then stays where that reader leaves it. It is read whole, around
  // the page cache, so nothing is read ahead into it.
  auto a = Acquire(key, offset, length, /*read_ahead=*/false);
  if (!a.ok()) return a.status();
  if (!a->missing.empty() || a->obj == nullptr) {
    return absl::UnavailableError(absl::StrFormat("chunk %u of %s is not cached", index, key));
  }
  absl::Cleanup release = [&] { Release(a->obj); };
  uint64_t checksum = 0;
  std::shared_ptr<DiskRead> read;
  bool reader = false;
  {
    absl::MutexLock l(&mu_);
    const Object& o = *a->obj;
    // The object may have been registered anew, in chunks of another
    // size, since the offset was worked out: then this is not the chunk.
    if (offset != uint64_t{index} * o.rec.chunk_size) {
      return absl::UnavailableError(absl::StrFormat("%s changed while being read", key));
    }
    checksum = o.chunks[index].checksum;
    a->length = std::min<uint64_t>(o.rec.chunk_size, o.rec.size - offset);
    if (a->memory == nullptr) {
      auto& slot = disk_reads_[{&o, index}];
      if (!slot) {
        slot = std::make_shared<DiskRead>();
        reader = true;
      }
      read = slot;
      if (!reader) {
        ++ctr_.read_waits;
        while (!read->done) cv_.Wait(&mu_);
      }
    }
  }
  if (a->memory != nullptr) return StoredChunk{std::move(a->memory), checksum, false};
  if (!reader) {  // another asker's read, shared
    if (!read->bytes.ok()) return absl::UnavailableError(read->bytes.status().message());
    return StoredChunk{*read->bytes, checksum, false};
  }
  auto bytes = ReadIntoMemory(*a, index, checksum);
  DropPlan drop;
  {
    absl::MutexLock l(&mu_);
    read->bytes = bytes;
    read->done = true;
    disk_reads_.erase({a->obj.get(), index});
    // A chunk that cannot be read right stops being present here, so that
    // no asker after this one reads it again.
    if (!bytes.ok()) drop = BeginDropLocked(*a->obj, {index});
    cv_.SignalAll();
  }
  if (!bytes.ok()) {
    ++ctr_.read_misses;
    FinishDrop(a->obj, drop, /*corrupt=*/true);
    return absl::UnavailableError(bytes.status().message());
  }
  ++ctr_.read_hits;
  ctr_.bytes_read += a->length;
  return StoredChunk{*std::move(bytes), checksum, /*read_from_disk=*/true};
}

// A chunk passed on whole is asked for by every peer that reads it. Read
// from the file, each asker's copy went through the page cache: the first
// one filled fresh page-cache pages, which cost the node ten times the CPU
// of a direct read (1.1 s of system time per GiB, against 0.1), and about a
// quarter of all the CPU of four nodes sharing a file (bench/peers.sh). Read
// whole and direct instead, it is checked on the way (a chunk that rotted on
// disk is dropped, not passed on) and its next askers find it in memory.
absl::StatusOr<std::shared_ptr<const ChunkBytes>> ChunkStoreImpl::ReadIntoMemory(
    const Acquired& a, uint32_t index, uint64_t checksum) {
  const uint64_t offset = uint64_t{index} * a.obj->rec.chunk_size;
  std::shared_ptr<ChunkBytes> bytes = buffers_->Get(a.length);
  IoOp op{IoOp::Kind::kRead, a.fd, offset, bytes->data(), a.length, 0};
  op.direct = true;
  absl::Status st = SubmitOne(op, "read");
  if (st.ok()) {
    if (uint64_t got = ChunkChecksum(bytes->view()); got != checksum) {
      st = absl::DataLossError(absl::StrFormat("checksum %016x, stored with %016x", got, checksum));
    }
  }
  if (!st.ok()) {
    spdlog::error("cannot read chunk {} of {} from {}: {}; dropping it", index, a.obj->key,
                  a.obj->rec.file, st.message());
    return absl::Status(st.code(), absl::StrFormat("chunk %u of %s could not be read: %s", index,
                                                   a.obj->key, st.message()));
  }
  {
    absl::MutexLock l(&mu_);
    const Object& o = *a.obj;
    if (!o.removing && o.chunks[index].state == ChunkState::kPresent) {
      memory_.Remember(o.key, index, bytes);
    }
  }
  return bytes;
}

absl::StatusOr<ReadLease> ChunkStoreImpl::LeaseWhole(const std::string& key, bool as_is) {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end() || it->second->removing || it->second->rec.size == 0) {
    return absl::NotFoundError(absl::StrCat("no object to hold: ", key));
  }
  ObjectPtr obj = it->second;
  if (!as_is) {
    for (const Chunk& c : obj->chunks) {
      if (c.state != ChunkState::kPresent || !c.verified || c.verifying) {
        return absl::FailedPreconditionError(
            absl::StrCat(key, " is not all present and checked yet"));
      }
    }
  }
  auto fd = EnsureFdLocked(*obj);
  if (!fd.ok()) return fd.status();
  // A reader (no hole is punched under it, see BeginDropLocked) that is
  // never done before the lease is.
  ++obj->readers;
  ++obj->kernel_holds;
  return ReadLease(*fd, 0, obj->rec.size, [this, obj] {
    absl::MutexLock l(&mu_);
    --obj->kernel_holds;
    --obj->readers;
  });
}

void ChunkStoreImpl::ReleaseOpenHolds() {
  absl::MutexLock l(&mu_);
  for (const ObjectPtr& obj : open_holds_) {
    --obj->kernel_holds;
    --obj->readers;
  }
  open_holds_.clear();
}

absl::StatusOr<FillResult> ChunkStoreImpl::Fill(const std::string& key, uint32_t index,
                                                ChunkSource source) {
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
  if (cached) memory_.Remember(obj->key, index, bytes);
  obj->flights.erase(index);
  cv_.SignalAll();
  if (!st.ok()) return st;
  return FillResult{std::move(bytes), cached};
}

absl::Status ChunkStoreImpl::MarkDigestVerified(const std::string& key) {
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

absl::Status ChunkStoreImpl::RecordSeen(const std::string& name, const SeenVersion& seen) {
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
  return index_->PutName(name,
                         NameRecord{seen.key, seen.size, seen.version, seen.mtime_ns, seen.digest});
}

std::optional<SeenVersion> ChunkStoreImpl::LastSeen(const std::string& name) const {
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

bool ChunkStoreImpl::DigestVerified(const std::string& key) const {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  return it != objects_.end() && !it->second->removing &&
         (it->second->rec.flags & kObjectDigestVerified) != 0;
}

absl::Status ChunkStoreImpl::Pin(const std::string& key) {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end() || it->second->removing) {
    return absl::NotFoundError(absl::StrCat("cannot pin unknown object ", key));
  }
  ++it->second->pins;
  return absl::OkStatus();
}

absl::Status ChunkStoreImpl::Unpin(const std::string& key) {
  absl::MutexLock l(&mu_);
  auto it = objects_.find(key);
  if (it == objects_.end() || it->second->pins == 0) {
    return absl::FailedPreconditionError(absl::StrCat("object ", key, " is not pinned"));
  }
  --it->second->pins;
  return absl::OkStatus();
}

absl::Status ChunkStoreImpl::Remove(const std::string& key) {
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

StoreStats ChunkStoreImpl::Stats() const {
  StoreStats s;
  {
    absl::MutexLock l(&mu_);
    s.capacity_bytes = capacity_;
    s.used_bytes = used_;
    for (const auto& [k, o] : objects_) {
      if (o->removing) continue;
      ++s.objects;
      s.kernel_held_objects += o->kernel_holds > 0;
      for (const Chunk& c : o->chunks) s.chunks_present += c.state == ChunkState::kPresent;
    }
    s.open_files = open_files_;
    s.memory_bytes = memory_.bytes();
    s.degraded = !health_.ok();
    s.health = health_.ok() ? "ok" : std::string(health_.message());
  }
  s.reads = ctr_.reads;
  s.read_hits = ctr_.read_hits;
  s.read_misses = ctr_.read_misses;
  s.memory_hits = ctr_.memory_hits;
  s.read_waits = ctr_.read_waits;
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

absl::Status ChunkStoreImpl::health() const {
  absl::MutexLock l(&mu_);
  return health_;
}

void ChunkStoreImpl::Flush() {
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

absl::StatusOr<ChunkStoreImpl::Acquired> ChunkStoreImpl::Acquire(const std::string& key,
                                                                 uint64_t offset, size_t length,
                                                                 bool read_ahead) {
  Acquired a;
  std::vector<std::pair<uint32_t, uint64_t>> unverified;
  std::pair<uint64_t, uint64_t> ahead;  // a range of the file to read ahead
  int64_t now = NowUs();
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
        return absl::OutOfRangeError(
            absl::StrFormat("offset %u is past the end of %s (%u bytes)", offset, key, o.rec.size));
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
    // A reader's requests do not keep to chunk boundaries (the kernel's
    // are up to max_read long, from wherever its readahead got to): one
    // that crosses into the next chunk is served from memory too when both
    // are there. Read from the file instead, such requests were a quarter
    // of a cold sequential read's and pulled a third more from disk than
    // the file's size (chunks are written around the page cache).
    const auto* first = memory_.Find(key, a.first);
    const auto* next = a.last == a.first + 1 ? memory_.Find(key, a.last) : nullptr;
    if (first != nullptr && (a.first == a.last || next != nullptr)) {
      ++ctr_.memory_hits;
      a.memory = *first;
      if (next != nullptr) a.memory_next = *next;
      a.memory_offset = offset - uint64_t{a.first} * o.rec.chunk_size;
    }
    if (offset == o.next_offset) {
      if (opts_.background_work) VerifyAheadLocked(a.obj, a.last);
      if (read_ahead) ahead = ReadAheadLocked(o, a.last);
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
std::pair<uint64_t, uint64_t> ChunkStoreImpl::ReadAheadLocked(Object& o, uint32_t last) {
  constexpr uint64_t kAhead = 2;
  const uint64_t next = uint64_t{last} + 1;
  if (o.read_ahead_chunk > next + kAhead) o.read_ahead_chunk = 0;  // a new pass
  uint64_t from = std::max<uint64_t>(next, o.read_ahead_chunk);
  uint64_t to = std::min<uint64_t>(next + kAhead, o.chunks.size());
  auto wanted = [&](uint64_t i) {
    return o.chunks[i].state == ChunkState::kPresent &&
           memory_.Find(o.key, static_cast<uint32_t>(i)) == nullptr;
  };
  while (from < to && !wanted(from)) ++from;
  uint64_t stop = from;
  while (stop < to && wanted(stop)) ++stop;
  if (from >= stop) return {0, 0};
  o.read_ahead_chunk = static_cast<uint32_t>(stop);
  uint64_t start = from * o.rec.chunk_size;
  return {start, std::min(o.rec.size, stop * o.rec.chunk_size) - start};
}

void ChunkStoreImpl::Release(const ObjectPtr& obj) {
  if (obj == nullptr) return;  // an empty range holds nothing
  absl::MutexLock l(&mu_);
  --obj->readers;
}

// Moves the present chunks of `indexes` to kDropping. Holes are punched
// only when no reader holds the object: one that acquired a chunk before
// this must still find its bytes (a refill overwrites the range anyway).
ChunkStoreImpl::DropPlan ChunkStoreImpl::BeginDropLocked(Object& obj,
                                                         const std::vector<uint32_t>& indexes) {
  DropPlan p;
  for (uint32_t i : indexes) {
    Chunk& c = obj.chunks[i];
    if (c.state != ChunkState::kPresent) continue;
    c.state = ChunkState::kDropping;
    c.verified = false;
    memory_.Forget(obj.key, i);
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
void ChunkStoreImpl::FinishDrop(const ObjectPtr& obj, const DropPlan& p, bool corrupt) {
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
std::vector<uint32_t> ChunkStoreImpl::Drop(const ObjectPtr& obj,
                                           const std::vector<uint32_t>& indexes, bool corrupt) {
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
absl::Status ChunkStoreImpl::Store(const ObjectPtr& obj, uint32_t index, const ChunkBytes& bytes) {
  uint32_t len = static_cast<uint32_t>(bytes.size());
  int fd;
  bool buffered;
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
    buffered = obj->buffered_writes;
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
  uint64_t sum = ChunkChecksum(std::string_view(bytes.data(), len));
  IoOp op{IoOp::Kind::kWrite,
          fd,
          static_cast<uint64_t>(index) * obj->rec.chunk_size,
          const_cast<char*>(bytes.data()),
          len,
          0,
          buffered};
  absl::Status st = SubmitOne(op, absl::StrCat("write ", opts_.dir, "/objects/", obj->rec.file));
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
  c.last_use_us = NowUs();
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
std::pair<uint64_t, uint64_t> ChunkStoreImpl::AllocationFor(Object& o, uint32_t index,
                                                            uint32_t len) {
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

// A chunk index past the object's chunks: never indexed, whatever record
// (one kept from before sizes were bounded, say) led to it.
absl::Status ChunkStoreImpl::OutOfChunks(const Object& o) {
  return absl::DataLossError(absl::StrFormat("object %s has %u chunks, too few for its %u bytes",
                                             o.key, o.chunks.size(), o.rec.size));
}

ObjectInfo ChunkStoreImpl::InfoLocked(const Object& o) const {
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

uint64_t ChunkStoreImpl::HighLocked() const {
  return static_cast<uint64_t>(capacity_ * opts_.high_watermark);
}

void ChunkStoreImpl::BeginRemoveLocked(Object& o) {
  o.removing = true;
  memory_.ForgetObject(o.key);
  used_ -= o.bytes_present;
}

// Second half of a removal: index first, then the file, then the map.
absl::Status ChunkStoreImpl::FinishRemove(const ObjectPtr& obj) {
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

}  // namespace strata::cache::internal
