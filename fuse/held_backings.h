// The store's objects the kernel reads itself (FUSE passthrough), by the
// file handle whose open gave the kernel its backing file: each held (never
// evicted, punched or rewritten) until that handle is released. The kernel
// reads all the open files of an inode from one backing file, so what is
// held also says which bytes (which version) the kernel reads an inode from.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "cache/chunk_store.h"

namespace strata::fuse {

class HeldBackings {
 public:
  // Holds `lease`, the bytes `id` names, for `handle`, an open file of the
  // inode `ino` (letting go of what the handle held before).
  void Hold(uint64_t handle, uint64_t ino, std::string id, cache::ReadLease lease) {
    Held replaced;  // let go of outside the lock: the store takes its own
    absl::MutexLock l(&mu_);
    if (auto it = by_handle_.find(handle); it != by_handle_.end()) {
      replaced = std::move(it->second);
      Forget(replaced);
    }
    auto& [held_id, count] = by_ino_[ino];
    held_id = id;
    ++count;
    by_handle_[handle] = Held{ino, std::move(id), std::move(lease)};
  }
  void LetGo(uint64_t handle) {
    Held held;
    absl::MutexLock l(&mu_);
    if (auto it = by_handle_.find(handle); it != by_handle_.end()) {
      held = std::move(it->second);
      by_handle_.erase(it);
      Forget(held);
    }
  }
  // The id of the bytes the kernel reads `ino` from, while a handle of it
  // holds them.
  std::optional<std::string> HeldFor(uint64_t ino) const {
    absl::MutexLock l(&mu_);
    auto it = by_ino_.find(ino);
    if (it == by_ino_.end()) return std::nullopt;
    return it->second.first;
  }

 private:
  struct Held {
    uint64_t ino = 0;
    std::string id;
    cache::ReadLease lease;
  };
  void Forget(const Held& h) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = by_ino_.find(h.ino);
    if (it != by_ino_.end() && --it->second.second <= 0) by_ino_.erase(it);
  }

  mutable absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Held> by_handle_ ABSL_GUARDED_BY(mu_);
  // By inode: the id held and how many handles hold it.
  absl::flat_hash_map<uint64_t, std::pair<std::string, int>> by_ino_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::fuse
