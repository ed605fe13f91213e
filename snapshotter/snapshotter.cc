// The overlayfs-compatible snapshotter. Directory work (mkdir, rename,
// removal) goes before the record that makes it visible and after the
// record that hides it, so a crash leaves at worst an orphan directory,
// which Cleanup removes, never a record without its directory.
#include "snapshotter/snapshotter.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/logging.h"
#include "fuse/engine.h"

namespace strata::snapshotter {
namespace fs = std::filesystem;

namespace {

constexpr size_t kMaxLabelBytes = 4096;
constexpr char kTargetLabel[] = "containerd.io/snapshot.ref";
constexpr char kRemovingPrefix[] = "rm-";

// Bytes on disk and distinct inodes under `dir`, not following links, as
// containerd's own usage counts them.
absl::StatusOr<Usage> DiskUsage(const fs::path& dir) {
  Usage u;
  std::set<std::pair<dev_t, ino_t>> seen;
  auto count = [&](const fs::path& p) {
    struct stat st;
    if (::lstat(p.c_str(), &st) != 0) return;  // gone meanwhile
    if (!seen.insert({st.st_dev, st.st_ino}).second) return;
    u.size += static_cast<int64_t>(st.st_blocks) * 512;
    u.inodes += 1;
  };
  std::error_code ec;
  count(dir);
  for (fs::recursive_directory_iterator it(dir, fs::directory_options::skip_permission_denied, ec),
       end;
       !ec && it != end; it.increment(ec)) {
    count(it->path());
  }
  if (ec) return absl::InternalError(absl::StrCat("measuring ", dir.string(), ": ", ec.message()));
  return u;
}

}  // namespace

absl::Status CheckSnapshotName(const std::string& name, const char* what) {
  if (name.empty()) return absl::InvalidArgumentError(absl::StrCat("the ", what, " is empty"));
  if (name.size() > 4096 || name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("the ", what, " must be at most 4096 bytes without NUL"));
  }
  return absl::OkStatus();
}

absl::Status CheckLabels(const Labels& labels) {
  for (const auto& [k, v] : labels) {
    if (k.size() + v.size() > kMaxLabelBytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "label key and value greater than maximum size (4096 bytes), key: ", k.substr(0, 256)));
    }
  }
  return absl::OkStatus();
}

Snapshotter::Snapshotter(SnapshotterOptions options, std::unique_ptr<SnapshotDb> db,
                         bool overlay_index)
    : opts_(std::move(options)), overlay_index_(overlay_index), db_(std::move(db)) {}

absl::StatusOr<std::unique_ptr<Snapshotter>> Snapshotter::Open(SnapshotterOptions options) {
  std::error_code ec;
  fs::create_directories(fs::path(options.root) / "snapshots", ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot create the snapshot root ", options.root, ": ", ec.message()));
  }
  // Layers may hold anything an image does: root's alone, as containerd's.
  fs::permissions(options.root, fs::perms::owner_all, fs::perm_options::replace, ec);
  auto db = SnapshotDb::Open(options.root + "/metadata");
  if (!db.ok()) return db.status();
  // containerd turns the overlay index off where the kernel has the knob;
  // with it on, a lower directory reused under another upper fails.
  bool index = fs::exists("/sys/module/overlay/parameters/index", ec);
  std::unique_ptr<Snapshotter> sn(new Snapshotter(std::move(options), std::move(*db), index));
  sn->MountRemoteLayers();
  return sn;
}

