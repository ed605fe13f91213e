// CSI Node: argument checks with the codes the CSI spec names, then the
// volume host's calls, whose statuses keep their codes. Errors say what to
// fix.
#include "csi/node_service.h"

#include <sys/mount.h>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "csi/request_checks.h"

namespace strata::csi {
namespace {

using grpc::Status;

// fsGroup from the capability (VOLUME_MOUNT_GROUP): a numeric group id.
absl::StatusOr<int64_t> MountGroup(const ::csi::v1::VolumeCapability& cap) {
  const std::string& g = cap.mount().volume_mount_group();
  if (g.empty()) return -1;
  uint32_t gid;
  if (!absl::SimpleAtoi(g, &gid)) {
    return absl::InvalidArgumentError(
        absl::StrCat("volume_mount_group '", g, "' is not a numeric group id"));
  }
  return gid;
}

unsigned long MountFlags(const ::csi::v1::VolumeCapability& cap, bool* read_only) {
  unsigned long flags = 0;
  for (const std::string& f : cap.mount().mount_flags()) {
    if (f == "ro") *read_only = true;
    if (f == "nosuid") flags |= MS_NOSUID;
    if (f == "nodev") flags |= MS_NODEV;
    if (f == "noexec") flags |= MS_NOEXEC;
    if (f == "noatime") flags |= MS_NOATIME;
  }
  return flags;
}

// A volume id names records, keeper slots and inode logs, and '#' joins it
// to a group mount's key: it is checked where a volume is first mounted.
Status CheckVolumeId(const std::string& id) {
  if (id.empty()) return InvalidArgument("volume_id is missing");
  for (char c : id) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '#') {
      return InvalidArgument(
          absl::StrCat("volume_id '", absl::CHexEscape(id), "' holds a control character or '#'"));
    }
  }
  return Status::OK;
}

}  // namespace

NodeService::NodeService(cache::ChunkStore& store, cache::Fetcher& fetcher, NodeOptions options)
    : node_id_(options.node_id),
      launcher_(store, fetcher),
      host_(mounter_, launcher_, std::move(static_cast<VolumeHostOptions&>(options))) {}

Status NodeService::NodeStageVolume(grpc::ServerContext*,
                                    const ::csi::v1::NodeStageVolumeRequest* req,
                                    ::csi::v1::NodeStageVolumeResponse*) {
  if (Status st = CheckVolumeId(req->volume_id()); !st.ok()) return st;
  if (req->staging_target_path().empty()) return InvalidArgument("staging_target_path is missing");
  if (!req->has_volume_capability()) return InvalidArgument("volume_capability is missing");
  const auto& cap = req->volume_capability();
  if (Status st = CheckCapability(cap); !st.ok()) return st;
  StringMap context = FromProto(req->volume_context());
  auto spec = ParseVolumeContext(context);
  if (!spec.ok()) return ToGrpc(spec.status());
  auto gid = MountGroup(cap);
  if (!gid.ok()) return ToGrpc(gid.status());
  bool ro_flag = false;
  MountFlags(cap, &ro_flag);
  if (IsReaderOnly(cap) || ro_flag) spec->read_only = true;
  return ToGrpc(host_.Stage(req->volume_id(), req->staging_target_path(), std::move(context),
                            FromProto(req->secrets()), *spec, *gid));
}

Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                      const ::csi::v1::NodeUnstageVolumeRequest* req,
                                      ::csi::v1::NodeUnstageVolumeResponse*) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->staging_target_path().empty()) return InvalidArgument("staging_target_path is missing");
  return ToGrpc(host_.Unstage(req->volume_id(), req->staging_target_path()));
}

Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                      const ::csi::v1::NodePublishVolumeRequest* req,
                                      ::csi::v1::NodePublishVolumeResponse*) {
  if (Status st = CheckVolumeId(req->volume_id()); !st.ok()) return st;
  if (req->target_path().empty()) return InvalidArgument("target_path is missing");
  if (!req->has_volume_capability()) return InvalidArgument("volume_capability is missing");
  const auto& cap = req->volume_capability();
  if (Status st = CheckCapability(cap); !st.ok()) return st;
  PublishOptions o;
  o.flags = MountFlags(cap, &o.read_only);
  o.read_only = o.read_only || req->readonly() || IsReaderOnly(cap);
  // The host answers a repeated call before it looks at the group.
  o.mount_gid = MountGroup(cap);
  if (!req->staging_target_path().empty()) {
    return ToGrpc(
        host_.Publish(req->volume_id(), req->staging_target_path(), req->target_path(), o));
  }
  // No stage: an inline volume in a pod spec, mounted at the target.
  StringMap context = FromProto(req->volume_context());
  absl::StatusOr<VolumeSpec> spec = ParseVolumeContext(context);
  if (!spec.ok()) {
    spec = absl::InvalidArgumentError(absl::StrCat(
        "staging_target_path is missing, and this is no inline volume: ", spec.status().message()));
  }
  return ToGrpc(host_.PublishInline(req->volume_id(), req->target_path(), spec, std::move(context),
                                    FromProto(req->secrets()), o));
}

Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                        const ::csi::v1::NodeUnpublishVolumeRequest* req,
                                        ::csi::v1::NodeUnpublishVolumeResponse*) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->target_path().empty()) return InvalidArgument("target_path is missing");
  return ToGrpc(host_.Unpublish(req->volume_id(), req->target_path()));
}

