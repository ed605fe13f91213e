// Defaults for trees that do not write, and the status <-> errno mapping.
#include "fuse/tree.h"

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "base/errno_status.h"

namespace strata::fuse {
namespace {
absl::Status ReadOnly() { return PosixError(EROFS, "this filesystem is read-only"); }
}  // namespace

absl::Status PosixError(int err, const std::string& message) {
  absl::Status st(
      err == ENOENT ? absl::StatusCode::kNotFound : absl::StatusCode::kFailedPrecondition, message);
  return strata::WithErrno(std::move(st), err);
}

int ErrnoOf(const absl::Status& st) {
  if (st.ok()) return 0;
  if (int err = strata::AttachedErrno(st); err != 0) return err;
  switch (st.code()) {
    case absl::StatusCode::kNotFound:
      return ENOENT;
    case absl::StatusCode::kAlreadyExists:
      return EEXIST;
    case absl::StatusCode::kPermissionDenied:
      return EACCES;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
      return EINVAL;
    case absl::StatusCode::kResourceExhausted:
      return ENOSPC;
    case absl::StatusCode::kUnimplemented:
      return ENOTSUP;
    case absl::StatusCode::kFailedPrecondition:
      return ESTALE;  // the object changed under an open file
    default:
      return EIO;  // origin unreachable, corrupt data, deadline: an I/O error
  }
}

absl::StatusOr<std::pair<Attr, OpenResult>> Tree::Create(uint64_t, const std::string&, uint32_t,
                                                         int, const Caller&) {
  return ReadOnly();
}
absl::StatusOr<size_t> Tree::Write(uint64_t, uint64_t, absl::Span<const char>) {
  return ReadOnly();
}
absl::Status Tree::Flush(uint64_t) { return absl::OkStatus(); }
absl::Status Tree::Fsync(uint64_t) { return absl::OkStatus(); }
absl::StatusOr<Attr> Tree::SetAttr(uint64_t, const struct stat&, int) { return ReadOnly(); }
absl::StatusOr<Attr> Tree::Mkdir(uint64_t, const std::string&, uint32_t, const Caller&) {
  return ReadOnly();
}
absl::Status Tree::Unlink(uint64_t, const std::string&) { return ReadOnly(); }
absl::Status Tree::Rmdir(uint64_t, const std::string&) { return ReadOnly(); }
absl::Status Tree::Rename(uint64_t, const std::string&, uint64_t, const std::string&,
                          unsigned int) {
  return ReadOnly();
}
absl::StatusOr<Attr> Tree::Symlink(const std::string&, uint64_t, const std::string&,
                                   const Caller&) {
  return ReadOnly();
}
absl::StatusOr<std::string> Tree::Readlink(uint64_t) { return PosixError(EINVAL, "not a symlink"); }
absl::StatusOr<Attr> Tree::Link(uint64_t, uint64_t, const std::string&) { return ReadOnly(); }
absl::StatusOr<Attr> Tree::Mknod(uint64_t, const std::string&, uint32_t, uint64_t, const Caller&) {
  return ReadOnly();
}
absl::Status Tree::Fallocate(uint64_t, int, uint64_t, uint64_t) { return ReadOnly(); }
namespace {
absl::Status NoXattrs() { return PosixError(EOPNOTSUPP, "this filesystem keeps no xattrs"); }
}  // namespace
absl::StatusOr<std::string> Tree::GetXattr(uint64_t, const std::string&) { return NoXattrs(); }
absl::StatusOr<std::string> Tree::ListXattr(uint64_t) { return NoXattrs(); }
absl::Status Tree::SetXattr(uint64_t, const std::string&, const std::string&, int) {
  return NoXattrs();
}
absl::Status Tree::RemoveXattr(uint64_t, const std::string&) { return NoXattrs(); }

absl::Status Tree::Reopen(uint64_t, uint64_t handle, int) {
  return PosixError(EBADF, absl::StrCat("unknown file handle ", handle));
}

absl::StatusOr<BackingFile> Tree::Backing(uint64_t) {
  return absl::UnimplementedError("this tree has no backing files");
}

absl::Status Tree::HoldBacking(uint64_t, uint64_t, const std::string&) {
  return absl::UnimplementedError("this tree has no backing files");
}

absl::StatusOr<struct statvfs> Tree::StatFs() {
  struct statvfs sv {};
  sv.f_bsize = 1 << 20;
  sv.f_frsize = 4096;
  sv.f_namemax = 255;
  sv.f_blocks = sv.f_bfree = sv.f_bavail = 1ull << 30;  // 4 TiB of 4 KiB blocks: no fixed size
  sv.f_files = sv.f_ffree = 1ull << 30;
  return sv;
}

}  // namespace strata::fuse
