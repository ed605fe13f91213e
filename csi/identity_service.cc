// CSI Identity: constant answers but for the controller capability.
#include "csi/identity_service.h"

namespace strata::csi {

using grpc::Status;

Status IdentityService::GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                                      ::csi::v1::GetPluginInfoResponse* resp) {
  resp->set_name(name_);
  resp->set_vendor_version("0.1.0");
  return Status::OK;
}

Status IdentityService::GetPluginCapabilities(grpc::ServerContext*,
                                              const ::csi::v1::GetPluginCapabilitiesRequest*,
                                              ::csi::v1::GetPluginCapabilitiesResponse* resp) {
  using Service = ::csi::v1::PluginCapability::Service;
  if (controller_)
    resp->add_capabilities()->mutable_service()->set_type(Service::CONTROLLER_SERVICE);
  resp->add_capabilities()->mutable_service()->set_type(Service::VOLUME_ACCESSIBILITY_CONSTRAINTS);
  return Status::OK;
}

Status IdentityService::Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                              ::csi::v1::ProbeResponse* resp) {
  resp->mutable_ready()->set_value(true);
  return Status::OK;
}

}  // namespace strata::csi
