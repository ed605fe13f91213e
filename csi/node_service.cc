// Identity and Node services: argument checks with the codes the CSI spec
// names, then mounts, then records. Errors say what to fix.
#include "csi/node_service.h"

#include <sys/mount.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "origin/origin.h"

namespace strata::csi {
namespace {

using grpc::Status;
using grpc::StatusCode;
using json = nlohmann::json;

constexpr char kStagedPrefix[] = "staged/";
constexpr char kPublishedPrefix[] = "published/";

std::string KeeperKey(const std::string& volume_id) { return "volume/" + volume_id; }

using fuse::IsMountPoint;

// Detaches everything mounted at `path` (stacked mounts too).
absl::Status UnmountAll(const std::string& path) {
  for (int i = 0; i < 16 && IsMountPoint(path); ++i) {
    if (::umount2(path.c_str(), 0) != 0 && ::umount2(path.c_str(), MNT_DETACH) != 0) {
      return absl::InternalError(absl::StrCat("unmount ", path, ": ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

json ToJson(const StringMap& m) {
  json j = json::object();
  for (const auto& [k, v] : m) j[k] = v;
  return j;
}

StringMap FromJson(const json& rec, const char* field) {
  StringMap m;
  auto j = rec.find(field);
  if (j == rec.end() || !j->is_object()) return m;
  for (auto it = j->begin(); it != j->end(); ++it) {
    if (it->is_string()) m[it.key()] = it->get<std::string>();
  }
  return m;
}

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

NodeService::NodeService(cache::ChunkStore& store, cache::Fetcher& fetcher, NodeOptions options)
    : store_(store), fetcher_(fetcher), opts_(std::move(options)) {
  for (const std::string& dir : {opts_.staging_dir, opts_.inode_dir, opts_.group_mount_dir}) {
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::create_directories(dir, ec) && ec)
      spdlog::error("cannot create {}: {}", dir, ec.message());
  }
  absl::MutexLock l(&mu_);
  if (opts_.state) Recover();
}

NodeService::~NodeService() {
  absl::MutexLock l(&mu_);
  for (auto& [id, v] : volumes_) Stop(*v);
}

absl::Status NodeService::Start(Volume& v, int adopt_fd) {
  origin::OriginOptions oo = OriginOptionsFrom(v.secrets);
  if (v.named_by_pod) {
    // Checked at every start, a restart's too: an origin the administrator
    // no longer allows is not served again.
    auto grant = opts_.inline_origins.Check(v.spec.origin);
    if (!grant.ok()) return grant.status();
    if (!grant->writable) v.spec.read_only = true;
    oo.file_beneath = grant->file_beneath;
  }
  auto origin = origin::OpenOrigin(v.spec.origin, oo);
  if (!origin.ok()) return origin.status();
  v.origin = std::move(*origin);
  // A new mount checks its origin first, so a bad URL or bad keys fail the
  // stage. A mount being taken over is live in pods already: it is served
  // even while its origin is down (what is cached still reads, and the
  // volume condition says what is wrong).
  if (adopt_fd < 0) {
    if (absl::Status st = ProbeOrigin(*v.origin); !st.ok()) return st;
  }
  if (adopt_fd < 0) {
    // A mount being taken over is never looked at through its path: its
    // server is this thread until it serves (a stat would wait on it).
    std::error_code ec;
    std::filesystem::create_directories(v.mountpoint, ec);
    if (ec)
      return absl::InternalError(absl::StrCat("cannot create ", v.mountpoint, ": ", ec.message()));
  }
  fuse::VolumeOptions vo;
  vo.staging_dir = opts_.staging_dir;
  vo.chunk_size = v.spec.chunk_size;
  vo.attr_ttl = absl::Seconds(v.spec.attr_ttl_s);
  vo.xattrs = v.spec.xattrs;
  vo.read_only = v.spec.read_only;
  vo.mount_gid = v.mount_gid;
  if (!opts_.inode_dir.empty()) {
    vo.inode_log = absl::StrCat(opts_.inode_dir, "/", absl::WebSafeBase64Escape(v.id));
    vo.resume_inodes = adopt_fd >= 0;
  }
  v.tree = std::make_unique<fuse::VolumeTree>(v.origin, store_, fetcher_, vo);
  fuse::MountOptions mo;
  mo.mountpoint = v.mountpoint;
  mo.fsname = absl::StrCat("strata:", v.id);
  auto server = adopt_fd >= 0 ? fuse::FuseServer::Adopt(*v.tree, mo, {adopt_fd, v.init})
                              : fuse::FuseServer::Mount(*v.tree, mo);
  if (!server.ok()) return server.status();
  v.server = std::move(*server);
  v.init = v.server->handoff().init;
  if (opts_.keeper && adopt_fd < 0) {
    if (absl::Status st = opts_.keeper->Put(KeeperKey(v.id), v.server->handoff().fd); !st.ok()) {
      spdlog::warn(
          "volume {}: the FD keeper did not take its descriptor ({}); a restart will "
          "remount it instead of taking it over",
          v.id, st.message());
    }
  }
  v.running = true;
  v.serving = std::thread([&v] {
    if (absl::Status st = v.server->Run(); !st.ok())
      spdlog::error("volume {}: {}", v.id, st.message());
    v.running = false;
  });
  return absl::OkStatus();
}

void NodeService::Stop(Volume& v) {
  if (v.server) v.server->Stop();
  if (v.serving.joinable()) v.serving.join();
  v.server.reset();
  if (opts_.keeper) {
    if (absl::Status st = opts_.keeper->Delete(KeeperKey(v.id)); !st.ok())
      spdlog::warn("volume {}: FD keeper: {}", v.id, st.message());
  }
}

absl::Status NodeService::Bind(const std::string& from, const std::string& target,
                               const Publication& p) {
  std::error_code ec;
  std::filesystem::create_directories(target, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", target, ": ", ec.message()));
  if (::mount(from.c_str(), target.c_str(), nullptr, MS_BIND, nullptr) != 0) {
    return absl::InternalError(absl::StrCat("bind mount at ", target, ": ", std::strerror(errno)));
  }
  if (p.read_only || p.flags != 0) {
    unsigned long f = MS_BIND | MS_REMOUNT | p.flags | (p.read_only ? MS_RDONLY : 0);
    if (::mount(nullptr, target.c_str(), nullptr, f, nullptr) != 0) {
      int err = errno;
      ::umount2(target.c_str(), MNT_DETACH);
      return absl::InternalError(
          absl::StrCat("remount of ", target, " with its flags: ", std::strerror(err)));
    }
  }
  return absl::OkStatus();
}

absl::Status NodeService::Record(const Volume& v, bool inline_volume) {
  if (!opts_.state) return absl::OkStatus();
  // Secrets are kept so that a restarted node can reach the origin again:
  // kubelet does not send them twice. The state directory is root's alone.
  return opts_.state->Put(kStagedPrefix + v.id, {{"mountpoint", v.mountpoint},
                                                 {"context", ToJson(v.context)},
                                                 {"secrets", ToJson(v.secrets)},
                                                 {"mount_gid", v.mount_gid},
                                                 {"init", absl::Base64Escape(v.init)},
                                                 {"read_only", v.spec.read_only},
                                                 {"inline", inline_volume}});
}

absl::Status NodeService::Record(const std::string& target, const Publication& p) {
  if (!opts_.state) return absl::OkStatus();
  return opts_.state->Put(kPublishedPrefix + target, {{"volume_id", p.volume_id},
                                                      {"read_only", p.read_only},
                                                      {"inline", p.inline_volume},
                                                      {"flags", p.flags},
                                                      {"mount_key", p.mount_key}});
}

void NodeService::Forget(const std::string& key) {
  if (!opts_.state) return;
  if (absl::Status st = opts_.state->Delete(key); !st.ok())
    spdlog::error("cannot drop state record {}: {}", key, st.message());
}

void NodeService::Recover() {
  auto staged = opts_.state->Scan(kStagedPrefix);
  auto published = opts_.state->Scan(kPublishedPrefix);
  if (!staged.ok() || !published.ok()) {
    spdlog::error("cannot read the node's volume records: {}",
                  (!staged.ok() ? staged.status() : published.status()).message());
    return;
  }
  // First, take over what the FD keeper kept alive: those mounts never went
  // away, and neither did the pods' bind mounts of them.
  std::vector<std::unique_ptr<Volume>> remount;
  for (const auto& [key, rec] : *staged) {
    auto v = std::make_unique<Volume>();
    v->id = key.substr(sizeof kStagedPrefix - 1);
    v->mountpoint = rec.value("mountpoint", "");
    v->context = FromJson(rec, "context");
    v->secrets = FromJson(rec, "secrets");
    v->mount_gid = rec.value("mount_gid", int64_t{-1});
    v->named_by_pod = rec.value("inline", false);
    absl::Base64Unescape(rec.value("init", ""), &v->init);
    auto spec = ParseVolumeContext(v->context);
    if (!spec.ok()) {
      spdlog::error("volume {}: its record does not parse ({}); not mounting it again", v->id,
                    spec.status().message());
      continue;
    }
    v->spec = *spec;
    v->spec.read_only = rec.value("read_only", v->spec.read_only);
    if (opts_.keeper && !v->init.empty() && IsMountPoint(v->mountpoint)) {
      auto fd = opts_.keeper->Get(KeeperKey(v->id));
      if (fd.ok()) {
        absl::Status st = Start(*v, *fd);
        ::close(*fd);
        if (st.ok()) {
          spdlog::info("volume {}: serving its mount at {} again (taken over)", v->id,
                       v->mountpoint);
          volumes_[v->id] = std::move(v);
          continue;
        }
        spdlog::warn("volume {}: cannot take over {}: {}; mounting it again", v->id, v->mountpoint,
                     st.message());
        Stop(*v);
      }
    }
    remount.push_back(std::move(v));
  }
  // The rest lost their mounts with the old daemon: pods' bind mounts of
  // them are dead too. Unmount those, mount afresh, bind again.
  for (const auto& [key, rec] : *published) {
    std::string target = key.substr(sizeof kPublishedPrefix - 1);
    Publication p;
    p.volume_id = rec.value("volume_id", "");
    p.read_only = rec.value("read_only", false);
    p.inline_volume = rec.value("inline", false);
    p.flags = rec.value("flags", 0ul);
    p.mount_key = rec.value("mount_key", p.volume_id);
    published_[target] = p;
    if (volumes_.contains(p.mount_key)) continue;  // taken over, alive
    if (absl::Status st = UnmountAll(target); !st.ok()) spdlog::warn("{}", st.message());
  }
  for (auto& v : remount) {
    if (absl::Status st = UnmountAll(v->mountpoint); !st.ok()) spdlog::warn("{}", st.message());
    if (absl::Status st = Start(*v); !st.ok()) {
      // Kept in the records: kubelet's next stage or unstage settles it.
      spdlog::error("volume {}: cannot mount it again at {}: {}", v->id, v->mountpoint,
                    st.message());
      continue;
    }
    bool inline_volume = false;
    for (const auto& [target, p] : published_)
      inline_volume |= p.mount_key == v->id && p.inline_volume;
    if (absl::Status st = Record(*v, inline_volume); !st.ok()) spdlog::warn("{}", st.message());
    spdlog::info("volume {}: mounted again at {} from {}", v->id, v->mountpoint, v->spec.origin);
    const std::string id = v->id;
    volumes_[id] = std::move(v);
    for (const auto& [target, p] : published_) {
      if (p.mount_key != id || p.inline_volume) continue;
      if (absl::Status st = Bind(volumes_[id]->mountpoint, target, p); !st.ok()) {
        spdlog::error("volume {}: cannot publish it again at {}: {}", id, target, st.message());
        continue;
      }
      spdlog::info("volume {}: published again at {}", id, target);
    }
  }
  // A group mount whose last publication went away just before a crash.
  std::vector<std::string> keys;
  for (const auto& [key, v] : volumes_) keys.push_back(key);
  for (const std::string& key : keys) DropGroupMountIfUnused(key);
}

Status NodeService::NodeStageVolume(grpc::ServerContext*,
                                    const ::csi::v1::NodeStageVolumeRequest* req,
                                    ::csi::v1::NodeStageVolumeResponse*) {
  if (Status st = CheckVolumeId(req->volume_id()); !st.ok()) return st;
  if (req->staging_target_path().empty()) return InvalidArgument("staging_target_path is missing");
  if (!req->has_volume_capability()) return InvalidArgument("volume_capability is missing");
  const auto& cap = req->volume_capability();
  if (Status st = CheckCapability(cap); !st.ok()) return st;
  auto spec = ParseVolumeContext(req->volume_context());
  if (!spec.ok()) return ToGrpc(spec.status());
  auto gid = MountGroup(cap);
  if (!gid.ok()) return ToGrpc(gid.status());
  bool ro_flag = false;
  MountFlags(cap, &ro_flag);
  if (IsReaderOnly(cap) || ro_flag) spec->read_only = true;
  const std::string& path = req->staging_target_path();

  absl::MutexLock l(&mu_);
  auto existing = volumes_.find(req->volume_id());
  if (existing != volumes_.end()) {
    Volume& v = *existing->second;
    if (v.mountpoint != path || v.spec.origin != spec->origin) {
      return Status(StatusCode::ALREADY_EXISTS,
                    absl::StrCat("volume ", req->volume_id(), " is staged at ", v.mountpoint,
                                 " from ", v.spec.origin, "; unstage it first"));
    }
    if (v.running) return Status::OK;
    // Its FUSE session ended (killed from outside): serve it again.
    spdlog::warn("volume {}: the filesystem at {} had stopped; mounting it again", v.id, path);
    Stop(v);
    (void)UnmountAll(path);
    if (absl::Status st = Start(v); !st.ok()) return ToGrpc(st);
    return Status::OK;
  }
  auto v = std::make_unique<Volume>();
  v->id = req->volume_id();
  v->mountpoint = path;
  v->context = req->volume_context();
  v->secrets = req->secrets();
  v->spec = *spec;
  v->mount_gid = *gid;
  if (IsMountPoint(path)) {
    return Status(StatusCode::ALREADY_EXISTS, absl::StrCat("something else is mounted at ", path));
  }
  auto served = Serve(std::move(v), /*inline_volume=*/false);
  if (!served.ok()) return ToGrpc(served.status());
  spdlog::info("staged volume {} from {} at {}{}", (*served)->id, (*served)->spec.origin, path,
               (*served)->spec.read_only ? " (read-only)" : "");
  return Status::OK;
}

Status NodeService::NodeUnstageVolume(grpc::ServerContext*,
                                      const ::csi::v1::NodeUnstageVolumeRequest* req,
                                      ::csi::v1::NodeUnstageVolumeResponse*) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->staging_target_path().empty()) return InvalidArgument("staging_target_path is missing");
  const std::string& path = req->staging_target_path();
  absl::MutexLock l(&mu_);
  for (const auto& [target, p] : published_) {
    if (p.volume_id == req->volume_id() && !p.inline_volume) {
      return Status(StatusCode::FAILED_PRECONDITION,
                    absl::StrCat("volume ", req->volume_id(), " is still published at ", target,
                                 "; unpublish it first"));
    }
  }
  for (const auto& [id, v] : volumes_) {
    if (v->mountpoint == path && id != req->volume_id()) {
      return Status(StatusCode::FAILED_PRECONDITION,
                    absl::StrCat(path, " holds volume ", id, ", not ", req->volume_id()));
    }
  }
  auto it = volumes_.find(req->volume_id());
  if (it != volumes_.end() && it->second->mountpoint == path) {
    Stop(*it->second);
    volumes_.erase(it);
  }
  // Whatever is left of a mount there (ours from before a restart) goes too.
  if (absl::Status st = UnmountAll(path); !st.ok()) return ToGrpc(st);
  Forget(kStagedPrefix + req->volume_id());
  spdlog::info("unstaged volume {} from {}", req->volume_id(), path);
  return Status::OK;
}

absl::StatusOr<NodeService::Volume*> NodeService::Serve(std::unique_ptr<Volume> v,
                                                        bool inline_volume) {
  absl::Status st = Start(*v);
  if (st.ok()) st = Record(*v, inline_volume);
  if (!st.ok()) {
    Stop(*v);
    return st;
  }
  Volume* raw = v.get();
  volumes_[v->id] = std::move(v);
  return raw;
}

absl::StatusOr<NodeService::Volume*> NodeService::MountFor(Volume& v, int64_t gid) {
  if (gid < 0 || gid == v.mount_gid) return &v;
  if (opts_.group_mount_dir.empty()) {
    spdlog::warn("volume {}: published with group {} but staged with group {}; the pod sees {}",
                 v.id, gid, v.mount_gid, v.mount_gid);
    return &v;
  }
  // One FUSE mount shows one group; a pod with another fsGroup gets a mount
  // of the same volume for its group (shared by pods with that group).
  std::string key = absl::StrCat(v.id, "#gid=", gid);
  if (auto it = volumes_.find(key); it != volumes_.end()) return it->second.get();
  auto g = std::make_unique<Volume>();
  g->id = key;
  g->mountpoint = absl::StrCat(opts_.group_mount_dir, "/", absl::WebSafeBase64Escape(key));
  g->context = v.context;
  g->secrets = v.secrets;
  g->spec = v.spec;
  g->mount_gid = gid;
  auto served = Serve(std::move(g), /*inline_volume=*/false);
  if (served.ok())
    spdlog::info("volume {}: a mount for group {} at {}", v.id, gid, (*served)->mountpoint);
  return served;
}

void NodeService::DropGroupMountIfUnused(const std::string& key) {
  auto it = volumes_.find(key);
  if (it == volumes_.end() || key.find("#gid=") == std::string::npos) return;
  for (const auto& [target, p] : published_) {
    if (p.mount_key == key) return;
  }
  std::string mountpoint = it->second->mountpoint;
  Stop(*it->second);
  volumes_.erase(it);
  Forget(kStagedPrefix + key);
  std::error_code ec;
  std::filesystem::remove(mountpoint, ec);
  spdlog::info("dropped the group mount {}", key);
}

Status NodeService::PublishInline(const ::csi::v1::NodePublishVolumeRequest& req,
                                  const VolumeSpec& spec, Publication p) {
  const std::string& target = req.target_path();
  auto existing = volumes_.find(req.volume_id());
  if (existing != volumes_.end()) {
    if (existing->second->mountpoint == target && existing->second->spec.origin == spec.origin)
      return Status::OK;
    return Status(
        StatusCode::ALREADY_EXISTS,
        absl::StrCat("volume ", req.volume_id(), " is mounted at ", existing->second->mountpoint));
  }
  auto grant = opts_.inline_origins.Check(spec.origin);
  if (!grant.ok()) return ToGrpc(grant.status());
  if (!spec.read_only && !grant->writable) {
    return Status(StatusCode::PERMISSION_DENIED,
                  absl::StrCat("inline origin ", spec.origin,
                               " is allowed read-only on this node (readOnly: \"false\" asks "
                               "for writes; an administrator allows them with an \"rw:\" entry "
                               "in --allowed-inline-origins)"));
  }
  auto gid = MountGroup(req.volume_capability());
  if (!gid.ok()) return ToGrpc(gid.status());
  auto v = std::make_unique<Volume>();
  v->id = req.volume_id();
  v->named_by_pod = true;
  v->mountpoint = target;
  v->context = req.volume_context();
  v->secrets = req.secrets();
  v->spec = spec;
  v->spec.read_only = spec.read_only || p.read_only;
  v->mount_gid = *gid;
  auto served = Serve(std::move(v), /*inline_volume=*/true);
  if (!served.ok()) return ToGrpc(served.status());
  p.inline_volume = true;
  p.mount_key = (*served)->id;
  if (absl::Status st = Record(target, p); !st.ok()) {
    Stop(**served);
    Forget(kStagedPrefix + p.mount_key);
    volumes_.erase(p.mount_key);
    return ToGrpc(st);
  }
  spdlog::info("mounted inline volume {} from {} at {}{}", p.mount_key, spec.origin, target,
               (*served)->spec.read_only ? " (read-only)" : "");
  published_[target] = p;
  return Status::OK;
}

Status NodeService::NodePublishVolume(grpc::ServerContext*,
                                      const ::csi::v1::NodePublishVolumeRequest* req,
                                      ::csi::v1::NodePublishVolumeResponse*) {
  if (Status st = CheckVolumeId(req->volume_id()); !st.ok()) return st;
  if (req->target_path().empty()) return InvalidArgument("target_path is missing");
  if (!req->has_volume_capability()) return InvalidArgument("volume_capability is missing");
  const auto& cap = req->volume_capability();
  if (Status st = CheckCapability(cap); !st.ok()) return st;
  Publication p;
  p.volume_id = req->volume_id();
  p.flags = MountFlags(cap, &p.read_only);
  p.read_only = p.read_only || req->readonly() || IsReaderOnly(cap);
  const std::string& target = req->target_path();

  absl::MutexLock l(&mu_);
  auto prior = published_.find(target);
  if (prior != published_.end()) {
    if (prior->second.volume_id == p.volume_id && prior->second.read_only == p.read_only)
      return Status::OK;
    return Status(StatusCode::ALREADY_EXISTS,
                  absl::StrCat(target, " already holds volume ", prior->second.volume_id,
                               prior->second.read_only ? " read-only" : " read-write"));
  }
  if (req->staging_target_path().empty()) {
    // No stage: an inline volume in a pod spec, mounted at the target.
    auto spec = ParseVolumeContext(req->volume_context());
    if (!spec.ok()) {
      return InvalidArgument(
          absl::StrCat("staging_target_path is missing, and this is no inline volume: ",
                       spec.status().message()));
    }
    return PublishInline(*req, *spec, p);
  }
  auto it = volumes_.find(req->volume_id());
  if (it == volumes_.end() || it->second->mountpoint != req->staging_target_path()) {
    return Status(StatusCode::FAILED_PRECONDITION,
                  absl::StrCat("volume ", req->volume_id(), " is not staged at ",
                               req->staging_target_path(), "; stage it first"));
  }
  if (it->second->spec.read_only && !p.read_only) p.read_only = true;  // the volume says so
  if (IsMountPoint(target)) {
    return Status(StatusCode::ALREADY_EXISTS,
                  absl::StrCat("something else is mounted at ", target));
  }
  auto gid = MountGroup(cap);
  if (!gid.ok()) return ToGrpc(gid.status());
  auto from = MountFor(*it->second, *gid);
  if (!from.ok()) return ToGrpc(from.status());
  p.mount_key = (*from)->id;
  if (absl::Status st = Bind((*from)->mountpoint, target, p); !st.ok()) {
    DropGroupMountIfUnused(p.mount_key);
    return ToGrpc(st);
  }
  if (absl::Status st = Record(target, p); !st.ok()) {
    (void)UnmountAll(target);
    DropGroupMountIfUnused(p.mount_key);
    return ToGrpc(st);
  }
  published_[target] = p;
  spdlog::info("published volume {} at {}{}", req->volume_id(), target,
               p.read_only ? " (read-only)" : "");
  return Status::OK;
}

Status NodeService::NodeUnpublishVolume(grpc::ServerContext*,
                                        const ::csi::v1::NodeUnpublishVolumeRequest* req,
                                        ::csi::v1::NodeUnpublishVolumeResponse*) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->target_path().empty()) return InvalidArgument("target_path is missing");
  const std::string& target = req->target_path();
  absl::MutexLock l(&mu_);
  auto pub = published_.find(target);
  if (pub != published_.end() && pub->second.volume_id != req->volume_id()) {
    return Status(
        StatusCode::FAILED_PRECONDITION,
        absl::StrCat(target, " holds volume ", pub->second.volume_id, ", not ", req->volume_id()));
  }
  if (pub != published_.end() && pub->second.inline_volume) {
    auto v = volumes_.find(req->volume_id());
    if (v != volumes_.end()) {
      Stop(*v->second);
      volumes_.erase(v);
    }
    Forget(kStagedPrefix + req->volume_id());
  }
  if (absl::Status st = UnmountAll(target); !st.ok()) return ToGrpc(st);
  // The directory this driver made for the pod, if empty: rmdir, so that a
  // target path naming a file never deletes it.
  (void)::rmdir(target.c_str());
  std::string key;
  if (pub != published_.end()) {
    key = pub->second.mount_key;
    published_.erase(pub);
  }
  Forget(kPublishedPrefix + target);
  if (!key.empty() && key != req->volume_id()) DropGroupMountIfUnused(key);
  spdlog::info("unpublished volume {} from {}", req->volume_id(), target);
  return Status::OK;
}

Status NodeService::NodeGetVolumeStats(grpc::ServerContext*,
                                       const ::csi::v1::NodeGetVolumeStatsRequest* req,
                                       ::csi::v1::NodeGetVolumeStatsResponse* resp) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->volume_path().empty()) return InvalidArgument("volume_path is missing");
  const std::string& path = req->volume_path();
  std::shared_ptr<origin::Origin> origin;
  bool running = false;
  absl::StatusOr<struct statvfs> sv = absl::UnknownError("");
  {
    absl::MutexLock l(&mu_);
    auto it = volumes_.find(req->volume_id());
    if (it == volumes_.end())
      return Status(StatusCode::NOT_FOUND,
                    absl::StrCat("volume ", req->volume_id(), " is not on this node"));
    auto pub = published_.find(path);
    bool here = it->second->mountpoint == path ||
                (pub != published_.end() && pub->second.volume_id == req->volume_id());
    if (!here) {
      return Status(
          StatusCode::NOT_FOUND,
          absl::StrCat("volume ", req->volume_id(), " is neither staged nor published at ", path));
    }
    origin = it->second->origin;
    running = it->second->running;
    sv = it->second->tree->StatFs();
  }
  if (sv.ok()) {
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
  if (!running) {
    cond->set_abnormal(true);
    cond->set_message(
        "the volume's FUSE session has ended; restart strata node or stage the volume again");
  } else if (!IsMountPoint(path)) {
    cond->set_abnormal(true);
    cond->set_message(absl::StrCat(path, " is not mounted any more"));
  } else if (absl::Status probe = ProbeOrigin(*origin); !probe.ok()) {
    cond->set_abnormal(true);
    cond->set_message(absl::StrCat(probe.message(), "; cached data is still served"));
  } else if (!sv.ok()) {
    cond->set_abnormal(true);
    cond->set_message(absl::StrCat("no usage: ", sv.status().message()));
  } else {
    cond->set_abnormal(false);
    cond->set_message("serving");
  }
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
  resp->set_node_id(opts_.node_id);
  (*resp->mutable_accessible_topology()->mutable_segments())[kTopologyKey] = opts_.node_id;
  return Status::OK;
}

int NodeService::Volumes() {
  absl::MutexLock l(&mu_);
  return static_cast<int>(volumes_.size());
}

fuse::VolumeStats NodeService::VolumeTotals() {
  absl::MutexLock l(&mu_);
  fuse::VolumeStats t;
  for (const auto& [id, v] : volumes_) {
    if (!v->tree) continue;
    fuse::VolumeStats s = v->tree->Stats();
    t.reads += s.reads;
    t.cached_reads += s.cached_reads;
    t.fetched_reads += s.fetched_reads;
    t.direct_reads += s.direct_reads;
    t.bytes_read += s.bytes_read;
    t.cached_bytes += s.cached_bytes;
    t.bytes_written += s.bytes_written;
    t.errors += s.errors;
  }
  return t;
}

int NodeService::DeadVolumes() {
  absl::MutexLock l(&mu_);
  int dead = 0;
  for (const auto& [id, v] : volumes_) dead += v->running ? 0 : 1;
  return dead;
}

}  // namespace strata::csi
