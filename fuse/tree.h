// What a FUSE filesystem serves: a tree says which files exist and where
// their bytes are. Volume trees (an origin's namespace) and layer trees (an
// image layer's table of contents) implement it; the engine (engine.h) turns
// kernel requests into calls on it. Inode numbers come from the tree and are
// stable across restarts, so a new daemon can serve a mount an old one made.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "cache/chunk_store.h"

namespace strata::fuse {

inline constexpr uint64_t kRootIno = 1;

struct Attr {
  uint64_t ino = 0;
  uint32_t mode = 0;  // type and permission bits (S_IFREG | 0644, ...)
  uint64_t size = 0;
  uint32_t nlink = 1;
  uint32_t uid = 0;
  uint32_t gid = 0;
  int64_t mtime_ns = 0;
  int64_t atime_ns = 0;  // 0: as mtime
  int64_t ctime_ns = 0;  // 0: as mtime
  int64_t blocks = -1;   // 512-byte blocks held; -1: counted from the size
  uint64_t rdev = 0;     // device nodes: the device
};

struct DirEntry {
  std::string name;
  Attr attr;
};

// The answer to a read: bytes in hand, or a leased range of the cache that
// the engine copies from memory or splices from the cache file.
struct ReadResult {
  std::string bytes;
  cache::ReadLease lease;  // used when lease.fd() >= 0
};

// Who asked: new files and directories belong to them.
struct Caller {
  uint32_t uid = 0;
  uint32_t gid = 0;
};

struct OpenResult {
  uint64_t handle = 0;
  bool keep_cache = false;  // the kernel's cached pages are still right
};

// A file holding an open file's bytes at the same offsets, which the kernel
// may read itself (FUSE passthrough, see Tree::Backing).
struct BackingFile {
  int fd = -1;     // owned by the tree; valid until the handle's Release
  std::string id;  // names those bytes; equal ids, equal bytes (HoldBacking)
};

// What a tree may ask of the kernel's caches. Calls return at once: the
// engine tells the kernel in the background, since inside a request the
// kernel may hold the very locks that the notification needs.
class KernelCache {
 public:
  virtual ~KernelCache() = default;
  // The kernel forgets that `name` in directory `parent` is what it was told.
  virtual void ForgetEntry(uint64_t parent, const std::string& name) = 0;
  // The kernel forgets the attributes (size, times) it holds for `ino`, and
  // asks again before it next uses them. Unlike ForgetEntry this is done
  // before the call returns, so that a request (an open) can rely on it;
  // it is safe there because dropping attributes takes no lock a request
  // holds.
  virtual void ForgetAttrs(uint64_t ino) = 0;
};

class Tree {
 public:
  virtual ~Tree() = default;

  // The engine serving this tree sets this while it serves it (null after).
  void set_kernel_cache(KernelCache* kernel) { kernel_.store(kernel); }

  // How long the kernel may trust attributes and names it was given.
  virtual absl::Duration attr_timeout() const = 0;
  virtual absl::Duration entry_timeout() const = 0;
  virtual bool read_only() const = 0;
  // Whether it serves extended attributes (the engine asks the kernel to
  // send xattr calls only then).
  virtual bool keeps_xattrs() const { return false; }

  virtual absl::StatusOr<Attr> Lookup(uint64_t parent, const std::string& name) = 0;
  virtual absl::StatusOr<Attr> GetAttr(uint64_t ino) = 0;
  virtual absl::StatusOr<std::vector<DirEntry>> ReadDir(uint64_t ino) = 0;
  virtual absl::StatusOr<OpenResult> Open(uint64_t ino, int flags) = 0;
  virtual absl::StatusOr<ReadResult> Read(uint64_t handle, uint64_t offset, size_t size) = 0;
  virtual void Release(uint64_t handle) = 0;

