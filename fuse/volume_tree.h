// A volume tree: an origin's namespace (a directory, a bucket prefix) as
// POSIX directories and files. Metadata is cached for a short TTL; an open
// revalidates against the origin (close-to-open consistency across nodes);
// reads go through the fetcher and the chunk store, hits by splice.
#pragma once

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "cache/fetcher.h"
#include "cache/origin.h"
#include "fuse/tree.h"

namespace strata::fuse {

struct VolumeOptions {
  absl::Duration attr_ttl = absl::Seconds(1);  // metadata cache and kernel timeouts
  uint32_t chunk_size = 0;                     // 0: the store's default
  bool read_only = false;
};

class VolumeTree final : public Tree {
 public:
  VolumeTree(std::shared_ptr<cache::Origin> origin, cache::ChunkStore& store,
             cache::Fetcher& fetcher, VolumeOptions options);

  absl::Duration attr_timeout() const override { return opts_.attr_ttl; }
  absl::Duration entry_timeout() const override { return opts_.attr_ttl; }
  bool read_only() const override { return opts_.read_only; }

  absl::StatusOr<Attr> Lookup(uint64_t parent, const std::string& name) override;
  absl::StatusOr<Attr> GetAttr(uint64_t ino) override;
  absl::StatusOr<std::vector<DirEntry>> ReadDir(uint64_t ino) override;
  absl::StatusOr<OpenResult> Open(uint64_t ino, int flags) override;
  absl::StatusOr<ReadResult> Read(uint64_t handle, uint64_t offset, size_t size) override;
  void Release(uint64_t handle) override;

 private:
  struct Node {
    std::string path;  // relative to the origin's root; "" for the root
    cache::ObjectStat stat;
    absl::Time fetched;
    std::string opened_version;  // version at the last open: keep_cache when unchanged
  };
  struct Handle {
    uint64_t ino;
    cache::FetchTarget target;
  };

  // The inode of `path`: a hash of it, stable across restarts, probing past
  // the (unlikely) collision with another path.
  uint64_t InoFor(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> PathOf(uint64_t ino);
  // The origin's stat of `path` (fresh when `revalidate` or past the TTL).
  absl::StatusOr<cache::ObjectStat> StatPath(const std::string& path, uint64_t* ino,
                                             bool revalidate);
  Attr ToAttr(uint64_t ino, const cache::ObjectStat& st) const;

  std::shared_ptr<cache::Origin> origin_;
  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
  VolumeOptions opts_;
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Node> nodes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> inos_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Handle> handles_ ABSL_GUARDED_BY(mu_);
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_) = 1;
};

}  // namespace strata::fuse
