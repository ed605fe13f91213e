// file:// origin: a POSIX directory (NFS, Lustre, hostPath). An object's
// version is its mtime, ctime, size and inode; a read re-checks them so a
// file that changes under a read is reported, never mixed into one
// version's chunks. The ctime catches an edit whose mtime was put back.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "base/errno_status.h"
#include "base/io_buffer.h"
#include "origin/origin_impl.h"
#include "origin/root_dir.h"

namespace strata::origin {
namespace {

class FileOrigin final : public Origin {
 public:
  FileOrigin(std::string url, std::string root, std::string sub, bool shared)
      : url_(std::move(url)), root_(std::move(root), std::move(sub)), shared_(shared) {}

  const std::string& url() const override { return url_; }

  // mtime, ctime, size and inode are the file server's on a network file
  // system, the same for every node; on a local one they are this node's.
  bool SharedVersion(const ObjectStat& stat) const override {
    return shared_ || !stat.digest.empty();
  }

  absl::StatusOr<ObjectStat> Stat(const std::string& path) override {
    auto st = root_.Stat(path);
    if (!st.ok()) return st.status();
    return StatOf(*st);
  }

  RootDir* Dir() override { return &root_; }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    auto fd = root_.Open(dir, O_RDONLY | O_DIRECTORY);
    if (!fd.ok()) return fd.status();
    DIR* d = ::fdopendir(fd->get());
    if (d == nullptr) return ErrnoStatus(errno, absl::StrCat("list ", Name(dir)));
    fd->release();
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

  absl::Status ReadInRange(const std::string& path, const ObjectStat& want, uint64_t offset,
                           absl::Span<char> out) override {
    const std::string name = Name(path);
    // Aligned ranges are read with O_DIRECT (see ReadAll); a file system
    // that refuses it is read the ordinary way.
    bool direct = offset % kAlign == 0 && out.size() >= kAlign;
    absl::StatusOr<UniqueFd> file = absl::UnknownError("not opened");
    if (direct) file = root_.OpenFile(path, O_RDONLY | O_DIRECT);
    if (!direct || !file.ok()) {
      direct = false;
      file = root_.OpenFile(path, O_RDONLY);
    }
    if (!file.ok()) return file.status();
    int fd = file->get();
    struct stat st;
    absl::Status result = absl::OkStatus();
    if (::fstat(fd, &st) != 0) {
      result = ErrnoStatus(errno, absl::StrCat("stat ", name));
    } else if (VersionOf(st) != want.version) {
      result = absl::FailedPreconditionError(
          absl::StrCat(name, " changed (version ", want.version, " is now ", VersionOf(st), ")"));
    } else if (offset + out.size() > static_cast<uint64_t>(st.st_size)) {
      result = absl::OutOfRangeError(absl::StrFormat("%s: [%u, +%u) is past its end (%u bytes)",
                                                     name, offset, out.size(), st.st_size));
    }
    if (result.ok()) result = ReadAll(fd, direct, name, offset, out);
    // A write that raced the read changes the version: the bytes may mix two.
    if (result.ok() && ::fstat(fd, &st) == 0 && VersionOf(st) != want.version) {
      result = absl::FailedPreconditionError(absl::StrCat(name, " changed during a read"));
    }
    return result;
  }

 private:
  // The bytes read here go into the chunk cache, which keeps them. Read
  // through the page cache too, they would be held twice, and every page
  // would cost an allocation. So aligned ranges are read with O_DIRECT:
  // straight into the caller's buffer where it is aligned (a chunk buffer
  // is, so a chunk is not copied at all), else into an aligned buffer and
  // copied (one copy, as a buffered read makes). File systems without
  // O_DIRECT, and unaligned ranges, are read the ordinary way.
  static constexpr size_t kAlign = IoBuffer::kAlign, kPiece = 4 << 20;

  // An aligned buffer for O_DIRECT reads: a recycled one if there is one.
  IoBuffer TakeBounce() {
    {
      absl::MutexLock l(&bounce_mu_);
      if (!bounces_.empty()) {
        IoBuffer b = std::move(bounces_.back());
        bounces_.pop_back();
        return b;
      }
    }
    return IoBuffer::Allocate(kPiece);
  }
  void GiveBounce(IoBuffer b) {
    absl::MutexLock l(&bounce_mu_);
    if (b && bounces_.size() < 8) bounces_.push_back(std::move(b));
  }

