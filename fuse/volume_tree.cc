// VolumeTree: read path. Names are checked here (the kernel passes any
// bytes); an origin error becomes an errno and a log line in the engine.
#define FUSE_USE_VERSION 312
#include "fuse/volume_tree.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/limits.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/logging.h"
#include "origin/root_dir.h"

namespace strata::fuse {

VolumeTree::VolumeTree(std::shared_ptr<origin::Origin> origin, cache::ChunkStore& store,
                       cache::Fetcher& fetcher, VolumeOptions options)
    : origin_(std::move(origin)),
      store_(store),
      fetcher_(fetcher),
      opts_(options),
      root_(origin_->Dir()) {
  absl::MutexLock l(&mu_);
  std::random_device rd;
  next_handle_ = ((uint64_t{rd()} << 32 | rd()) >> 2) + 1;
  nodes_[kRootIno] = Node{"", {}, absl::InfinitePast(), ""};
  nodes_[kRootIno].stat.is_dir = true;
  nodes_[kRootIno].stat.mode = 0755;
  inos_[""] = kRootIno;
  if (!opts_.inode_log.empty()) {
    if (opts_.resume_inodes) LoadInodes();
    inode_log_fd_ = ::open(
        opts_.inode_log.c_str(),
        O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (opts_.resume_inodes ? 0 : O_TRUNC), 0600);
    if (inode_log_fd_ < 0) {
      spdlog::warn("inode log {}: {}; a successor daemon could not take this mount over",
                   opts_.inode_log, std::strerror(errno));
    }
  }
}

VolumeTree::~VolumeTree() {
  if (inode_log_fd_ >= 0) ::close(inode_log_fd_);
}

// The log is a sequence of records: 8-byte inode, 4-byte length, path,
// and, when the length has kRecordHasId set, the origin's 8-byte device and
// inode numbers of the file. A torn last record (a kill mid-write) is
// ignored: its inode was never handed to the kernel, which happens only
// after the record is written.
void VolumeTree::LoadInodes() {
  std::ifstream in(opts_.inode_log, std::ios::binary);
  size_t loaded = 0;
  while (in) {
    uint64_t ino;
    uint32_t len;
    FileId id{0, 0};
    if (!in.read(reinterpret_cast<char*>(&ino), sizeof ino)) break;
    if (!in.read(reinterpret_cast<char*>(&len), sizeof len)) break;
    const bool has_id = len & kRecordHasId;
    len &= ~kRecordHasId;
    if (len > 65536) break;
    std::string path(len, '\0');
    if (!in.read(path.data(), len)) break;
    if (has_id && (!in.read(reinterpret_cast<char*>(&id.first), sizeof id.first) ||
                   !in.read(reinterpret_cast<char*>(&id.second), sizeof id.second))) {
      break;
    }
    if (ino == kRootIno) continue;
    inos_[path] = ino;  // a later record wins: the name moved
    Node& n = nodes_[ino];
    n.path = path;  // of a file with several names, the last one recorded
    n.fetched = absl::InfinitePast();
    if (has_id) {
      n.id = id;
      by_id_[id] = ino;  // so that a name is taken for this file only if it still is
    }
    ++loaded;
  }
  spdlog::info("volume {}: {} inodes known from the previous daemon", origin_->url(), loaded);
}

uint64_t VolumeTree::InoFor(const std::string& path, const origin::ObjectStat& st) {
  const FileId id{st.dev, st.ino};
  auto it = inos_.find(path);
  if (it != inos_.end()) {
    Node& n = nodes_[it->second];
    if (st.ino == 0 || n.id == id) {
      n.path = path;
      n.named = true;
      return it->second;
    }
    if (n.id == FileId{0, 0} && !by_id_.contains(id)) {
      // Known by name only (the root, or from an older inode log): now by
      // file, and logged so, for the next daemon to take over.
      n.id = id;
      by_id_[id] = it->second;
      Name(path, it->second);
      return it->second;
    }
    DropName(path);  // the name now stands for another file
  }
  uint64_t ino;
  auto known = st.ino != 0 ? by_id_.find(id) : by_id_.end();
  if (known != by_id_.end() && !nodes_[known->second].named && HeldIsGone(known->second)) {
    // The origin gave a removed file's number to a new file, while the old
    // one is still open here: the new file is another inode.
    by_id_.erase(known);
    known = by_id_.end();
  }
  if (known != by_id_.end()) {
    ino = known->second;  // another name of a file seen before
  } else {
    // The origin's own number where it is free (never 0 or 1, the root);
    // else, and for object stores, a hash, probing past collisions.
    ino = st.ino;
    if (ino <= kRootIno || nodes_.contains(ino)) {
      ino = (st.ino != 0 ? XXH3_64bits(&id, sizeof id) : XXH3_64bits(path.data(), path.size())) | 2;
      while (nodes_.contains(ino)) ino = (ino + 2) | 2;
    }
    nodes_[ino] = Node{path, {}, absl::InfinitePast(), ""};
    if (st.ino != 0) {
      nodes_[ino].id = id;
      by_id_[id] = ino;
    }
  }
  Name(path, ino);
  return ino;
}

void VolumeTree::Name(const std::string& path, uint64_t ino) {
  inos_[path] = ino;
  Node& n = nodes_[ino];
  n.path = path;
  n.named = true;
  n.fetched = absl::InfinitePast();
  if (inode_log_fd_ >= 0) {
    const bool has_id = n.id != FileId{0, 0};
    uint32_t len = static_cast<uint32_t>(path.size()) | (has_id ? kRecordHasId : 0);
    std::string rec(reinterpret_cast<const char*>(&ino), sizeof ino);
    rec.append(reinterpret_cast<const char*>(&len), sizeof len);
    rec += path;
    if (has_id) {
      rec.append(reinterpret_cast<const char*>(&n.id.first), sizeof n.id.first);
      rec.append(reinterpret_cast<const char*>(&n.id.second), sizeof n.id.second);
    }
    if (::write(inode_log_fd_, rec.data(), rec.size()) != static_cast<ssize_t>(rec.size())) {
      spdlog::warn("inode log {}: {}", opts_.inode_log, std::strerror(errno));
    }
  }
}

void VolumeTree::DropName(const std::string& path) {
  if (path.empty()) return;  // the root keeps its name
  auto it = inos_.find(path);
  if (it == inos_.end()) return;
  uint64_t ino = it->second;
  inos_.erase(it);
  Node& n = nodes_[ino];
  n.fetched = absl::InfinitePast();
  if (n.path != path) return;
  n.named = false;
  if (n.stat.is_dir || n.stat.nlink <= 1) return;  // no other name to look for
  for (const auto& [other, i] : inos_) {           // a file with other names: one of them
    if (i == ino) {
      n.path = other;
      n.named = true;
      return;
    }
  }
}

absl::StatusOr<VolumeTree::Known> VolumeTree::NodeOf(uint64_t ino) {
  absl::MutexLock l(&mu_);
  auto it = nodes_.find(ino);
  if (it == nodes_.end()) return PosixError(ESTALE, absl::StrCat("unknown inode ", ino));
  return Known{it->second.path, it->second.named, it->second.id};
}

absl::StatusOr<std::string> VolumeTree::PathOf(uint64_t ino) {
  auto node = NodeOf(ino);
  if (!node.ok()) return node.status();
  return std::move(node->path);
}

Attr VolumeTree::ToAttr(uint64_t ino, const origin::ObjectStat& st) const {
  Attr a;
  a.ino = ino;
  uint32_t type = st.is_dir ? S_IFDIR : st.is_symlink ? S_IFLNK : st.special ? st.special : S_IFREG;
  a.mode = type | (st.mode & 07777);
  if (opts_.read_only) a.mode &= ~0222;
  a.size = st.size;
  // A POSIX origin's count is what it says (0: unlinked, still open);
  // object stores say none.
  a.nlink = st.ino != 0 ? st.nlink : st.is_dir ? 2 : 1;
  a.atime_ns = st.atime_ns;
  a.ctime_ns = st.ctime_ns;
  a.blocks = st.blocks;
  a.rdev = st.rdev;
  a.uid = st.uid;
  a.gid = st.gid;
  if (opts_.mount_gid >= 0) {
    a.gid = static_cast<uint32_t>(opts_.mount_gid);
    a.mode |= (a.mode & 0700) >> 3;
  }
  a.mtime_ns = st.mtime_ns;
  return a;
}

absl::StatusOr<struct statvfs> VolumeTree::StatFs() {
  if (!posix()) return Tree::StatFs();
  auto fd = root_->Fd();
  if (!fd.ok()) return fd.status();
  struct statvfs sv {};
  if (::fstatvfs((*fd)->get(), &sv) != 0) {
    return PosixError(errno, absl::StrCat("statvfs ", root_->path(), ": ", std::strerror(errno)));
  }
  return sv;
}

absl::Status VolumeTree::Broken(absl::Status status, const std::string& path) {
  int err = ErrnoOf(status);
  if (err != ENOTDIR && err != ELOOP) return status;
  // Walk down from the root to the first name that is no longer what this
  // tree (and the kernel) took it for: a directory now a symlink or a file.
  std::string at;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    std::string parent = at;
    at = at.empty() ? std::string(part) : absl::StrCat(at, "/", part);
    auto st = root_ ? root_->Stat(at) : absl::StatusOr<struct stat>(absl::NotFoundError(""));
    if (st.ok() && S_ISDIR(st->st_mode) && at != path) continue;
    uint64_t parent_ino = 0;
    {
      absl::MutexLock l(&mu_);
      auto p = inos_.find(parent);
      auto it = inos_.find(at);
      if (it != inos_.end()) nodes_[it->second].fetched = absl::InfinitePast();
      if (p != inos_.end()) parent_ino = p->second;
    }
    spdlog::warn("{}: '{}' changed at the origin under this mount ({}); the kernel forgets it",
                 origin_->url(), at, std::strerror(err));
    if (parent_ino != 0) ForgetEntry(parent_ino, std::string(part));
    break;
  }
  return status;
}

