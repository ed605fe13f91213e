// The FUSE engine: one libfuse3 low-level session serving a Tree at a
// mountpoint, multi-threaded, 1 MiB reads and writes, cached bytes spliced
// from the store's files to the kernel without a copy through the daemon.
#pragma once

#include <functional>
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
  // The mount's readahead window (0: the kernel's 128 KiB, which INIT can
  // only lower). Wider, a sequential reader has several reads in flight,
  // served in parallel, instead of one at a time.
  uint32_t read_ahead_kib = 4096;
  // FUSE passthrough (Linux 6.9+, CAP_SYS_ADMIN): a read-only open of a
  // file the tree has a backing file for (Tree::Backing) is read by the
  // kernel from that file itself, without this daemon. Where the kernel
  // cannot, one log line, and reads go through the daemon as before.
  // Off, no new backing files; a successor still keeps to those its
  // predecessor gave the kernel, as the kernel requires, until closed.
  bool passthrough = true;
  // Where the kernel's opens of this mount are logged for a successor
  // (open_log.h); empty: nowhere. A successor (Adopt) of a tree with
  // backing files that finds no log cannot know how the kernel holds its
  // inodes: it makes no passthrough opens, and opens of files its
  // predecessor passed through fail until those are closed.
  std::string open_log;
  // Gives the kernel `backing_fd` to read a passthrough open from, on the
  // session's /dev/fuse descriptor `fuse_fd`: the kernel's id for it, or
  // -errno. Null: the kernel's FUSE_DEV_IOC_BACKING_OPEN. Tests put faults
  // here.
  std::function<int(int fuse_fd, int backing_fd)> open_backing;
};

// MountOptions::open_backing's default: the kernel's FUSE_DEV_IOC_BACKING_OPEN.
int KernelOpenBacking(int fuse_fd, int backing_fd);

// What a successor daemon needs to take over a live mount: the /dev/fuse
// descriptor (kept open meanwhile by someone else, see fd_keeper.h) and the
// INIT request the kernel sent when the file system was mounted, which the
// successor's libfuse session replays instead of a handshake.
struct Handoff {
  int fd = -1;
  std::string init;
};

class FuseServer {
 public:
  // Mounts `tree` (which must outlive the server). The mount is live when
  // this returns; requests are served once Run() is called.
  static absl::StatusOr<std::unique_ptr<FuseServer>> Mount(Tree& tree, const MountOptions& options);
  // Takes over the live mount at options.mountpoint from a daemon that is
  // gone: `handoff.fd` (duplicated; the caller keeps its copy) is that
  // mount's /dev/fuse descriptor. Inode numbers and file handles the kernel
  // holds must mean the same in `tree` (see Tree::Reopen).
  static absl::StatusOr<std::unique_ptr<FuseServer>> Adopt(Tree& tree, const MountOptions& options,
                                                           const Handoff& handoff);
  // This mount's descriptor (owned by the server) and INIT request.
  Handoff handoff() const;
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

// Whether something is mounted at `path` (as the kernel names it), from
// /proc/self/mountinfo: a stat would ask the mount's server, which may be
// dead, or this very process before it serves.
bool IsMountPoint(const std::string& path);

// Detaches a mount whose daemon may be gone (umount2 MNT_DETACH).
absl::Status Unmount(const std::string& mountpoint);

}  // namespace strata::fuse
