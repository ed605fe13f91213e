// Capability checks and gRPC statuses for the CSI services.
#include "csi/request_checks.h"

#include "absl/strings/str_cat.h"

namespace strata::csi {
namespace {

using Mode = ::csi::v1::VolumeCapability::AccessMode;

}  // namespace

grpc::Status CheckCapability(const ::csi::v1::VolumeCapability& cap) {
  const auto& invalid = InvalidArgument;
  if (cap.has_block())
    return invalid("block access is not supported: Strata volumes are filesystems");
  if (!cap.has_mount()) return invalid("volume_capability needs access_type mount");
  const std::string& fs = cap.mount().fs_type();
  if (!fs.empty() && fs != "fuse.strata" && fs != "strata") {
    return invalid(absl::StrCat("fs_type '", fs, "' is not supported (leave it empty)"));
  }
  for (const std::string& flag : cap.mount().mount_flags()) {
    if (flag != "ro" && flag != "rw" && flag != "nosuid" && flag != "nodev" && flag != "noexec" &&
        flag != "noatime" && flag != "relatime") {
      return invalid(absl::StrCat("mount flag '", flag,
                                  "' is not supported (ro, rw, nosuid, nodev, noexec, noatime)"));
    }
  }
  if (!cap.has_access_mode()) return invalid("volume_capability has no access_mode");
  switch (cap.access_mode().mode()) {
    case Mode::SINGLE_NODE_WRITER:
    case Mode::SINGLE_NODE_READER_ONLY:
    case Mode::MULTI_NODE_READER_ONLY:
    case Mode::MULTI_NODE_SINGLE_WRITER:
    case Mode::MULTI_NODE_MULTI_WRITER:
    case Mode::SINGLE_NODE_SINGLE_WRITER:
    case Mode::SINGLE_NODE_MULTI_WRITER:
      return grpc::Status::OK;
    default:
      return invalid(absl::StrCat("access mode ", cap.access_mode().mode(), " is not supported"));
  }
}

bool IsReaderOnly(const ::csi::v1::VolumeCapability& cap) {
  Mode::Mode m = cap.access_mode().mode();
  return m == Mode::SINGLE_NODE_READER_ONLY || m == Mode::MULTI_NODE_READER_ONLY;
}

grpc::Status InvalidArgument(const std::string& what) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, what);
}

}  // namespace strata::csi