void Snapshotter::MountRemoteLayers() {
  std::vector<SnapshotInfo> remote;
  {
    absl::MutexLock lock(&mu_);
    auto all = db_->List();
    if (!all.ok()) {
      spdlog::error("cannot list snapshots to mount their layers again: {}",
                    all.status().message());
      return;
    }
    for (SnapshotInfo& s : *all) {
      if (!s.remote_digest.empty()) remote.push_back(std::move(s));
    }
  }
  for (SnapshotInfo& s : remote) {
    std::string dir = Dir(s.id);
    if (!opts_.lazy) {
      spdlog::error("snapshot {} is a lazily served layer, but this node serves none", s.name);
      continue;
    }
    RemoteLayer layer{s.remote_origin, s.remote_digest, s.remote_size, s.remote_toc};
    // A mount the FD keeper kept alive is taken over: the containers over
    // it never notice. Its chunks are usually in the cache: no registry
    // needed either way.
    if (opts_.lazy->can_adopt() && !s.fuse_init.empty() && fuse::IsMountPoint(dir + "/fs")) {
      auto init = opts_.lazy->Mount(s.id, layer, dir + "/fs", s.fuse_init, db_.get());
      if (init.ok()) continue;
      spdlog::warn("snapshot {}: cannot take its layer's mount over ({}); mounting it afresh",
                   s.name, init.status().message());
    }
    if (!DetachLayer(dir)) continue;
    auto init = opts_.lazy->Mount(s.id, layer, dir + "/fs", "", db_.get());
    if (!init.ok()) {
      spdlog::error(
          "snapshot {}: cannot mount its layer {} again ({}); containers over it fail "
          "to start until it can",
          s.name, s.remote_digest, init.status().message());
      continue;
    }
    s.fuse_init = *init;
    absl::MutexLock lock(&mu_);
    if (absl::Status st = db_->Update(s); !st.ok()) {
      spdlog::warn("snapshot {}: {}; a restart will mount its layer afresh", s.name, st.message());
    }
  }
}

bool Snapshotter::DetachLayer(const std::string& dir) {
  std::string fs_dir = dir + "/fs";
  if (!fuse::IsMountPoint(fs_dir)) return true;
  absl::Status st = fuse::Unmount(fs_dir);
  if (!st.ok() || fuse::IsMountPoint(fs_dir)) {
    spdlog::error("cannot detach the layer mounted at {}: {}", fs_dir, st.message());
    return false;
  }
  return true;
}

std::string Snapshotter::Dir(uint64_t id) const {
  return absl::StrCat(opts_.root, "/snapshots/", id);
}

absl::StatusOr<std::vector<Mount>> Snapshotter::Prepare(const std::string& key,
                                                        const std::string& parent,
                                                        const Labels& labels) {
  return Create(Kind::kActive, key, parent, labels);
}

absl::StatusOr<std::vector<Mount>> Snapshotter::View(const std::string& key,
                                                     const std::string& parent,
                                                     const Labels& labels) {
  return Create(Kind::kView, key, parent, labels);
}

absl::StatusOr<std::vector<Mount>> Snapshotter::Create(Kind kind, const std::string& key,
                                                       const std::string& parent,
                                                       const Labels& labels) {
  if (absl::Status st = CheckSnapshotName(key, "snapshot key"); !st.ok()) return st;
  if (absl::Status st = CheckLabels(labels); !st.ok()) return st;
  if (auto target = labels.find(kTargetLabel);
      kind == Kind::kActive && opts_.lazy && target != labels.end()) {
    absl::Status st = PrepareRemote(target->second, parent, labels);
    if (absl::IsAlreadyExists(st)) return st;
    if (!st.ok() && !absl::IsNotFound(st)) {
      spdlog::warn("snapshot {}: not served lazily, containerd pulls it: {}", target->second,
                   st.message());
    }
  }
  absl::MutexLock lock(&mu_);
  auto existing = db_->Get(key);
  if (!existing.ok()) return existing.status();
  if (*existing) return absl::AlreadyExistsError(absl::StrCat("snapshot ", key, " already exists"));
  if (!parent.empty()) {
    auto p = db_->Get(parent);
    if (!p.ok()) return p.status();
    if (!*p)
      return absl::NotFoundError(absl::StrCat("parent snapshot ", parent, " does not exist"));
    if ((*p)->kind != Kind::kCommitted) {
      return absl::InvalidArgumentError(
          absl::StrCat("parent ", parent, " is not a committed snapshot"));
    }
  }
  auto id = db_->NextId();
  if (!id.ok()) return id.status();
  SnapshotInfo s;
  s.name = key;
  s.parent = parent;
  s.kind = kind;
  s.id = *id;
  s.created = s.updated = absl::Now();
  s.labels = labels;
  std::string dir = Dir(s.id);
  std::error_code ec;
  fs::create_directories(dir + "/fs", ec);
  if (!ec && kind == Kind::kActive) fs::create_directories(dir + "/work", ec);
  if (ec) {
    fs::remove_all(dir, ec);
    return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  }
  if (absl::Status st = db_->Create(s); !st.ok()) {
    fs::remove_all(dir, ec);
    return st;
  }
  return MountsOf(s);
}

