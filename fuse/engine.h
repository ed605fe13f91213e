// The FUSE engine: one libfuse3 low-level session serving a Tree at a
// mountpoint, multi-threaded, 1 MiB reads and writes, cached bytes spliced
// from the store's files to the kernel without a copy through the daemon.
#pragma once

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "fuse/tree.h"

namespace strata::fuse {

struct MountOptions {
  std::string mountpoint;
  std::string fsname = "strata";  // shown in /proc/mounts
  int max_threads = 16;
  bool allow_other = true;  // pods run as other users than the daemon
};

class FuseServer {
 public:
  // Mounts `tree` (which must outlive the server). The mount is live when
  // this returns; requests are served once Run() is called.
  static absl::StatusOr<std::unique_ptr<FuseServer>> Mount(Tree& tree, const MountOptions& options);
  ~FuseServer();  // unmounts if still mounted

  // Serves requests until Stop() or an external unmount.
  absl::Status Run();
  // Ends Run() and unmounts; callable from any thread.
  void Stop();

  struct Impl;  // the session and what the callbacks share (engine.cc)

 private:
  explicit FuseServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Detaches a mount whose daemon may be gone (umount2 MNT_DETACH).
absl::Status Unmount(const std::string& mountpoint);

}  // namespace strata::fuse