absl::StatusOr<origin::ObjectStat> VolumeTree::StatPath(const std::string& path, uint64_t* ino,
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
  {
    // Written here but not uploaded yet: the staged copy is the file.
    absl::MutexLock l(&mu_);
    auto sp = staged_paths_.find(path);
    if (sp != staged_paths_.end()) {
      const Handle& h = handles_[sp->second];
      struct stat local;
      if (::fstat(h.fd, &local) == 0) {
        *ino = h.ino;
        origin::ObjectStat st = h.target.stat;
        st.size = local.st_size;
        st.mtime_ns = int64_t{local.st_mtim.tv_sec} * 1'000'000'000 + local.st_mtim.tv_nsec;
        return st;
      }
    }
  }
  auto st = path.empty() ? origin_->Stat("") : origin_->Stat(path);
  if (!st.ok()) {
    if (posix()) return Broken(st.status(), path);
    if (absl::IsNotFound(st.status()))
      return PosixError(ENOENT, std::string(st.status().message()));
    if (origin::IsTransient(st.status())) {
      // The origin is down, not saying no: what it said last still stands,
      // so what is cached keeps being served until it answers again.
      absl::MutexLock l(&mu_);
      auto it = inos_.find(path);
      if (it != inos_.end() && nodes_[it->second].fetched != absl::InfinitePast()) {
        spdlog::warn("{}: origin unreachable ({}); serving what it said last",
                     path.empty() ? "/" : path, st.status().message());
        *ino = it->second;
        return nodes_[it->second].stat;
      }
    }
    return st.status();
  }
  absl::MutexLock l(&mu_);
  *ino = InoFor(path, *st);
  Node& n = nodes_[*ino];
  n.stat = *st;
  n.fetched = now;
  if (path.empty()) n.stat.is_dir = true;
  return n.stat;
}

absl::StatusOr<std::string> VolumeTree::ChildPath(uint64_t parent, const std::string& name) {
  if (name.size() > 255)
    return PosixError(ENAMETOOLONG, absl::StrCat("name of ", name.size(), " bytes"));
  if (name.empty() || name == "." || name == ".." || name.find('/') != std::string::npos) {
    return PosixError(EINVAL, absl::StrCat("bad name '", name, "'"));
  }
  auto dir = PathOf(parent);
  if (!dir.ok()) return dir.status();
  return dir->empty() ? name : absl::StrCat(*dir, "/", name);
}

absl::StatusOr<Attr> VolumeTree::Lookup(uint64_t parent, const std::string& name) {
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  uint64_t ino;
  auto st = StatPath(*path, &ino, false);
  if (!st.ok()) return st.status();
  return ToAttr(ino, *st);
}

absl::StatusOr<Attr> VolumeTree::GetAttr(uint64_t ino) {
  auto node = NodeOf(ino);
  if (!node.ok()) return node.status();
  if (!node->named) return AttrOfOpen(ino);
  const std::string& path = node->path;
  uint64_t got;
  auto st = StatPath(path, &got, false);
  if (st.ok() && got == ino) return ToAttr(ino, *st);
  // Gone, or the name now leads to another file: the file itself, if open.
  auto open = AttrOfOpen(ino);
  if (open.ok()) return open;
  // ESTALE: the kernel looks the name up again (and finds the new file).
  return st.ok() ? PosixError(ESTALE, absl::StrCat(path, " is another file now")) : st.status();
}

strata::UniqueFd VolumeTree::HeldFd(uint64_t ino) {
  absl::MutexLock l(&mu_);
  return HeldFdLocked(ino);
}

strata::UniqueFd VolumeTree::HeldFdLocked(uint64_t ino) {
  for (const auto& [h, handle] : handles_) {
    if (handle.ino == ino && handle.fd >= 0 && handle.staged.empty()) {
      return strata::UniqueFd(::fcntl(handle.fd, F_DUPFD_CLOEXEC, 0));
    }
  }
  return strata::UniqueFd();
}

bool VolumeTree::HeldIsGone(uint64_t ino) {
  strata::UniqueFd fd = HeldFdLocked(ino);
  struct stat local;
  return fd.get() >= 0 && ::fstat(fd.get(), &local) == 0 && local.st_nlink == 0;
}