absl::Status Snapshotter::PrepareRemote(const std::string& target, const std::string& parent,
                                        const Labels& labels) {
  if (absl::Status st = CheckSnapshotName(target, "target snapshot name"); !st.ok()) return st;
  auto layer = RemoteLayerFromLabels(labels);
  if (!layer.ok()) return layer.status();
  if (!*layer) return absl::NotFoundError("the labels name no layer in a registry");
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto existing = db_->Get(target);
    if (!existing.ok()) return existing.status();
    if (*existing) {
      return absl::AlreadyExistsError(absl::StrCat("target snapshot ", target, " already exists"));
    }
    if (!parent.empty()) {
      auto p = db_->Get(parent);
      if (!p.ok()) return p.status();
      if (!*p || (*p)->kind != Kind::kCommitted) {
        return absl::FailedPreconditionError("the parent is not a committed snapshot");
      }
    }
    auto next = db_->NextId();
    if (!next.ok()) return next.status();
    id = *next;
  }
  // Indexing reads the registry: outside the lock, which every other call
  // needs.
  std::string dir = Dir(id);
  std::error_code ec;
  fs::create_directories(dir + "/fs", ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  absl::Time start = absl::Now();
  auto init = opts_.lazy->Mount(id, **layer, dir + "/fs", "", db_.get());
  if (!init.ok()) {
    fs::remove_all(dir, ec);
    return init.status();
  }
  auto undo = [&] {
    opts_.lazy->Unmount(id).IgnoreError();
    if (DetachLayer(dir)) fs::remove_all(dir, ec);
  };
  absl::MutexLock lock(&mu_);
  auto existing = db_->Get(target);
  if (!existing.ok() || *existing) {  // made meanwhile, by another Prepare
    undo();
    if (!existing.ok()) return existing.status();
    return absl::AlreadyExistsError(absl::StrCat("target snapshot ", target, " already exists"));
  }
  SnapshotInfo s;
  s.name = target;
  s.parent = parent;
  s.kind = Kind::kCommitted;
  s.id = id;
  s.created = s.updated = absl::Now();
  s.labels = labels;
  s.size = 0;  // nothing of it is on this snapshotter's disk
  s.inodes = 0;
  s.remote_origin = (*layer)->origin;
  s.remote_digest = (*layer)->digest;
  s.remote_size = (*layer)->size;
  s.remote_toc = (*layer)->toc_digest;
  s.fuse_init = *init;
  if (absl::Status st = db_->Create(s); !st.ok()) {
    undo();
    return st;
  }
  spdlog::info("snapshot {}: layer {} served lazily (mounted in {})", target, s.remote_digest,
               absl::FormatDuration(absl::Now() - start));
  return absl::AlreadyExistsError(
      absl::StrCat("target snapshot ", target, " already exists (served lazily)"));
}

absl::StatusOr<std::vector<Mount>> Snapshotter::MountsOf(const SnapshotInfo& s) {
  std::vector<std::string> lowers;  // the nearest parent first
  std::string parent = s.parent;
  for (int depth = 0; !parent.empty(); ++depth) {
    if (depth > 4096) {
      return absl::DataLossError(absl::StrCat("snapshot ", s.name, " has a cycle of parents"));
    }
    auto p = db_->Get(parent);
    if (!p.ok()) return p.status();
    if (!*p) {
      return absl::DataLossError(
          absl::StrCat("snapshot ", s.name, " has lost its ancestor ", parent));
    }
    if (!(*p)->remote_digest.empty() && (!opts_.lazy || !opts_.lazy->Mounted((*p)->id))) {
      return absl::UnavailableError(
          absl::StrCat("layer ", (*p)->remote_digest, " of snapshot ", parent,
                       " is not mounted (see the log for why); nothing is served without it"));
    }
    lowers.push_back(Dir((*p)->id) + "/fs");
    parent = (*p)->parent;
  }
  const bool ro = s.kind == Kind::kView;
  if (lowers.empty()) {
    return std::vector<Mount>{{"bind", Dir(s.id) + "/fs", {ro ? "ro" : "rw", "rbind"}}};
  }
  if (ro && lowers.size() == 1) {
    return std::vector<Mount>{{"bind", lowers[0], {"ro", "rbind"}}};
  }
  std::vector<std::string> options;
  if (overlay_index_) options.push_back("index=off");
  if (!ro) {
    options.push_back(absl::StrCat("workdir=", Dir(s.id), "/work"));
    options.push_back(absl::StrCat("upperdir=", Dir(s.id), "/fs"));
  }
  options.push_back(absl::StrCat("lowerdir=", absl::StrJoin(lowers, ":")));
  return std::vector<Mount>{{"overlay", "overlay", std::move(options)}};
}

