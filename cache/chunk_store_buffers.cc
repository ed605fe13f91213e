// The chunk store's buffer pool: fills take a chunk-sized aligned buffer from
// it and the buffer comes back when the last holder of the fill's bytes lets go.
#include "cache/chunk_store_impl.h"

namespace strata::cache::internal {

std::shared_ptr<ChunkBytes> BufferPool::Get(size_t len) {
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
  return std::shared_ptr<ChunkBytes>(b.release(),
                                     [pool = shared_from_this()](ChunkBytes* p) { pool->Put(p); });
}

void BufferPool::Put(ChunkBytes* b) {
  absl::MutexLock l(&mu_);
  if (free_.size() < kKeep) {
    free_.emplace_back(b);
    return;
  }
  delete b;
}

}  // namespace strata::cache::internal