absl::StatusOr<Attr> VolumeTree::AttrOfOpen(uint64_t ino) {
  strata::UniqueFd fd = HeldFd(ino);
  struct stat local;
  if (fd.get() < 0 || ::fstat(fd.get(), &local) != 0) {
    return PosixError(ESTALE, absl::StrCat("inode ", ino, " has no name and is not open"));
  }
  return ToAttr(ino, origin::StatOf(local));
}

absl::StatusOr<std::vector<DirEntry>> VolumeTree::ReadDir(uint64_t ino) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  auto list = origin_->List(*path);
  if (!list.ok()) {
    if (posix()) return Broken(list.status(), *path);
    if (absl::IsNotFound(list.status()))
      return PosixError(ENOENT, std::string(list.status().message()));
    return list.status();
  }
  std::vector<DirEntry> out;
  out.reserve(list->size());
  absl::Time now = absl::Now();
  absl::MutexLock l(&mu_);
  for (auto& e : *list) {
    // Every origin checks its names; this is the last word before the
    // kernel (an empty name would be the root's own inode).
    if (absl::Status bad = origin::CheckEntryName(e.name); !bad.ok()) {
      spdlog::warn("{}: listing of '{}' left out an entry: {}", origin_->url(), *path,
                   bad.message());
      continue;
    }
    std::string child = path->empty() ? e.name : absl::StrCat(*path, "/", e.name);
    uint64_t cino = InoFor(child, e.stat);
    Node& n = nodes_[cino];
    n.stat = e.stat;
    n.fetched = now;
    out.push_back({e.name, ToAttr(cino, e.stat)});
  }
  return out;
}

absl::StatusOr<OpenResult> VolumeTree::Open(uint64_t ino, int flags) {
  bool writing = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
  if (writing) {
    if (absl::Status w = Writable("open for writing"); !w.ok()) return w;
  }
  auto file = FileToOpen(ino);
  if (!file.ok()) {
    if (ErrnoOf(file.status()) != ESTALE && ErrnoOf(file.status()) != ENOENT) return file.status();
    // No name leads to it now, but it is open here (/proc/PID/fd of an
    // unlinked file): another descriptor of the same file.
    auto again = OpenHeld(ino, flags);
    return again.ok() ? again : file.status();
  }
  const auto& [path, st] = *file;
  absl::StatusOr<OpenResult> opened;
  if (!writing) {
    opened = AddHandle(ino, path, st, -1);
  } else if (posix()) {
    auto fd = root_->OpenFile(path, flags & (O_ACCMODE | O_TRUNC | O_APPEND));
    if (!fd.ok()) return Broken(fd.status(), path);
    if (flags & O_TRUNC) Changed(path);
    opened = AddHandle(ino, path, st, fd->release());
  } else {
    opened = OpenObjectForWriting(ino, path, st, flags);
  }
  if (opened.ok() && !opened->keep_cache) {
    // The file may have changed since the kernel was told its size (grown
    // at the origin, or by another node): the kernel must ask again before
    // this open returns, or a read would stop at the old end.
    ForgetAttrs(ino);
  }
  return opened;
}

absl::StatusOr<OpenResult> VolumeTree::OpenHeld(uint64_t ino, int flags) {
  strata::UniqueFd held = HeldFd(ino);
  if (held.get() < 0) return PosixError(ESTALE, "not open here");
  std::string self = absl::StrCat("/proc/self/fd/", held.get());
  strata::UniqueFd fd(::open(self.c_str(), (flags & (O_ACCMODE | O_APPEND | O_TRUNC)) | O_CLOEXEC));
  struct stat local;
  if (fd.get() < 0 || ::fstat(fd.get(), &local) != 0) {
    return PosixError(errno, absl::StrCat("reopen of inode ", ino, ": ", std::strerror(errno)));
  }
  auto path = PathOf(ino);
  auto h = AddHandle(ino, path.ok() ? *path : "", origin::StatOf(local), fd.get());
  if (h.ok()) fd.release();
  return h;
}

absl::StatusOr<OpenResult> VolumeTree::OpenObjectForWriting(uint64_t ino, const std::string& path,
                                                            const origin::ObjectStat& st,
                                                            int flags) {
  // An object store takes whole objects: new files and whole rewrites.
  if ((flags & O_APPEND) || (!(flags & O_TRUNC) && st.size > 0)) {
    return PosixError(
        ENOTSUP, absl::StrCat(path, ": ", origin_->url(),
                              " takes whole objects; open with O_TRUNC to rewrite it (appending "
                              "or writing into an existing object is not possible)"));
  }
  auto staged = Stage(path);
  if (!staged.ok()) return staged.status();
  auto h = AddHandle(ino, path, st, staged->first, staged->second);
  if (h.ok()) {
    absl::MutexLock l(&mu_);
    handles_[h->handle].dirty = true;  // even empty, the rewrite is uploaded
    staged_paths_[path] = h->handle;
  }
  return h;
}

absl::StatusOr<std::pair<std::string, origin::ObjectStat>> VolumeTree::FileToOpen(uint64_t ino) {
  auto node = NodeOf(ino);
  if (!node.ok()) return node.status();
  if (!node->named) return PosixError(ESTALE, absl::StrCat(node->path, " was removed"));
  const std::string* path = &node->path;
  uint64_t got;
  // Close-to-open: what another node wrote and closed is what this open sees.
  auto st = StatPath(*path, &got, /*revalidate=*/true);
  if (!st.ok()) return st.status();
  if (got != ino) {
    // Replaced (a new file renamed over it): the kernel must look again.
    return PosixError(ESTALE, absl::StrCat(*path, " is another file now"));
  }
  if (st->is_dir) return PosixError(EISDIR, *path);
  // Replaced by a symlink since the kernel looked it up: the kernel must look
  // again and follow it itself, in the reader's own view.
  if (st->is_symlink) {
    return Broken(PosixError(ELOOP, absl::StrCat(*path, " is now a symlink")), *path);
  }
  return std::make_pair(*path, *st);
}

absl::Status VolumeTree::Reopen(uint64_t ino, uint64_t handle, int flags) {
  {
    absl::MutexLock l(&mu_);
    if (handles_.contains(handle)) return absl::OkStatus();
  }
  auto file = FileToOpen(ino);
  if (!file.ok()) return file.status();
  const std::string* path = &file->first;
  const origin::ObjectStat* st = &file->second;
  int fd = -1;
  if ((flags & O_ACCMODE) != O_RDONLY) {
    if (!posix()) {
      return PosixError(EIO, absl::StrCat(*path, " was open for writing to ", origin_->url(),
                                          " when the daemon was replaced; what was written to "
                                          "it is lost: write it again"));
    }
    auto file = root_->OpenFile(*path, flags & (O_ACCMODE | O_APPEND));
    if (!file.ok()) return Broken(file.status(), *path);
    fd = file->release();
  }
  absl::MutexLock l(&mu_);
  if (handles_.contains(handle)) {  // another thread reopened it meanwhile
    if (fd >= 0) ::close(fd);
    return absl::OkStatus();
  }
  handles_[handle] =
      Handle{ino, cache::FetchTarget{origin_, *path, *st, opts_.chunk_size, {}}, fd, false, ""};
  spdlog::info("file handle {} of {} taken over from the previous daemon", handle, *path);
  return absl::OkStatus();
}