Status NodeService::NodeGetVolumeStats(grpc::ServerContext*,
                                       const ::csi::v1::NodeGetVolumeStatsRequest* req,
                                       ::csi::v1::NodeGetVolumeStatsResponse* resp) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->volume_path().empty()) return InvalidArgument("volume_path is missing");
  auto health = host_.Health(req->volume_id(), req->volume_path());
  if (!health.ok()) return ToGrpc(health.status());
  if (const auto& sv = health->usage; sv.ok()) {
    auto add = [&](::csi::v1::VolumeUsage::Unit unit, uint64_t total, uint64_t avail,
                   uint64_t free) {
      auto* u = resp->add_usage();
      u->set_unit(unit);
      u->set_total(static_cast<int64_t>(total));
      u->set_available(static_cast<int64_t>(avail));
      u->set_used(static_cast<int64_t>(total - free));
    };
    add(::csi::v1::VolumeUsage::BYTES, sv->f_blocks * sv->f_frsize, sv->f_bavail * sv->f_frsize,
        sv->f_bfree * sv->f_frsize);
    add(::csi::v1::VolumeUsage::INODES, sv->f_files, sv->f_favail, sv->f_ffree);
  }
  auto* cond = resp->mutable_volume_condition();
  cond->set_abnormal(health->abnormal);
  cond->set_message(health->message);
  return Status::OK;
}

Status NodeService::NodeGetCapabilities(grpc::ServerContext*,
                                        const ::csi::v1::NodeGetCapabilitiesRequest*,
                                        ::csi::v1::NodeGetCapabilitiesResponse* resp) {
  using Rpc = ::csi::v1::NodeServiceCapability::RPC;
  for (Rpc::Type t : {Rpc::STAGE_UNSTAGE_VOLUME, Rpc::GET_VOLUME_STATS, Rpc::VOLUME_CONDITION,
                      Rpc::VOLUME_MOUNT_GROUP}) {
    resp->add_capabilities()->mutable_rpc()->set_type(t);
  }
  return Status::OK;
}

Status NodeService::NodeGetInfo(grpc::ServerContext*, const ::csi::v1::NodeGetInfoRequest*,
                                ::csi::v1::NodeGetInfoResponse* resp) {
  resp->set_node_id(node_id_);
  (*resp->mutable_accessible_topology()->mutable_segments())[kTopologyKey] = node_id_;
  return Status::OK;
}

}  // namespace strata::csi
