// WriteThrough: each change as a system call beneath the origin's directory.
// An error that says a name no longer leads where it did goes through the
// tree's Broken, so that the kernel looks it up again.
#define FUSE_USE_VERSION 312
#include "fuse/write_through.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/limits.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/logging.h"
#include "fuse/volume_tree.h"

namespace strata::fuse {
namespace {
bool UserXattr(const std::string& name) { return name.rfind("user.", 0) == 0; }
std::string ProcFd(int fd) { return absl::StrCat("/proc/self/fd/", fd); }
}  // namespace

absl::StatusOr<OpenResult> WriteThrough::Open(uint64_t ino, const std::string& path,
                                              const origin::ObjectStat& st, int flags) {
  auto fd = root_.OpenFile(path, flags & (O_ACCMODE | O_TRUNC | O_APPEND));
  if (!fd.ok()) return tree_.Broken(fd.status(), path);
  if (flags & O_TRUNC) tree_.Changed(path);
  return tree_.AddHandle(ino, path, st, fd->release());
}

absl::StatusOr<strata::UniqueFd> WriteThrough::Reopen(const std::string& path, int flags) {
  auto file = root_.OpenFile(path, flags & (O_ACCMODE | O_APPEND));
  if (!file.ok()) return tree_.Broken(file.status(), path);
  return file;
}

absl::Status WriteThrough::Flush(uint64_t handle) {
  // Every write is at the origin already.
  absl::MutexLock l(&tree_.mu_);
  if (!tree_.handles_.contains(handle)) return PosixError(EBADF, "unknown handle");
  return absl::OkStatus();
}

absl::Status WriteThrough::Fsync(uint64_t handle) {
  int fd;
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.handles_.find(handle);
    if (it == tree_.handles_.end()) return PosixError(EBADF, "unknown handle");
    fd = it->second.fd;
  }
  if (fd >= 0 && ::fsync(fd) != 0)
    return PosixError(errno, absl::StrCat("fsync: ", std::strerror(errno)));
  return absl::OkStatus();
}

void WriteThrough::Release(uint64_t handle) {
  if (absl::Status st = Flush(handle); !st.ok()) {
    spdlog::error("{}; the written data is lost", st.message());  // close() already saw the error
  }
  VolumeTree::Handle h;
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.handles_.find(handle);
    if (it == tree_.handles_.end()) return;
    h = std::move(it->second);
    tree_.handles_.erase(it);
  }
  if (h.fd >= 0) {
    ::close(h.fd);
    if (h.dirty) tree_.Changed(h.target.path);
  }
}

absl::StatusOr<std::pair<Attr, OpenResult>> WriteThrough::Create(const std::string& path,
                                                                 uint32_t mode, int flags,
                                                                 const Caller& who) {
  auto at = root_.Parent(path);
  if (!at.ok()) return tree_.Broken(at.status(), path);
  const int open_flags = flags & (O_ACCMODE | O_TRUNC | O_APPEND);
  int fd = ::openat(at->dir.get(), at->name.c_str(),
                    open_flags | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 07777);
  if (fd >= 0) {
    Own(fd, at->dir.get(), path, mode, who);
  } else if (errno == EEXIST && !(flags & O_EXCL)) {
    // There already: opened as it is (never through a symlink, never a fifo).
    auto file = root_.OpenFile(path, open_flags);
    if (!file.ok()) return tree_.Broken(file.status(), path);
    fd = file->release();
  } else {
    return tree_.Broken(
        PosixError(errno, absl::StrCat("create ", path, ": ", std::strerror(errno))), path);
  }
  tree_.Changed(path);
  auto attr = tree_.Fresh(path);
  if (!attr.ok()) {
    ::close(fd);
    return attr.status();
  }
  uint64_t got;
  auto st = tree_.StatPath(path, &got, false);
  if (!st.ok()) {
    ::close(fd);
    return st.status();
  }
  auto h = tree_.AddHandle(attr->ino, path, *st, fd);
  if (!h.ok()) return h.status();
  return std::make_pair(*attr, *h);
}

