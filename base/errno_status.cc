// ErrnoStatus and the errno a status carries.
#include "base/errno_status.h"

#include <cerrno>
#include <cstring>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace strata {
namespace {
constexpr char kErrnoPayload[] = "strata.io/errno";
}  // namespace

absl::Status ErrnoStatus(int err, const std::string& what) {
  if (err < 0) err = -err;
  std::string msg = absl::StrCat(what, ": ", std::strerror(err));
  absl::StatusCode code;
  switch (err) {
    case ENOENT:
      code = absl::StatusCode::kNotFound;
      break;
    case ENOSPC:
    case EDQUOT:
      code = absl::StatusCode::kResourceExhausted;
      break;
    case EACCES:
    case EPERM:
    case EROFS:
      code = absl::StatusCode::kPermissionDenied;
      break;
    case EINVAL:
      code = absl::StatusCode::kInvalidArgument;
      break;
    default:
      code = absl::StatusCode::kInternal;
  }
  absl::Status st(code, msg);
  // A bad descriptor or address is this daemon's own fault, not an answer
  // to pass on: it stays an I/O error (no errno attached).
  if (err == EBADF || err == EFAULT) return st;
  return WithErrno(std::move(st), err);
}

absl::Status WithErrno(absl::Status status, int err) {
  status.SetPayload(kErrnoPayload, absl::Cord(std::to_string(err)));
  return status;
}

int AttachedErrno(const absl::Status& status) {
  if (status.ok()) return 0;
  int err = 0;
  if (auto p = status.GetPayload(kErrnoPayload)) {
    if (!absl::SimpleAtoi(std::string(*p), &err)) err = 0;
  }
  return err;
}

}  // namespace strata
