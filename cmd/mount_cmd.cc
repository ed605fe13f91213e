// `strata mount ORIGIN MOUNTPOINT`: an origin as a POSIX filesystem, served
// in the foreground through the node's chunk cache until SIGINT/SIGTERM.
// `strata unmount MOUNTPOINT` detaches a mount whose daemon is gone.
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "base/logging.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "cmd/commands.h"
#include "cmd/metrics_server.h"
#include "fuse/engine.h"
#include "fuse/volume_tree.h"

namespace strata::cmd {

void AddMountCommands(CLI::App& app, Runner& run) {
  struct Opts {
    std::string origin, mountpoint;
    std::string cache_dir = DefaultStateDir() + "/cache";
    std::string chunk_size = "4MiB";
    std::string memory = "64MiB";
    double attr_ttl = 1.0;
    bool read_only = false;
    bool xattrs = false;
    int metrics_port = 0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* m =
      app.add_subcommand("mount", "Mount an origin (file://, http(s)://, s3://) as a filesystem");
  m->add_option("origin", o->origin, "Origin URL")->required();
  m->add_option("mountpoint", o->mountpoint, "Existing directory to mount on")->required();
  m->add_option("--cache-dir", o->cache_dir, "Chunk cache directory")->capture_default_str();
  m->add_option("--chunk-size", o->chunk_size, "Chunk size of this volume's objects")
      ->capture_default_str();
  m->add_option("--cache-memory", o->memory,
                "Just-filled chunks kept in memory for the readers right behind (0: none)")
      ->capture_default_str();
  m->add_option("--attr-ttl", o->attr_ttl, "Seconds metadata is cached (open always revalidates)")
      ->capture_default_str();
  m->add_flag("--read-only", o->read_only, "Refuse writes");
  m->add_flag("--xattrs", o->xattrs,
              "Serve the origin's user.* extended attributes (file:// only; costs a round trip "
              "per write)");
  m->add_option("--metrics-port", o->metrics_port,
                "Port on 127.0.0.1 for /metrics and /healthz (0: any free port; -1: none)")
      ->capture_default_str();
  m->callback([o, &run] {
    run = [o]() -> int {
      auto chunk = ParseSize(o->chunk_size);
      auto memory = ParseSize(o->memory);
      if (!chunk.ok() || !memory.ok()) {
        spdlog::error("{}", (!chunk.ok() ? chunk.status() : memory.status()).message());
        return 2;
      }
      sigset_t set = BlockStopSignals();  // before any thread starts

      auto origin = origin::OpenOrigin(o->origin, {});
      if (!origin.ok()) {
        spdlog::error("{}", origin.status().message());
        return 1;
      }
      std::shared_ptr<origin::Origin> shared = std::move(*origin);
      if (auto st = shared->Stat(""); !st.ok() || !st->is_dir) {
        spdlog::error("{}: {}", o->origin,
                      st.ok() ? "not a directory" : std::string(st.status().message()));
        return 1;
      }
      cache::StoreOptions so;
      so.dir = o->cache_dir;
      so.memory_bytes = *memory;
      auto daemon = OpenDaemonStore(so);
      if (!daemon) return 1;
      cache::ChunkStore* store = daemon->store.get();
      cache::Fetcher fetcher(*store);
      fuse::VolumeOptions vo;
      vo.attr_ttl = absl::Seconds(o->attr_ttl);
      vo.chunk_size = static_cast<uint32_t>(*chunk);
      vo.read_only = o->read_only;
      vo.xattrs = o->xattrs;
      vo.staging_dir = daemon->staging_dir;
      fuse::VolumeTree tree(shared, *store, fetcher, vo);
      fuse::MountOptions mo;
      mo.mountpoint = o->mountpoint;
      mo.fsname = "strata:" + o->origin;
      auto server = fuse::FuseServer::Mount(tree, mo);
      if (!server.ok()) {
        spdlog::error("{}", server.status().message());
        return 1;
      }
      std::atomic<bool> serving{true};
      std::unique_ptr<MetricsServer> metrics;
      if (o->metrics_port >= 0) {
        auto ms = MetricsServer::Start(
            "127.0.0.1", o->metrics_port,
            [&] { return PrometheusText(store->Stats(), fetcher.Stats(), tree.Stats()); },
            [&]() -> absl::Status {
              if (!serving) return absl::UnavailableError("the FUSE session has ended");
              return store->health();
            });
        if (!ms.ok()) {
          spdlog::error("{}", ms.status().message());
          return 1;
        }
        metrics = std::move(*ms);
      }
      std::thread waiter([&] {
        int sig = 0;
        sigwait(&set, &sig);
        spdlog::info("signal {}: unmounting {}", sig, o->mountpoint);
        (*server)->Stop();
      });
      std::printf("mounted %s at %s (cache %s); stop with Ctrl-C or SIGTERM\n", o->origin.c_str(),
                  o->mountpoint.c_str(), o->cache_dir.c_str());
      if (metrics) std::printf("metrics on http://127.0.0.1:%d/metrics\n", metrics->port());
      std::fflush(stdout);
      absl::Status st = (*server)->Run();
      serving = false;
      // Unmounted from outside: wake the waiter so it can be joined.
      ::kill(::getpid(), SIGTERM);
      waiter.join();
      server->reset();
      if (!st.ok()) {
        spdlog::error("{}", st.message());
        return 1;
      }
      std::printf("unmounted %s\n", o->mountpoint.c_str());
      return 0;
    };
  });

  auto target = std::make_shared<std::string>();
  CLI::App* u =
      app.add_subcommand("unmount", "Detach a Strata mount (also one whose daemon is gone)");
  u->add_option("mountpoint", *target, "Mountpoint")->required();
  u->callback([target, &run] {
    run = [target]() -> int {
      absl::Status st = fuse::Unmount(*target);
      if (!st.ok()) {
        spdlog::error("{}", st.message());
        return 1;
      }
      return 0;
    };
  });
}

}  // namespace strata::cmd
