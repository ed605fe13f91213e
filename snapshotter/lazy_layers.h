// The layers Strata serves lazily: a Prepare whose labels name a layer in a
// registry (the CRI plugin's, or ctr-remote rpull's) is resolved in the
// registry, indexed from the blob through the chunk cache, and mounted as a
// layer tree (FUSE), so that containerd never downloads it. The rest of the
// blob is then fetched in the background at low priority, and checked
// against its digest before any file's bytes are served.
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "cache/fetcher.h"
#include "fuse/engine.h"
#include "fuse/fd_keeper.h"
#include "fuse/layer_tree.h"
#include "origin/origin.h"

namespace strata::snapshotter {

// A layer blob in a registry, as a snapshot's record keeps it.
struct RemoteLayer {
  std::string origin;  // oci://registry/repository
  std::string digest;  // sha256:...
  uint64_t size = 0;   // 0: not known yet (asked of the registry)
  // eStargz: the digest of its TOC, as the image's manifest gives it
  // (containerd.io/snapshot/stargz/toc.digest).
  std::string toc_digest;
};

// The layer a Prepare's labels name, if they name one: the CRI plugin's
// containerd.io/snapshot/cri.{image-ref,layer-digest} or ctr-remote's
// containerd.io/snapshot/remote/stargz.{reference,digest}, with an eStargz
// layer's containerd.io/snapshot/stargz/toc.digest. InvalidArgument
// when they name one badly (a reference or digest that does not parse).
absl::StatusOr<std::optional<RemoteLayer>> RemoteLayerFromLabels(
    const std::map<std::string, std::string>& labels);

struct LazyLayerOptions {
  origin::OriginOptions origin;  // registry credentials (docker config), TLS
  int fuse_threads = 8;
  // Holds each layer mount's /dev/fuse descriptor, so that a daemon
  // restarted after a crash takes the mounts over and containers reading
  // them carry on (null: a restart mounts the layers afresh, and running
  // containers over them see errors). Not owned.
  fuse::FdKeeperClient* keeper = nullptr;
  // How long a freshly mounted layer waits before the rest of it is fetched
  // in the background, unless a container reads from it first. A
  // container's start (runc, its entrypoint's first reads, which are
  // fetched at once) takes about a second, and the bulk fetch of a large
  // layer at full speed beside it made the start take about twice as long.
  // Readers' own fetches and their readahead do not wait.
  absl::Duration background_delay = absl::Seconds(1);
  // Where each layer mount logs the kernel's opens (layer-ID.opens), so
  // that a successor knows which files the kernel reads from the cache's
  // files itself; empty: nowhere, and no layer file is passed through.
  // Files that are whole objects (eStargz files, raw model layers) are
  // passed through once cached and checked; files inside a tar layer are
  // extents of its blob and always go through the daemon.
  std::string open_log_dir;
  bool passthrough = true;  // MountOptions::passthrough
};

class LazyLayers {
 public:
  LazyLayers(cache::ChunkStore& store, cache::Fetcher& fetcher, LazyLayerOptions options);
  ~LazyLayers();  // unmounts every layer

  // Resolves `layer` (its size, if not known), indexes it and mounts its
  // tree at `dir` under `id`; starts its background fetch. FailedPrecondition
  // when the layer is not in a format read lazily, InvalidArgument when its
  // index refuses it, the registry's error when it cannot be reached.
  // `layer.size` is set. Returns the mount's INIT request, which a
  // successor needs to take the mount over.
  //
  // With `adopt_init` (what an earlier Mount of `id` returned), takes over
  // the live mount at `dir` whose descriptor the keeper holds instead.
  // `indexes`, when given, keeps the index (and gives it back next time).
  absl::StatusOr<std::string> Mount(uint64_t id, RemoteLayer& layer, const std::string& dir,
                                    const std::string& adopt_init = "",
                                    fuse::LayerIndexStore* indexes = nullptr);
  bool can_adopt() const { return opts_.keeper != nullptr; }
  // Unmounts layer `id` (lazily: overlays using it keep it until they go).
  absl::Status Unmount(uint64_t id);
  bool Mounted(uint64_t id);

  struct Stats {
    uint64_t layers = 0;      // mounted now
    uint64_t bytes_read = 0;  // by containers, from every layer ever mounted
  };
  Stats GetStats();

 private:
  struct Layer {
    std::unique_ptr<fuse::LayerTree> tree;
    std::unique_ptr<fuse::FuseServer> server;
    std::thread serve, background;
    absl::Notification stop;  // the layer is being unmounted
  };
  void Stop(Layer& l);

  cache::ChunkStore& store_;
  cache::Fetcher& fetcher_;
  const LazyLayerOptions opts_;
  absl::Mutex mu_;
  std::map<uint64_t, std::unique_ptr<Layer>> layers_ ABSL_GUARDED_BY(mu_);
  uint64_t unmounted_bytes_read_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace strata::snapshotter
