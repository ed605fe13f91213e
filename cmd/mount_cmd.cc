// `strata mount ORIGIN MOUNTPOINT`: an origin as a POSIX filesystem, served
// in the foreground through the node's chunk cache until SIGINT/SIGTERM.
// `strata unmount MOUNTPOINT` detaches a mount whose daemon is gone.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "cmd/cache_stack.h"
#include "cmd/commands.h"
#include "cmd/metrics_server.h"
#include "fuse/engine.h"
#include "fuse/volume_tree.h"

namespace strata::cmd {
namespace {

struct MountFlags {
  std::string origin, mountpoint;
  CacheFlags cache;
  double attr_ttl = 1.0;
  bool read_only = false;
  bool xattrs = false;
  bool passthrough = true;
  int metrics_port = 0;
};

absl::Status Mount(const MountFlags& o) {
  auto cache_options = o.cache.Parse();
  if (!cache_options.ok()) return cache_options.status();
  sigset_t set = BlockStopSignals();  // before any thread starts

  auto origin = origin::OpenOrigin(o.origin, {});
  if (!origin.ok()) return origin.status();
  std::shared_ptr<origin::Origin> shared = std::move(*origin);
  if (auto st = shared->Stat(""); !st.ok() || !st->is_dir) {
    return absl::Status(
        st.ok() ? absl::StatusCode::kFailedPrecondition : st.status().code(),
        absl::StrCat(o.origin, ": ", st.ok() ? "not a directory" : st.status().message()));
  }
  auto cache = OpenDaemonCacheStack(*cache_options);
  if (!cache.ok()) return cache.status();
  cache::ChunkStore& store = *cache->store;
  cache::Fetcher& fetcher = *cache->fetcher;
  fuse::VolumeOptions vo;
  vo.attr_ttl = absl::Seconds(o.attr_ttl);
  vo.chunk_size = cache_options->chunk_size;
  vo.read_only = o.read_only;
  vo.xattrs = o.xattrs;
  vo.staging_dir = cache->staging_dir;
  fuse::VolumeTree tree(shared, store, fetcher, vo);
  fuse::MountOptions mo;
  mo.mountpoint = o.mountpoint;
  mo.fsname = "strata:" + o.origin;
  mo.passthrough = o.passthrough;
  auto server = fuse::FuseServer::Mount(tree, mo);
  if (!server.ok()) return server.status();
  std::atomic<bool> serving{true};
  std::unique_ptr<MetricsServer> metrics;
  if (o.metrics_port >= 0) {
    auto ms = MetricsServer::Start(
        "127.0.0.1", o.metrics_port,
        [&] { return PrometheusText(store.Stats(), fetcher.Stats(), tree.Stats()); },
        [&]() -> absl::Status {
          if (!serving) return absl::UnavailableError("the FUSE session has ended");
          return store.health();
        });
    if (!ms.ok()) return ms.status();
    metrics = std::move(*ms);
  }
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&set, &sig);
    spdlog::info("signal {}: unmounting {}", sig, o.mountpoint);
    (*server)->Stop();
  });
  std::printf("mounted %s at %s (cache %s); stop with Ctrl-C or SIGTERM\n", o.origin.c_str(),
              o.mountpoint.c_str(), o.cache.dir.c_str());
  if (metrics) std::printf("metrics on http://127.0.0.1:%d/metrics\n", metrics->port());
  std::fflush(stdout);
  absl::Status st = (*server)->Run();
  serving = false;
  // Unmounted from outside: wake the waiter so it can be joined.
  ::kill(::getpid(), SIGTERM);
  waiter.join();
  server->reset();
  if (!st.ok()) return st;
  std::printf("unmounted %s\n", o.mountpoint.c_str());
  return absl::OkStatus();
}

}  // namespace

void AddMountCommands(CLI::App& app, Runner& run) {
  auto o = std::make_shared<MountFlags>();
  CLI::App* m =
      app.add_subcommand("mount", "Mount an origin (file://, http(s)://, s3://) as a filesystem");
  m->add_option("origin", o->origin, "Origin URL")->required();
  m->add_option("mountpoint", o->mountpoint, "Existing directory to mount on")->required();
  AddCacheFlags(*m, o->cache, {.memory = true, .chunk_size = CacheFlagSpec::ChunkSize::kVolume});
  m->add_option("--attr-ttl", o->attr_ttl, "Seconds metadata is cached (open always revalidates)")
      ->capture_default_str();
  m->add_flag("--read-only", o->read_only, "Refuse writes");
  m->add_flag("--xattrs", o->xattrs,
              "Serve the origin's user.* extended attributes (file:// only; costs a round trip "
              "per write)");
  m->add_flag("!--no-fuse-passthrough", o->passthrough,
              "Read every cached file through the daemon (by default, the kernel reads files "
              "whole in the cache from the cache's file itself: FUSE passthrough)");
  m->add_option("--metrics-port", o->metrics_port,
                "Port on 127.0.0.1 for /metrics and /healthz (0: any free port; -1: none)")
      ->capture_default_str();
  m->callback([o, &run] { run = StatusRunner([o] { return Mount(*o); }); });

  auto target = std::make_shared<std::string>();
  CLI::App* u =
      app.add_subcommand("unmount", "Detach a Strata mount (also one whose daemon is gone)");
  u->add_option("mountpoint", *target, "Mountpoint")->required();
  u->callback([target, &run] { run = StatusRunner([target] { return fuse::Unmount(*target); }); });
}

}  // namespace strata::cmd
