// A directory that outside names are resolved beneath. A root daemon serves
// shared origins that others write to: a directory swapped for a symlink to
// /etc, or a name with "..", must never take it outside. So every path is
// opened relative to the root's descriptor with openat2(RESOLVE_BENEATH |
// RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS), and operations on a name
// act on the directory descriptor that holds it (fstatat, unlinkat, ...):
// a symlink inside is an object of its own, never a way through.
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "base/unique_fd.h"

namespace strata::origin {

struct ObjectStat;

class RootDir {
 public:
  // `path` (absolute) is an administrator's: symlinks in it are followed.
  // With `sub`, the root is `sub` beneath `path`, reached without following
  // any symlink (an origin that a pod named under an allowed prefix). The
  // root is opened at first use and kept; Stat("") looks it up again, so a
  // root that was removed, replaced or remounted is noticed. The root is
  // usually a directory, but may be one file (file:///path/to/blob).
  explicit RootDir(std::string path, std::string sub = "");
  RootDir(const RootDir&) = delete;
  RootDir& operator=(const RootDir&) = delete;

  // The root's path, for messages.
  const std::string& path() const { return display_; }

  // Opens `rel` (relative, checked; "" is the root itself) with `flags`
  // (O_CLOEXEC added). A symlink anywhere on the way is ELOOP, except a
  // last component opened with O_PATH | O_NOFOLLOW, which is the link.
  absl::StatusOr<UniqueFd> Open(const std::string& rel, int flags, mode_t mode = 0);

  // Opens the regular file `rel` with `flags` (access mode, O_TRUNC,
  // O_APPEND, O_DIRECT). Anything else found there is refused before it is
  // opened, so that no fifo blocks the daemon and no device is opened:
  // a directory is EISDIR, a symlink ELOOP, any other kind ENXIO.
  absl::StatusOr<UniqueFd> OpenFile(const std::string& rel, int flags);

  // The directory that holds `rel` (non-empty), opened O_PATH, and the
  // last component's name: the pair every *at() call takes.
  struct Entry {
    UniqueFd dir;
    std::string name;
  };
  absl::StatusOr<Entry> Parent(const std::string& rel);

  // Makes `rel` and the directories above it that are missing (mkdir -p),
  // one level at a time beneath the root: a symlink on the way is ELOOP.
  absl::Status MakeDirs(const std::string& rel, mode_t mode);

  // Removes `rel` (non-empty) and all it holds; see RemoveAllAt.
  absl::Status RemoveAll(const std::string& rel);

  // lstat of `rel`; the root itself is stat'ed (the root may be a link).
  absl::StatusOr<struct stat> Stat(const std::string& rel);

  // The root's descriptor (for fstatvfs and the like), valid while the
  // returned pointer is held.
  absl::StatusOr<std::shared_ptr<const UniqueFd>> Fd();

 private:
  // Opens the root anew from its path.
  absl::StatusOr<UniqueFd> OpenRoot() const;

  std::string path_, sub_, display_;
  absl::Mutex mu_;
  // Shared with the calls using it, so that a root replaced meanwhile is
  // closed only when the last of them is done with it.
  std::shared_ptr<const UniqueFd> root_ ABSL_GUARDED_BY(mu_);
};

// Opens `rel` beneath the directory `dirfd` without following symlinks
// (see RootDir::Open); `what` names the directory in errors.
absl::StatusOr<UniqueFd> OpenBeneath(int dirfd, const std::string& what, const std::string& rel,
                                     int flags, mode_t mode = 0);

// What a POSIX origin says about a file it stat'ed: its ObjectStat, whose
// version is its mtime, size, inode and ctime (VersionOf).
ObjectStat StatOf(const struct stat& st);
std::string VersionOf(const struct stat& st);

// Removes `name` in `dirfd` and, if it is a directory, everything in it,
// reaching each level through the descriptor of the one above: a directory
// swapped for a symlink is removed as a link, and nothing it points to is
// touched. What is already gone is fine.
absl::Status RemoveAllAt(int dirfd, const std::string& name, const std::string& what);

}  // namespace strata::origin
