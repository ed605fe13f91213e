// The system's mount calls, with errors that name the path and the reason.
#include "csi/mounter.h"

#include <sys/mount.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "fuse/engine.h"

namespace strata::csi {

absl::Status SystemMounter::Bind(const std::string& from, const std::string& target,
                                 const BindOptions& options) {
  if (::mount(from.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    return absl::InternalError(absl::StrCat("bind mount at ", target, ": ", std::strerror(errno)));
  }
  // A bind mount takes its flags only from a remount of itself.
  if (options.read_only || options.flags != 0) {
    unsigned long f = MS_BIND | MS_REMOUNT | options.flags | (options.read_only ? MS_RDONLY : 0);
    if (::mount(nullptr, target.c_str(), nullptr, f, nullptr) != 0) {
      int err = errno;
      ::umount2(target.c_str(), MNT_DETACH);
      return absl::InternalError(
          absl::StrCat("remount of ", target, " with its flags: ", std::strerror(err)));
    }
  }
  return absl::OkStatus();
}

absl::Status SystemMounter::Unmount(const std::string& path) {
  if (::umount2(path.c_str(), 0) != 0) {
    return absl::InternalError(absl::StrCat("unmount ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::Status SystemMounter::Detach(const std::string& path) {
  if (::umount2(path.c_str(), MNT_DETACH) != 0) {
    return absl::InternalError(absl::StrCat("unmount ", path, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

bool SystemMounter::IsMountPoint(const std::string& path) { return fuse::IsMountPoint(path); }

}  // namespace strata::csi
