// CSI Node service: kubelet's calls, checked with the codes the CSI spec
// names, as calls of the node's VolumeHost (which stages, publishes and
// recovers the volumes), and its answers as CSI responses.
#pragma once

#include <string>

#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "csi.grpc.pb.h"
#include "csi/fuse_launcher.h"
#include "csi/identity_service.h"
#include "csi/mounter.h"
#include "csi/volume_host.h"

namespace strata::csi {

inline constexpr char kTopologyKey[] = "topology.csi.strata.io/node";

struct NodeOptions : VolumeHostOptions {
  std::string node_id;
};

class NodeService final : public ::csi::v1::Node::Service {
 public:
  // Hosts the volumes on the system's mounts and FUSE, through `store`
  // (see VolumeHost for what a restart recovers).
  NodeService(cache::ChunkStore& store, cache::Fetcher& fetcher, NodeOptions options);

  grpc::Status NodeStageVolume(grpc::ServerContext*, const ::csi::v1::NodeStageVolumeRequest* req,
                               ::csi::v1::NodeStageVolumeResponse*) override;
  grpc::Status NodeUnstageVolume(grpc::ServerContext*,
                                 const ::csi::v1::NodeUnstageVolumeRequest* req,
                                 ::csi::v1::NodeUnstageVolumeResponse*) override;
  grpc::Status NodePublishVolume(grpc::ServerContext*,
                                 const ::csi::v1::NodePublishVolumeRequest* req,
                                 ::csi::v1::NodePublishVolumeResponse*) override;
  grpc::Status NodeUnpublishVolume(grpc::ServerContext*,
                                   const ::csi::v1::NodeUnpublishVolumeRequest* req,
                                   ::csi::v1::NodeUnpublishVolumeResponse*) override;
  grpc::Status NodeGetVolumeStats(grpc::ServerContext*,
                                  const ::csi::v1::NodeGetVolumeStatsRequest* req,
                                  ::csi::v1::NodeGetVolumeStatsResponse* resp) override;
  grpc::Status NodeGetCapabilities(grpc::ServerContext*,
                                   const ::csi::v1::NodeGetCapabilitiesRequest*,
                                   ::csi::v1::NodeGetCapabilitiesResponse* resp) override;
  grpc::Status NodeGetInfo(grpc::ServerContext*, const ::csi::v1::NodeGetInfoRequest*,
                           ::csi::v1::NodeGetInfoResponse* resp) override;

  // For /healthz and /metrics (see VolumeHost).
  int DeadVolumes() { return host_.DeadVolumes(); }
  int Volumes() { return host_.Volumes(); }
  fuse::VolumeStats VolumeTotals() { return host_.VolumeTotals(); }

 private:
  std::string node_id_;
  SystemMounter mounter_;
  CacheFuseLauncher launcher_;
  VolumeHost host_;  // last: it goes before what it mounts with
};

}  // namespace strata::csi
