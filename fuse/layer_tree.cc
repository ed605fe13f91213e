// LayerTree: lookups in the index, reads through the cache (splice on a
// hit), overlay's xattrs.
#include "fuse/layer_tree.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"

namespace strata::fuse {

constexpr char kOpaqueXattr[] = "trusted.overlay.opaque";

namespace {

// A handle's inode: its low 32 bits (a handle of an older daemon is the
// inode number itself).
uint64_t InoOf(uint64_t handle) { return handle & 0xffffffffu; }

}  // namespace

LayerTree::LayerTree(std::shared_ptr<const LayerIndex> index, cache::FetchTarget blob,
                     std::shared_ptr<EstargzFiles> files, cache::ChunkStore& store,
                     cache::Fetcher& fetcher)
    : LayerTree(std::move(index), std::vector<Source>{{std::move(blob), std::move(files)}}, store,
                fetcher) {}

LayerTree::LayerTree(std::shared_ptr<const LayerIndex> merged, std::vector<Source> layers,
                     cache::ChunkStore& store, cache::Fetcher& fetcher)
    : index_(std::move(merged)),
      sources_(std::move(layers)),
      store_(store),
      fetcher_(fetcher),
      next_open_(std::random_device()()) {}

absl::StatusOr<const LayerNode*> LayerTree::Node(uint64_t ino) const {
  if (ino < kRootIno || ino - kRootIno >= index_->nodes.size()) {
    return PosixError(ENOENT, absl::StrCat("no inode ", ino, " in this layer"));
  }
  return &index_->nodes[ino - kRootIno];
}

Attr LayerTree::AttrOf(uint64_t ino, const LayerNode& n) const {
  Attr a;
  a.ino = ino;
  a.mode = n.mode;
  a.size = n.size;
  a.nlink = n.nlink;
  a.uid = n.uid;
  a.gid = n.gid;
  a.mtime_ns = n.mtime_ns;
  a.rdev = n.rdev;
  return a;
}

absl::StatusOr<Attr> LayerTree::Lookup(uint64_t parent, const std::string& name) {
  auto dir = Node(parent);
  if (!dir.ok()) return dir.status();
  if (!S_ISDIR((*dir)->mode)) return PosixError(ENOTDIR, "not a directory");
  auto it = (*dir)->children.find(name);
  if (it == (*dir)->children.end()) return PosixError(ENOENT, "no such entry");
  uint64_t ino = it->second + kRootIno;
  return AttrOf(ino, index_->nodes[it->second]);
}

absl::StatusOr<Attr> LayerTree::GetAttr(uint64_t ino) {
  auto n = Node(ino);
  if (!n.ok()) return n.status();
  return AttrOf(ino, **n);
}

absl::StatusOr<std::vector<DirEntry>> LayerTree::ReadDir(uint64_t ino) {
  auto dir = Node(ino);
  if (!dir.ok()) return dir.status();
  if (!S_ISDIR((*dir)->mode)) return PosixError(ENOTDIR, "not a directory");
  std::vector<DirEntry> out;
  out.reserve((*dir)->children.size());
  for (const auto& [name, id] : (*dir)->children) {
    out.push_back({name, AttrOf(id + kRootIno, index_->nodes[id])});
  }
  return out;
}

absl::StatusOr<OpenResult> LayerTree::Open(uint64_t ino, int flags) {
  auto n = Node(ino);
  if (!n.ok()) return n.status();
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
    return PosixError(EROFS, "image layers are read-only");
  }
  if (!S_ISREG((*n)->mode)) return PosixError(EINVAL, "not a regular file");
  // A handle of its own per open, where an open may hold a backing file
  // until its release; the inode number otherwise.
  uint64_t handle = ino;
  if (backing_files_) {
    uint32_t serial = next_open_++;
    if (serial == 0) serial = next_open_++;  // 0 is the inode-only handle
    handle |= uint64_t{serial} << 32;
  }
  // The layer never changes: what the kernel cached stays right.
  return OpenResult{handle, /*keep_cache=*/true};
}

absl::Status LayerTree::Reopen(uint64_t ino, uint64_t handle, int flags) {
  if (InoOf(handle) != ino) return PosixError(EBADF, "a handle of another inode");
  return Open(ino, flags).status();
}

void LayerTree::Release(uint64_t handle) { backings_.LetGo(handle); }

absl::StatusOr<std::pair<cache::FetchTarget, bool>> LayerTree::WholeObjectOf(uint64_t ino) const {
  auto n = Node(ino);
  if (!n.ok()) return n.status();
  const LayerNode& node = **n;
  uint32_t layer = index_->merged ? node.layer : 0;
  if (!S_ISREG(node.mode) || layer >= sources_.size()) {
    return absl::FailedPreconditionError("not a file of a layer");
  }
  const Source& src = sources_[layer];
  if (src.files) {
    uint32_t in_layer = index_->merged ? node.layer_node : static_cast<uint32_t>(ino - kRootIno);
    return std::make_pair(EstargzFiles::Target(src.files, in_layer), true);
  }
  if (node.offset != 0 || node.size != src.blob.stat.size) {
    return absl::FailedPreconditionError(
        "an extent of the layer's blob, which the kernel cannot read as a file");
  }
  return std::make_pair(src.blob, false);
}

