// Identity and Node services: argument checks with the codes the CSI spec
// names, then mounts. Errors say what to fix.
#include "csi/node_service.h"

#include <sys/mount.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "cache/logging.h"
#include "cache/origin.h"

namespace strata::csi {
namespace {

using grpc::Status;
using grpc::StatusCode;

Status Invalid(const std::string& what) { return Status(StatusCode::INVALID_ARGUMENT, what); }

// The mountpoint (second field) of every line in /proc/mounts equal to `path`.
bool IsMountpoint(const std::string& path) {
  std::ifstream m("/proc/mounts");
  std::string dev, dir, rest;
  while (m >> dev >> dir && std::getline(m, rest)) {
    if (dir == path) return true;
  }
  return false;
}

// A volume this driver serves is a directory of files: block access and
// other filesystems than ours are refused.
Status CheckCapability(const ::csi::v1::VolumeCapability& cap) {
  if (cap.has_block())
    return Invalid("block access is not supported: Strata volumes are filesystems");
  if (!cap.has_mount()) return Invalid("volume_capability needs access_type mount");
  const std::string& fs = cap.mount().fs_type();
  if (!fs.empty() && fs != "fuse.strata" && fs != "strata") {
    return Invalid(absl::StrCat("fs_type '", fs, "' is not supported (leave it empty)"));
  }
  return Status::OK;
}

}  // namespace

Status IdentityService::GetPluginInfo(grpc::ServerContext*, const ::csi::v1::GetPluginInfoRequest*,
                                      ::csi::v1::GetPluginInfoResponse* resp) {
  resp->set_name(name_);
  resp->set_vendor_version("0.1.0");
  return Status::OK;
}

Status IdentityService::GetPluginCapabilities(grpc::ServerContext*,
                                              const ::csi::v1::GetPluginCapabilitiesRequest*,
                                              ::csi::v1::GetPluginCapabilitiesResponse* resp) {
  resp->add_capabilities()->mutable_service()->set_type(
      ::csi::v1::PluginCapability::Service::VOLUME_ACCESSIBILITY_CONSTRAINTS);
  return Status::OK;
}

Status IdentityService::Probe(grpc::ServerContext*, const ::csi::v1::ProbeRequest*,
                              ::csi::v1::ProbeResponse* resp) {
  resp->mutable_ready()->set_value(true);
  return Status::OK;
}

NodeService::NodeService(cache::ChunkStore& store, cache::Fetcher& fetcher, NodeOptions options)
    : store_(store), fetcher_(fetcher), opts_(std::move(options)) {}

NodeService::~NodeService() {
  absl::MutexLock l(&mu_);
  for (auto& [id, v] : staged_) Stop(*v);
}

void NodeService::Stop(Staged& v) {
  v.server->Stop();
  if (v.serving.joinable()) v.serving.join();
  v.server.reset();
}

Status NodeService::NodeStageVolume(grpc::ServerContext*,
                                    const ::csi::v1::NodeStageVolumeRequest* req,
                                    ::csi::v1::NodeStageVolumeResponse*) {
  if (req->volume_id().empty()) return Invalid("volume_id is missing");
  if (req->staging_target_path().empty()) return Invalid("staging_target_path is missing");
  if (!req->has_volume_capability()) return Invalid("volume_capability is missing");
  if (Status st = CheckCapability(req->volume_capability()); !st.ok()) return st;
  auto it = req->volume_context().find("origin");
  if (it == req->volume_context().end() || it->second.empty()) {
    return Invalid(
        "volume_context has no 'origin' (file:///dir, s3://bucket/prefix, http(s)://...)");
  }
  const std::string& path = req->staging_target_path();
  absl::MutexLock l(&mu_);
  auto existing = staged_.find(req->volume_id());
  if (existing != staged_.end()) {
    if (existing->second->staging_path == path && existing->second->origin == it->second)
      return Status::OK;
    return Status(
        StatusCode::ALREADY_EXISTS,
        absl::StrCat("volume ", req->volume_id(), " is staged at ", existing->second->staging_path,
                     " from ", existing->second->origin, "; unstage it first"));
  }
  std::error_code ec;
  std::filesystem::create_directories(path, ec);
  if (ec)
    return Status(StatusCode::INTERNAL, absl::StrCat("cannot create ", path, ": ", ec.message()));
  auto origin = cache::OpenOrigin(it->second, {});
  if (!origin.ok()) return Invalid(std::string(origin.status().message()));
  std::shared_ptr<cache::Origin> shared = std::move(*origin);
  auto root = shared->Stat("");
  if (!root.ok() || !root->is_dir) {
    return Status(StatusCode::FAILED_PRECONDITION,
                  absl::StrCat("origin ", it->second, " is not a reachable directory: ",
                               root.ok() ? "it is a file" : std::string(root.status().message())));
  }
  auto v = std::make_unique<Staged>();
  v->staging_path = path;
  v->origin = it->second;
  fuse::VolumeOptions vo;
  vo.staging_dir = opts_.staging_dir;
  v->tree = std::make_unique<fuse::VolumeTree>(shared, store_, fetcher_, vo);
  fuse::MountOptions mo;
  mo.mountpoint = path;
  mo.fsname = absl::StrCat("strata:", req->volume_id());
  auto server = fuse::FuseServer::Mount(*v->tree, mo);
  if (!server.ok()) return Status(StatusCode::INTERNAL, std::string(server.status().message()));
  v->server = std::move(*server);
  v->serving = std::thread([s = v->server.get(), id = req->volume_id()] {
    if (absl::Status st = s->Run(); !st.ok()) spdlog::error("volume {}: {}", id, st.message());
  });
  spdlog::info("staged volume {} from {} at {}", req->volume_id(), it->second, path);
  staged_[req->volume_id()] = std::move(v);
  return Status::OK;
}

Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                      const ::csi::v1::NodeUnstageVolumeRequest* req,
                                      ::csi::v1::NodeUnstageVolumeResponse*) {
  if (req->volume_id().empty()) return Invalid("volume_id is missing");
  if (req->staging_target_path().empty()) return Invalid("staging_target_path is missing");
  absl::MutexLock l(&mu_);
  auto it = staged_.find(req->volume_id());
  if (it == staged_.end()) {
    // Not staged by this process: leave nothing of ours mounted there.
    if (IsMountpoint(req->staging_target_path()))
      ::umount2(req->staging_target_path().c_str(), MNT_DETACH);
    return Status::OK;
  }
  Stop(*it->second);
  staged_.erase(it);
  spdlog::info("unstaged volume {}", req->volume_id());
  return Status::OK;
}

Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                      const ::csi::v1::NodePublishVolumeRequest* req,
                                      ::csi::v1::NodePublishVolumeResponse*) {
  if (req->volume_id().empty()) return Invalid("volume_id is missing");
  if (req->target_path().empty()) return Invalid("target_path is missing");
  if (req->staging_target_path().empty())
    return Invalid("staging_target_path is missing (STAGE_UNSTAGE_VOLUME)");
  if (!req->has_volume_capability()) return Invalid("volume_capability is missing");
  if (Status st = CheckCapability(req->volume_capability()); !st.ok()) return st;
  absl::MutexLock l(&mu_);
  auto it = staged_.find(req->volume_id());
  if (it == staged_.end() || it->second->staging_path != req->staging_target_path()) {
    return Status(StatusCode::FAILED_PRECONDITION,
                  absl::StrCat("volume ", req->volume_id(), " is not staged at ",
                               req->staging_target_path()));
  }
  const std::string& target = req->target_path();
  if (IsMountpoint(target)) return Status::OK;  // published already
  std::error_code ec;
  std::filesystem::create_directories(target, ec);
  if (ec)
    return Status(StatusCode::INTERNAL, absl::StrCat("cannot create ", target, ": ", ec.message()));
  if (::mount(req->staging_target_path().c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    return Status(StatusCode::INTERNAL,
                  absl::StrCat("bind mount at ", target, ": ", std::strerror(errno)));
  }
  if (req->readonly() &&
      ::mount(nullptr, target.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr) != 0) {
    int err = errno;
    ::umount2(target.c_str(), MNT_DETACH);
    return Status(StatusCode::INTERNAL,
                  absl::StrCat("read-only remount of ", target, ": ", std::strerror(err)));
  }
  spdlog::info("published volume {} at {}{}", req->volume_id(), target,
               req->readonly() ? " (read-only)" : "");
  return Status::OK;
}

Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                        const ::csi::v1::NodeUnpublishVolumeRequest* req,
                                        ::csi::v1::NodeUnpublishVolumeResponse*) {
  if (req->volume_id().empty()) return Invalid("volume_id is missing");
  if (req->target_path().empty()) return Invalid("target_path is missing");
  const std::string& target = req->target_path();
  while (IsMountpoint(target)) {
    if (::umount2(target.c_str(), 0) != 0 && ::umount2(target.c_str(), MNT_DETACH) != 0) {
      return Status(StatusCode::INTERNAL,
                    absl::StrCat("unmount ", target, ": ", std::strerror(errno)));
    }
  }
  std::error_code ec;
  std::filesystem::remove(target, ec);  // the directory this driver made for the pod
  return Status::OK;
}

Status NodeService::NodeGetCapabilities(grpc::ServerContext*,
                                        const ::csi::v1::NodeGetCapabilitiesRequest*,
                                        ::csi::v1::NodeGetCapabilitiesResponse* resp) {
  resp->add_capabilities()->mutable_rpc()->set_type(
      ::csi::v1::NodeServiceCapability::RPC::STAGE_UNSTAGE_VOLUME);
  return Status::OK;
}

Status NodeService::NodeGetInfo(grpc::ServerContext*, const ::csi::v1::NodeGetInfoRequest*,
                                ::csi::v1::NodeGetInfoResponse* resp) {
  resp->set_node_id(opts_.node_id);
  (*resp->mutable_accessible_topology()->mutable_segments())[kTopologyKey] = opts_.node_id;
  return Status::OK;
}

}  // namespace strata::csi
