// The node's volumes: FUSE filesystems started and stopped, bind mounts
// made and undone, records written before a call answers, and recovery
// from those records after a restart.
#include "csi/volume_host.h"

#include <unistd.h>

#include <filesystem>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "origin/origin.h"

namespace strata::csi {
namespace {

using json = nlohmann::json;

constexpr char kStagedPrefix[] = "staged/";
constexpr char kPublishedPrefix[] = "published/";

std::string KeeperKey(const std::string& volume_id) { return "volume/" + volume_id; }

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

}  // namespace

VolumeHost::VolumeHost(Mounter& mounter, FuseLauncher& launcher, VolumeHostOptions options)
    : mounter_(mounter), launcher_(launcher), opts_(std::move(options)) {
  for (const std::string& dir : {opts_.staging_dir, opts_.inode_dir, opts_.group_mount_dir}) {
    std::error_code ec;
    if (!dir.empty() && !std::filesystem::create_directories(dir, ec) && ec)
      spdlog::error("cannot create {}: {}", dir, ec.message());
  }
  absl::MutexLock l(&mu_);
  if (opts_.state) Recover();
}

VolumeHost::~VolumeHost() {
  absl::MutexLock l(&mu_);
  for (auto& [id, v] : volumes_) Stop(*v);
}

absl::Status VolumeHost::Start(Volume& v, int adopt_fd) {
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
  vo.image_files = v.spec.origin.rfind("oci://", 0) == 0 && !v.spec.image_blobs;
  vo.read_only = v.spec.read_only;
  vo.mount_gid = v.mount_gid;
  if (!opts_.inode_dir.empty()) {
    vo.inode_log = absl::StrCat(opts_.inode_dir, "/", absl::WebSafeBase64Escape(v.id));
    vo.resume_inodes = adopt_fd >= 0;
  }
  fuse::MountOptions mo;
  mo.mountpoint = v.mountpoint;
  mo.fsname = absl::StrCat("strata:", v.id);
  mo.passthrough = opts_.passthrough;
  if (!opts_.inode_dir.empty()) {
    mo.open_log = absl::StrCat(opts_.inode_dir, "/", absl::WebSafeBase64Escape(v.id), ".opens");
  }
  fuse::Handoff adopt{adopt_fd, v.init};
  v.session.reset();  // a stopped one: its tree goes before the new one logs inodes
  auto session = launcher_.Launch(v.id, v.origin, vo, mo, adopt_fd >= 0 ? &adopt : nullptr);
  if (!session.ok()) return session.status();
  v.session = std::move(*session);
  v.init = v.session->handoff().init;
  if (opts_.keeper && adopt_fd < 0) {
    if (absl::Status st = opts_.keeper->Put(KeeperKey(v.id), v.session->handoff().fd); !st.ok()) {
      spdlog::warn(
          "volume {}: the FD keeper did not take its descriptor ({}); a restart will "
          "remount it instead of taking it over",
          v.id, st.message());
    }
  }
  v.session->Serve();
  return absl::OkStatus();
}

void VolumeHost::Stop(Volume& v) {
  if (v.session) v.session->Stop();
  if (opts_.keeper) {
    if (absl::Status st = opts_.keeper->Delete(KeeperKey(v.id)); !st.ok())
      spdlog::warn("volume {}: FD keeper: {}", v.id, st.message());
  }
}

absl::Status VolumeHost::UnmountAll(const std::string& path) {
  for (int i = 0; i < 16 && mounter_.IsMountPoint(path); ++i) {
    if (!mounter_.Unmount(path).ok()) {
      if (absl::Status st = mounter_.Detach(path); !st.ok()) return st;
    }
  }
  return absl::OkStatus();
}

absl::Status VolumeHost::Bind(const std::string& from, const std::string& target,
                              const Publication& p) {
  std::error_code ec;
  std::filesystem::create_directories(target, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", target, ": ", ec.message()));
  return mounter_.Bind(from, target, BindOptions{p.read_only, p.flags});
}

absl::Status VolumeHost::Record(const Volume& v, bool inline_volume) {
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

absl::Status VolumeHost::Record(const std::string& target, const Publication& p) {
  if (!opts_.state) return absl::OkStatus();
  return opts_.state->Put(kPublishedPrefix + target, {{"volume_id", p.volume_id},
                                                      {"read_only", p.read_only},
                                                      {"inline", p.inline_volume},
                                                      {"flags", p.flags},
                                                      {"mount_key", p.mount_key}});
}

void VolumeHost::Forget(const std::string& key) {
  if (!opts_.state) return;
  if (absl::Status st = opts_.state->Delete(key); !st.ok())
    spdlog::error("cannot drop state record {}: {}", key, st.message());
}

void VolumeHost::Recover() {
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
    if (opts_.keeper && !v->init.empty() && mounter_.IsMountPoint(v->mountpoint)) {
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

absl::Status VolumeHost::Stage(const std::string& id, const std::string& path, StringMap context,
                               StringMap secrets, const VolumeSpec& spec, int64_t mount_gid) {
  absl::MutexLock l(&mu_);
  auto existing = volumes_.find(id);
  if (existing != volumes_.end()) {
    Volume& v = *existing->second;
    if (v.mountpoint != path || v.spec.origin != spec.origin) {
      return absl::AlreadyExistsError(absl::StrCat("volume ", id, " is staged at ", v.mountpoint,
                                                   " from ", v.spec.origin, "; unstage it first"));
    }
    if (v.running()) return absl::OkStatus();
    // Its FUSE session ended (killed from outside): serve it again.
    spdlog::warn("volume {}: the filesystem at {} had stopped; mounting it again", v.id, path);
    Stop(v);
    (void)UnmountAll(path);
    return Start(v);
  }
  auto v = std::make_unique<Volume>();
  v->id = id;
  v->mountpoint = path;
  v->context = std::move(context);
  v->secrets = std::move(secrets);
  v->spec = spec;
  v->mount_gid = mount_gid;
  if (mounter_.IsMountPoint(path)) {
    return absl::AlreadyExistsError(absl::StrCat("something else is mounted at ", path));
  }
  auto served = Serve(std::move(v), /*inline_volume=*/false);
  if (!served.ok()) return served.status();
  spdlog::info("staged volume {} from {} at {}{}", (*served)->id, (*served)->spec.origin, path,
               (*served)->spec.read_only ? " (read-only)" : "");
  return absl::OkStatus();
}

absl::Status VolumeHost::Unstage(const std::string& id, const std::string& path) {
  absl::MutexLock l(&mu_);
  for (const auto& [target, p] : published_) {
    if (p.volume_id == id && !p.inline_volume) {
      return absl::FailedPreconditionError(
          absl::StrCat("volume ", id, " is still published at ", target, "; unpublish it first"));
    }
  }
  for (const auto& [other, v] : volumes_) {
    if (v->mountpoint == path && other != id) {
      return absl::FailedPreconditionError(
          absl::StrCat(path, " holds volume ", other, ", not ", id));
    }
  }
  auto it = volumes_.find(id);
  if (it != volumes_.end() && it->second->mountpoint == path) {
    Stop(*it->second);
    volumes_.erase(it);
  }
  // Whatever is left of a mount there (ours from before a restart) goes too.
  if (absl::Status st = UnmountAll(path); !st.ok()) return st;
  Forget(kStagedPrefix + id);
  spdlog::info("unstaged volume {} from {}", id, path);
  return absl::OkStatus();
}

absl::StatusOr<VolumeHost::Volume*> VolumeHost::Serve(std::unique_ptr<Volume> v,
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

absl::StatusOr<VolumeHost::Volume*> VolumeHost::MountFor(Volume& v, int64_t gid) {
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

void VolumeHost::DropGroupMountIfUnused(const std::string& key) {
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

std::optional<absl::Status> VolumeHost::Published(const std::string& target, const Publication& p) {
  auto prior = published_.find(target);
  if (prior == published_.end()) return std::nullopt;
  if (prior->second.volume_id == p.volume_id && prior->second.read_only == p.read_only) {
    // An inline volume's target is its own FUSE mount, answered for by the
    // volume itself (see PublishInline).
    if (prior->second.inline_volume || mounter_.IsMountPoint(target)) return absl::OkStatus();
    // Recorded but not mounted (the volume could not come back after a
    // restart, or the bind went): answering OK would hand the pod an empty
    // directory, so the call is served afresh and says why it cannot be. The
    // record stays until a publish replaces it or an unpublish settles it.
    spdlog::warn("{} was published with volume {} but nothing is mounted there; publishing again",
                 target, p.volume_id);
    return std::nullopt;
  }
  return absl::AlreadyExistsError(
      absl::StrCat(target, " already holds volume ", prior->second.volume_id,
                   prior->second.read_only ? " read-only" : " read-write"));
}

absl::Status VolumeHost::PublishInline(const std::string& id, const std::string& target,
                                       const absl::StatusOr<VolumeSpec>& spec, StringMap context,
                                       StringMap secrets, const PublishOptions& options) {
  Publication p;
  p.volume_id = id;
  p.read_only = options.read_only;
  p.flags = options.flags;
  absl::MutexLock l(&mu_);
  if (auto prior = Published(target, p)) return *prior;
  if (!spec.ok()) return spec.status();
  auto existing = volumes_.find(id);
  if (existing != volumes_.end()) {
    if (existing->second->mountpoint == target && existing->second->spec.origin == spec->origin)
      return absl::OkStatus();
    return absl::AlreadyExistsError(
        absl::StrCat("volume ", id, " is mounted at ", existing->second->mountpoint));
  }
  auto grant = opts_.inline_origins.Check(spec->origin);
  if (!grant.ok()) return grant.status();
  if (!spec->read_only && !grant->writable) {
    return absl::PermissionDeniedError(
        absl::StrCat("inline origin ", spec->origin,
                     " is allowed read-only on this node (readOnly: \"false\" asks "
                     "for writes; an administrator allows them with an \"rw:\" entry "
                     "in --allowed-inline-origins)"));
  }
  if (!options.mount_gid.ok()) return options.mount_gid.status();
  auto v = std::make_unique<Volume>();
  v->id = id;
  v->named_by_pod = true;
  v->mountpoint = target;
  v->context = std::move(context);
  v->secrets = std::move(secrets);
  v->spec = *spec;
  v->spec.read_only = spec->read_only || p.read_only;
  v->mount_gid = *options.mount_gid;
  auto served = Serve(std::move(v), /*inline_volume=*/true);
  if (!served.ok()) return served.status();
  p.inline_volume = true;
  p.mount_key = (*served)->id;
  if (absl::Status st = Record(target, p); !st.ok()) {
    Stop(**served);
    Forget(kStagedPrefix + p.mount_key);
    volumes_.erase(p.mount_key);
    return st;
  }
  spdlog::info("mounted inline volume {} from {} at {}{}", p.mount_key, spec->origin, target,
               (*served)->spec.read_only ? " (read-only)" : "");
  published_[target] = p;
  return absl::OkStatus();
}

absl::Status VolumeHost::Publish(const std::string& id, const std::string& staging_path,
                                 const std::string& target, const PublishOptions& options) {
  Publication p;
  p.volume_id = id;
  p.read_only = options.read_only;
  p.flags = options.flags;
  absl::MutexLock l(&mu_);
  if (auto prior = Published(target, p)) return *prior;
  auto it = volumes_.find(id);
  if (it == volumes_.end() || it->second->mountpoint != staging_path) {
    return absl::FailedPreconditionError(
        absl::StrCat("volume ", id, " is not staged at ", staging_path, "; stage it first"));
  }
  if (it->second->spec.read_only && !p.read_only) p.read_only = true;  // the volume says so
  if (mounter_.IsMountPoint(target)) {
    return absl::AlreadyExistsError(absl::StrCat("something else is mounted at ", target));
  }
  if (!options.mount_gid.ok()) return options.mount_gid.status();
  auto from = MountFor(*it->second, *options.mount_gid);
  if (!from.ok()) return from.status();
  p.mount_key = (*from)->id;
  if (absl::Status st = Bind((*from)->mountpoint, target, p); !st.ok()) {
    DropGroupMountIfUnused(p.mount_key);
    return st;
  }
  if (absl::Status st = Record(target, p); !st.ok()) {
    (void)UnmountAll(target);
    DropGroupMountIfUnused(p.mount_key);
    return st;
  }
  published_[target] = p;
  spdlog::info("published volume {} at {}{}", id, target, p.read_only ? " (read-only)" : "");
  return absl::OkStatus();
}

absl::Status VolumeHost::Unpublish(const std::string& id, const std::string& target) {
  absl::MutexLock l(&mu_);
  auto pub = published_.find(target);
  if (pub != published_.end() && pub->second.volume_id != id) {
    return absl::FailedPreconditionError(
        absl::StrCat(target, " holds volume ", pub->second.volume_id, ", not ", id));
  }
  if (pub != published_.end() && pub->second.inline_volume) {
    auto v = volumes_.find(id);
    if (v != volumes_.end()) {
      Stop(*v->second);
      volumes_.erase(v);
    }
    Forget(kStagedPrefix + id);
  }
  if (absl::Status st = UnmountAll(target); !st.ok()) return st;
  // The directory this driver made for the pod, if empty: rmdir, so that a
  // target path naming a file never deletes it.
  (void)::rmdir(target.c_str());
  std::string key;
  if (pub != published_.end()) {
    key = pub->second.mount_key;
    published_.erase(pub);
  }
  Forget(kPublishedPrefix + target);
  if (!key.empty() && key != id) DropGroupMountIfUnused(key);
  spdlog::info("unpublished volume {} from {}", id, target);
  return absl::OkStatus();
}

absl::StatusOr<VolumeHealth> VolumeHost::Health(const std::string& id, const std::string& path) {
  VolumeHealth h;
  std::shared_ptr<origin::Origin> origin;
  bool running = false;
  {
    absl::MutexLock l(&mu_);
    auto it = volumes_.find(id);
    if (it == volumes_.end())
      return absl::NotFoundError(absl::StrCat("volume ", id, " is not on this node"));
    auto pub = published_.find(path);
    bool here =
        it->second->mountpoint == path || (pub != published_.end() && pub->second.volume_id == id);
    if (!here) {
      return absl::NotFoundError(
          absl::StrCat("volume ", id, " is neither staged nor published at ", path));
    }
    origin = it->second->origin;
    running = it->second->running();
    if (it->second->session) h.usage = it->second->session->StatFs();
  }
  h.abnormal = true;
  if (!running) {
    h.message =
        "the volume's FUSE session has ended; restart strata node or stage the volume again";
  } else if (!mounter_.IsMountPoint(path)) {
    h.message = absl::StrCat(path, " is not mounted any more");
  } else if (absl::Status probe = ProbeOrigin(*origin); !probe.ok()) {
    h.message = absl::StrCat(probe.message(), "; cached data is still served");
  } else if (!h.usage.ok()) {
    h.message = absl::StrCat("no usage: ", h.usage.status().message());
  } else {
    h.abnormal = false;
    h.message = "serving";
  }
  return h;
}

int VolumeHost::Volumes() {
  absl::MutexLock l(&mu_);
  return static_cast<int>(volumes_.size());
}

fuse::VolumeStats VolumeHost::VolumeTotals() {
  absl::MutexLock l(&mu_);
  fuse::VolumeStats t;
  for (const auto& [id, v] : volumes_) {
    if (!v->session) continue;
    fuse::VolumeStats s = v->session->Stats();
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

int VolumeHost::DeadVolumes() {
  absl::MutexLock l(&mu_);
  int dead = 0;
  for (const auto& [id, v] : volumes_) dead += v->running() ? 0 : 1;
  return dead;
}

}  // namespace strata::csi
