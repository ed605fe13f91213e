// The store's objects the kernel reads itself (FUSE passthrough), by the
// file handle whose open gave the kernel its backing file: each held (never
// evicted, punched or rewritten) until that handle is released.
#pragma once

#include <cstdint>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "cache/chunk_store.h"

namespace strata::fuse {

class HeldBackings {
 public:
  // Holds `lease` for `handle` (letting go of one it held before).
  void Hold(uint64_t handle, cache::ReadLease lease) {
    cache::ReadLease replaced;  // let go of outside the lock: the store takes its own
    absl::MutexLock l(&mu_);
    replaced = std::exchange(leases_[handle], std::move(lease));
  }
  void LetGo(uint64_t handle) {
    cache::ReadLease held;
    absl::MutexLock l(&mu_);
    if (auto it = leases_.find(handle); it != leases_.end()) {
      held = std::move(it->second);
      leases_.erase(it);
    }
  }

 private:
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, cache::ReadLease> leases_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::fuse
