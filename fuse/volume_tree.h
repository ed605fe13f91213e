// A volume tree: an origin's namespace (a directory, a bucket prefix) as
// POSIX directories and files. Metadata is cached for a short TTL; an open
// revalidates against the origin (close-to-open consistency across nodes);
// reads go through the fetcher and the chunk store, hits by splice.
//
// How changes reach the origin is a Writes (writes.h), picked by the
// origin: written through beneath a POSIX directory, or staged and uploaded
// to an object store. What reads the time reads VolumeOptions::clock.
//
// Inodes: on a POSIX origin an inode stands for the origin's file (its
// device and inode number), so every hard link of a file is one inode and
// a rename keeps it; the number is the origin's own where it can be. On an
// object store an inode stands for a path (a hash of it). Either way the
// numbers are stable across restarts, and an inode log lets a successor
// daemon know the ones the kernel holds. A file that changes while the
// kernel reads its old version from a backing file (FUSE passthrough)
// becomes another inode, for the kernel takes one backing file per inode.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "base/clock.h"
#include "cache/fetcher.h"
#include "fuse/held_backings.h"
#include "fuse/tree.h"
#include "fuse/writes.h"
#include "origin/origin.h"
#include "origin/root_dir.h"

namespace strata::fuse {

struct VolumeStats {
  uint64_t reads = 0;          // read requests
  uint64_t cached_reads = 0;   // answered by splice from the chunk cache
  uint64_t fetched_reads = 0;  // answered through the fetcher (some chunk was missing)
  uint64_t direct_reads = 0;   // answered from the origin file (a handle that writes)
  uint64_t bytes_read = 0;
  uint64_t cached_bytes = 0;  // of bytes_read, spliced from the cache
  uint64_t bytes_written = 0;
  uint64_t errors = 0;  // reads and writes that failed
};

struct VolumeOptions {
  absl::Duration attr_ttl = absl::Seconds(1);  // metadata cache and kernel timeouts
  uint32_t chunk_size = 0;                     // 0: the store's default
  bool read_only = false;
  // Where writes to object-store volumes are staged until they are uploaded
  // (on flush/close or fsync). Empty: object-store volumes refuse writes.
  std::string staging_dir;
  // fsGroup (CSI VOLUME_MOUNT_GROUP): when >= 0, every file and directory
  // shows this group with the owner's permission bits, so that the pod's
  // processes, which carry the group, can use what the origin holds.
  int64_t mount_gid = -1;
  // A file that records which path each inode number stands for, so that a
  // daemon taking this mount over knows the inodes the kernel holds. With
  // `resume_inodes` it is read first (a takeover); otherwise it starts empty.
  std::string inode_log;
  bool resume_inodes = false;
  // file:// volumes: serve the origin's "user." extended attributes. Off by
  // default: a file system that answers getxattr is asked for
  // security.capability before every write (the kernel cannot mark its
  // inodes as having none without FUSE_HANDLE_KILLPRIV_V2, which needs
  // libfuse 3.15+), one more round trip per write(2).
  bool xattrs = false;
  // oci:// origins: serve the image's unpacked files (image_tree.h), not
  // its blobs by digest.
  bool image_files = false;
  // Ages metadata against the TTL and stamps new objects; tests pass a fake.
  Clock* clock = RealClock();
};

class VolumeTree final : public Tree {
 public:
  VolumeTree(std::shared_ptr<origin::Origin> origin, cache::ChunkStore& store,
             cache::Fetcher& fetcher, VolumeOptions options);
  ~VolumeTree() override;

  absl::Duration attr_timeout() const override { return opts_.attr_ttl; }
  absl::Duration entry_timeout() const override { return opts_.attr_ttl; }
  bool read_only() const override { return opts_.read_only; }
  bool keeps_xattrs() const override { return opts_.xattrs && root_ != nullptr; }

  absl::StatusOr<Attr> Lookup(uint64_t parent, const std::string& name) override;
  absl::StatusOr<Attr> GetAttr(uint64_t ino) override;
  absl::StatusOr<std::vector<DirEntry>> ReadDir(uint64_t ino) override;
  absl::StatusOr<OpenResult> Open(uint64_t ino, int flags) override;
  absl::StatusOr<ReadResult> Read(uint64_t handle, uint64_t offset, size_t size) override;
  void Release(uint64_t handle) override;

