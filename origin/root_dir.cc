// RootDir: openat2 beneath a kept descriptor, and a removal that never
// leaves the directory it starts in.
#include "origin/root_dir.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/errno_status.h"
#include "origin/origin.h"

namespace strata::origin {

std::string VersionOf(const struct stat& st) {
  return absl::StrFormat("%d.%09d-%d-%d-%d.%09d", st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_size,
                         st.st_ino, st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
}

namespace {
int64_t Nanos(const struct timespec& t) { return int64_t{t.tv_sec} * 1'000'000'000 + t.tv_nsec; }
}  // namespace

ObjectStat StatOf(const struct stat& st) {
  ObjectStat s;
  // A symlink's size is its target's length, a directory's what its file
  // system says; only a file's is read as bytes.
  s.size = S_ISREG(st.st_mode) || S_ISLNK(st.st_mode) || S_ISDIR(st.st_mode) ? st.st_size : 0;
  s.version = VersionOf(st);
  s.mtime_ns = Nanos(st.st_mtim);
  s.atime_ns = Nanos(st.st_atim);
  s.ctime_ns = Nanos(st.st_ctim);
  s.mode = st.st_mode & 07777;
  s.uid = st.st_uid;
  s.gid = st.st_gid;
  s.is_dir = S_ISDIR(st.st_mode);
  s.is_symlink = S_ISLNK(st.st_mode);
  s.dev = st.st_dev;
  s.ino = st.st_ino;
  s.nlink = static_cast<uint32_t>(st.st_nlink);
  s.blocks = st.st_blocks;
  if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
    s.special = st.st_mode & S_IFMT;
    s.rdev = st.st_rdev;
  }
  return s;
}

absl::StatusOr<UniqueFd> OpenBeneath(int dirfd, const std::string& what, const std::string& rel,
                                     int flags, mode_t mode) {
  if (absl::Status st = CheckRelativePath(rel); !st.ok()) {
    bool long_name = false;
    for (absl::string_view part : absl::StrSplit(rel, '/')) long_name |= part.size() > NAME_MAX;
    return WithErrno(std::move(st), long_name ? ENAMETOOLONG : EINVAL);
  }
  if (rel.size() >= PATH_MAX) {
    // Longer than the kernel takes as one string, but the origin holds it:
    // walked in pieces, each opened beneath the one before. A piece renamed
    // out of the root between two steps leaves the walk beneath it (one
    // openat2 would see that rename and retry); the same holds for every
    // directory descriptor kept across calls, as Parent() gives them.
    size_t cut = rel.rfind('/', PATH_MAX - 2);
    if (cut == std::string::npos || cut == 0) {
      return ErrnoStatus(ENAMETOOLONG, absl::StrCat("open ", what, "/", rel));
    }
    auto dir = OpenBeneath(dirfd, what, rel.substr(0, cut), O_PATH | O_DIRECTORY);
    if (!dir.ok()) return dir.status();
    return OpenBeneath(dir->get(), what, rel.substr(cut + 1), flags, mode);
  }
  open_how how{};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  const char* name = rel.empty() ? "." : rel.c_str();
  long fd;
  do {
    // EAGAIN: a rename elsewhere raced the walk; the kernel asks to retry.
    fd = ::syscall(SYS_openat2, dirfd, name, &how, sizeof how);
  } while (fd < 0 && (errno == EINTR || errno == EAGAIN));
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", what, "/", rel));
  return UniqueFd(static_cast<int>(fd));
}

RootDir::RootDir(std::string path, std::string sub)
    : path_(std::move(path)),
      sub_(std::move(sub)),
      display_(sub_.empty() ? path_ : absl::StrCat(path_, "/", sub_)) {}

absl::StatusOr<UniqueFd> RootDir::OpenRoot() const {
  int base = ::open(path_.c_str(), O_PATH | O_CLOEXEC);
  if (base < 0) return ErrnoStatus(errno, absl::StrCat("open ", path_));
  UniqueFd owned(base);
  if (sub_.empty()) return owned;
  return OpenBeneath(base, path_, sub_, O_PATH);
}

absl::StatusOr<std::shared_ptr<const UniqueFd>> RootDir::Fd() {
  absl::MutexLock l(&mu_);
  if (root_) return root_;
  auto root = OpenRoot();
  if (!root.ok()) return root.status();
  root_ = std::make_shared<const UniqueFd>(std::move(*root));
  return root_;
}

absl::StatusOr<UniqueFd> RootDir::Open(const std::string& rel, int flags, mode_t mode) {
  auto root = Fd();
  if (!root.ok()) return root.status();
  if (!rel.empty()) return OpenBeneath((*root)->get(), display_, rel, flags, mode);
  // The root itself (which may be a file): another descriptor of it.
  int fd = (flags & O_PATH) ? ::fcntl((*root)->get(), F_DUPFD_CLOEXEC, 0)
                            : ::open(absl::StrCat("/proc/self/fd/", (*root)->get()).c_str(),
                                     (flags & ~(O_NOFOLLOW | O_CREAT | O_EXCL)) | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", display_));
  return UniqueFd(fd);
}

absl::StatusOr<UniqueFd> RootDir::OpenFile(const std::string& rel, int flags) {
  auto path = Open(rel, O_PATH | O_NOFOLLOW);
  if (!path.ok()) return path.status();
  struct stat st;
  if (::fstat(path->get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", rel));
  if (!S_ISREG(st.st_mode)) {
    int err = S_ISDIR(st.st_mode) ? EISDIR : S_ISLNK(st.st_mode) ? ELOOP : ENXIO;
    return ErrnoStatus(err, absl::StrCat("open ", display_, "/", rel, " (not a regular file)"));
  }
  // Reopened through the descriptor: the very inode that was checked.
  std::string self = absl::StrCat("/proc/self/fd/", path->get());
  int fd = ::open(self.c_str(), (flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW)) | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", display_, "/", rel));
  return UniqueFd(fd);
}

absl::StatusOr<RootDir::Entry> RootDir::Parent(const std::string& rel) {
  size_t slash = rel.rfind('/');
  std::string dir = slash == std::string::npos ? "" : rel.substr(0, slash);
  std::string name = slash == std::string::npos ? rel : rel.substr(slash + 1);
  if (name.empty() || name == "." || name == "..") {
    return WithErrno(absl::InvalidArgumentError(absl::StrCat("'", rel, "' names no entry")),
                     EINVAL);
  }
  auto fd = Open(dir, O_PATH | O_DIRECTORY);
  if (!fd.ok()) return fd.status();
  return Entry{std::move(*fd), std::move(name)};
}

absl::Status RootDir::MakeDirs(const std::string& rel, mode_t mode) {
  if (absl::Status st = CheckRelativePath(rel); !st.ok()) return WithErrno(std::move(st), EINVAL);
  auto root = Fd();
  if (!root.ok()) return root.status();
  UniqueFd dir;
  std::string done;
  for (absl::string_view part : absl::StrSplit(rel, '/')) {
    std::string name(part);
    int at = done.empty() ? (*root)->get() : dir.get();
    if (::mkdirat(at, name.c_str(), mode) != 0 && errno != EEXIST) {
      return ErrnoStatus(
          errno, absl::StrCat("mkdir ", display_, "/", done, done.empty() ? "" : "/", name));
    }
    auto next = OpenBeneath(at, display_, name, O_PATH | O_DIRECTORY);
    if (!next.ok()) return next.status();
    dir = std::move(*next);
    done = done.empty() ? name : absl::StrCat(done, "/", name);
  }
  return absl::OkStatus();
}

absl::Status RootDir::RemoveAll(const std::string& rel) {
  auto at = Parent(rel);
  if (absl::IsNotFound(at.status())) return absl::OkStatus();
  if (!at.ok()) return at.status();
  return RemoveAllAt(at->dir.get(), at->name, absl::StrCat(display_, "/", rel));
}

absl::StatusOr<struct stat> RootDir::Stat(const std::string& rel) {
  struct stat st;
  if (rel.empty()) {
    // The root looked up again: gone, or something else now (a share
    // remounted, a directory made anew), and the kept one is dropped.
    auto fresh = OpenRoot();
    if (!fresh.ok() || ::fstat(fresh->get(), &st) != 0) {
      absl::MutexLock l(&mu_);
      root_.reset();
      return fresh.ok() ? ErrnoStatus(errno, absl::StrCat("stat ", display_)) : fresh.status();
    }
    absl::MutexLock l(&mu_);
    struct stat kept;
    if (!root_ || ::fstat(root_->get(), &kept) != 0 || kept.st_dev != st.st_dev ||
        kept.st_ino != st.st_ino) {
      root_ = std::make_shared<const UniqueFd>(std::move(*fresh));
    }
    return st;
  }
  // O_PATH | O_NOFOLLOW opens a last-component symlink as itself.
  auto fd = Open(rel, O_PATH | O_NOFOLLOW);
  if (!fd.ok()) return fd.status();
  if (::fstat(fd->get(), &st) != 0) return ErrnoStatus(errno, absl::StrCat("stat ", rel));
  return st;
}

absl::Status RemoveAllAt(int dirfd, const std::string& name, const std::string& what) {
  // A directory is opened with O_NOFOLLOW | O_DIRECTORY: a symlink fails
  // that (ELOOP/ENOTDIR) and is then unlinked like any file.
  int fd = ::openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::OkStatus();
    if (errno != ENOTDIR && errno != ELOOP) {
      return ErrnoStatus(errno, absl::StrCat("open ", what));
    }
    if (::unlinkat(dirfd, name.c_str(), 0) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, absl::StrCat("unlink ", what));
    }
    return absl::OkStatus();
  }
  DIR* d = ::fdopendir(fd);
  if (d == nullptr) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus(err, absl::StrCat("list ", what));
  }
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n != "." && n != "..") names.push_back(std::move(n));
  }
  absl::Status result = absl::OkStatus();
  for (const std::string& n : names) {
    absl::Status st = RemoveAllAt(::dirfd(d), n, absl::StrCat(what, "/", n));
    if (!st.ok() && result.ok()) result = st;
  }
  ::closedir(d);
  if (!result.ok()) return result;
  if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return ErrnoStatus(errno, absl::StrCat("remove ", what));
  }
  return absl::OkStatus();
}

}  // namespace strata::origin
