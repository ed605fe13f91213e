// CSI Identity and Node services. Stage starts one FUSE filesystem per
// volume per node at the staging path (a volume tree over the volume's
// origin, through the node's chunk cache); publish bind-mounts it into a
// pod's target path, read-only where asked. Every call is idempotent.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "csi.grpc.pb.h"
#include "fuse/engine.h"
#include "fuse/volume_tree.h"

namespace strata::csi {

inline constexpr char kDriverName[] = "csi.strata.io";
inline constexpr char kTopologyKey[] = "topology.csi.strata.io/node";

class IdentityService final : public ::csi::v1::Identity::Service {
 public:
  explicit IdentityService(std::string driver_name) : name_(std::move(driver_name)) {}
  grpc::Status GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                             ::csi::v1::GetPluginInfoResponse* resp) override;
  grpc::Status GetPluginCapabilities(grpc::ServerContext*,
                                     const ::csi::v1::GetPluginCapabilitiesRequest*,
                                     ::csi::v1::GetPluginCapabilitiesResponse* resp) override;
  grpc::Status Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                     ::csi::v1::ProbeResponse* resp) override;

 private:
  std::string name_;
};

struct NodeOptions {
  std::string node_id;
  std::string staging_dir;  // where object-store volumes stage their writes
};

class NodeService final : public ::csi::v1::Node::Service {
 public:
  NodeService(cache::ChunkStore& store, cache::Fetcher& fetcher, NodeOptions options);
  ~NodeService() override;  // unstages (unmounts) every volume it staged

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
  grpc::Status NodeGetCapabilities(grpc::ServerContext*,
                                   const ::csi::v1::NodeGetCapabilitiesRequest*,
                                   ::csi::v1::NodeGetCapabilitiesResponse* resp) override;
  grpc::Status NodeGetInfo(grpc::ServerContext*, const ::csi::v1::NodeGetInfoRequest*,
                           ::csi::v1::NodeGetInfoResponse* resp) override;

 private:
  struct Staged {
    std::string staging_path;
    std::string origin;
    std::unique_ptr<fuse::VolumeTree> tree;
    std::unique_ptr<fuse::FuseServer> server;
    std::thread serving;
  };
  void Stop(Staged& v);

  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
  NodeOptions opts_;
  absl::Mutex mu_;  // one volume operation at a time: they are rare and mount-heavy
  std::map<std::string, std::unique_ptr<Staged>> staged_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::csi
