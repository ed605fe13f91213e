// StagedUploads: an object store takes whole objects, so a file is written
// to a local staging file and uploaded when the writer flushes, syncs or
// closes it; until then the staged copy is what the volume shows.
#define FUSE_USE_VERSION 312
#include "fuse/staged_uploads.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/logging.h"

namespace strata::fuse {

absl::Status StagedUploads::Writable(const char* op) const {
  if (staging_dir_.empty()) {
    return PosixError(ENOTSUP,
                      absl::StrCat(op, ": writes to ", origin_.url(), " need a staging directory"));
  }
  return absl::OkStatus();
}

absl::StatusOr<OpenResult> StagedUploads::Open(uint64_t ino, const std::string& path,
                                               const origin::ObjectStat& st, int flags) {
  // An object store takes whole objects: new files and whole rewrites.
  if ((flags & O_APPEND) || (!(flags & O_TRUNC) && st.size > 0)) {
    return PosixError(
        ENOTSUP, absl::StrCat(path, ": ", origin_.url(),
                              " takes whole objects; open with O_TRUNC to rewrite it (appending "
                              "or writing into an existing object is not possible)"));
  }
  auto staged = Stage(path);
  if (!staged.ok()) return staged.status();
  return AddStagedHandle(ino, path, st, *staged);
}

absl::StatusOr<OpenResult> StagedUploads::AddStagedHandle(
    uint64_t ino, const std::string& path, const origin::ObjectStat& st,
    const std::pair<int, std::string>& staged) {
  auto h = tree_.AddHandle(ino, path, st, staged.first, staged.second);
  if (h.ok()) {
    absl::MutexLock l(&tree_.mu_);
    tree_.handles_[h->handle].dirty = true;  // even empty, the rewrite is uploaded
    staged_paths_[path] = h->handle;
  }
  return h;
}

absl::StatusOr<strata::UniqueFd> StagedUploads::Reopen(const std::string& path, int) {
  return PosixError(EIO, absl::StrCat(path, " was open for writing to ", origin_.url(),
                                      " when the daemon was replaced; what was written to "
                                      "it is lost: write it again"));
}

std::optional<std::pair<uint64_t, origin::ObjectStat>> StagedUploads::Unsent(
    const std::string& path) {
  absl::MutexLock l(&tree_.mu_);
  auto sp = staged_paths_.find(path);
  if (sp == staged_paths_.end()) return std::nullopt;
  auto h = tree_.handles_.find(sp->second);
  if (h == tree_.handles_.end()) return std::nullopt;
  struct stat local;
  if (::fstat(h->second.fd, &local) != 0) return std::nullopt;
  origin::ObjectStat st = h->second.target.stat;
  st.size = local.st_size;
  st.mtime_ns = int64_t{local.st_mtim.tv_sec} * 1'000'000'000 + local.st_mtim.tv_nsec;
  return std::make_pair(h->second.ino, st);
}

absl::StatusOr<std::pair<int, std::string>> StagedUploads::Stage(const std::string& path) {
  std::string name = staging_dir_ + "/write-XXXXXX";
  int fd = ::mkostemp(name.data(), O_CLOEXEC);
  if (fd < 0) {
    return PosixError(errno, absl::StrCat("stage a write of ", path, " in ", staging_dir_, ": ",
                                          std::strerror(errno)));
  }
  return std::make_pair(fd, name);
}

absl::Status StagedUploads::Upload(uint64_t handle) {
  std::string path, staged;
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.handles_.find(handle);
    if (it == tree_.handles_.end()) return PosixError(EBADF, "unknown handle");
    if (it->second.staged.empty() || !it->second.dirty) return absl::OkStatus();
    path = it->second.target.path;
    staged = it->second.staged;
  }
  absl::Status st = origin_.Put(path, staged);
  if (!st.ok()) {
    ++tree_.errors_;
    return PosixError(
        EIO, absl::StrCat("upload of ", path, " failed (", st.message(),
                          "); the data is still staged in ", staged, " until the file is closed"));
  }
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.handles_.find(handle);
    if (it != tree_.handles_.end()) it->second.dirty = false;
  }
  tree_.Changed(path);
  return absl::OkStatus();
}

