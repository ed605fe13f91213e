// `strata node`: the per-node daemon. Today it owns the chunk store; the CSI
// node service, snapshotter, peer server and FUSE mounts join it later.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>

#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "cache/logging.h"
#include "cmd/commands.h"
#include "csi/node_service.h"

namespace strata::cmd {

void AddNodeCommand(CLI::App& app, Runner& run) {
  struct Opts {
    std::string state_dir = DefaultStateDir();
    std::string cache_dir;
    std::string capacity = "0";
    std::string chunk_size = "4MiB";
    std::string csi_endpoint;
    std::string node_id;
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
  c->add_option("--csi-endpoint", o->csi_endpoint,
                "Serve CSI Identity and Node here, e.g. unix:///csi/csi.sock (empty: no CSI)");
  c->add_option("--node-id", o->node_id, "This node's CSI node id (default: the host name)");
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
      cache::Fetcher fetcher(**store);
      std::unique_ptr<csi::IdentityService> identity;
      std::unique_ptr<csi::NodeService> node;
      std::unique_ptr<grpc::Server> server;
      if (!o->csi_endpoint.empty()) {
        std::string node_id = o->node_id;
        if (node_id.empty()) {
          char host[256] = {};
          ::gethostname(host, sizeof host - 1);
          node_id = host;
        }
        if (o->csi_endpoint.rfind("unix://", 0) == 0)
          ::unlink(o->csi_endpoint.substr(7).c_str());  // a stale socket
        std::string staging = so.dir + "/staging";
        std::filesystem::create_directories(staging);
        identity = std::make_unique<csi::IdentityService>(csi::kDriverName);
        node = std::make_unique<csi::NodeService>(**store, fetcher,
                                                  csi::NodeOptions{node_id, staging});
        grpc::ServerBuilder b;
        b.AddListeningPort(o->csi_endpoint, grpc::InsecureServerCredentials());
        b.RegisterService(identity.get());
        b.RegisterService(node.get());
        server = b.BuildAndStart();
        if (!server) {
          spdlog::error("cannot serve CSI on {}", o->csi_endpoint);
          return 1;
        }
        std::printf("strata node: CSI Identity and Node on %s (node id %s)\n",
                    o->csi_endpoint.c_str(), node_id.c_str());
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
      if (server) server->Shutdown();
      node.reset();  // unmounts the volumes it staged
      (*store)->Flush();
      std::printf("strata node: stopped\n");
      return 0;
    };
  });
}

}  // namespace strata::cmd
