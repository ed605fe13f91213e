// What the CSI gRPC services share about requests: checks of a volume
// capability with the messages the CSI spec's INVALID_ARGUMENT wants,
// statuses in gRPC's codes, and a request's string maps copied out.
#pragma once

#include <grpcpp/grpcpp.h>

#include <string>

#include "absl/status/status.h"
#include "base/grpc_status.h"
#include "csi.pb.h"
#include "csi/volume_spec.h"

namespace strata::csi {

// A mount-type capability with a known access mode and fs_type; anything
// else is InvalidArgument saying what is wrong.
grpc::Status CheckCapability(const ::csi::v1::VolumeCapability& cap);
bool IsReaderOnly(const ::csi::v1::VolumeCapability& cap);

// INVALID_ARGUMENT with `what` to fix.
grpc::Status InvalidArgument(const std::string& what);

// A request's volume context, parameters or secrets.
inline StringMap FromProto(const google::protobuf::Map<std::string, std::string>& m) {
  return StringMap(m.begin(), m.end());
}

}  // namespace strata::csi
