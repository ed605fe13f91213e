// How a volume's changes reach its origin. A volume tree (volume_tree.h)
// keeps the namespace (inodes, names, open handles) and the read path; a
// Writes makes each change at the origin, either written through with system
// calls beneath a POSIX directory (write_through.h) or staged in a local file
// and uploaded whole to an object store (staged_uploads.h).
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/unique_fd.h"
#include "fuse/tree.h"
#include "origin/origin.h"

namespace strata::fuse {

// The tree has already refused writes on a read-only volume and checked the
// names it was given, unless a method takes them unchecked (`parent`,
// `name`): there an origin that cannot do the call at all says so first, as
// it did before it looked at the name.
class Writes {
 public:
  virtual ~Writes() = default;

  // Refuses `op` when the origin cannot take writes as configured.
  virtual absl::Status Writable(const char* op) const = 0;

  // A handle that writes the file `ino`, which `path` names and the origin
  // just described as `st`, opened with `flags`.
  virtual absl::StatusOr<OpenResult> Open(uint64_t ino, const std::string& path,
                                          const origin::ObjectStat& st, int flags) = 0;
  // The descriptor for a writing handle the kernel kept from a replaced
  // daemon (see Tree::Reopen).
  virtual absl::StatusOr<strata::UniqueFd> Reopen(const std::string& path, int flags) = 0;
  // What `path` is while it is written here and the origin does not have it
  // yet (its inode and attributes); none when the origin's word stands.
  virtual std::optional<std::pair<uint64_t, origin::ObjectStat>> Unsent(
      const std::string& path) = 0;
  // Makes what `handle` wrote reach the origin (close, fsync); EBADF for a
  // handle the tree does not know.
  virtual absl::Status Flush(uint64_t handle) = 0;
  virtual absl::Status Fsync(uint64_t handle) = 0;
  // The kernel's last close of `handle`: flushed, then forgotten. A failed
  // flush is only logged (close(2) already saw it).
  virtual void Release(uint64_t handle) = 0;

  virtual absl::StatusOr<std::pair<Attr, OpenResult>> Create(const std::string& path, uint32_t mode,
                                                             int flags, const Caller& who) = 0;
  virtual absl::StatusOr<Attr> SetAttr(uint64_t ino, const std::string& path,
                                       const struct stat& attr, int to_set) = 0;
  virtual absl::StatusOr<Attr> Mkdir(const std::string& path, uint32_t mode, const Caller& who) = 0;
  // Removes the name at the origin; the tree forgets it after.
  virtual absl::Status Unlink(const std::string& path) = 0;
  virtual absl::Status Rmdir(const std::string& path) = 0;
  // Moves `from` to `to` at the origin; the tree moves its names after.
  virtual absl::Status Rename(const std::string& from, const std::string& to,
                              unsigned int flags) = 0;
  virtual absl::StatusOr<Attr> Symlink(const std::string& target, uint64_t parent,
                                       const std::string& name, const Caller& who) = 0;
  virtual absl::StatusOr<std::string> Readlink(const std::string& path) = 0;
  virtual absl::StatusOr<Attr> Link(uint64_t ino, uint64_t new_parent,
                                    const std::string& new_name) = 0;
  virtual absl::StatusOr<Attr> Mknod(const std::string& path, uint32_t mode, uint64_t rdev,
                                     const Caller& who) = 0;
  virtual absl::Status Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length) = 0;
  virtual absl::StatusOr<std::string> GetXattr(uint64_t ino, const std::string& name) = 0;
  virtual absl::StatusOr<std::string> ListXattr(uint64_t ino) = 0;
  virtual absl::Status SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                                int flags) = 0;
  virtual absl::Status RemoveXattr(uint64_t ino, const std::string& name) = 0;
  // The room there is to write (statfs).
  virtual absl::StatusOr<struct statvfs> StatFs() = 0;
};

}  // namespace strata::fuse