  // Reads [offset, +out.size()) of `fd`, opened with O_DIRECT when `direct`;
  // what O_DIRECT does not manage is read buffered.
  absl::Status ReadAll(int fd, bool direct, const std::string& name, uint64_t offset,
                       absl::Span<char> out) {
    size_t done = 0;
    if (direct && reinterpret_cast<uintptr_t>(out.data()) % kAlign == 0) {
      // The whole blocks of the range; a tail shorter than a block below.
      const size_t whole = out.size() / kAlign * kAlign;
      while (done < whole && done % kAlign == 0) {
        ssize_t n = ::pread(fd, out.data() + done, whole - done, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;  // EINVAL and the like: on with the bounce buffer or buffered
        if (n == 0) return absl::DataLossError(absl::StrCat(name, " was truncated during a read"));
        done += static_cast<size_t>(n);
      }
    }
    if (direct && done < out.size() && done % kAlign == 0) {
      IoBuffer bounce = TakeBounce();
      while (bounce && done < out.size()) {
        size_t piece = std::min(kPiece, out.size() - done);
        size_t aligned = (piece + kAlign - 1) / kAlign * kAlign;
        ssize_t n = ::pread(fd, bounce.data(), aligned, static_cast<off_t>(offset + done));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) break;  // EINVAL and the like: finish buffered
        if (static_cast<size_t>(n) < piece) {
          GiveBounce(std::move(bounce));
          return absl::DataLossError(absl::StrCat(name, " was truncated during a read"));
        }
        std::memcpy(out.data() + done, bounce.data(), piece);
        done += piece;
      }
      GiveBounce(std::move(bounce));
    }
    if (direct && done < out.size()) ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_DIRECT);
    while (done < out.size()) {
      ssize_t n = ::pread(fd, out.data() + done, out.size() - done, offset + done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoStatus(errno, absl::StrCat("read ", name));
      if (n == 0) return absl::DataLossError(absl::StrCat(name, " was truncated during a read"));
      done += n;
    }
    return absl::OkStatus();
  }

  std::string Name(const std::string& path) const {
    return path.empty() ? root_.path() : absl::StrCat(root_.path(), "/", path);
  }

  std::string url_;
  RootDir root_;
  const bool shared_;
  absl::Mutex bounce_mu_;
  std::vector<IoBuffer> bounces_ ABSL_GUARDED_BY(bounce_mu_);
};

// Whether `dir` is on a file system that other nodes mount too (by its
// statfs magic: NFS, SMB, CephFS, Lustre, GPFS, BeeGFS).
bool OnNetworkFileSystem(const std::string& dir) {
  struct statfs fs;
  if (::statfs(dir.c_str(), &fs) != 0) return false;
  switch (static_cast<uint64_t>(fs.f_type)) {
    case 0x6969:      // NFS
    case 0xFE534D42:  // SMB2
    case 0xFF534D42:  // CIFS
    case 0x00C36400:  // CephFS
    case 0x0BD00BD0:  // Lustre
    case 0x47504653:  // GPFS
    case 0x19830326:  // BeeGFS
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<Origin>> NewFileOrigin(const std::string& url,
                                                      const std::string& root,
                                                      const std::string& beneath) {
  if (root.empty() || root[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("file origin ", url, " needs an absolute path (file:///dir)"));
  }
  std::string r = root;
  while (r.size() > 1 && r.back() == '/') r.pop_back();
  bool shared = OnNetworkFileSystem(r);
  if (beneath.empty()) return std::make_unique<FileOrigin>(url, r, "", shared);
  // Confined: the root is reached from `beneath` one real directory at a time.
  std::string base = beneath;
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  std::string sub;
  if (r != base) {
    if (r.compare(0, base.size(), base) != 0 || (base != "/" && r[base.size()] != '/')) {
      return absl::PermissionDeniedError(
          absl::StrCat("file origin ", url, " is not beneath ", base));
    }
    sub = r.substr(base == "/" ? 1 : base.size() + 1);
    if (absl::Status st = CheckRelativePath(sub); !st.ok()) {
      return absl::PermissionDeniedError(
          absl::StrCat("file origin ", url, " is not plainly beneath ", base, ": ", st.message()));
    }
  }
  return std::make_unique<FileOrigin>(url, base, sub, shared);
}

}  // namespace strata::origin