absl::StatusOr<OpenResult> VolumeTree::AddHandle(uint64_t ino, const std::string& path,
                                                 const origin::ObjectStat& st, int fd,
                                                 std::string staged) {
  absl::MutexLock l(&mu_);
  Node& n = nodes_[ino];
  OpenResult r;
  r.keep_cache = fd < 0 && n.opened_version == st.version;
  n.opened_version = fd < 0 ? st.version : "";
  r.handle = next_handle_++;
  handles_[r.handle] = Handle{ino, cache::FetchTarget{origin_, path, st, opts_.chunk_size, {}}, fd,
                              false, std::move(staged)};
  return r;
}

absl::StatusOr<std::pair<int, std::string>> VolumeTree::Stage(const std::string& path) {
  std::string name = opts_.staging_dir + "/write-XXXXXX";
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) {
    return PosixError(errno, absl::StrCat("stage a write of ", path, " in ", opts_.staging_dir,
                                          ": ", std::strerror(errno)));
  }
  return std::make_pair(fd, name);
}

absl::Status VolumeTree::Upload(uint64_t handle) {
  std::string path, staged;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return PosixError(EBADF, "unknown handle");
    if (it->second.staged.empty() || !it->second.dirty) return absl::OkStatus();
    path = it->second.target.path;
    staged = it->second.staged;
  }
  absl::Status st = origin_->Put(path, staged);
  if (!st.ok()) {
    ++errors_;
    return PosixError(
        EIO, absl::StrCat("upload of ", path, " failed (", st.message(),
                          "); the data is still staged in ", staged, " until the file is closed"));
  }
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it != handles_.end()) it->second.dirty = false;
  }
  Changed(path);
  return absl::OkStatus();
}

absl::StatusOr<ReadResult> VolumeTree::ReadUncounted(uint64_t handle, uint64_t offset,
                                                     size_t size) {
  cache::FetchTarget target;
  int fd;
  bool target_changed;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return PosixError(EBADF, absl::StrCat("unknown handle ", handle));
    target = it->second.target;
    fd = it->second.fd;
    target_changed = it->second.dirty;
  }
  ReadResult r;
  // A POSIX origin changes in place: a read reaching the end this handle
  // knows may find the file grown by another writer (the kernel already knows
  // the new size; a short answer would cache zeros). Then read it as it is.
  if (fd < 0 && !target_changed && posix() && offset + size > target.stat.size) {
    auto now = origin_->Stat(target.path);
    if (!now.ok() || now->version != target.stat.version) target_changed = true;
  }
  if (fd >= 0 || (posix() && target_changed)) {
    // A handle that writes reads its own bytes straight from the origin file.
    ++direct_reads_;
    r.bytes.resize(size);
    strata::UniqueFd opened;
    if (fd < 0) {
      auto file = root_->OpenFile(target.path, O_RDONLY);
      if (!file.ok()) {
        (void)Broken(file.status(), target.path);
        return PosixError(EIO, absl::StrCat(target.path, " is gone at the origin (",
                                            file.status().message(), ")"));
      }
      opened = std::move(*file);
    }
    ssize_t n =
        ::pread(fd >= 0 ? fd : opened.get(), r.bytes.data(), size, static_cast<off_t>(offset));
    int err = errno;
    if (n < 0) return PosixError(err, absl::StrCat("read ", target.path, ": ", std::strerror(err)));
    r.bytes.resize(n);
    return r;
  }
  if (offset >= target.stat.size || size == 0) return r;
  size = std::min<uint64_t>(size, target.stat.size - offset);
  // A hit: lend the cache's range (in memory, or the file's for splicing).
  // An object checked by its whole digest is served only once checked: the
  // fetcher checks it (or refuses it) below.
  const std::string key = cache::StoreKey(target);
  bool checked =
      target.stat.digest.empty() || !target.chunk_sha256.empty() || store_.DigestVerified(key);
  absl::StatusOr<cache::ReadLease> lease = absl::UnavailableError("not checked yet");
  if (checked) lease = store_.Lease(key, offset, size);
  if (lease.ok()) {
    r.lease = std::move(*lease);
    return r;
  }
  ++fetched_reads_;
  // A miss: fetch into the cache, then splice from it like a hit. Only when
  // the cache cannot keep the bytes are they copied through the daemon.
  auto kept = fetcher_.Ensure(target, offset, size);
  if (kept.ok() && *kept) {
    auto again = store_.Lease(key, offset, size);
    if (again.ok()) {
      r.lease = std::move(*again);
      return r;
    }
  }
  r.bytes.resize(size);
  auto n = fetcher_.Read(target, offset, absl::MakeSpan(r.bytes));
  if (!n.ok()) {
    // The open file's object is gone or changed at the origin: an I/O error
    // on this handle (a new open sees the new state), never other bytes.
    if (absl::IsFailedPrecondition(n.status()) && posix()) {
      // Changed under this handle by a write on this node: POSIX readers see
      // the new bytes. Mark the handle so later reads go straight there too.
      {
        absl::MutexLock l(&mu_);
        auto it = handles_.find(handle);
        if (it != handles_.end()) it->second.dirty = true;
      }
      return ReadUncounted(handle, offset, size);
    }
    if (absl::IsNotFound(n.status()) || absl::IsFailedPrecondition(n.status())) {
      return PosixError(EIO, absl::StrCat(n.status().message(),
                                          " (changed or removed at the origin since open)"));
    }
    return n.status();
  }
  r.bytes.resize(*n);
  return r;
}

absl::StatusOr<ReadResult> VolumeTree::Read(uint64_t handle, uint64_t offset, size_t size) {
  ++reads_;
  auto r = ReadUncounted(handle, offset, size);
  if (!r.ok()) {
    ++errors_;
    return r;
  }
  if (r->lease.fd() >= 0) {
    ++cached_reads_;
    bytes_read_ += r->lease.length();
    cached_bytes_ += r->lease.length();
  } else {
    bytes_read_ += r->bytes.size();
  }
  return r;
}

VolumeStats VolumeTree::Stats() const {
  return VolumeStats{reads_,      cached_reads_, fetched_reads_, direct_reads_,
                     bytes_read_, cached_bytes_, bytes_written_, errors_};
}

void VolumeTree::Release(uint64_t handle) {
  if (absl::Status st = Upload(handle); !st.ok()) {
    spdlog::error("{}; the written data is lost", st.message());  // close() already saw the error
  }
  Handle h;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return;
    h = std::move(it->second);
    handles_.erase(it);
    auto sp = staged_paths_.find(h.target.path);
    if (sp != staged_paths_.end() && sp->second == handle) staged_paths_.erase(sp);
  }
  if (h.fd >= 0) {
    ::close(h.fd);
    if (!h.staged.empty()) ::unlink(h.staged.c_str());
    if (h.dirty && h.staged.empty()) Changed(h.target.path);
  }
}

absl::Status VolumeTree::Flush(uint64_t handle) { return Upload(handle); }

absl::Status VolumeTree::Writable(const char* op) const {
  if (opts_.read_only) return PosixError(EROFS, absl::StrCat(op, ": the volume is read-only"));
  if (!posix() && opts_.staging_dir.empty()) {
    return PosixError(
        ENOTSUP, absl::StrCat(op, ": writes to ", origin_->url(), " need a staging directory"));
  }
  return absl::OkStatus();
}