absl::StatusOr<Attr> WriteThrough::SetAttr(uint64_t ino, const std::string& path,
                                           const struct stat& a, int to_set) {
  // Each call below acts on a name in its directory and never follows it.
  // What has no name here acts through a descriptor: the volume's root,
  // and a file unlinked while open (its handle's, as fchmod would).
  origin::RootDir::Entry at;
  std::shared_ptr<const strata::UniqueFd> root_fd;
  int dir = AT_FDCWD, nofollow = AT_SYMLINK_NOFOLLOW;
  std::string name;
  auto node = tree_.NodeOf(ino);
  const bool named = !node.ok() || node->named;
  strata::UniqueFd held = named ? strata::UniqueFd() : tree_.HeldFd(ino);
  if (path.empty() || !named) {
    if (!named && held.get() < 0) {
      return PosixError(ENOENT, absl::StrCat(path, " was removed and is not open"));
    }
    if (path.empty()) {
      auto fd = root_.Fd();
      if (!fd.ok()) return fd.status();
      root_fd = *fd;
    }
    name = absl::StrCat("/proc/self/fd/", root_fd ? root_fd->get() : held.get());
    nofollow = 0;
  } else {
    auto parent = root_.Parent(path);
    if (!parent.ok()) return tree_.Broken(parent.status(), path);
    at = std::move(*parent);
    dir = at.dir.get();
    name = at.name;
  }
  auto fail = [&](const char* what) {
    return tree_.Broken(
        PosixError(errno, absl::StrCat(what, " ", path, ": ", std::strerror(errno))), path);
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
        named ? root_.OpenFile(path, O_WRONLY)
              : strata::UniqueFd(::open(name.c_str(), O_WRONLY | O_CLOEXEC));
    if (!file.ok()) return tree_.Broken(file.status(), path);
    if (file->get() < 0 || ::ftruncate(file->get(), a.st_size) != 0) return fail("truncate");
    if (named) tree_.Changed(path);
  }
  if (to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME)) {
    struct timespec ts[2] = {{0, UTIME_OMIT}, {0, UTIME_OMIT}};
    if (to_set & FUSE_SET_ATTR_ATIME)
      ts[0] = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? timespec{0, UTIME_NOW} : a.st_atim;
    if (to_set & FUSE_SET_ATTR_MTIME)
      ts[1] = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? timespec{0, UTIME_NOW} : a.st_mtim;
    if (::utimensat(dir, name.c_str(), ts, nofollow) != 0) return fail("utimens");
  }
  if (!named) return tree_.AttrOfOpen(ino);
  return tree_.Fresh(path);
}

absl::StatusOr<Attr> WriteThrough::Mkdir(const std::string& path, uint32_t mode,
                                         const Caller& who) {
  auto at = root_.Parent(path);
  if (!at.ok()) return tree_.Broken(at.status(), path);
  if (::mkdirat(at->dir.get(), at->name.c_str(), mode & 07777) != 0) {
    return tree_.Broken(PosixError(errno, absl::StrCat("mkdir ", path, ": ", std::strerror(errno))),
                        path);
  }
  int fd = ::openat(at->dir.get(), at->name.c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Own(fd, at->dir.get(), path, S_IFDIR | mode, who);
    ::close(fd);
  }
  tree_.DirChanged(path);
  return tree_.Fresh(path);
}

absl::Status WriteThrough::Unlink(const std::string& path) {
  Held held = HoldOpenFiles(path);
  if (absl::Status st = RemoveName(path, 0); !st.ok()) return st;
  GiveHeld(held);
  return absl::OkStatus();
}

absl::Status WriteThrough::Rmdir(const std::string& path) { return RemoveName(path, AT_REMOVEDIR); }