  // Writes: the default refuses them (EROFS).
  virtual absl::StatusOr<std::pair<Attr, OpenResult>> Create(uint64_t parent,
                                                             const std::string& name, uint32_t mode,
                                                             int flags, const Caller& who);
  virtual absl::StatusOr<size_t> Write(uint64_t handle, uint64_t offset,
                                       absl::Span<const char> data);
  virtual absl::Status Flush(uint64_t handle);
  virtual absl::Status Fsync(uint64_t handle);
  // `to_set` is a FUSE_SET_ATTR_* mask.
  virtual absl::StatusOr<Attr> SetAttr(uint64_t ino, const struct stat& attr, int to_set);
  virtual absl::StatusOr<Attr> Mkdir(uint64_t parent, const std::string& name, uint32_t mode,
                                     const Caller& who);
  virtual absl::Status Unlink(uint64_t parent, const std::string& name);
  virtual absl::Status Rmdir(uint64_t parent, const std::string& name);
  virtual absl::Status Rename(uint64_t parent, const std::string& name, uint64_t new_parent,
                              const std::string& new_name, unsigned int flags);
  virtual absl::StatusOr<Attr> Symlink(const std::string& target, uint64_t parent,
                                       const std::string& name, const Caller& who);
  virtual absl::StatusOr<std::string> Readlink(uint64_t ino);
  // A second name for the file `ino`; the default refuses (EROFS).
  virtual absl::StatusOr<Attr> Link(uint64_t ino, uint64_t new_parent, const std::string& new_name);
  // A fifo, socket or device node (or an empty regular file): `mode` holds
  // the type, `rdev` the device.
  virtual absl::StatusOr<Attr> Mknod(uint64_t parent, const std::string& name, uint32_t mode,
                                     uint64_t rdev, const Caller& who);
  // fallocate(2) on an open handle, with its `mode` flags.
  virtual absl::Status Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length);
  // Extended attributes: a value; the names, each ended by a NUL; set
  // with setxattr(2)'s `flags`; removed. The default has none (EOPNOTSUPP).
  virtual absl::StatusOr<std::string> GetXattr(uint64_t ino, const std::string& name);
  virtual absl::StatusOr<std::string> ListXattr(uint64_t ino);
  virtual absl::Status SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                                int flags);
  virtual absl::Status RemoveXattr(uint64_t ino, const std::string& name);

  // A file handle the kernel holds from before this daemon took the mount
  // over (see FuseServer::Adopt): make `handle` usable again for `ino`,
  // opened with `flags`. The default cannot.
  virtual absl::Status Reopen(uint64_t ino, uint64_t handle, int flags);

  // FUSE passthrough. The backing file of a read-only `handle` whose bytes
  // are all present, checked and cannot change: they stay held (never
  // evicted, punched or rewritten) until Release(handle). Otherwise
  // FailedPrecondition (not yet whole, or checked) or Unimplemented (never:
  // the default), and the handle is read through Read as usual.
  virtual absl::StatusOr<BackingFile> Backing(uint64_t handle);
  // Whether Backing may ever answer (false: the default).
  virtual bool has_backing_files() const { return false; }
  // The kernel reads `handle`, an open file of `ino`, from the backing file
  // `id` names, given for an earlier open of the same inode (or one opened
  // under the previous daemon, after a takeover): hold those bytes until
  // Release(handle). ESTALE when `handle` was opened for other bytes (a new
  // version, since that backing file was given): the kernel takes one
  // backing file per inode, so the open must look its name up again.
  virtual absl::Status HoldBacking(uint64_t handle, uint64_t ino, const std::string& id);
  // The kernel would not take Backing(handle)'s file: `handle` is read
  // through Read, and its bytes need no holding.
  virtual void BackingRefused(uint64_t /*handle*/) {}

  // Sizes for statfs (df, CSI volume stats). The default describes a tree
  // with no fixed size, as object stores and image layers are.
  virtual absl::StatusOr<struct statvfs> StatFs();

 protected:
  void ForgetEntry(uint64_t parent, const std::string& name) {
    if (KernelCache* k = kernel_.load()) k->ForgetEntry(parent, name);
  }
  void ForgetAttrs(uint64_t ino) {
    if (KernelCache* k = kernel_.load()) k->ForgetAttrs(ino);
  }

 private:
  std::atomic<KernelCache*> kernel_{nullptr};
};

// A status that carries the errno the kernel should see (and a message for
// the log). Statuses without one are mapped from their code.
absl::Status PosixError(int err, const std::string& message);
int ErrnoOf(const absl::Status& status);

}  // namespace strata::fuse
