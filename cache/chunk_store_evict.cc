// Eviction: least recently used objects first (by the store's clock), whole
// or their coldest chunks, on request or from the background evictor, which
// also writes last-use stamps and runs the scrub now and then.
#include <algorithm>

#include "base/logging.h"
#include "cache/chunk_store_impl.h"

namespace strata::cache::internal {

namespace {

constexpr absl::Duration kLastUseFlushInterval = absl::Seconds(30);
constexpr absl::Duration kScrubInterval = absl::Seconds(10);

}  // namespace

EvictReport ChunkStoreImpl::Evict(const EvictRequest& req) {
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

// Frees at least `need` bytes, least recently used objects first. An
// object larger than what is still needed loses only its coldest chunks.
void ChunkStoreImpl::EvictBytes(uint64_t need, bool whole_objects, EvictReport* rep) {
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

void ChunkStoreImpl::FlushLastUse() {
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

void ChunkStoreImpl::EvictorLoop() {
  // Intervals are measured on the store's clock (a test moves it to make
  // the next wake-up flush or scrub); the wait between wake-ups is real
  // time, bounded so that a clock moved forward is noticed within a second.
  absl::Time last_flush = opts_.clock->Now();
  absl::Time last_scrub = last_flush;
  // A clock set back (a wall clock stepped by NTP) must not hold off the
  // periodic work until it catches up.
  auto due = [](absl::Time now, absl::Time last, absl::Duration every) {
    return now - last > every || now < last;
  };
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
    absl::Time now = opts_.clock->Now();
    if (due(now, last_flush, kLastUseFlushInterval)) {
      FlushLastUse();
      last_flush = now;
    }
    if (due(now, last_scrub, kScrubInterval)) {
      Scrub();
      last_scrub = now;
    }
  }
}

}  // namespace strata::cache::internal