absl::StatusOr<std::vector<Mount>> Snapshotter::Mounts(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto s = db_->Get(key);
  if (!s.ok()) return s.status();
  if (!*s) return absl::NotFoundError(absl::StrCat("snapshot ", key, " does not exist"));
  if ((*s)->kind == Kind::kCommitted) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot ", key, " is committed, not active or a view"));
  }
  return MountsOf(**s);
}

absl::Status Snapshotter::Commit(const std::string& name, const std::string& key,
                                 const Labels& labels) {
  if (absl::Status st = CheckSnapshotName(name, "snapshot name"); !st.ok()) return st;
  if (absl::Status st = CheckLabels(labels); !st.ok()) return st;
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto s = db_->Get(key);
    if (!s.ok()) return s.status();
    if (!*s) return absl::NotFoundError(absl::StrCat("snapshot ", key, " does not exist"));
    if ((*s)->kind != Kind::kActive) {
      return absl::FailedPreconditionError(absl::StrCat("snapshot ", key, " is not active"));
    }
    id = (*s)->id;
  }
  // Measured outside the lock: a layer of many files takes a while, and
  // nothing writes to a snapshot that containerd is committing.
  auto usage = DiskUsage(Dir(id) + "/fs");
  if (!usage.ok()) return usage.status();
  absl::MutexLock lock(&mu_);
  auto s = db_->Get(key);
  if (!s.ok()) return s.status();
  if (!*s || (*s)->id != id || (*s)->kind != Kind::kActive) {
    return absl::FailedPreconditionError(
        absl::StrCat("snapshot ", key, " changed while it was being committed"));
  }
  auto taken = db_->Get(name);
  if (!taken.ok()) return taken.status();
  if (*taken) return absl::AlreadyExistsError(absl::StrCat("snapshot ", name, " already exists"));
  SnapshotInfo c = **s;
  c.name = name;
  c.kind = Kind::kCommitted;
  c.labels = labels;
  c.updated = absl::Now();
  c.size = usage->size;
  c.inodes = usage->inodes;
  if (absl::Status st = db_->Commit(key, c); !st.ok()) return st;
  // The work directory only serves an upper that takes writes.
  std::error_code ec;
  fs::remove_all(Dir(id) + "/work", ec);
  return absl::OkStatus();
}

absl::Status Snapshotter::Remove(const std::string& key) {
  std::string removing;
  {
    absl::MutexLock lock(&mu_);
    auto s = db_->Get(key);
    if (!s.ok()) return s.status();
    if (!*s) return absl::NotFoundError(absl::StrCat("snapshot ", key, " does not exist"));
    auto children = db_->HasChildren(key);
    if (!children.ok()) return children.status();
    if (*children) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot remove snapshot ", key, ": it has children"));
    }
    if (!(*s)->remote_digest.empty()) {
      if (opts_.lazy) opts_.lazy->Unmount((*s)->id).IgnoreError();
      if (!DetachLayer(Dir((*s)->id))) {
        return absl::UnavailableError(
            absl::StrCat("cannot remove snapshot ", key, ": its layer is still mounted"));
      }
    }
    if (absl::Status st = db_->Remove(**s); !st.ok()) return st;
    if (!(*s)->remote_digest.empty()) {  // its index goes with the last snapshot of the layer
      auto all = db_->List();
      bool used = !all.ok();
      for (const SnapshotInfo& o : all.ok() ? *all : std::vector<SnapshotInfo>{}) {
        used = used || o.remote_digest == (*s)->remote_digest;
      }
      if (!used) db_->DeleteIndex((*s)->remote_digest).IgnoreError();
    }
    // Renamed under the lock, so that a new snapshot never sees it; removed
    // after, since a large layer takes a while.
    removing = absl::StrCat(opts_.root, "/snapshots/", kRemovingPrefix, (*s)->id);
    std::error_code ec;
    fs::rename(Dir((*s)->id), removing, ec);
    if (ec) {
      spdlog::warn("snapshot {} removed, but renaming its directory failed ({}); Cleanup will", key,
                   ec.message());
      return absl::OkStatus();
    }
  }
  std::error_code ec;
  fs::remove_all(removing, ec);
  if (ec) spdlog::warn("removing {}: {}; Cleanup will try again", removing, ec.message());
  return absl::OkStatus();
}