void StagedUploads::Release(uint64_t handle) {
  if (absl::Status st = Upload(handle); !st.ok()) {
    spdlog::error("{}; the written data is lost", st.message());  // close() already saw the error
  }
  VolumeTree::Handle h;
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.handles_.find(handle);
    if (it == tree_.handles_.end()) return;
    h = std::move(it->second);
    tree_.handles_.erase(it);
    auto sp = staged_paths_.find(h.target.path);
    if (sp != staged_paths_.end() && sp->second == handle) staged_paths_.erase(sp);
  }
  if (h.fd >= 0) {
    ::close(h.fd);
    if (!h.staged.empty()) ::unlink(h.staged.c_str());
  }
}

absl::Status StagedUploads::PutEmpty(const std::string& path) {
  auto staged = Stage(path);
  if (!staged.ok()) return staged.status();
  absl::Status up = origin_.Put(path, staged->second);
  ::close(staged->first);
  ::unlink(staged->second.c_str());
  if (!up.ok()) return PosixError(EIO, absl::StrCat("upload of ", path, ": ", up.message()));
  return absl::OkStatus();
}

absl::StatusOr<std::pair<Attr, OpenResult>> StagedUploads::Create(const std::string& path, uint32_t,
                                                                  int flags, const Caller& who) {
  // The object appears at the origin when it is uploaded (flush, fsync).
  uint64_t ino;
  auto existing = tree_.StatPath(path, &ino, /*revalidate=*/true);
  if (existing.ok() && (flags & O_EXCL)) return PosixError(EEXIST, path);
  if (existing.ok() && existing->is_dir) return PosixError(EISDIR, path);
  auto staged = Stage(path);
  if (!staged.ok()) return staged.status();
  origin::ObjectStat st;
  st.mode = 0644;
  st.uid = who.uid;
  st.gid = who.gid;
  st.mtime_ns = absl::ToUnixNanos(tree_.opts_.clock->Now());
  {
    absl::MutexLock l(&tree_.mu_);
    ino = tree_.InoFor(path, st);
  }
  auto h = AddStagedHandle(ino, path, st, *staged);
  if (!h.ok()) return h.status();
  return std::make_pair(tree_.ToAttr(ino, st), *h);
}

absl::StatusOr<Attr> StagedUploads::SetAttr(uint64_t, const std::string& path, const struct stat& a,
                                            int to_set) {
  // An object has no modes or owners to change, and only whole rewrites.
  if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
    return PosixError(ENOTSUP,
                      absl::StrCat(path, ": ", origin_.url(), " keeps no modes or owners"));
  }
  if (to_set & FUSE_SET_ATTR_SIZE) {
    int staged_fd = -1;
    {
      absl::MutexLock l(&tree_.mu_);
      auto sp = staged_paths_.find(path);
      if (sp != staged_paths_.end()) {
        auto h = tree_.handles_.find(sp->second);
        if (h != tree_.handles_.end()) staged_fd = h->second.fd;
      }
    }
    if (staged_fd >= 0) {  // being written here: truncate the staged copy
      if (::ftruncate(staged_fd, a.st_size) != 0) {
        return PosixError(errno, absl::StrCat("truncate ", path, ": ", std::strerror(errno)));
      }
    } else if (a.st_size != 0) {
      return PosixError(ENOTSUP,
                        absl::StrCat(path, ": an object can only be truncated to 0 bytes"));
    } else if (absl::Status up = PutEmpty(path); !up.ok()) {
      return up;
    }
  }
  tree_.Changed(path);
  return tree_.Fresh(path);  // times: the object store keeps its own
}

absl::StatusOr<Attr> StagedUploads::Mkdir(const std::string& path, uint32_t, const Caller&) {
  uint64_t ino;
  if (tree_.StatPath(path, &ino, /*revalidate=*/true).ok()) return PosixError(EEXIST, path);
  if (absl::Status st = origin_.MakeDir(path); !st.ok()) return st;
  return tree_.Fresh(path);
}

