// LazyLayers: labels to a registry blob, the blob to an index, the index to
// a mounted tree, and the background fetch that follows.
#include "snapshotter/lazy_layers.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "fuse/image_tree.h"
#include "fuse/layer_index.h"

namespace strata::snapshotter {
namespace {

constexpr char kCriImageRef[] = "containerd.io/snapshot/cri.image-ref";
constexpr char kCriLayerDigest[] = "containerd.io/snapshot/cri.layer-digest";
constexpr char kStargzRef[] = "containerd.io/snapshot/remote/stargz.reference";
constexpr char kStargzDigest[] = "containerd.io/snapshot/remote/stargz.digest";
constexpr char kTocDigest[] = "containerd.io/snapshot/stargz/toc.digest";

bool IsSha256Digest(const std::string& d) {
  return d.size() == 71 && absl::StartsWith(d, "sha256:") &&
         d.find_first_not_of("0123456789abcdef", 7) == std::string::npos;
}

// "registry[:port]/repo[:tag][@digest]" -> "oci://registry/repo"; Docker
// Hub's short name is its API host. The origin checks the parts.
absl::StatusOr<std::string> OriginOf(const std::string& ref) {
  std::string r = ref.substr(0, ref.find('@'));
  size_t slash = r.find('/');
  if (slash == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("image reference '", ref.substr(0, 256), "' names no registry"));
  }
  size_t colon = r.rfind(':');
  if (colon != std::string::npos && colon > slash) r.resize(colon);  // the tag
  std::string registry = r.substr(0, slash);
  if (registry == "docker.io") r = "registry-1.docker.io" + r.substr(slash);
  return "oci://" + r;
}

std::string KeeperKey(uint64_t id) { return absl::StrCat("layer-", id); }

}  // namespace

absl::StatusOr<std::optional<RemoteLayer>> RemoteLayerFromLabels(
    const std::map<std::string, std::string>& labels) {
  for (auto [ref_label, digest_label] :
       {std::pair{kCriImageRef, kCriLayerDigest}, std::pair{kStargzRef, kStargzDigest}}) {
    auto ref = labels.find(ref_label);
    auto digest = labels.find(digest_label);
    if (ref == labels.end() || digest == labels.end()) continue;
    if (!IsSha256Digest(digest->second)) {
      return absl::InvalidArgumentError(
          absl::StrCat("label ", digest_label, " is not a sha256 digest"));
    }
    auto origin = OriginOf(ref->second);
    if (!origin.ok()) return origin.status();
    RemoteLayer layer{*origin, digest->second, 0, ""};
    if (auto toc = labels.find(kTocDigest); toc != labels.end()) {
      if (!IsSha256Digest(toc->second)) {
        return absl::InvalidArgumentError(
            absl::StrCat("label ", kTocDigest, " is not a sha256 digest"));
      }
      layer.toc_digest = toc->second;
    }
    return std::optional<RemoteLayer>(std::move(layer));
  }
  return std::nullopt;
}

LazyLayers::LazyLayers(cache::ChunkStore& store, cache::Fetcher& fetcher, LazyLayerOptions options)
    : store_(store), fetcher_(fetcher), opts_(std::move(options)) {
  if (!opts_.open_log_dir.empty() && ::mkdir(opts_.open_log_dir.c_str(), 0700) != 0 &&
      errno != EEXIST) {
    spdlog::warn("{}: {}; layer mounts will log no opens and pass no file through",
                 opts_.open_log_dir, std::strerror(errno));
  }
}

LazyLayers::~LazyLayers() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, l] : layers_) Stop(*l);
  layers_.clear();
}

void LazyLayers::Stop(Layer& l) {
  if (!l.stop.HasBeenNotified()) l.stop.Notify();
  if (l.server) l.server->Stop();
  if (l.serve.joinable()) l.serve.join();
  if (l.background.joinable()) l.background.join();
  l.server.reset();
}

