// CSI Identity: the driver's name and version, which services it offers,
// and that it is ready. Served by `strata node` and `strata controller`.
#pragma once

#include <string>
#include <utility>

#include "csi.grpc.pb.h"

namespace strata::csi {

inline constexpr char kDriverName[] = "csi.strata.io";

class IdentityService final : public ::csi::v1::Identity::Service {
 public:
  // `controller`: this process also serves the Controller service.
  IdentityService(std::string driver_name, bool controller)
      : name_(std::move(driver_name)), controller_(controller) {}
  grpc::Status GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                             ::csi::v1::GetPluginInfoResponse* resp) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const ::csi::v1::GetPluginCapabilitiesRequest*,
                                     ::csi::v1::GetPluginCapabilitiesResponse* resp) override;
  grpc::Status Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                     ::csi::v1::ProbeResponse* resp) override;

 private:
  std::string name_;
  bool controller_;
};

}  // namespace strata::csi