absl::Status StagedUploads::Unlink(const std::string& path) {
  uint64_t ino;
  auto st = tree_.StatPath(path, &ino, /*revalidate=*/true);
  if (!st.ok()) return st.status();
  if (st->is_dir) return PosixError(EISDIR, path);
  return origin_.Delete(path);
}

absl::Status StagedUploads::Rmdir(const std::string& path) {
  absl::Status st = origin_.RemoveDir(path);
  if (absl::IsFailedPrecondition(st)) return PosixError(ENOTEMPTY, std::string(st.message()));
  return st;
}

absl::Status StagedUploads::Rename(const std::string& from, const std::string& to,
                                   unsigned int flags) {
  // An object store renames by copy and delete, one object at a time; a
  // directory is many objects, so say EXDEV and let mv copy it.
  uint64_t ino;
  auto st = tree_.StatPath(from, &ino, /*revalidate=*/true);
  if (!st.ok()) return st.status();
  if (st->is_dir)
    return PosixError(EXDEV, absl::StrCat("rename of directory ", from, " on an object store"));
  if (flags & RENAME_NOREPLACE) {
    uint64_t other;
    if (tree_.StatPath(to, &other, /*revalidate=*/true).ok()) return PosixError(EEXIST, to);
  } else if (flags != 0) {
    return PosixError(EINVAL, "only RENAME_NOREPLACE is possible on an object store");
  }
  if (absl::Status c = origin_.Copy(from, to); !c.ok()) return c;
  if (absl::Status d = origin_.Delete(from); !d.ok()) return d;
  tree_.Changed(from);
  return absl::OkStatus();
}

absl::StatusOr<Attr> StagedUploads::Symlink(const std::string&, uint64_t, const std::string&,
                                            const Caller&) {
  return PosixError(ENOTSUP, absl::StrCat(origin_.url(), " has no symbolic links"));
}

absl::StatusOr<std::string> StagedUploads::Readlink(const std::string&) {
  return PosixError(EINVAL, "not a symlink");
}

absl::StatusOr<Attr> StagedUploads::Link(uint64_t, uint64_t, const std::string&) {
  return PosixError(EPERM, absl::StrCat(origin_.url(), " has no hard links"));
}

absl::StatusOr<Attr> StagedUploads::Mknod(const std::string& path, uint32_t mode, uint64_t,
                                          const Caller&) {
  const uint32_t type = mode & S_IFMT;
  if (type != S_IFREG && type != 0) {
    return PosixError(
        EPERM, absl::StrCat(path, ": ", origin_.url(), " keeps no fifos, sockets or device nodes"));
  }
  uint64_t ino;
  if (tree_.StatPath(path, &ino, /*revalidate=*/true).ok()) return PosixError(EEXIST, path);
  if (absl::Status st = PutEmpty(path); !st.ok()) return st;
  tree_.Changed(path);
  return tree_.Fresh(path);
}

absl::Status StagedUploads::Fallocate(uint64_t handle, int, uint64_t, uint64_t) {
  absl::MutexLock l(&tree_.mu_);
  auto it = tree_.handles_.find(handle);
  if (it == tree_.handles_.end()) return PosixError(EBADF, absl::StrCat("unknown handle ", handle));
  return PosixError(EOPNOTSUPP, absl::StrCat(it->second.target.path, ": ", origin_.url(),
                                             " takes whole objects; fallocate is not possible"));
}

absl::Status StagedUploads::NoFiles() const {
  return PosixError(EOPNOTSUPP, absl::StrCat(origin_.url(), " has no files"));
}

absl::StatusOr<std::string> StagedUploads::GetXattr(uint64_t, const std::string&) {
  return NoFiles();
}
absl::StatusOr<std::string> StagedUploads::ListXattr(uint64_t) { return NoFiles(); }
absl::Status StagedUploads::SetXattr(uint64_t, const std::string&, const std::string&, int) {
  return NoFiles();
}
absl::Status StagedUploads::RemoveXattr(uint64_t, const std::string&) { return NoFiles(); }

absl::StatusOr<struct statvfs> StagedUploads::StatFs() { return tree_.Tree::StatFs(); }

}  // namespace strata::fuse
