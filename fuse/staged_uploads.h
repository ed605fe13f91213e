// Writes to an object store (s3://): a file written is staged in a local file
// and uploaded whole with Origin::Put on flush, fsync or close; a rename is a
// copy and a delete. Objects have no links, modes, owners or attributes.
#pragma once

#include <cstdint>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "fuse/volume_tree.h"
#include "fuse/writes.h"

namespace strata::fuse {

class StagedUploads final : public Writes {
 public:
  // `tree` and `origin` outlive this. Staging files are made in
  // `staging_dir`; with none, every write is refused.
  StagedUploads(VolumeTree& tree, origin::Origin& origin, std::string staging_dir)
      : tree_(tree), origin_(origin), staging_dir_(std::move(staging_dir)) {}

  absl::Status Writable(const char* op) const override;
  absl::StatusOr<OpenResult> Open(uint64_t ino, const std::string& path,
                                  const origin::ObjectStat& st, int flags) override;
  absl::StatusOr<strata::UniqueFd> Reopen(const std::string& path, int flags) override;
  // The staged copy is the file until it is uploaded.
  std::optional<std::pair<uint64_t, origin::ObjectStat>> Unsent(const std::string& path) override;
  absl::Status Flush(uint64_t handle) override { return Upload(handle); }
  // Durable is at the object store.
  absl::Status Fsync(uint64_t handle) override { return Upload(handle); }
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
  absl::StatusOr<std::string> GetXattr(uint64_t ino, const std::string& name) override;
  absl::StatusOr<std::string> ListXattr(uint64_t ino) override;
  absl::Status SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                        int flags) override;
  absl::Status RemoveXattr(uint64_t ino, const std::string& name) override;
  // An object store has no fixed size: the tree's default.
  absl::StatusOr<struct statvfs> StatFs() override;

 private:
  // A new local staging file for `path` (fd, file name).
  absl::StatusOr<std::pair<int, std::string>> Stage(const std::string& path);
  // A handle of `ino` that writes a whole new content of `path` to
  // `staged` (from Stage), uploaded even if nothing is written to it.
  absl::StatusOr<OpenResult> AddStagedHandle(uint64_t ino, const std::string& path,
                                             const origin::ObjectStat& st,
                                             const std::pair<int, std::string>& staged);
  // Uploads a dirty staged handle; EIO (and a log line) on failure.
  absl::Status Upload(uint64_t handle);
  // Makes `path` an empty object.
  absl::Status PutEmpty(const std::string& path);
  absl::Status NoFiles() const;

  VolumeTree& tree_;
  origin::Origin& origin_;
  const std::string staging_dir_;
  // Paths written but not uploaded yet -> their handle. Guarded by the
  // tree's lock, as the handles are.
  absl::flat_hash_map<std::string, uint64_t> staged_paths_ ABSL_GUARDED_BY(tree_.mu_);
};

}  // namespace strata::fuse
