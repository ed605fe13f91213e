// CSI Identity and Node services. Stage starts one FUSE filesystem per
// volume per node at the staging path (a volume tree over the volume's
// origin, through the node's chunk cache); publish bind-mounts it into a
// pod's target path, read-only where asked. Inline (ephemeral) volumes are
// mounted at the target directly. Every call is idempotent, and what is
// staged and published is recorded in the state database, so a restarted
// node mounts it all again.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "csi.grpc.pb.h"
#include "csi/inline_origins.h"
#include "csi/state_db.h"
#include "csi/volume_spec.h"
#include "fuse/engine.h"
#include "fuse/fd_keeper.h"
#include "fuse/volume_tree.h"

namespace strata::csi {

inline constexpr char kDriverName[] = "csi.strata.io";
inline constexpr char kTopologyKey[] = "topology.csi.strata.io/node";

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

struct NodeOptions {
  std::string node_id;
  std::string staging_dir;   // where object-store volumes stage their writes
  StateDb* state = nullptr;  // records of staged and published volumes; null: none kept
  // Holds each mount's /dev/fuse descriptor while this daemon restarts, so
  // the next one takes the mounts over (pods never see them go). Null: a
  // restarted daemon mounts everything again instead.
  fuse::FdKeeperClient* keeper = nullptr;
  std::string inode_dir;  // volumes' inode logs, for a takeover
  // Where a volume published with another fsGroup than it was staged with
  // gets a mount of its own for that group (pods bind to it). Empty: such
  // publications see the staged group.
  std::string group_mount_dir;
  // The origins that inline volumes (named in a pod spec, not by an
  // administrator) may use; none by default.
  InlineOrigins inline_origins;
};

class NodeService final : public ::csi::v1::Node::Service {
 public:
  // With a state database, mounts again what the records say was staged
  // and published (after a restart, the old mounts are dead).
  NodeService(cache::ChunkStore& store, cache::Fetcher& fetcher, NodeOptions options);
  // Stops serving every volume. The mounts go with the process, but the
  // records stay: a node that stops is expected to come back.
  ~NodeService() override;

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

  // Volumes whose FUSE session ended (for /healthz), volumes served, and
  // their counters summed (for /metrics).
  int DeadVolumes();
  int Volumes();
  fuse::VolumeStats VolumeTotals();

 private:
  // One FUSE filesystem: a staged volume, or an inline volume at its target.
  struct Volume {
    std::string id;
    std::string mountpoint;
    StringMap context;  // as the CO gave it; `spec` is parsed from it
    StringMap secrets;
    VolumeSpec spec;
    int64_t mount_gid = -1;
    bool named_by_pod = false;  // an inline volume: its origin must be allowed
    std::shared_ptr<origin::Origin> origin;
    std::unique_ptr<fuse::VolumeTree> tree;
    std::unique_ptr<fuse::FuseServer> server;
    std::thread serving;
    std::atomic<bool> running{false};
    std::string init;  // the kernel's INIT request (fuse::Handoff), for a takeover
  };
  struct Publication {
    std::string volume_id;
    bool read_only = false;
    bool inline_volume = false;
    unsigned long flags = 0;  // MS_NOSUID and friends from the capability's mount flags
    // The mount the target is bound to: the staged volume (its id), or a
    // group mount ("<id>#gid=<gid>") when the pod's fsGroup differs.
    std::string mount_key;
  };

  // Opens the origin and serves a FUSE filesystem at v.mountpoint: a new
  // mount, or with `adopt` the live one whose descriptor the keeper kept.
  absl::Status Start(Volume& v, int adopt_fd = -1);
  void Stop(Volume& v);
  absl::Status Bind(const std::string& from, const std::string& target, const Publication& p);
  absl::Status Record(const Volume& v, bool inline_volume);
  absl::Status Record(const std::string& target, const Publication& p);
  void Forget(const std::string& key);
  void Recover() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts serving a new volume, records it and keeps it in volumes_; on
  // failure nothing of it is left.
  absl::StatusOr<Volume*> Serve(std::unique_ptr<Volume> v, bool inline_volume)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The mount a publication of staged volume `v` with fsGroup `gid` binds
  // from: `v` itself, or a group mount made (and recorded) on first use.
  absl::StatusOr<Volume*> MountFor(Volume& v, int64_t gid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stops the group mount `key` once no publication uses it.
  void DropGroupMountIfUnused(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  grpc::Status PublishInline(const ::csi::v1::NodePublishVolumeRequest& req, const VolumeSpec& spec,
                             Publication p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
  NodeOptions opts_;
  absl::Mutex mu_;  // one volume operation at a time: they are rare and mount-heavy
  std::map<std::string, std::unique_ptr<Volume>> volumes_ ABSL_GUARDED_BY(mu_);  // by id
  std::map<std::string, Publication> published_ ABSL_GUARDED_BY(mu_);            // by target
};

}  // namespace strata::csi
