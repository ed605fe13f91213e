// `strata node`: the per-node daemon. Today it owns the chunk store; the CSI
// node service, snapshotter, peer server and FUSE mounts join it later.
#include <csignal>
#include <cstdio>

#include "cache/chunk_store.h"
#include "cache/logging.h"
#include "cmd/commands.h"

namespace strata::cmd {

void AddNodeCommand(CLI::App& app, Runner& run) {
  struct Opts {
    std::string state_dir = DefaultStateDir();
    std::string cache_dir;
    std::string capacity = "0";
    std::string chunk_size = "4MiB";
  };
  auto o = std::make_shared<Opts>();
  CLI::App* c =
      app.add_subcommand("node", "Run the node daemon (chunk cache) until SIGINT/SIGTERM");
  c->add_option("--state-dir", o->state_dir, "Where state that outlives the process lives")
      ->capture_default_str();
  c->add_option("--cache-dir", o->cache_dir, "Chunk cache directory (default: STATE_DIR/cache)");
  c->add_option("--cache-capacity", o->capacity,
                "Byte budget of the cache, e.g. 100GiB (0: 80% of its file system)")
      ->capture_default_str();
  c->add_option("--chunk-size", o->chunk_size, "Default chunk size")->capture_default_str();
  c->callback([o, &run] {
    run = [o]() -> int {
      auto capacity = ParseSize(o->capacity);
      auto chunk = ParseSize(o->chunk_size);
      if (!capacity.ok() || !chunk.ok()) {
        spdlog::error("{}", (!capacity.ok() ? capacity.status() : chunk.status()).message());
        return 2;
      }
      sigset_t set = BlockStopSignals();  // before any thread starts

      cache::StoreOptions so;
      so.dir = o->cache_dir.empty() ? o->state_dir + "/cache" : o->cache_dir;
      so.capacity_bytes = *capacity;
      so.chunk_size = static_cast<uint32_t>(*chunk);
      so.degrade_on_error = true;
      auto store = cache::ChunkStore::Open(so);
      if (!store.ok()) {
        spdlog::error("cannot open the chunk store: {}", store.status().message());
        return 1;
      }
      cache::StoreStats s = (*store)->Stats();
      std::printf(
          "strata node: state in %s, chunk cache in %s (%llu objects, %.1f of %.1f GiB used%s)\n",
          o->state_dir.c_str(), so.dir.c_str(), static_cast<unsigned long long>(s.objects),
          s.used_bytes / 1073741824.0, s.capacity_bytes / 1073741824.0,
          s.degraded ? ", NOT CACHING: " : "");
      if (s.degraded) std::printf("  %s\n", s.health.c_str());
      std::printf("strata node: running; stop with Ctrl-C or SIGTERM\n");
      std::fflush(stdout);
      int sig = 0;
      sigwait(&set, &sig);
      spdlog::info("received signal {}; flushing the cache index", sig);
      (*store)->Flush();
      std::printf("strata node: stopped\n");
      return 0;
    };
  });
}

}  // namespace strata::cmd