absl::StatusOr<std::string> LazyLayers::Mount(uint64_t id, RemoteLayer& layer,
                                              const std::string& dir, const std::string& adopt_init,
                                              fuse::LayerIndexStore* indexes) {
  auto origin = origin::OpenOrigin(layer.origin, opts_.origin);
  if (!origin.ok()) return origin.status();
  cache::FetchTarget blob;
  blob.origin = std::shared_ptr<origin::Origin>(std::move(*origin));
  blob.path = layer.digest;
  if (layer.size == 0) {
    auto st = blob.origin->Stat(layer.digest);
    if (!st.ok()) return st.status();
    if (st->digest != layer.digest) {
      return absl::FailedPreconditionError(
          absl::StrCat(layer.origin, " answers for ", layer.digest, " with another digest"));
    }
    layer.size = st->size;
  }
  blob.stat.size = layer.size;
  blob.stat.digest = layer.digest;
  blob.stat.version = layer.digest;
  blob.stat.mode = 0444;
  absl::StatusOr<fuse::LayerIndex> index = absl::NotFoundError("not built yet");
  if (indexes) {
    auto kept = indexes->GetIndex(layer.digest);
    if (kept.ok() && *kept) {
      index = fuse::DecodeIndex(**kept);
      if (!index.ok())
        spdlog::warn("layer {}: {}; reading it again", layer.digest, index.status().message());
      if (index.ok() && index->blob_size != layer.size) {
        index = absl::DataLossError("the stored index is of another size");
      }
    }
  }
  if (!index.ok()) {
    index = fuse::IndexLayerBlob(fetcher_, blob, layer.toc_digest);
    if (!index.ok()) return index.status();
    if (indexes) {
      if (absl::Status st = indexes->PutIndex(layer.digest, fuse::EncodeIndex(*index)); !st.ok()) {
        spdlog::warn("layer {}: index not kept ({}); a restart reads it again", layer.digest,
                     st.message());
      }
    }
  }
  uint64_t files = index->files;
  auto shared = std::make_shared<const fuse::LayerIndex>(std::move(*index));
  std::shared_ptr<fuse::EstargzFiles> estargz;
  if (shared->format == fuse::LayerFormat::kEstargz) {
    estargz = std::make_shared<fuse::EstargzFiles>(shared, blob);
  }
  auto l = std::make_unique<Layer>();
  l->tree = std::make_unique<fuse::LayerTree>(shared, blob, estargz, store_, fetcher_);
  fuse::MountOptions mo;
  mo.mountpoint = dir;
  mo.fsname = "strata-layer";
  mo.max_threads = opts_.fuse_threads;
  mo.passthrough = opts_.passthrough;
  if (!opts_.open_log_dir.empty()) {
    mo.open_log = absl::StrCat(opts_.open_log_dir, "/", KeeperKey(id), ".opens");
    l->tree->EnableBackingFiles();
  }
  absl::StatusOr<std::unique_ptr<fuse::FuseServer>> server;
  if (!adopt_init.empty()) {
    if (!opts_.keeper) return absl::FailedPreconditionError("no FD keeper to take a mount over");
    auto fd = opts_.keeper->Get(KeeperKey(id));
    if (!fd.ok()) return fd.status();
    server = fuse::FuseServer::Adopt(*l->tree, mo, {*fd, adopt_init});
    ::close(*fd);  // Adopt keeps a duplicate
  } else {
    server = fuse::FuseServer::Mount(*l->tree, mo);
  }
  if (!server.ok()) return server.status();
  l->server = std::move(*server);
  fuse::Handoff handoff = l->server->handoff();
  if (opts_.keeper && adopt_init.empty()) {
    if (absl::Status st = opts_.keeper->Put(KeeperKey(id), handoff.fd); !st.ok()) {
      spdlog::warn(
          "layer {}: the FD keeper did not take its descriptor ({}); a restart will "
          "mount it afresh under running containers",
          layer.digest, st.message());
    }
  }
  fuse::FuseServer* s = l->server.get();
  l->serve = std::thread([s, dir] {
    absl::Status st = s->Run();
    if (!st.ok()) spdlog::warn("layer at {}: {}", dir, st.message());
  });
  // The rest of the blob at the fetcher's low priority (readers' demand
  // fetches go first), after the delay a container's start takes or from
  // the first read of the layer, then checked against its digest. An
  // unmount stops it between two chunks.
  Layer* raw = l.get();
  l->background = std::thread([this, raw, blob, shared, estargz] {
    auto stop = [raw] { return raw->stop.HasBeenNotified(); };
    // Until the delay is over, or a container reads from this layer (it
    // wants its bytes now: a model being loaded).
    const absl::Time start = absl::Now() + opts_.background_delay;
    for (absl::Time now = absl::Now(); now < start && raw->tree->bytes_read() == 0;
         now = absl::Now()) {
      if (raw->stop.WaitForNotificationWithTimeout(std::min(absl::Milliseconds(20), start - now))) {
        return;
      }
    }
    if (stop()) return;
    if (estargz) {
      // File by file in the blob's order, which puts the files the image
      // asks to have first (before its prefetch landmark) first; each file's
      // chunks are checked as they land.
      std::vector<std::pair<uint64_t, uint32_t>> order;
      for (uint32_t i = 0; i < shared->nodes.size(); ++i) {
        const fuse::LayerNode& n = shared->nodes[i];
        if (S_ISREG(n.mode) && !n.chunks.empty()) order.push_back({n.chunks[0].blob_offset, i});
      }
      std::sort(order.begin(), order.end());
      for (const auto& [at, node] : order) {
        if (stop()) return;
        absl::Status st =
            fetcher_.Prefetch(fuse::EstargzFiles::Target(estargz, node), {}, {}, stop);
        if (absl::IsCancelled(st)) return;
        if (!st.ok()) {
          spdlog::warn("background fetch of layer {}: {}", blob.path, st.message());
          return;
        }
      }
      spdlog::info("layer {} fetched whole, every chunk checked against the TOC", blob.path);
      return;
    }
    // The whole blob in one prefetch, so that its chunks stay in flight from
    // the first to the last; the digest is checked at its end.
    absl::Status st = fetcher_.Prefetch(blob, {}, {}, stop);
    if (absl::IsCancelled(st)) return;
    if (!st.ok()) {
      spdlog::error("layer {}: {}", blob.path, st.message());
    } else {
      spdlog::info("layer {} fetched whole and checked against its digest", blob.path);
    }
  });
  spdlog::info("layer {} of {} {} at {} ({} entries, {} bytes)", layer.digest, layer.origin,
               adopt_init.empty() ? "mounted lazily" : "taken over", dir, files, layer.size);
  absl::MutexLock lock(&mu_);
  if (auto old = layers_.find(id); old != layers_.end()) Stop(*old->second);
  layers_[id] = std::move(l);
  return handoff.init;
}

absl::Status LazyLayers::Unmount(uint64_t id) {
  std::unique_ptr<Layer> l;
  {
    absl::MutexLock lock(&mu_);
    auto it = layers_.find(id);
    if (it == layers_.end()) return absl::OkStatus();
    l = std::move(it->second);
    layers_.erase(it);
    unmounted_bytes_read_ += l->tree->bytes_read();
  }
  Stop(*l);
  if (opts_.keeper) {
    if (absl::Status st = opts_.keeper->Delete(KeeperKey(id)); !st.ok()) {
      spdlog::warn("layer {}: FD keeper: {}", id, st.message());
    }
  }
  return absl::OkStatus();
}

LazyLayers::Stats LazyLayers::GetStats() {
  absl::MutexLock lock(&mu_);
  Stats s;
  s.layers = layers_.size();
  s.bytes_read = unmounted_bytes_read_;
  for (const auto& [id, l] : layers_) s.bytes_read += l->tree->bytes_read();
  return s;
}

bool LazyLayers::Mounted(uint64_t id) {
  absl::MutexLock lock(&mu_);
  return layers_.count(id) > 0;
}

}  // namespace strata::snapshotter