absl::Status WriteThrough::RemoveName(const std::string& path, int flags) {
  auto at = root_.Parent(path);
  if (!at.ok()) return tree_.Broken(at.status(), path);
  if (::unlinkat(at->dir.get(), at->name.c_str(), flags) != 0) {
    const char* op = flags & AT_REMOVEDIR ? "rmdir " : "unlink ";
    return tree_.Broken(PosixError(errno, absl::StrCat(op, path, ": ", std::strerror(errno))),
                        path);
  }
  return absl::OkStatus();
}

absl::Status WriteThrough::Rename(const std::string& from, const std::string& to,
                                  unsigned int flags) {
  Held held;
  if (!(flags & RENAME_EXCHANGE)) held = HoldOpenFiles(to);
  auto src = root_.Parent(from);
  if (!src.ok()) return tree_.Broken(src.status(), from);
  auto dst = root_.Parent(to);
  if (!dst.ok()) return tree_.Broken(dst.status(), to);
  if (::renameat2(src->dir.get(), src->name.c_str(), dst->dir.get(), dst->name.c_str(), flags) !=
      0) {
    int err = errno;
    absl::Status st =
        PosixError(err, absl::StrCat("rename ", from, " to ", to, ": ", std::strerror(err)));
    (void)tree_.Broken(st, from);
    return tree_.Broken(st, to);
  }
  GiveHeld(held);
  tree_.Changed(from);  // its ctime, and the directory it left
  return absl::OkStatus();
}

absl::StatusOr<Attr> WriteThrough::Symlink(const std::string& target, uint64_t parent,
                                           const std::string& name, const Caller& who) {
  auto path = tree_.ChildPath(parent, name);
  if (!path.ok()) return path.status();
  auto at = root_.Parent(*path);
  if (!at.ok()) return tree_.Broken(at.status(), *path);
  if (::symlinkat(target.c_str(), at->dir.get(), at->name.c_str()) != 0) {
    return tree_.Broken(
        PosixError(errno, absl::StrCat("symlink ", *path, ": ", std::strerror(errno))), *path);
  }
  int fd = ::openat(at->dir.get(), at->name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Own(fd, at->dir.get(), *path, S_IFLNK | 0777, who);
    ::close(fd);
  }
  tree_.DirChanged(*path);
  return tree_.Fresh(*path);
}

absl::StatusOr<std::string> WriteThrough::Readlink(const std::string& path) {
  if (path.empty()) return PosixError(EINVAL, "the root is not a symlink");
  auto at = root_.Parent(path);
  if (!at.ok()) return tree_.Broken(at.status(), path);
  char buf[PATH_MAX];
  ssize_t n = ::readlinkat(at->dir.get(), at->name.c_str(), buf, sizeof buf);
  if (n < 0) {
    return tree_.Broken(
        PosixError(errno, absl::StrCat("readlink ", path, ": ", std::strerror(errno))), path);
  }
  return std::string(buf, n);
}

// A new entry belongs to who made it (the daemon, root, made it) with the
// mode the kernel passed, which already has the caller's umask applied:
// the daemon's own umask must not apply again, and the chown would clear
// setuid and setgid, so the mode is set last. In a setgid directory the
// group stays the directory's (the origin gave it so), and a directory
// made there is setgid too, as on a local file system.
void WriteThrough::Own(int fd, int dirfd, const std::string& path, uint32_t mode,
                       const Caller& who) {
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

WriteThrough::Held WriteThrough::HoldOpenFiles(const std::string& path) {
  Held held;
  VolumeTree::FileId id;
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.inos_.find(path);
    if (it == tree_.inos_.end()) return held;
    bool open = false;
    for (const auto& [h, handle] : tree_.handles_) open |= handle.ino == it->second;
    if (!open) return held;  // (a reader opening meanwhile reads by name)
    held.ino = it->second;
    id = tree_.nodes_[it->second].id;
  }
  auto file = root_.OpenFile(path, O_RDONLY);
  struct stat st;
  if (!file.ok() || ::fstat(file->get(), &st) != 0 ||
      VolumeTree::FileId{st.st_dev, st.st_ino} != id) {
    spdlog::warn("{}: its open readers will fail once it is removed: {}", path,
                 file.ok() ? "it is another file now" : file.status().message());
    return Held{};
  }
  held.fd = std::move(*file);
  return held;
}

