// Where a node's volume becomes a FUSE filesystem: a volume tree over its
// origin and the node's chunk cache, mounted (or taken over from a daemon
// that is gone) and served on a thread of its own. A seam, so that the
// volume lifecycle is tested without /dev/fuse.
#pragma once

#include <sys/statvfs.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "fuse/engine.h"
#include "fuse/volume_tree.h"
#include "origin/origin.h"

namespace strata::csi {

// One volume's filesystem, mounted.
class FuseSession {
 public:
  virtual ~FuseSession() = default;
  // What a successor daemon needs to take the mount over; the descriptor
  // stays the session's.
  virtual fuse::Handoff handoff() const = 0;
  // Starts answering the kernel's requests (until Stop, or until the mount
  // goes from outside).
  virtual void Serve() = 0;
  virtual bool running() const = 0;
  // Stops serving and unmounts. The volume's counters and usage stay
  // readable.
  virtual void Stop() = 0;
  virtual absl::StatusOr<struct statvfs> StatFs() = 0;
  virtual fuse::VolumeStats Stats() const = 0;
};

class FuseLauncher {
 public:
  virtual ~FuseLauncher() = default;
  // Mounts volume `id` (its origin, as `volume` and `mount` say) at
  // mount.mountpoint; with `adopt`, takes over the live mount there whose
  // descriptor and INIT request a previous daemon left (the caller keeps
  // its descriptor).
  virtual absl::StatusOr<std::unique_ptr<FuseSession>> Launch(
      const std::string& id, std::shared_ptr<origin::Origin> origin,
      const fuse::VolumeOptions& volume, const fuse::MountOptions& mount,
      const fuse::Handoff* adopt) = 0;
};

// Volume trees through the node's chunk cache, served by fuse::FuseServer.
class CacheFuseLauncher final : public FuseLauncher {
 public:
  // `store` and `fetcher` outlive the launcher and every session it made.
  CacheFuseLauncher(cache::ChunkStore& store, cache::Fetcher& fetcher)
      : store_(store), fetcher_(fetcher) {}
  absl::StatusOr<std::unique_ptr<FuseSession>> Launch(const std::string& id,
                                                      std::shared_ptr<origin::Origin> origin,
                                                      const fuse::VolumeOptions& volume,
                                                      const fuse::MountOptions& mount,
                                                      const fuse::Handoff* adopt) override;

 private:
  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
};

}  // namespace strata::csi