absl::StatusOr<SnapshotInfo> Snapshotter::Stat(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto s = db_->Get(key);
  if (!s.ok()) return s.status();
  if (!*s) return absl::NotFoundError(absl::StrCat("snapshot ", key, " does not exist"));
  return **s;
}

absl::StatusOr<SnapshotInfo> Snapshotter::Update(const SnapshotInfo& info,
                                                 const std::vector<std::string>& paths) {
  if (absl::Status st = CheckLabels(info.labels); !st.ok()) return st;
  absl::MutexLock lock(&mu_);
  auto s = db_->Get(info.name);
  if (!s.ok()) return s.status();
  if (!*s) return absl::NotFoundError(absl::StrCat("snapshot ", info.name, " does not exist"));
  SnapshotInfo u = **s;
  if (paths.empty()) {
    u.labels = info.labels;
  }
  for (const std::string& path : paths) {
    if (path == "labels") {
      u.labels = info.labels;
    } else if (absl::StartsWith(path, "labels.")) {
      std::string k = path.substr(7);
      auto it = info.labels.find(k);
      if (it == info.labels.end()) {
        u.labels.erase(k);  // a label the update leaves out goes
      } else {
        u.labels[k] = it->second;
      }
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot update field ", path, " of snapshot ", info.name));
    }
  }
  if (absl::Status st = CheckLabels(u.labels); !st.ok()) return st;
  u.updated = absl::Now();
  if (absl::Status st = db_->Update(u); !st.ok()) return st;
  return u;
}

absl::StatusOr<Usage> Snapshotter::GetUsage(const std::string& key) {
  uint64_t id = 0;
  {
    absl::MutexLock lock(&mu_);
    auto s = db_->Get(key);
    if (!s.ok()) return s.status();
    if (!*s) return absl::NotFoundError(absl::StrCat("snapshot ", key, " does not exist"));
    if ((*s)->kind == Kind::kCommitted && (*s)->size >= 0) {
      return Usage{(*s)->size, (*s)->inodes};
    }
    id = (*s)->id;
  }
  return DiskUsage(Dir(id) + "/fs");
}

absl::Status Snapshotter::List(const std::vector<SnapshotFilter>& filters,
                               const std::function<void(const SnapshotInfo&)>& fn) {
  std::vector<SnapshotInfo> all;
  {
    absl::MutexLock lock(&mu_);
    auto l = db_->List();
    if (!l.ok()) return l.status();
    all = std::move(*l);
  }
  for (const SnapshotInfo& s : all) {
    if (MatchesAny(filters, s)) fn(s);
  }
  return absl::OkStatus();
}

absl::Status Snapshotter::Cleanup() {
  std::vector<fs::path> orphans;
  {
    absl::MutexLock lock(&mu_);
    auto all = db_->List();
    if (!all.ok()) return all.status();
    std::set<std::string> live;
    for (const SnapshotInfo& s : *all) live.insert(std::to_string(s.id));
    std::error_code ec;
    std::vector<std::string> names;
    for (fs::directory_iterator it(opts_.root + "/snapshots", ec), end; !ec && it != end;
         it.increment(ec)) {
      names.push_back(it->path().filename().string());
    }
    if (ec)
      return absl::InternalError(absl::StrCat("listing snapshot directories: ", ec.message()));
    const fs::path dir = fs::path(opts_.root) / "snapshots";
    for (const std::string& n : names) {
      if (live.count(n)) continue;
      // Anything but a live id's directory goes, renamed first so that its
      // removal outside the lock cannot race a new snapshot.
      fs::path to = dir / n;
      if (!DetachLayer(to.string())) continue;  // never walk into a mount
      if (!absl::StartsWith(n, kRemovingPrefix)) {
        to = dir / (kRemovingPrefix + n);
        std::error_code rec;
        fs::rename(dir / n, to, rec);
        if (rec) continue;
      }
      orphans.push_back(to);
    }
  }
  for (const fs::path& p : orphans) {
    std::error_code ec;
    fs::remove_all(p, ec);
    if (ec) spdlog::warn("cleanup: removing {}: {}", p.string(), ec.message());
  }
  if (!orphans.empty())
    spdlog::info("cleanup: removed {} orphan snapshot directories", orphans.size());
  return absl::OkStatus();
}

}  // namespace strata::snapshotter
