// LayerTree: lookups in the index, reads through the cache (splice on a
// hit), overlay's xattrs.
#include "fuse/layer_tree.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <cerrno>

#include "absl/strings/str_cat.h"

namespace strata::fuse {

constexpr char kOpaqueXattr[] = "trusted.overlay.opaque";

LayerTree::LayerTree(std::shared_ptr<const LayerIndex> index, cache::FetchTarget blob,
                     std::shared_ptr<EstargzFiles> files, cache::ChunkStore& store,
                     cache::Fetcher& fetcher)
    : LayerTree(std::move(index), std::vector<Source>{{std::move(blob), std::move(files)}}, store,
                fetcher) {}

LayerTree::LayerTree(std::shared_ptr<const LayerIndex> merged, std::vector<Source> layers,
                     cache::ChunkStore& store, cache::Fetcher& fetcher)
    : index_(std::move(merged)), sources_(std::move(layers)), store_(store), fetcher_(fetcher) {}

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
  // The layer never changes: what the kernel cached stays right.
  return OpenResult{ino, /*keep_cache=*/true};
}

absl::Status LayerTree::Reopen(uint64_t ino, uint64_t handle, int flags) {
  if (handle != ino) return PosixError(EBADF, "a handle of another tree");
  return Open(ino, flags).status();
}

absl::StatusOr<ReadResult> LayerTree::Read(uint64_t handle, uint64_t offset, size_t size) {
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
