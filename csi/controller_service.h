// The CSI Controller service: dynamic volumes as directories (or bucket
// prefixes) under a StorageClass's origin. A volume is a record in the
// controller's state database plus its directory in the origin; nodes get
// everything they need to mount it in the volume context.
#pragma once

#include <string>

#include "absl/synchronization/mutex.h"
#include "csi.grpc.pb.h"
#include "csi/state_db.h"

namespace strata::csi {

struct ControllerOptions {
  // The origin of StorageClasses that name none (single-class clusters,
  // conformance runs). Empty: a class must name its origin.
  std::string default_origin;
};

class ControllerService final : public ::csi::v1::Controller::Service {
 public:
  ControllerService(StateDb& db, ControllerOptions options);

  grpc::Status CreateVolume(grpc::ServerContext*, const ::csi::v1::CreateVolumeRequest* req,
                            ::csi::v1::CreateVolumeResponse* resp) override;
  grpc::Status DeleteVolume(grpc::ServerContext*, const ::csi::v1::DeleteVolumeRequest* req,
                            ::csi::v1::DeleteVolumeResponse*) override;
  grpc::Status ValidateVolumeCapabilities(
      grpc::ServerContext*, const ::csi::v1::ValidateVolumeCapabilitiesRequest* req,
      ::csi::v1::ValidateVolumeCapabilitiesResponse* resp) override;
  grpc::Status ListVolumes(grpc::ServerContext*, const ::csi::v1::ListVolumesRequest* req,
                           ::csi::v1::ListVolumesResponse* resp) override;
  grpc::Status GetCapacity(grpc::ServerContext*, const ::csi::v1::GetCapacityRequest* req,
                           ::csi::v1::GetCapacityResponse* resp) override;
  grpc::Status ControllerGetCapabilities(
      grpc::ServerContext*, const ::csi::v1::ControllerGetCapabilitiesRequest*,
      ::csi::v1::ControllerGetCapabilitiesResponse* resp) override;
  grpc::Status ControllerExpandVolume(grpc::ServerContext*,
                                      const ::csi::v1::ControllerExpandVolumeRequest* req,
                                      ::csi::v1::ControllerExpandVolumeResponse* resp) override;

 private:
  StateDb& db_;
  ControllerOptions opts_;
  // Volume operations one at a time: they are rare, and a create racing a
  // delete of the same name must not interleave its directory and record.
  absl::Mutex mu_;
};

}  // namespace strata::csi