void WriteThrough::GiveHeld(const Held& held) {
  if (held.fd.get() < 0) return;
  absl::MutexLock l(&tree_.mu_);
  for (auto& [h, handle] : tree_.handles_) {
    if (handle.ino != held.ino || handle.fd >= 0) continue;
    int fd = ::fcntl(held.fd.get(), F_DUPFD_CLOEXEC, 0);
    if (fd >= 0) handle.fd = fd;
  }
}

absl::StatusOr<Attr> WriteThrough::Link(uint64_t ino, uint64_t new_parent,
                                        const std::string& new_name) {
  auto to = tree_.ChildPath(new_parent, new_name);
  if (!to.ok()) return to.status();
  auto node = tree_.NodeOf(ino);
  if (!node.ok()) return node.status();
  const std::string& from = node->path;
  if (from.empty()) return PosixError(EPERM, "the volume's root cannot be linked");
  // The file itself is linked through its descriptor: never whatever its
  // name leads to now.
  auto file = TheFile(ino);
  if (!file.ok()) return file.status();
  auto at = root_.Parent(*to);
  if (!at.ok()) return tree_.Broken(at.status(), *to);
  // Through /proc rather than AT_EMPTY_PATH, which needs CAP_DAC_READ_SEARCH.
  std::string self = absl::StrCat("/proc/self/fd/", file->get());
  if (::linkat(AT_FDCWD, self.c_str(), at->dir.get(), at->name.c_str(), AT_SYMLINK_FOLLOW) != 0) {
    return tree_.Broken(
        PosixError(errno, absl::StrCat("link ", from, " to ", *to, ": ", std::strerror(errno))),
        *to);
  }
  tree_.Changed(from);  // its link count and ctime
  tree_.DirChanged(*to);
  return tree_.Fresh(*to);
}

absl::StatusOr<Attr> WriteThrough::Mknod(const std::string& path, uint32_t mode, uint64_t rdev,
                                         const Caller& who) {
  const uint32_t type = mode & S_IFMT;
  if (type != S_IFREG && type != 0 && type != S_IFIFO && type != S_IFSOCK && type != S_IFCHR &&
      type != S_IFBLK) {
    return PosixError(EINVAL, absl::StrCat("mknod ", path, ": type ", type));
  }
  if ((type == S_IFCHR || type == S_IFBLK) && rdev != 0) {
    // A pod's root may hold CAP_MKNOD, and the origin is shared: a node for
    // a disk of this machine, left there, would open it for anyone reading
    // the origin without nodev. Only overlayfs's whiteout (0, 0) is made.
    return PosixError(EPERM, absl::StrCat("mknod ", path,
                                          ": device nodes are not made on volumes (only the "
                                          "0/0 whiteout)"));
  }
  auto at = root_.Parent(path);
  if (!at.ok()) return tree_.Broken(at.status(), path);
  if (::mknodat(at->dir.get(), at->name.c_str(), (type ? type : S_IFREG) | (mode & 07777),
                static_cast<dev_t>(rdev)) != 0) {
    return tree_.Broken(PosixError(errno, absl::StrCat("mknod ", path, ": ", std::strerror(errno))),
                        path);
  }
  int fd = ::openat(at->dir.get(), at->name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    Own(fd, at->dir.get(), path, mode, who);
    ::close(fd);
  }
  tree_.DirChanged(path);
  return tree_.Fresh(path);
}

