// The chunk store's open-file budget: data files are opened on first use
// and the least recently used idle ones closed past StoreOptions::max_open_files.
#include <algorithm>

#include "base/logging.h"
#include "cache/chunk_store_impl.h"

namespace strata::cache::internal {

absl::StatusOr<int> ChunkStoreImpl::EnsureFdLocked(Object& o) {
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
void ChunkStoreImpl::CloseIdleFilesLocked() {
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

}  // namespace strata::cache::internal
