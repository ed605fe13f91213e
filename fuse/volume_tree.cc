// VolumeTree: read path. Names are checked here (the kernel passes any
// bytes); an origin error becomes an errno and a log line in the engine.
#include "fuse/volume_tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <xxhash.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "cache/logging.h"

namespace strata::fuse {

VolumeTree::VolumeTree(std::shared_ptr<cache::Origin> origin, cache::ChunkStore& store,
                       cache::Fetcher& fetcher, VolumeOptions options)
    : origin_(std::move(origin)), store_(store), fetcher_(fetcher), opts_(options) {
  absl::MutexLock l(&mu_);
  nodes_[kRootIno] = Node{"", {}, absl::InfinitePast(), ""};
  nodes_[kRootIno].stat.is_dir = true;
  nodes_[kRootIno].stat.mode = 0755;
  inos_[""] = kRootIno;
}

uint64_t VolumeTree::InoFor(const std::string& path) {
  auto it = inos_.find(path);
  if (it != inos_.end()) return it->second;
  uint64_t ino = XXH3_64bits(path.data(), path.size()) | 2;  // never 0 or 1 (the root)
  while (nodes_.contains(ino)) ino = (ino + 2) | 2;
  inos_[path] = ino;
  nodes_[ino] = Node{path, {}, absl::InfinitePast(), ""};
  return ino;
}

absl::StatusOr<std::string> VolumeTree::PathOf(uint64_t ino) {
  absl::MutexLock l(&mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return PosixError(ESTALE, absl::StrCat("unknown inode ", ino));
  return it->second.path;
}

Attr VolumeTree::ToAttr(uint64_t ino, const cache::ObjectStat& st) const {
  Attr a;
  a.ino = ino;
  a.mode = (st.is_dir ? S_IFDIR : S_IFREG) | (st.mode & 07777);
  if (opts_.read_only) a.mode &= ~0222;
  a.size = st.is_dir ? 0 : st.size;
  a.nlink = st.is_dir ? 2 : 1;
  a.uid = st.uid;
  a.gid = st.gid;
  a.mtime_ns = st.mtime_ns;
  return a;
}

absl::StatusOr<cache::ObjectStat> VolumeTree::StatPath(const std::string& path, uint64_t* ino,
                                                       bool revalidate) {
  absl::Time now = absl::Now();
  {
    absl::MutexLock l(&mu_);
    auto it = inos_.find(path);
    if (it != inos_.end() && !revalidate) {
      const Node& n = nodes_[it->second];
      if (now - n.fetched < opts_.attr_ttl) {
        *ino = it->second;
        return n.stat;
      }
    }
  }
  auto st = path.empty() ? origin_->Stat("") : origin_->Stat(path);
  if (!st.ok()) {
    if (absl::IsNotFound(st.status()))
      return PosixError(ENOENT, std::string(st.status().message()));
    return st.status();
  }
  absl::MutexLock l(&mu_);
  *ino = InoFor(path);
  Node& n = nodes_[*ino];
  n.stat = *st;
  n.fetched = now;
  if (path.empty()) n.stat.is_dir = true;
  return n.stat;
}

absl::StatusOr<Attr> VolumeTree::Lookup(uint64_t parent, const std::string& name) {
  if (name.size() > 255)
    return PosixError(ENAMETOOLONG, absl::StrCat("name of ", name.size(), " bytes"));
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    return PosixError(EINVAL, absl::StrCat("bad name '", name, "'"));
  }
  auto dir = PathOf(parent);
  if (!dir.ok()) return dir.status();
  std::string path = dir->empty() ? name : absl::StrCat(*dir, "/", name);
  uint64_t ino;
  auto st = StatPath(path, &ino, false);
  if (!st.ok()) return st.status();
  return ToAttr(ino, *st);
}

absl::StatusOr<Attr> VolumeTree::GetAttr(uint64_t ino) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  uint64_t got;
  auto st = StatPath(*path, &got, false);
  if (!st.ok()) return st.status();
  return ToAttr(ino, *st);
}

absl::StatusOr<std::vector<DirEntry>> VolumeTree::ReadDir(uint64_t ino) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  auto list = origin_->List(*path);
  if (!list.ok()) {
    if (absl::IsNotFound(list.status()))
      return PosixError(ENOENT, std::string(list.status().message()));
    return list.status();
  }
  std::vector<DirEntry> out;
  out.reserve(list->size());
  absl::Time now = absl::Now();
  absl::MutexLock l(&mu_);
  for (auto& e : *list) {
    std::string child = path->empty() ? e.name : absl::StrCat(*path, "/", e.name);
    uint64_t cino = InoFor(child);
    Node& n = nodes_[cino];
    n.stat = e.stat;
    n.fetched = now;
    out.push_back({e.name, ToAttr(cino, e.stat)});
  }
  return out;
}

absl::StatusOr<OpenResult> VolumeTree::Open(uint64_t ino, int flags) {
  if ((flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC)) {
    return PosixError(opts_.read_only ? EROFS : ENOTSUP,
                      "writes are not supported on this volume yet");
  }
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  uint64_t got;
  // Close-to-open: what another node wrote and closed is what this open sees.
  auto st = StatPath(*path, &got, /*revalidate=*/true);
  if (!st.ok()) return st.status();
  if (st->is_dir) return PosixError(EISDIR, *path);
  absl::MutexLock l(&mu_);
  Node& n = nodes_[ino];
  OpenResult r;
  r.keep_cache = n.opened_version == st->version;
  n.opened_version = st->version;
  r.handle = next_handle_++;
  handles_[r.handle] = Handle{ino, cache::FetchTarget{origin_, *path, *st, opts_.chunk_size, {}}};
  return r;
}

absl::StatusOr<ReadResult> VolumeTree::Read(uint64_t handle, uint64_t offset, size_t size) {
  cache::FetchTarget target;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return PosixError(EBADF, absl::StrCat("unknown handle ", handle));
    target = it->second.target;
  }
  ReadResult r;
  if (offset >= target.stat.size || size == 0) return r;
  size = std::min<uint64_t>(size, target.stat.size - offset);
  // A hit: lend the cache file's range for splicing.
  auto lease = store_.Lease(cache::StoreKey(target), offset, size);
  if (lease.ok()) {
    r.lease = std::move(*lease);
    return r;
  }
  r.bytes.resize(size);
  auto n = fetcher_.Read(target, offset, absl::MakeSpan(r.bytes));
  if (!n.ok()) {
    // The open file's object is gone or changed at the origin: an I/O error
    // on this handle (a new open sees the new state), never other bytes.
    if (absl::IsNotFound(n.status()) || absl::IsFailedPrecondition(n.status())) {
      return PosixError(EIO, absl::StrCat(n.status().message(),
                                          " (changed or removed at the origin since open)"));
    }
    return n.status();
  }
  r.bytes.resize(*n);
  return r;
}

void VolumeTree::Release(uint64_t handle) {
  absl::MutexLock l(&mu_);
  handles_.erase(handle);
}

}  // namespace strata::fuse
