// VolumeTree: names, inodes, handles and the read path; each change is
// handed to the volume's Writes. Names are checked here (the kernel passes
// any bytes); an origin error becomes an errno and a log line in the engine.
#define FUSE_USE_VERSION 312
#include "fuse/volume_tree.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/logging.h"
#include "fuse/staged_uploads.h"
#include "fuse/write_through.h"
#include "origin/root_dir.h"

namespace strata::fuse {

VolumeTree::VolumeTree(std::shared_ptr<origin::Origin> origin, cache::ChunkStore& store,
                       cache::Fetcher& fetcher, VolumeOptions options)
    : origin_(std::move(origin)),
      store_(store),
      fetcher_(fetcher),
      opts_(options),
      root_(origin_->Dir()) {
  if (opts_.clock == nullptr) opts_.clock = RealClock();
  if (root_ != nullptr) {
    writes_ = std::make_unique<WriteThrough>(*this, *root_);
  } else {
    writes_ = std::make_unique<StagedUploads>(*this, *origin_, opts_.staging_dir);
  }
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
    const bool passed_over = PassedOver(it->second, path, st);
    if (!passed_over && (st.ino == 0 || n.id == id)) {
      n.path = path;
      n.named = true;
      return it->second;
    }
    if (!passed_over && n.id == FileId{0, 0} && !by_id_.contains(id)) {
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
  if (known != by_id_.end() && PassedOver(known->second, path, st)) {
    // Changed in place while the kernel reads the old version from a
    // backing file: the new version is another inode.
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

bool VolumeTree::PassedOver(uint64_t ino, const std::string& path, const origin::ObjectStat& st) {
  if (st.is_dir) return false;
  std::optional<std::string> held = backings_.HeldFor(ino);
  return held && !IsHeldVersion(ino, *held, path, st);
}

bool VolumeTree::IsHeldVersion(uint64_t ino, const std::string& held, const std::string& path,
                               const origin::ObjectStat& st) {
  auto key = [&](const std::string& p) {
    return cache::StoreKey(cache::FetchTarget{origin_, p, st, opts_.chunk_size, {}});
  };
  if (held == key(path)) return true;
  // Held through another name of the file (a hard link): the version of the
  // handle that holds it says, or else the name last known.
  for (const auto& [h, handle] : handles_) {
    if (handle.ino == ino && cache::StoreKey(handle.target) == held) {
      return handle.target.stat.version == st.version && handle.target.stat.digest == st.digest;
    }
  }
  auto n = nodes_.find(ino);
  return n != nodes_.end() && held == key(n->second.path);
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

absl::StatusOr<struct statvfs> VolumeTree::StatFs() { return writes_->StatFs(); }

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
  absl::Time now = opts_.clock->Now();
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
  // Written here but not at the origin yet: what is written is the file.
  if (auto unsent = writes_->Unsent(path)) {
    *ino = unsent->first;
    return unsent->second;
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
  if (fd.get() >= 0 && ::fstat(fd.get(), &local) == 0) return ToAttr(ino, origin::StatOf(local));
  if (backings_.HeldFor(ino)) {
    // An older version the kernel reads from a backing file: as it was.
    absl::MutexLock l(&mu_);
    auto n = nodes_.find(ino);
    if (n != nodes_.end() && !n->second.stat.version.empty()) return ToAttr(ino, n->second.stat);
  }
  return PosixError(ESTALE, absl::StrCat("inode ", ino, " has no name and is not open"));
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
  absl::Time now = opts_.clock->Now();
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
  } else {
    opened = writes_->Open(ino, path, st, flags);
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
    auto file = writes_->Reopen(*path, flags);
    if (!file.ok()) return file.status();
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
  writes_->Release(handle);
  backings_.LetGo(handle);
}

absl::StatusOr<BackingFile> VolumeTree::Backing(uint64_t handle) {
  if (!opts_.read_only) return absl::FailedPreconditionError("the volume is writable");
  cache::FetchTarget target;
  uint64_t ino;
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return PosixError(EBADF, absl::StrCat("unknown handle ", handle));
    if (it->second.fd >= 0 || it->second.dirty) {
      return absl::FailedPreconditionError("the handle writes");
    }
    target = it->second.target;
    ino = it->second.ino;
  }
  const std::string key = cache::StoreKey(target);
  // As ReadUncounted: an object checked by its whole digest only once checked.
  if (!target.stat.digest.empty() && target.chunk_sha256.empty() && !store_.DigestVerified(key)) {
    return absl::FailedPreconditionError(absl::StrCat(key, " is not checked against its digest"));
  }
  auto lease = store_.LeaseWhole(key);
  if (!lease.ok()) return lease.status();
  BackingFile b{lease->fd(), key};
  backings_.Hold(handle, ino, key, *std::move(lease));
  return b;
}

absl::Status VolumeTree::HoldBacking(uint64_t handle, uint64_t ino, const std::string& id) {
  {
    absl::MutexLock l(&mu_);
    auto it = handles_.find(handle);  // none after a takeover: the kernel opened it
    if (it != handles_.end() &&
        !IsHeldVersion(ino, id, it->second.target.path, it->second.target.stat)) {
      return PosixError(
          ESTALE, absl::StrCat(it->second.target.path,
                               " changed at the origin while the kernel reads ", id, " for it"));
    }
  }
  auto lease = store_.LeaseWhole(id, /*as_is=*/true);
  if (!lease.ok()) return lease.status();
  backings_.Hold(handle, ino, id, *std::move(lease));
  return absl::OkStatus();
}

absl::Status VolumeTree::Flush(uint64_t handle) { return writes_->Flush(handle); }

absl::Status VolumeTree::Writable(const char* op) const {
  if (opts_.read_only) return PosixError(EROFS, absl::StrCat(op, ": the volume is read-only"));
  return writes_->Writable(op);
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
  return writes_->Create(*path, mode, flags, who);
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

absl::Status VolumeTree::Fsync(uint64_t handle) { return writes_->Fsync(handle); }

absl::StatusOr<Attr> VolumeTree::SetAttr(uint64_t ino, const struct stat& a, int to_set) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  if (to_set & (FUSE_SET_ATTR_SIZE | FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID |
                FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    if (absl::Status w = Writable("setattr"); !w.ok()) return w;
  }
  return writes_->SetAttr(ino, *path, a, to_set);
}

absl::StatusOr<Attr> VolumeTree::Mkdir(uint64_t parent, const std::string& name, uint32_t mode,
                                       const Caller& who) {
  if (absl::Status w = Writable("mkdir"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  return writes_->Mkdir(*path, mode, who);
}

absl::Status VolumeTree::Unlink(uint64_t parent, const std::string& name) {
  if (absl::Status w = Writable("unlink"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  if (absl::Status st = writes_->Unlink(*path); !st.ok()) return st;
  Changed(*path);
  absl::MutexLock l(&mu_);
  DropName(*path);
  return absl::OkStatus();
}

absl::Status VolumeTree::Rmdir(uint64_t parent, const std::string& name) {
  if (absl::Status w = Writable("rmdir"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  if (absl::Status st = writes_->Rmdir(*path); !st.ok()) return st;
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
  if (absl::Status st = writes_->Rename(*from, *to, flags); !st.ok()) return st;
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
  return writes_->Symlink(target, parent, name, who);
}

absl::StatusOr<std::string> VolumeTree::Readlink(uint64_t ino) {
  auto path = PathOf(ino);
  if (!path.ok()) return path.status();
  return writes_->Readlink(*path);
}

absl::StatusOr<Attr> VolumeTree::Link(uint64_t ino, uint64_t new_parent,
                                      const std::string& new_name) {
  if (absl::Status w = Writable("link"); !w.ok()) return w;
  return writes_->Link(ino, new_parent, new_name);
}

absl::StatusOr<Attr> VolumeTree::Mknod(uint64_t parent, const std::string& name, uint32_t mode,
                                       uint64_t rdev, const Caller& who) {
  if (absl::Status w = Writable("mknod"); !w.ok()) return w;
  auto path = ChildPath(parent, name);
  if (!path.ok()) return path.status();
  return writes_->Mknod(*path, mode, rdev, who);
}

absl::Status VolumeTree::Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length) {
  return writes_->Fallocate(handle, mode, offset, length);
}

absl::StatusOr<std::string> VolumeTree::GetXattr(uint64_t ino, const std::string& name) {
  return writes_->GetXattr(ino, name);
}

absl::StatusOr<std::string> VolumeTree::ListXattr(uint64_t ino) { return writes_->ListXattr(ino); }

absl::Status VolumeTree::SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                                  int flags) {
  if (absl::Status w = Writable("setxattr"); !w.ok()) return w;
  return writes_->SetXattr(ino, name, value, flags);
}

absl::Status VolumeTree::RemoveXattr(uint64_t ino, const std::string& name) {
  if (absl::Status w = Writable("removexattr"); !w.ok()) return w;
  return writes_->RemoveXattr(ino, name);
}

}  // namespace strata::fuse
