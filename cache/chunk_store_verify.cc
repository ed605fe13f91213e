// Checking what the store serves: chunk checksums on first read, verify-ahead
// for sequential readers on a background thread, the full Verify, and the
// scrub for data files deleted behind the store's back.
#include <algorithm>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_format.h"
#include "base/digest.h"
#include "base/logging.h"
#include "cache/chunk_store_impl.h"

namespace strata::cache::internal {

namespace {

// Per-thread scratch space for chunk verification: a fresh zero-filled
// buffer per chunk costs more than the read it holds.
char* Scratch(size_t len) {
  static thread_local std::unique_ptr<char[]> buf;
  static thread_local size_t cap = 0;
  if (cap < len) {
    buf.reset(new char[len]);
    cap = len;
  }
  return buf.get();
}

}  // namespace

VerifyReport ChunkStoreImpl::Verify() {
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

// A sequential reader will want the next chunks soon: check them on the
// verifier thread now, so the first read after a start overlaps the disk
// reads of verification with serving.
void ChunkStoreImpl::VerifyAheadLocked(const ObjectPtr& obj, uint32_t last) {
  constexpr uint32_t kAhead = 2;
  for (uint32_t j = last + 1; j <= last + kAhead && j < obj->chunks.size(); ++j) {
    Chunk& c = obj->chunks[j];
    if (c.state != ChunkState::kPresent || c.verified || c.verifying) continue;
    c.verifying = true;
    ++obj->readers;
    verify_queue_.push_back({obj, j, c.checksum});
  }
}

void ChunkStoreImpl::EndVerify(Object& obj,
                               const std::vector<std::pair<uint32_t, uint64_t>>& chunks) {
  absl::MutexLock l(&mu_);
  for (auto [i, sum] : chunks) obj.chunks[i].verifying = false;
  cv_.SignalAll();
}

void ChunkStoreImpl::VerifierLoop() {
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

// Reads chunk `i` and compares its checksum; marks it verified on success.
// The read is split so that several parts are in flight at once.
bool ChunkStoreImpl::CheckChunk(Object& obj, int fd, uint32_t i, uint64_t want) {
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
  uint64_t got = ChunkChecksum(std::string_view(buf, len));
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

// Drops objects whose data file was deleted behind the store's back. The
// fstat calls run outside the lock: readers never wait on a scrub.
void ChunkStoreImpl::Scrub() {
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

}  // namespace strata::cache::internal
