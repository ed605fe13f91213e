// The mount operations the node's volume lifecycle asks of the OS (bind
// mounts, unmounts, the mount table), behind one seam: the daemon uses the
// system's, tests a fake that keeps its own mount table and needs no root.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace strata::csi {

struct BindOptions {
  bool read_only = false;
  unsigned long flags = 0;  // MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME
};

class Mounter {
 public:
  virtual ~Mounter() = default;
  // Binds the directory `from` at the directory `target`, with `options`.
  // On failure nothing stays mounted at `target`.
  virtual absl::Status Bind(const std::string& from, const std::string& target,
                            const BindOptions& options) = 0;
  // Unmounts the topmost mount at `path`; fails while it is busy.
  virtual absl::Status Unmount(const std::string& path) = 0;
  // Detaches the topmost mount at `path` even while it is busy (or its
  // server is gone); it goes once its last user does.
  virtual absl::Status Detach(const std::string& path) = 0;
  // Whether something is mounted at `path`, from the mount table, never by
  // looking at the path: its server may be dead, or this very process.
  virtual bool IsMountPoint(const std::string& path) = 0;
};

// mount(2), umount2(2) and /proc/self/mountinfo.
class SystemMounter final : public Mounter {
 public:
  absl::Status Bind(const std::string& from, const std::string& target,
                    const BindOptions& options) override;
  absl::Status Unmount(const std::string& path) override;
  absl::Status Detach(const std::string& path) override;
  bool IsMountPoint(const std::string& path) override;
};

}  // namespace strata::csi