absl::Status WriteThrough::Fallocate(uint64_t handle, int mode, uint64_t offset, uint64_t length) {
  int fd;
  std::string path;
  {
    absl::MutexLock l(&tree_.mu_);
    auto it = tree_.handles_.find(handle);
    if (it == tree_.handles_.end()) {
      return PosixError(EBADF, absl::StrCat("unknown handle ", handle));
    }
    if (it->second.fd < 0) return PosixError(EBADF, "not open for writing");
    fd = it->second.fd;
    path = it->second.target.path;
    it->second.dirty = true;
    tree_.nodes_[it->second.ino].fetched = absl::InfinitePast();
  }
  if (::fallocate(fd, mode, static_cast<off_t>(offset), static_cast<off_t>(length)) != 0) {
    return PosixError(errno, absl::StrCat("fallocate ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<strata::UniqueFd> WriteThrough::TheFile(uint64_t ino) {
  auto node = tree_.NodeOf(ino);
  if (!node.ok()) return node.status();
  if (!node->named) {
    // Unlinked and still open: through a handle's descriptor.
    strata::UniqueFd held = tree_.HeldFd(ino);
    if (held.get() < 0) return PosixError(ESTALE, absl::StrCat(node->path, " was removed"));
    return held;
  }
  auto fd = root_.Open(node->path, O_PATH | O_NOFOLLOW);
  if (!fd.ok()) return tree_.Broken(fd.status(), node->path);
  struct stat st;
  if (node->id != VolumeTree::FileId{0, 0} &&
      (::fstat(fd->get(), &st) != 0 || VolumeTree::FileId{st.st_dev, st.st_ino} != node->id)) {
    return PosixError(ESTALE, absl::StrCat(node->path, " is another file now"));
  }
  return fd;
}

absl::StatusOr<std::string> WriteThrough::GetXattr(uint64_t ino, const std::string& name) {
  // Asked on every write (security.capability): answered before any work.
  if (!UserXattr(name)) return PosixError(ENODATA, name);
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  std::string value(XATTR_SIZE_MAX, '\0');
  ssize_t n = ::getxattr(ProcFd(fd->get()).c_str(), name.c_str(), value.data(), value.size());
  if (n < 0) return PosixError(errno, absl::StrCat("getxattr ", name, ": ", std::strerror(errno)));
  value.resize(static_cast<size_t>(n));
  return value;
}

absl::StatusOr<std::string> WriteThrough::ListXattr(uint64_t ino) {
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

absl::Status WriteThrough::SetXattr(uint64_t ino, const std::string& name, const std::string& value,
                                    int flags) {
  if (!UserXattr(name)) {
    return PosixError(EOPNOTSUPP, absl::StrCat("setxattr ", name, ": only user. attributes"));
  }
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  if (::setxattr(ProcFd(fd->get()).c_str(), name.c_str(), value.data(), value.size(), flags) != 0) {
    return PosixError(errno, absl::StrCat("setxattr ", name, ": ", std::strerror(errno)));
  }
  auto path = tree_.PathOf(ino);
  if (path.ok()) tree_.Changed(*path);  // its ctime
  return absl::OkStatus();
}

absl::Status WriteThrough::RemoveXattr(uint64_t ino, const std::string& name) {
  if (!UserXattr(name)) return PosixError(ENODATA, name);
  auto fd = TheFile(ino);
  if (!fd.ok()) return fd.status();
  if (::removexattr(ProcFd(fd->get()).c_str(), name.c_str()) != 0) {
    return PosixError(errno, absl::StrCat("removexattr ", name, ": ", std::strerror(errno)));
  }
  auto path = tree_.PathOf(ino);
  if (path.ok()) tree_.Changed(*path);
  return absl::OkStatus();
}

absl::StatusOr<struct statvfs> WriteThrough::StatFs() {
  auto fd = root_.Fd();
  if (!fd.ok()) return fd.status();
  struct statvfs sv {};
  if (::fstatvfs((*fd)->get(), &sv) != 0) {
    return PosixError(errno, absl::StrCat("statvfs ", root_.path(), ": ", std::strerror(errno)));
  }
  return sv;
}

}  // namespace strata::fuse
