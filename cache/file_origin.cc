// file:// origin: a POSIX directory (NFS, Lustre, hostPath). An object's
// version is its mtime, size and inode; a read re-checks them so a file that
// changes under a read is reported, never mixed into one version's chunks.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cache/origin_impl.h"
#include "cache/store_fs.h"

namespace strata::cache {
namespace {

std::string VersionOf(const struct stat& st) {
  return absl::StrFormat("%d.%09d-%d-%d", st.st_mtim.tv_sec, st.st_mtim.tv_nsec, st.st_size,
                         st.st_ino);
}

ObjectStat StatOf(const struct stat& st) {
  ObjectStat s;
  s.size = S_ISREG(st.st_mode) ? st.st_size : 0;
  s.version = VersionOf(st);
  s.mtime_ns = int64_t{st.st_mtim.tv_sec} * 1'000'000'000 + st.st_mtim.tv_nsec;
  s.mode = st.st_mode & 07777;
  s.uid = st.st_uid;
  s.gid = st.st_gid;
  s.is_dir = S_ISDIR(st.st_mode);
  s.is_symlink = S_ISLNK(st.st_mode);
  return s;
}

class FileOrigin final : public Origin {
 public:
  FileOrigin(std::string url, std::string root) : url_(std::move(url)), root_(std::move(root)) {}

  const std::string& url() const override { return url_; }

  absl::StatusOr<ObjectStat> Stat(const std::string& path) override {
    auto full = Resolve(path);
    if (!full.ok()) return full.status();
    // Inside the tree a symlink is itself; the root may be a link to follow.
    struct stat st;
    int rc = path.empty() ? ::stat(full->c_str(), &st) : ::lstat(full->c_str(), &st);
    if (rc != 0) return ErrnoStatus(errno, absl::StrCat("stat ", *full));
    return StatOf(st);
  }

  std::string LocalRoot() const override { return root_; }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    auto full = Resolve(dir);
    if (!full.ok()) return full.status();
    DIR* d = ::opendir(full->c_str());
    if (d == nullptr) return ErrnoStatus(errno, absl::StrCat("list ", *full));
    std::vector<DirEntry> out;
    while (dirent* e = ::readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      struct stat st;
      if (::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;  // raced away
      out.push_back({name, StatOf(st)});
    }
    ::closedir(d);
    return out;
  }

  absl::Status ReadRange(const std::string& path, const ObjectStat& want, uint64_t offset,
                         absl::Span<char> out) override {
    auto full = Resolve(path);
    if (!full.ok()) return full.status();
    int fd = ::open(full->c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", *full));
    struct stat st;
    absl::Status result = absl::OkStatus();
    if (::fstat(fd, &st) != 0) {
      result = ErrnoStatus(errno, absl::StrCat("stat ", *full));
    } else if (VersionOf(st) != want.version) {
      result = absl::FailedPreconditionError(
          absl::StrCat(*full, " changed (version ", want.version, " is now ", VersionOf(st), ")"));
    } else if (offset + out.size() > static_cast<uint64_t>(st.st_size)) {
      result = absl::OutOfRangeError(absl::StrFormat("%s: [%u, +%u) is past its end (%u bytes)",
                                                     *full, offset, out.size(), st.st_size));
    }
    size_t done = 0;
    while (result.ok() && done < out.size()) {
      ssize_t n = ::pread(fd, out.data() + done, out.size() - done, offset + done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        result = ErrnoStatus(errno, absl::StrCat("read ", *full));
      } else if (n == 0) {
        result = absl::DataLossError(absl::StrCat(*full, " was truncated during a read"));
      } else {
        done += n;
      }
    }
    // A write that raced the read changes the version: the bytes may mix two.
    if (result.ok() && ::fstat(fd, &st) == 0 && VersionOf(st) != want.version) {
      result = absl::FailedPreconditionError(absl::StrCat(*full, " changed during a read"));
    }
    ::close(fd);
    return result;
  }

 private:
  absl::StatusOr<std::string> Resolve(const std::string& path) const {
    if (auto st = CheckRelativePath(path); !st.ok()) return st;
    return path.empty() ? root_ : absl::StrCat(root_, "/", path);
  }

  std::string url_;
  std::string root_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Origin>> NewFileOrigin(const std::string& url,
                                                      const std::string& root) {
  if (root.empty() || root[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("file origin ", url, " needs an absolute path (file:///dir)"));
  }
  std::string r = root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  return std::make_unique<FileOrigin>(url, r);
}

}  // namespace strata::cache