  // Writes: the volume's Writes makes them at the origin.
  absl::StatusOr<std::pair<Attr, OpenResult>> Create(uint64_t parent, const std::string& name,
                                                     uint32_t mode, int flags,
                                                     const Caller& who) override;
  absl::StatusOr<size_t> Write(uint64_t handle, uint64_t offset,
                               absl::Span<const char> data) override;
  absl::Status Flush(uint64_t handle) override;
  absl::Status Fsync(uint64_t handle) override;
  absl::StatusOr<Attr> SetAttr(uint64_t ino, const struct stat& attr, int to_set) override;
  absl::StatusOr<Attr> Mkdir(uint64_t parent, const std::string& name, uint32_t mode,
                             const Caller& who) override;
  absl::Status Unlink(uint64_t parent, const std::string& name) override;
  absl::Status Rmdir(uint64_t parent, const std::string& name) override;
  absl::Status Rename(uint64_t parent, const std::string& name, uint64_t new_parent,
                      const std::string& new_name, unsigned int flags) override;
  absl::StatusOr<Attr> Symlink(const std::string& target, uint64_t parent, const std::string& name,
                               const Caller& who) override;
  absl::StatusOr<std::string> Readlink(uint64_t ino) override;
  absl::StatusOr<Attr> Link(uint64_t ino, uint64_t new_parent,
                            const std::string& new_name) override;
  absl::StatusOr<Attr> Mknod(uint64_t parent, const std::string& name, uint32_t mode, uint64_t rdev,
                             const Caller& who) override;
  absl::Status Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length) override;
  // file:// volumes keep the origin's "user." attributes; object stores
  // have none (see the Writes).
  absl::StatusOr<std::string> GetXattr(uint64_t ino, const std::string& name) override;
  absl::StatusOr<std::string> ListXattr(uint64_t ino) override;
  absl::Status SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                        int flags) override;
  absl::Status RemoveXattr(uint64_t ino, const std::string& name) override;
  absl::Status Reopen(uint64_t ino, uint64_t handle, int flags) override;
  // Read-only volumes only: the kernel refuses any other than passthrough
  // open of a file it reads from a backing file, writers' included. The
  // store's file of the version opened, once whole and checked, held by a
  // LeaseWhole.
  absl::StatusOr<BackingFile> Backing(uint64_t handle) override;
  bool has_backing_files() const override { return opts_.read_only; }
  absl::Status HoldBacking(uint64_t handle, uint64_t ino, const std::string& id) override;
  void BackingRefused(uint64_t handle) override { backings_.LetGo(handle); }
  // A POSIX origin's file system; the default (no fixed size) elsewhere.
  absl::StatusOr<struct statvfs> StatFs() override;

  VolumeStats Stats() const;

 private:
  // The two ways of writing work on the tree's names and handles.
  friend class WriteThrough;
  friend class StagedUploads;

  // The origin's identity of a file: device and inode number.
  using FileId = std::pair<uint64_t, uint64_t>;
  // In an inode log record's length: the file's FileId follows the path.
  static constexpr uint32_t kRecordHasId = 0x80000000u;
  struct Node {
    // Its name relative to the origin's root ("" for the root): of a file
    // with several, the one last confirmed.
    std::string path;
    origin::ObjectStat stat;
    absl::Time fetched;
    std::string opened_version;  // version at the last open: keep_cache when unchanged
    FileId id{0, 0};             // POSIX origins, once stat'ed
    bool named = true;           // false: no name of it is known (unlinked, still open)
  };
  struct Handle {
    uint64_t ino;
    cache::FetchTarget target;
    int fd = -1;         // writable handles: the origin file (POSIX) or the staged copy
    bool dirty = false;  // written: the cached chunks of `target` are stale
    std::string staged;  // object stores: the local file uploaded on flush
  };

  // The path and fresh attributes of the file `ino`, for an open; EISDIR
  // for a directory.
  absl::StatusOr<std::pair<std::string, origin::ObjectStat>> FileToOpen(uint64_t ino);
  absl::StatusOr<ReadResult> ReadUncounted(uint64_t handle, uint64_t offset, size_t size);
  // The inode that `path`, which the origin just described as `st`, names
  // (see the top of this file), recorded as one of its names.
  uint64_t InoFor(const std::string& path, const origin::ObjectStat& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the kernel reads `ino` from a backing file of other bytes than
  // `path` has now (`st`): then `path` is another inode, since the kernel
  // takes one backing file per inode, and opens of the new version need
  // their own (or none, until it is whole).
  bool PassedOver(uint64_t ino, const std::string& path, const origin::ObjectStat& st)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether `st`, of `path`, a name of `ino`, is the version whose bytes
  // `held` (a store key) names.
  bool IsHeldVersion(uint64_t ino, const std::string& held, const std::string& path,
                     const origin::ObjectStat& st) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Records `path` as the name of `ino` it was last known by.
  void Name(const std::string& path, uint64_t ino) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // `path` no longer names what it did (unlinked, renamed, replaced).
  void DropName(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The attributes of a file that no known name leads to, from a
  // descriptor an open handle holds (st_nlink 0 once unlinked).
  absl::StatusOr<Attr> AttrOfOpen(uint64_t ino);
  // Another descriptor of the file `ino` as an open handle holds it; none
  // (-1) when no handle holds one.
  strata::UniqueFd HeldFd(uint64_t ino);
  strata::UniqueFd HeldFdLocked(uint64_t ino) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Whether the file `ino` is open here and has no name left at the origin.
  bool HeldIsGone(uint64_t ino) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Opens `ino` through a descriptor a handle holds (a file without a name).
  absl::StatusOr<OpenResult> OpenHeld(uint64_t ino, int flags);
  // Reads the inode log of a mount being taken over.
  void LoadInodes() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What this tree knows of the inode `ino` (ESTALE if nothing).
  struct Known {
    std::string path;
    bool named;
    FileId id;
  };
  absl::StatusOr<Known> NodeOf(uint64_t ino);
  absl::StatusOr<std::string> PathOf(uint64_t ino);
  // The origin's stat of `path` (fresh when `revalidate` or past the TTL).
  absl::StatusOr<origin::ObjectStat> StatPath(const std::string& path, uint64_t* ino,
                                              bool revalidate);
  Attr ToAttr(uint64_t ino, const origin::ObjectStat& st) const;
  // The origin path of `name` in directory `parent`, checked.
  absl::StatusOr<std::string> ChildPath(uint64_t parent, const std::string& name);
  // Refuses writes on read-only volumes, then as the Writes says.
  absl::Status Writable(const char* op) const;
  // `status` from an origin call on `path`, passed on. When it says the
  // path no longer leads where it did (ENOTDIR, ELOOP: a directory became
  // a symlink or a file), the first name that changed is forgotten, here
  // and in the kernel, so that the next lookup sees what is there now.
  absl::Status Broken(absl::Status status, const std::string& path);
  // Forgets cached metadata of `path` and of its directory, and drops the
  // cached chunks of the version it had, so nothing stale is served after
  // a change.
  void Changed(const std::string& path);
  // Forgets the cached metadata of the directory holding `path`.
  void DirChanged(const std::string& path);
  // After a change through this tree: the new attributes of `path`.
  absl::StatusOr<Attr> Fresh(const std::string& path);
  absl::StatusOr<OpenResult> AddHandle(uint64_t ino, const std::string& path,
                                       const origin::ObjectStat& st, int fd,
                                       std::string staged = "");
  // Whether the origin is a POSIX directory, which changes in place (also
  // under this mount, by other writers) and reports errors of its names.
  bool posix() const { return root_ != nullptr; }

  std::shared_ptr<origin::Origin> origin_;
  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
  VolumeOptions opts_;
  // POSIX origins: their directory, which every name is resolved beneath.
  origin::RootDir* root_;
  absl::Mutex mu_;
  absl::flat_hash_map<uint64_t, Node> nodes_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, uint64_t> inos_ ABSL_GUARDED_BY(mu_);  // name -> inode
  absl::flat_hash_map<FileId, uint64_t> by_id_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<uint64_t, Handle> handles_ ABSL_GUARDED_BY(mu_);
  HeldBackings backings_;  // see Backing
  // Handles start at a random number, so that handles the kernel kept from
  // a replaced daemon (see Reopen) do not collide with new ones.
  uint64_t next_handle_ ABSL_GUARDED_BY(mu_);
  int inode_log_fd_ = -1;
  std::atomic<uint64_t> reads_{0}, cached_reads_{0}, fetched_reads_{0}, direct_reads_{0};
  std::atomic<uint64_t> bytes_read_{0}, cached_bytes_{0}, bytes_written_{0}, errors_{0};
  // Last: it works on all of the above.
  std::unique_ptr<Writes> writes_;
};

}  // namespace strata::fuse