void VolumeTree::DirChanged(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "" : path.substr(0, slash);
  absl::MutexLock l(&mu_);
  auto it = inos_.find(dir);
  if (it != inos_.end()) nodes_[it->second].fetched = absl::InfinitePast();
}

void VolumeTree::Changed(const std::string& path) {
  DirChanged(path);
  origin::ObjectStat old;
  {
    absl::MutexLock l(&mu_);
    auto it = inos_.find(path);
    if (it == inos_.end()) return;
    Node& n = nodes_[it->second];
    old = n.stat;
    n.fetched = absl::InfinitePast();
    n.opened_version.clear();
  }
  if (old.version.empty() || old.is_dir) return;
  cache::FetchTarget t{origin_, path, old, opts_.chunk_size, {}};
  absl::Status st = store_.Remove(cache::StoreKey(t));
  if (!st.ok() && !absl::IsNotFound(st))
    spdlog::debug("old chunks of {} stay until evicted: {}", path, st.message());
}

absl::StatusOr<Attr> VolumeTree::Fresh(const std::string& path) {
  uint64_t ino;
  auto st = StatPath(path, &ino, /*revalidate=*/true);
  if (!st.ok()) return st.status();
  return ToAttr(ino, *st);
}

absl::StatusOr<std::pair<Attr, OpenResult>> VolumeTree::Create(uint64_t parent,
                                                               const std::string& name,
                                                               uint32_t mode, int flags,
                                                               const Caller& who) {
  if (absl::Status w = Writable("create"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  if (!posix()) {
    // The object appears at the origin when it is uploaded (flush, fsync).
    uint64_t ino;
    auto existing = StatPath(*path, &ino, /*revalidate=*/true);
    if (existing.ok() && (flags & O_EXCL)) return PosixError(EEXIST, *path);
    if (existing.ok() && existing->is_dir) return PosixError(EISDIR, *path);
    auto staged = Stage(*path);
    if (!staged.ok()) return staged.status();
    origin::ObjectStat st;
    st.mode = 0644;
    st.uid = who.uid;
    st.gid = who.gid;
    st.mtime_ns = absl::ToUnixNanos(absl::Now());
    {
      absl::MutexLock l(&mu_);
      ino = InoFor(*path, st);
    }
    auto h = AddHandle(ino, *path, st, staged->first, staged->second);
    if (!h.ok()) return h.status();
    absl::MutexLock l(&mu_);
    handles_[h->handle].dirty = true;
    staged_paths_[*path] = h->handle;
    return std::make_pair(ToAttr(ino, st), *h);
  }
  auto at = root_->Parent(*path);
  if (!at.ok()) return Broken(at.status(), *path);
  const int open_flags = flags & (O_ACCMODE | O_TRUNC | O_APPEND);
  int fd = ::openat(at->dir.get(), at->name.c_str(),
                    open_flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 07777);
  if (fd >= 0) {
    Own(fd, at->dir.get(), *path, mode, who);
  } else if (errno == EEXIST && !(flags & O_EXCL)) {
    // There already: opened as it is (never through a symlink, never a fifo).
    auto file = root_->OpenFile(*path, open_flags);
    if (!file.ok()) return Broken(file.status(), *path);
    fd = file->release();
  } else {
    return Broken(PosixError(errno, absl::StrCat("create ", *path, ": ", std::strerror(errno))),
                  *path);
  }
  Changed(*path);
  auto attr = Fresh(*path);
  if (!attr.ok()) {
    ::close(fd);
    return attr.status();
  }
  uint64_t got;
  auto st = StatPath(*path, &got, false);
  if (!st.ok()) {
    ::close(fd);
    return st.status();
  }
  auto h = AddHandle(attr->ino, *path, *st, fd);
  if (!h.ok()) return h.status();
  return std::make_pair(*attr, *h);
}

absl::StatusOr<size_t> VolumeTree::Write(uint64_t handle, uint64_t offset,
                                         absl::Span<const char> data) {
  int fd;
  std::string path;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end() || it->second.fd < 0) return PosixError(EBADF, "not open for writing");
    fd = it->second.fd;
    it->second.dirty = true;
    path = it->second.target.path;
    nodes_[it->second.ino].fetched = absl::InfinitePast();
  }
  ssize_t n = ::pwrite(fd, data.data(), data.size(), static_cast<off_t>(offset));
  if (n < 0) {
    ++errors_;
    return PosixError(errno, absl::StrCat("write ", path, ": ", std::strerror(errno)));
  }
  bytes_written_ += n;
  return static_cast<size_t>(n);
}

absl::Status VolumeTree::Fsync(uint64_t handle) {
  int fd;
  bool staged;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return PosixError(EBADF, "unknown handle");
    fd = it->second.fd;
    staged = !it->second.staged.empty();
  }
  if (staged) return Upload(handle);  // durable = at the object store
  if (fd >= 0 && ::fsync(fd) != 0)
    return PosixError(errno, absl::StrCat("fsync: ", std::strerror(errno)));
  return absl::OkStatus();
}

absl::StatusOr<Attr> VolumeTree::SetAttr(uint64_t ino, const struct stat& a, int to_set) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  if (to_set & (FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
                FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    if (absl::Status w = Writable("setattr"); !w.ok()) return w;
  }
  if (!posix()) {
    // An object has no modes or owners to change, and only whole rewrites.
    if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
      return PosixError(ENOTSUP,
                        absl::StrCat(*path, ": ", origin_->url(), " keeps no modes or owners"));
    }
    if (to_set & FUSE_SET_ATTR_SIZE) {
      int staged_fd = -1;
      {
        absl::MutexLock l(&mu_);
        auto sp = staged_paths_.find(*path);
        if (sp != staged_paths_.end()) staged_fd = handles_[sp->second].fd;
      }
      if (staged_fd >= 0) {  // being written here: truncate the staged copy
        if (::ftruncate(staged_fd, a.st_size) != 0) {
          return PosixError(errno, absl::StrCat("truncate ", *path, ": ", std::strerror(errno)));
        }
      } else if (a.st_size != 0) {
        return PosixError(ENOTSUP,
                          absl::StrCat(*path, ": an object can only be truncated to 0 bytes"));
      } else if (absl::Status up = PutEmpty(*path); !up.ok()) {
        return up;
      }
    }
    Changed(*path);
    return Fresh(*path);  // times: the object store keeps its own
  }
  // Each call below acts on a name in its directory and never follows it.
  // What has no name here acts through a descriptor: the volume's root,
  // and a file unlinked while open (its handle's, as fchmod would).
  origin::RootDir::Entry at;
  std::shared_ptr<const strata::UniqueFd> root_fd;
  int dir = AT_FDCWD, nofollow = AT_SYMLINK_NOFOLLOW;
  std::string name;
  auto node = NodeOf(ino);
  const bool named = !node.ok() || node->named;
  strata::UniqueFd held = named ? strata::UniqueFd() : HeldFd(ino);
  if (path->empty() || !named) {
    if (!named && held.get() < 0) {
      return PosixError(ENOENT, absl::StrCat(*path, " was removed and is not open"));
    }
    if (path->empty()) {
      auto fd = root_->Fd();
      if (!fd.ok()) return fd.status();
      root_fd = *fd;
    }
    name = absl::StrCat("/proc/self/fd/", root_fd ? root_fd->get() : held.get());
    nofollow = 0;
  } else {
    auto parent = root_->Parent(*path);
    if (!parent.ok()) return Broken(parent.status(), *path);
    at = std::move(*parent);
    dir = at.dir.get();
    name = at.name;
  }
  auto fail = [&](const char* what) {
    return Broken(PosixError(errno, absl::StrCat(what, " ", *path, ": ", std::strerror(errno))),
                  *path);
  };
  if ((to_set & FUSE_SET_ATTR_MODE) &&
      ::fchmodat(dir, name.c_str(), a.st_mode & 07777, nofollow) != 0)
    return fail("chmod");
  if (to_set & (FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    uid_t uid = (to_set & FUSE_SET_ATTR_UID) ? a.st_uid : static_cast<uid_t>(-1);
    gid_t gid = (to_set & FUSE_SET_ATTR_GID) ? a.st_gid : static_cast<gid_t>(-1);
    if (::fchownat(dir, name.c_str(), uid, gid, nofollow) != 0) return fail("chown");
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    absl::StatusOr<strata::UniqueFd> file =
        named ? root_->OpenFile(*path, O_WRONLY)
              : strata::UniqueFd(::open(name.c_str(), O_WRONLY | O_CLOEXEC));
    if (!file.ok()) return Broken(file.status(), *path);
    if (file->get() < 0 || ::ftruncate(file->get(), a.st_size) != 0) return fail("truncate");
    if (named) Changed(*path);
  }
  if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
    if (to_set & FUSE_SET_ATTR_ATIME)
      ts[0] = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? timespec{0, UTIME_NOW} : a.st_atim;
    if (to_set & FUSE_SET_ATTR_MTIME)
      ts[1] = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? timespec{0, UTIME_NOW} : a.st_mtim;
    if (::utimensat(dir, name.c_str(), ts, nofollow) != 0) return fail("utimens");
  }
  if (!named) return AttrOfOpen(ino);
  return Fresh(*path);
}

