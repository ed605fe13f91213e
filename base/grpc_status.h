// absl::Status to grpc::Status, for every gRPC service Strata serves (CSI,
// peers, snapshots). Header-only: base itself does not link gRPC; the
// services that include this do.
#pragma once

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace strata {

// absl and gRPC share the canonical code numbers; the message goes as is.
inline grpc::Status ToGrpc(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

}  // namespace strata
