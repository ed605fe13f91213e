// A layer tree: an image layer's files, read-only, from its LayerIndex, for
// containerd to stack as an overlay lower directory. Inode numbers are the
// index's node positions and file handles carry their inode number (in the
// low 32 bits), so a daemon that takes the mount over after a restart
// serves the kernel's inodes and open files as they were. Whiteouts are 0/0 character devices and
// opaque directories carry trusted.overlay.opaque, as overlayfs expects of a lower directory.
//
// File bytes are the blob's, at each file's offset, through the chunk cache;
// none is served before the whole blob matched its digest (the fetcher
// fetches and checks it on the first read, and the layer's background fetch
// has usually done so before).
//
// With EnableBackingFiles, a file that is a whole object of the cache (a
// raw model layer's file, which is its blob; an eStargz file, cached by
// its content) is read by the kernel from the store's file once every byte
// of it is there and checked (FUSE passthrough). A file inside a tar layer
// is an extent of the blob, which the kernel cannot address: it is read
// through the daemon.
#pragma once

#include <atomic>
#include <memory>

#include "cache/fetcher.h"
#include "fuse/estargz_files.h"
#include "fuse/held_backings.h"
#include "fuse/layer_index.h"
#include "fuse/tree.h"

namespace strata::fuse {

class LayerTree final : public Tree {
 public:
  // `blob` is the layer; `files` serves an eStargz layer's files (null for
  // tar layers, whose files are extents of the blob).
  LayerTree(std::shared_ptr<const LayerIndex> index, cache::FetchTarget blob,
            std::shared_ptr<EstargzFiles> files, cache::ChunkStore& store, cache::Fetcher& fetcher);
  // Several layers merged into one tree (MergeLayers): `layers[i]` serves
  // the nodes of layer i.
  struct Source {
    cache::FetchTarget blob;
    std::shared_ptr<EstargzFiles> files;  // eStargz layers
  };
  LayerTree(std::shared_ptr<const LayerIndex> merged, std::vector<Source> layers,
            cache::ChunkStore& store, cache::Fetcher& fetcher);

  absl::Duration attr_timeout() const override { return absl::Hours(1); }
  absl::Duration entry_timeout() const override { return absl::Hours(1); }
  bool read_only() const override { return true; }
  bool keeps_xattrs() const override { return true; }

  absl::StatusOr<Attr> Lookup(uint64_t parent, const std::string& name) override;
  absl::StatusOr<Attr> GetAttr(uint64_t ino) override;
  absl::StatusOr<std::vector<DirEntry>> ReadDir(uint64_t ino) override;
  absl::StatusOr<OpenResult> Open(uint64_t ino, int flags) override;
  absl::StatusOr<ReadResult> Read(uint64_t handle, uint64_t offset, size_t size) override;
  void Release(uint64_t handle) override;
  absl::StatusOr<std::string> Readlink(uint64_t ino) override;
  absl::StatusOr<std::string> GetXattr(uint64_t ino, const std::string& name) override;
  absl::StatusOr<std::string> ListXattr(uint64_t ino) override;
  absl::Status Reopen(uint64_t ino, uint64_t handle, int flags) override;

  // Passthrough for whole-object files (see above). Only for a mount whose
  // opens are logged (MountOptions::open_log), so that a successor knows
  // the backing files the kernel holds; call before mounting.
  void EnableBackingFiles() { backing_files_ = true; }
  bool has_backing_files() const override { return backing_files_; }
  absl::StatusOr<BackingFile> Backing(uint64_t handle) override;
  absl::Status HoldBacking(uint64_t handle, uint64_t ino, const std::string& id) override;
  void BackingRefused(uint64_t handle) override { backings_.LetGo(handle); }

  uint64_t bytes_read() const { return bytes_read_.load(); }

 private:
  absl::StatusOr<const LayerNode*> Node(uint64_t ino) const;
  Attr AttrOf(uint64_t ino, const LayerNode& n) const;

  // Through the cache: a lease of the range when its bytes are there and
  // checked, else fetched (and checked) first.
  absl::StatusOr<ReadResult> ReadThrough(const cache::FetchTarget& t, uint64_t at, size_t size);
  // The cache object that holds exactly the bytes of file `ino`, and
  // whether it is checked as a whole by the time it is present (an
  // eStargz file's chunks are each checked as they land; a raw layer's
  // blob only against its digest). FailedPrecondition for an extent of a
  // larger object.
  absl::StatusOr<std::pair<cache::FetchTarget, bool>> WholeObjectOf(uint64_t ino) const;

  const std::shared_ptr<const LayerIndex> index_;
  const std::vector<Source> sources_;
  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
  std::atomic<uint64_t> bytes_read_{0};
  bool backing_files_ = false;
  // The high half of the next handle: from a random start, so that a
  // successor's new handles do not meet those the kernel holds from its
  // predecessor (as VolumeTree's).
  std::atomic<uint32_t> next_open_;
  HeldBackings backings_;
};

}  // namespace strata::fuse
