// Writes to a POSIX origin (file://): every change is a system call on a name
// beneath the origin's directory (origin::RootDir), never following a
// symlink, so a change is at the origin when the call returns.
#pragma once

#include <cstdint>
#include <string>

#include "fuse/writes.h"
#include "origin/root_dir.h"

namespace strata::fuse {

class VolumeTree;

class WriteThrough final : public Writes {
 public:
  // `tree` and `root` outlive this.
  WriteThrough(VolumeTree& tree, origin::RootDir& root) : tree_(tree), root_(root) {}

  absl::Status Writable(const char*) const override { return absl::OkStatus(); }
  absl::StatusOr<OpenResult> Open(uint64_t ino, const std::string& path,
                                  const origin::ObjectStat& st, int flags) override;
  absl::StatusOr<strata::UniqueFd> Reopen(const std::string& path, int flags) override;
  std::optional<std::pair<uint64_t, origin::ObjectStat>> Unsent(const std::string&) override {
    return std::nullopt;  // the origin has every write as soon as it is made
  }
  absl::Status Flush(uint64_t handle) override;
  absl::Status Fsync(uint64_t handle) override;
  void Release(uint64_t handle) override;
  absl::StatusOr<std::pair<Attr, OpenResult>> Create(const std::string& path, uint32_t mode,
                                                     int flags, const Caller& who) override;
  absl::StatusOr<Attr> SetAttr(uint64_t ino, const std::string& path, const struct stat& attr,
                               int to_set) override;
  absl::StatusOr<Attr> Mkdir(const std::string& path, uint32_t mode, const Caller& who) override;
  absl::Status Unlink(const std::string& path) override;
  absl::Status Rmdir(const std::string& path) override;
  absl::Status Rename(const std::string& from, const std::string& to, unsigned int flags) override;
  absl::StatusOr<Attr> Symlink(const std::string& target, uint64_t parent, const std::string& name,
                               const Caller& who) override;
  absl::StatusOr<std::string> Readlink(const std::string& path) override;
  absl::StatusOr<Attr> Link(uint64_t ino, uint64_t new_parent,
                            const std::string& new_name) override;
  absl::StatusOr<Attr> Mknod(const std::string& path, uint32_t mode, uint64_t rdev,
                             const Caller& who) override;
  absl::Status Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length) override;
  // Only the origin's "user." attributes: "trusted." and "security." ones
  // mean something to the node, not to the volume.
  absl::StatusOr<std::string> GetXattr(uint64_t ino, const std::string& name) override;
  absl::StatusOr<std::string> ListXattr(uint64_t ino) override;
  absl::Status SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                        int flags) override;
  absl::Status RemoveXattr(uint64_t ino, const std::string& name) override;
  // The origin directory's file system.
  absl::StatusOr<struct statvfs> StatFs() override;

 private:
  // Before the last name of an open file may go (unlink, rename over it):
  // a descriptor of the file, checked to be the one its inode stands for,
  // taken while the name still leads to it. Once the name is gone,
  // GiveHeld lends it to the file's read handles, which read by name, so
  // that they keep working (as on a local file system).
  struct Held {
    uint64_t ino = 0;
    strata::UniqueFd fd;
  };
  Held HoldOpenFiles(const std::string& path);
  void GiveHeld(const Held& held);
  // Gives a new entry (open as `fd`, any kind) to `who`, with exactly
  // `mode`'s permission bits; see the .cc.
  void Own(int fd, int dirfd, const std::string& path, uint32_t mode, const Caller& who);
  // unlinkat of `path` with `flags` (0 or AT_REMOVEDIR).
  absl::Status RemoveName(const std::string& path, int flags);
  // The file `ino` stands for, opened O_PATH without following its name
  // and checked to be that file (ESTALE if the name now leads to another);
  // unlinked and open, a handle's descriptor of it. For calls through
  // /proc/self/fd (xattrs, link).
  absl::StatusOr<strata::UniqueFd> TheFile(uint64_t ino);

  VolumeTree& tree_;
  origin::RootDir& root_;
};

}  // namespace strata::fuse