absl::StatusOr<Attr> VolumeTree::Mkdir(uint64_t parent, const std::string& name, uint32_t mode,
                                       const Caller& who) {
  if (absl::Status w = Writable("mkdir"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  if (!posix()) {
    uint64_t ino;
    if (StatPath(*path, &ino, /*revalidate=*/true).ok()) return PosixError(EEXIST, *path);
    if (absl::Status st = origin_->MakeDir(*path); !st.ok()) return st;
    return Fresh(*path);
  }
  auto at = root_->Parent(*path);
  if (!at.ok()) return Broken(at.status(), *path);
  if (::mkdirat(at->dir.get(), at->name.c_str(), mode & 07777) != 0) {
    return Broken(PosixError(errno, absl::StrCat("mkdir ", *path, ": ", std::strerror(errno))),
                  *path);
  }
  int fd = ::openat(at->dir.get(), at->name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Own(fd, at->dir.get(), *path, S_IFDIR | mode, who);
    ::close(fd);
  }
  DirChanged(*path);
  return Fresh(*path);
}

absl::Status VolumeTree::Unlink(uint64_t parent, const std::string& name) {
  if (absl::Status w = Writable("unlink"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  if (!posix()) {
    uint64_t ino;
    auto st = StatPath(*path, &ino, /*revalidate=*/true);
    if (!st.ok()) return st.status();
    if (st->is_dir) return PosixError(EISDIR, *path);
    if (absl::Status d = origin_->Delete(*path); !d.ok()) return d;
  } else {
    Held held = HoldOpenFiles(*path);
    if (absl::Status st = RemoveName(*path, 0); !st.ok()) return st;
    GiveHeld(held);
  }
  Changed(*path);
  absl::MutexLock l(&mu_);
  DropName(*path);
  return absl::OkStatus();
}

absl::Status VolumeTree::RemoveName(const std::string& path, int flags) {
  auto at = root_->Parent(path);
  if (!at.ok()) return Broken(at.status(), path);
  if (::unlinkat(at->dir.get(), at->name.c_str(), flags) != 0) {
    const char* op = flags & AT_REMOVEDIR ? "rmdir " : "unlink ";
    return Broken(PosixError(errno, absl::StrCat(op, path, ": ", std::strerror(errno))), path);
  }
  return absl::OkStatus();
}

absl::Status VolumeTree::Rmdir(uint64_t parent, const std::string& name) {
  if (absl::Status w = Writable("rmdir"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  if (!posix()) {
    absl::Status st = origin_->RemoveDir(*path);
    if (absl::IsFailedPrecondition(st)) return PosixError(ENOTEMPTY, std::string(st.message()));
    if (!st.ok()) return st;
  } else if (absl::Status st = RemoveName(*path, AT_REMOVEDIR); !st.ok()) {
    return st;
  }
  Changed(*path);
  absl::MutexLock l(&mu_);
  DropName(*path);
  return absl::OkStatus();
}

absl::Status VolumeTree::Rename(uint64_t parent, const std::string& name, uint64_t new_parent,
                                const std::string& new_name, unsigned int flags) {
  if (absl::Status w = Writable("rename"); !w.ok()) return w;
  auto from = ChildPath(parent, name);
  if (!from.ok()) return from.status();
  auto to = ChildPath(new_parent, new_name);
  if (!to.ok()) return to.status();
  Changed(*to);  // a file renamed over is gone
  if (!posix()) {
    // An object store renames by copy and delete, one object at a time; a
    // directory is many objects, so say EXDEV and let mv copy it.
    uint64_t ino;
    auto st = StatPath(*from, &ino, /*revalidate=*/true);
    if (!st.ok()) return st.status();
    if (st->is_dir)
      return PosixError(EXDEV, absl::StrCat("rename of directory ", *from, " on an object store"));
    if (flags & RENAME_NOREPLACE) {
      uint64_t other;
      if (StatPath(*to, &other, /*revalidate=*/true).ok()) return PosixError(EEXIST, *to);
    } else if (flags != 0) {
      return PosixError(EINVAL, "only RENAME_NOREPLACE is possible on an object store");
    }
    if (absl::Status c = origin_->Copy(*from, *to); !c.ok()) return c;
    if (absl::Status d = origin_->Delete(*from); !d.ok()) return d;
    Changed(*from);
  } else {
    Held held;
    if (!(flags & RENAME_EXCHANGE)) held = HoldOpenFiles(*to);
    auto src = root_->Parent(*from);
    if (!src.ok()) return Broken(src.status(), *from);
    auto dst = root_->Parent(*to);
    if (!dst.ok()) return Broken(dst.status(), *to);
    if (::renameat2(src->dir.get(), src->name.c_str(), dst->dir.get(), dst->name.c_str(), flags) !=
        0) {
      int err = errno;
      absl::Status st =
          PosixError(err, absl::StrCat("rename ", *from, " to ", *to, ": ", std::strerror(err)));
      (void)Broken(st, *from);
      return Broken(st, *to);
    }
    GiveHeld(held);
    Changed(*from);  // its ctime, and the directory it left
  }
  // The kernel keeps the moved inode's number: its names (its subtree's
  // too) move under it, and open handles follow. What was at `to` loses
  // that name, or, in an exchange, takes the one at `from`.
  absl::MutexLock l(&mu_);
  auto under = [](const std::string& p, const std::string& dir) {
    return p.size() >= dir.size() && p.compare(0, dir.size(), dir) == 0 &&
           (p.size() == dir.size() || p[dir.size()] == '/');
  };
  std::vector<std::pair<std::string, uint64_t>> moved, replaced;
  for (const auto& [p, ino] : inos_) {
    if (under(p, *from)) {
      moved.emplace_back(p, ino);
    } else if (under(p, *to)) {
      replaced.emplace_back(p, ino);
    }
  }
  for (const auto& [p, ino] : moved) DropName(p);
  for (const auto& [p, ino] : replaced) DropName(p);
  for (const auto& [p, ino] : moved) Name(*to + p.substr(from->size()), ino);
  if (flags & RENAME_EXCHANGE) {
    for (const auto& [p, ino] : replaced) Name(*from + p.substr(to->size()), ino);
  }
  for (auto& [h, handle] : handles_) {
    std::string& p = handle.target.path;
    if (under(p, *from)) {
      p = *to + p.substr(from->size());
    } else if ((flags & RENAME_EXCHANGE) && under(p, *to)) {
      p = *from + p.substr(to->size());
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Attr> VolumeTree::Symlink(const std::string& target, uint64_t parent,
                                         const std::string& name, const Caller& who) {
  if (absl::Status w = Writable("symlink"); !w.ok()) return w;
  if (!posix()) return PosixError(ENOTSUP, absl::StrCat(origin_->url(), " has no symbolic links"));
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  auto at = root_->Parent(*path);
  if (!at.ok()) return Broken(at.status(), *path);
  if (::symlinkat(target.c_str(), at->dir.get(), at->name.c_str()) != 0) {
    return Broken(PosixError(errno, absl::StrCat("symlink ", *path, ": ", std::strerror(errno))),
                  *path);
  }
  int fd = ::openat(at->dir.get(), at->name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Own(fd, at->dir.get(), *path, S_IFLNK | 0777, who);
    ::close(fd);
  }
  DirChanged(*path);
  return Fresh(*path);
}

absl::StatusOr<std::string> VolumeTree::Readlink(uint64_t ino) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  if (!posix()) return PosixError(EINVAL, "not a symlink");
  if (path->empty()) return PosixError(EINVAL, "the root is not a symlink");
  auto at = root_->Parent(*path);
  if (!at.ok()) return Broken(at.status(), *path);
  char buf[PATH_MAX];
  ssize_t n = ::readlinkat(at->dir.get(), at->name.c_str(), buf, sizeof buf);
  if (n < 0) {
    return Broken(PosixError(errno, absl::StrCat("readlink ", *path, ": ", std::strerror(errno))),
                  *path);
  }
  return std::string(buf, n);
}

// A new entry belongs to who made it (the daemon, root, made it) with the
// mode the kernel passed, which already has the caller's umask applied:
// the daemon's own umask must not apply again, and the chown would clear
// setuid and setgid, so the mode is set last. In a setgid directory the
// group stays the directory's (the origin gave it so), and a directory
// made there is setgid too, as on a local file system.
void VolumeTree::Own(int fd, int dirfd, const std::string& path, uint32_t mode, const Caller& who) {
  // The entry was opened again by its name: it must be the one just made
  // (this daemon's, of the kind asked, with no other name), never one that
  // a writer of the origin swapped in meanwhile.
  struct stat made;
  if (::fstat(fd, &made) != 0 || made.st_uid != ::geteuid() ||
      (made.st_mode & S_IFMT) != (mode & S_IFMT) ||
      (!S_ISDIR(made.st_mode) && made.st_nlink != 1)) {
    spdlog::warn("{}: changed at the origin as it was made; its owner and mode are left alone",
                 path);
    return;
  }
  struct stat dir {};
  bool group_from_dir = ::fstat(dirfd, &dir) == 0 && (dir.st_mode & S_ISGID);
  gid_t gid = group_from_dir ? static_cast<gid_t>(-1) : who.gid;
  if (::fchownat(fd, "", who.uid, gid, AT_EMPTY_PATH) != 0) {
    spdlog::warn("{}: cannot give it to {}:{}: {}", path, who.uid, who.gid, std::strerror(errno));
  }
  if (S_ISLNK(mode)) return;  // a symlink's mode means nothing
  mode_t bits = mode & 07777;
  if (S_ISDIR(mode) && group_from_dir) bits |= S_ISGID;
  // Through the descriptor (which may be O_PATH): the entry just made.
  std::string self = absl::StrCat("/proc/self/fd/", fd);
  if (::chmod(self.c_str(), bits) != 0) {
    spdlog::warn("{}: cannot set mode {:o}: {}", path, bits, std::strerror(errno));
  }
}

VolumeTree::Held VolumeTree::HoldOpenFiles(const std::string& path) {
  Held held;
  FileId id;
  {
    absl::MutexLock l(&mu_);
    auto it = inos_.find(path);
    if (it == inos_.end()) return held;
    bool open = false;
    for (const auto& [h, handle] : handles_) open |= handle.ino == it->second;
    if (!open) return held;  // (a reader opening meanwhile reads by name)
    held.ino = it->second;
    id = nodes_[it->second].id;
  }
  auto file = root_->OpenFile(path, O_RDONLY);
  struct stat st;
  if (!file.ok() || ::fstat(file->get(), &st) != 0 || FileId{st.st_dev, st.st_ino} != id) {
    spdlog::warn("{}: its open readers will fail once it is removed: {}", path,
                 file.ok() ? "it is another file now" : file.status().message());
    return Held{};
  }
  held.fd = std::move(*file);
  return held;
}

void VolumeTree::GiveHeld(const Held& held) {
  if (held.fd.get() < 0) return;
  absl::MutexLock l(&mu_);
  for (auto& [h, handle] : handles_) {
    if (handle.ino != held.ino || handle.fd >= 0) continue;
    int fd = ::fcntl(held.fd.get(), F_DUPFD_CLOEXEC, 0);
    if (fd >= 0) handle.fd = fd;
  }
}

absl::StatusOr<Attr> VolumeTree::Link(uint64_t ino, uint64_t new_parent,
                                      const std::string& new_name) {
  if (absl::Status w = Writable("link"); !w.ok()) return w;
  if (!posix()) {
    return PosixError(EPERM, absl::StrCat(origin_->url(), " has no hard links"));
  }
  auto to = ChildPath(new_parent, new_name);
  if (!to.ok()) return to.status();
  auto node = NodeOf(ino);
  if (!node.ok()) return node.status();
  const std::string& from = node->path;
  if (from.empty()) return PosixError(EPERM, "the volume's root cannot be linked");
  // The file itself is linked through its descriptor: never whatever its
  // name leads to now.
  auto file = TheFile(ino);
  if (!file.ok()) return file.status();
  auto at = root_->Parent(*to);
  if (!at.ok()) return Broken(at.status(), *to);
  // Through /proc rather than AT_EMPTY_PATH, which needs CAP_DAC_READ_SEARCH.
  std::string self = absl::StrCat("/proc/self/fd/", file->get());
  if (::linkat(AT_FDCWD, self.c_str(), at->dir.get(), at->name.c_str(), AT_SYMLINK_FOLLOW) != 0) {
    return Broken(
        PosixError(errno, absl::StrCat("link ", from, " to ", *to, ": ", std::strerror(errno))),
        *to);
  }
  Changed(from);  // its link count and ctime
  DirChanged(*to);
  return Fresh(*to);
}

absl::StatusOr<Attr> VolumeTree::Mknod(uint64_t parent, const std::string& name, uint32_t mode,
                                       uint64_t rdev, const Caller& who) {
  if (absl::Status w = Writable("mknod"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  const uint32_t type = mode & S_IFMT;
  if (!posix()) {
    if (type != S_IFREG && type != 0) {
      return PosixError(EPERM, absl::StrCat(*path, ": ", origin_->url(),
                                            " keeps no fifos, sockets or device nodes"));
    }
    uint64_t ino;
    if (StatPath(*path, &ino, /*revalidate=*/true).ok()) return PosixError(EEXIST, *path);
    if (absl::Status st = PutEmpty(*path); !st.ok()) return st;
    Changed(*path);
    return Fresh(*path);
  }
  if (type != S_IFREG && type != 0 && type != S_IFIFO && type != S_IFSOCK && type != S_IFCHR &&
      type != S_IFBLK) {
    return PosixError(EINVAL, absl::StrCat("mknod ", *path, ": type ", type));
  }
  if ((type == S_IFCHR || type == S_IFBLK) && rdev != 0) {
    // A pod's root may hold CAP_MKNOD, and the origin is shared: a node for
    // a disk of this machine, left there, would open it for anyone reading
    // the origin without nodev. Only overlayfs's whiteout (0, 0) is made.
    return PosixError(EPERM, absl::StrCat("mknod ", *path,
                                          ": device nodes are not made on volumes (only the "
                                          "0/0 whiteout)"));
  }
  auto at = root_->Parent(*path);
  if (!at.ok()) return Broken(at.status(), *path);
  if (::mknodat(at->dir.get(), at->name.c_str(), (type ? type : S_IFREG) | (mode & 07777),
                static_cast<dev_t>(rdev)) != 0) {
    return Broken(PosixError(errno, absl::StrCat("mknod ", *path, ": ", std::strerror(errno))),
                  *path);
  }
  int fd = ::openat(at->dir.get(), at->name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Own(fd, at->dir.get(), *path, mode, who);
    ::close(fd);
  }
  DirChanged(*path);
  return Fresh(*path);
}

absl::Status VolumeTree::Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length) {
  int fd;
  std::string path;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return PosixError(EBADF, absl::StrCat("unknown handle ", handle));
    if (!posix()) {
      return PosixError(EOPNOTSUPP,
                        absl::StrCat(it->second.target.path, ": ", origin_->url(),
                                     " takes whole objects; fallocate is not possible"));
    }
    if (it->second.fd < 0) return PosixError(EBADF, "not open for writing");
    fd = it->second.fd;
    path = it->second.target.path;
    it->second.dirty = true;
    nodes_[it->second.ino].fetched = absl::InfinitePast();
  }
  if (::fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
    return PosixError(errno, absl::StrCat("fallocate ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status VolumeTree::PutEmpty(const std::string& path) {
  auto staged = Stage(path);
  if (!staged.ok()) return staged.status();
  absl::Status up = origin_->Put(path, staged->second);
  ::close(staged->first);
  ::unlink(staged->second.c_str());
  if (!up.ok()) return PosixError(EIO, absl::StrCat("upload of ", path, ": ", up.message()));
  return absl::OkStatus();
}

namespace {
bool UserXattr(const std::string& name) { return name.rfind("user.", 0) == 0; }
std::string ProcFd(int fd) { return absl::StrCat("/proc/self/fd/", fd); }
}  // namespace

absl::StatusOr<strata::UniqueFd> VolumeTree::TheFile(uint64_t ino) {
  if (!posix()) return PosixError(EOPNOTSUPP, absl::StrCat(origin_->url(), " has no files"));
  auto node = NodeOf(ino);
  if (!node.ok()) return node.status();
  if (!node->named) {
    // Unlinked and still open: through a handle's descriptor.
    strata::UniqueFd held = HeldFd(ino);
    if (held.get() < 0) return PosixError(ESTALE, absl::StrCat(node->path, " was removed"));
    return held;
  }
  auto fd = root_->Open(node->path, O_PATH | O_NOFOLLOW);
  if (!fd.ok()) return Broken(fd.status(), node->path);
  struct stat st;
  if (node->id != FileId{0, 0} &&
      (::fstat(fd->get(), &st) != 0 || FileId{st.st_dev, st.st_ino} != node->id)) {
    return PosixError(ESTALE, absl::StrCat(node->path, " is another file now"));
  }
  return fd;
}

absl::StatusOr<std::string> VolumeTree::GetXattr(uint64_t ino, const std::string& name) {
  // Asked on every write (security.capability): answered before any work.
  if (posix() && !UserXattr(name)) return PosixError(ENODATA, name);
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  std::string value(XATTR_SIZE_MAX, '\0');
  ssize_t n = ::getxattr(ProcFd(fd->get()).c_str(), name.c_str(), value.data(), value.size());
  if (n < 0) return PosixError(errno, absl::StrCat("getxattr ", name, ": ", std::strerror(errno)));
  value.resize(static_cast<size_t>(n));
  return value;
}

absl::StatusOr<std::string> VolumeTree::ListXattr(uint64_t ino) {
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  std::string names(XATTR_LIST_MAX, '\0');
  ssize_t n = ::listxattr(ProcFd(fd->get()).c_str(), names.data(), names.size());
  if (n < 0) return PosixError(errno, absl::StrCat("listxattr: ", std::strerror(errno)));
  std::string out;
  for (absl::string_view name : absl::StrSplit(absl::string_view(names.data(), n), '\0')) {
    if (UserXattr(std::string(name))) absl::StrAppend(&out, name, absl::string_view("\0", 1));
  }
  return out;
}

absl::Status VolumeTree::SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                                  int flags) {
  if (absl::Status w = Writable("setxattr"); !w.ok()) return w;
  if (posix() && !UserXattr(name)) {
    return PosixError(EOPNOTSUPP, absl::StrCat("setxattr ", name, ": only user. attributes"));
  }
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  if (::setxattr(ProcFd(fd->get()).c_str(), name.c_str(), value.data(), value.size(), flags) != 0) {
    return PosixError(errno, absl::StrCat("setxattr ", name, ": ", std::strerror(errno)));
  }
  auto path = PathOf(ino);
  if (path.ok()) Changed(*path);  // its ctime
  return absl::OkStatus();
}

absl::Status VolumeTree::RemoveXattr(uint64_t ino, const std::string& name) {
  if (absl::Status w = Writable("removexattr"); !w.ok()) return w;
  if (posix() && !UserXattr(name)) return PosixError(ENODATA, name);
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  if (::removexattr(ProcFd(fd->get()).c_str(), name.c_str()) != 0) {
    return PosixError(errno, absl::StrCat("removexattr ", name, ": ", std::strerror(errno)));
  }
  auto path = PathOf(ino);
  if (path.ok()) Changed(*path);
  return absl::OkStatus();
}

}  // namespace strata::fuse