absl::StatusOr<BackingFile> LayerTree::Backing(uint64_t handle) {
  if (!backing_files_) return absl::UnimplementedError("no backing files for this mount");
  auto whole = WholeObjectOf(InoOf(handle));
  if (!whole.ok()) return whole.status();
  const std::string key = cache::StoreKey(whole->first);
  // As ReadThrough: a blob's bytes only once it matched its digest.
  if (!whole->second && !store_.DigestVerified(key)) {
    return absl::FailedPreconditionError(absl::StrCat(key, " is not checked against its digest"));
  }
  auto lease = store_.LeaseWhole(key);
  if (!lease.ok()) return lease.status();
  BackingFile b{lease->fd(), key};
  backings_.Hold(handle, InoOf(handle), key, *std::move(lease));
  return b;
}

absl::Status LayerTree::HoldBacking(uint64_t handle, uint64_t ino, const std::string& id) {
  auto lease = store_.LeaseWhole(id, /*as_is=*/true);
  if (!lease.ok()) return lease.status();
  backings_.Hold(handle, ino, id, *std::move(lease));
  return absl::OkStatus();
}

absl::StatusOr<ReadResult> LayerTree::Read(uint64_t handle, uint64_t offset, size_t size) {
  handle = InoOf(handle);
  auto n = Node(handle);
  if (!n.ok()) return n.status();
  const LayerNode& node = **n;
  ReadResult r;
  if (!S_ISREG(node.mode) || offset >= node.size || size == 0) return r;
  size = std::min<uint64_t>(size, node.size - offset);
  bytes_read_ += size;
  uint32_t layer = index_->merged ? node.layer : 0;
  if (layer >= sources_.size()) return PosixError(EIO, "a node of no layer");
  const Source& src = sources_[layer];
  if (src.files) {
    uint32_t in_layer = index_->merged ? node.layer_node : static_cast<uint32_t>(handle - kRootIno);
    return ReadThrough(EstargzFiles::Target(src.files, in_layer), offset, size);
  }
  return ReadThrough(src.blob, node.offset + offset, size);
}

absl::StatusOr<ReadResult> LayerTree::ReadThrough(const cache::FetchTarget& t, uint64_t at,
                                                  size_t size) {
  ReadResult r;
  const std::string key = cache::StoreKey(t);
  // A hit on checked bytes (chunks checked as they land, or the whole blob
  // matched its digest): lend the cache's range, spliced to the kernel.
  bool checked = !t.chunk_sha256.empty() || store_.DigestVerified(key);
  if (checked) {
    auto lease = store_.Lease(key, at, size);
    if (lease.ok()) {
      r.lease = std::move(*lease);
      return r;
    }
  }
  // Otherwise the fetcher fetches what is missing, checking it first; then
  // it is a hit.
  auto kept = fetcher_.Ensure(t, at, size);
  if (kept.ok() && *kept) {
    auto lease = store_.Lease(key, at, size);
    if (lease.ok()) {
      r.lease = std::move(*lease);
      return r;
    }
  }
  r.bytes.resize(size);
  auto got = fetcher_.Read(t, at, absl::MakeSpan(r.bytes));
  if (!got.ok()) return PosixError(EIO, std::string(got.status().message()));
  r.bytes.resize(*got);
  return r;
}

absl::StatusOr<std::string> LayerTree::Readlink(uint64_t ino) {
  auto n = Node(ino);
  if (!n.ok()) return n.status();
  if (!S_ISLNK((*n)->mode)) return PosixError(EINVAL, "not a symlink");
  return (*n)->link;
}

absl::StatusOr<std::string> LayerTree::GetXattr(uint64_t ino, const std::string& name) {
  auto n = Node(ino);
  if (!n.ok()) return n.status();
  if (name == kOpaqueXattr && (*n)->opaque) return std::string("y");
  auto it = (*n)->xattrs.find(name);
  if (it == (*n)->xattrs.end()) return PosixError(ENODATA, "no such attribute");
  return it->second;
}

absl::StatusOr<std::string> LayerTree::ListXattr(uint64_t ino) {
  auto n = Node(ino);
  if (!n.ok()) return n.status();
  std::string out;
  if ((*n)->opaque) out.append(kOpaqueXattr).push_back('\0');
  for (const auto& [k, v] : (*n)->xattrs) out.append(k).push_back('\0');
  return out;
}

}  // namespace strata::fuse
