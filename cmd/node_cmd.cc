// `strata node`: the per-node daemon. It owns the chunk cache and, with
// --csi-endpoint, serves CSI Identity and Node (and Controller with
// --controller) on a unix socket, hosting the volumes' FUSE filesystems.
// `strata controller`: CSI Identity and Controller alone.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>

#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "cache/logging.h"
#include "cmd/commands.h"
#include "csi/controller_service.h"
#include "csi/node_service.h"

namespace strata::cmd {
namespace {

// A gRPC server for `services` on `endpoint` (unix:///path or host:port);
// a stale socket file from a previous run is removed first.
std::unique_ptr<grpc::Server> ServeGrpc(const std::string& endpoint,
                                        std::initializer_list<grpc::Service*> services) {
  if (endpoint.rfind("unix://", 0) == 0) {
    std::filesystem::path socket = endpoint.substr(7);
    std::error_code ec;
    std::filesystem::create_directories(socket.parent_path(), ec);
    ::unlink(socket.c_str());
  }
  grpc::ServerBuilder b;
  b.AddListeningPort(endpoint, grpc::InsecureServerCredentials());
  for (grpc::Service* s : services) {
    if (s) b.RegisterService(s);
  }
  auto server = b.BuildAndStart();
  if (!server) spdlog::error("cannot serve gRPC on {}", endpoint);
  return server;
}

struct ControllerFlags {
  std::string default_origin;
};

void AddControllerFlags(CLI::App* c, ControllerFlags& f) {
  c->add_option("--default-origin", f.default_origin,
                "Origin of StorageClasses that name none (file:///dir, s3://bucket/prefix)");
}

}  // namespace

void AddNodeCommand(CLI::App& app, Runner& run) {
  struct Opts {
    std::string state_dir = DefaultStateDir();
    std::string cache_dir;
    std::string capacity = "0";
    std::string chunk_size = "4MiB";
    std::string csi_endpoint;
    std::string node_id;
    bool controller = false;
    ControllerFlags cf;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* c = app.add_subcommand(
      "node", "Run the node daemon (chunk cache, CSI node service) until SIGINT/SIGTERM");
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
  c->add_flag("--controller", o->controller,
              "Serve the CSI Controller too (small clusters, tests)");
  AddControllerFlags(c, o->cf);
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
      std::unique_ptr<csi::StateDb> node_db, controller_db;
      std::unique_ptr<csi::IdentityService> identity;
      std::unique_ptr<csi::NodeService> node;
      std::unique_ptr<csi::ControllerService> controller;
      std::unique_ptr<grpc::Server> server;
      if (!o->csi_endpoint.empty()) {
        std::string node_id = o->node_id;
        if (node_id.empty()) {
          char host[256] = {};
          ::gethostname(host, sizeof host - 1);
          node_id = host;
        }
        std::string staging = so.dir + "/staging";
        std::filesystem::create_directories(staging);
        auto db = csi::StateDb::Open(o->state_dir + "/csi-node");
        if (!db.ok()) {
          spdlog::error("{}", db.status().message());
          return 1;
        }
        node_db = std::move(*db);
        if (o->controller) {
          auto cdb = csi::StateDb::Open(o->state_dir + "/csi-controller");
          if (!cdb.ok()) {
            spdlog::error("{}", cdb.status().message());
            return 1;
          }
          controller_db = std::move(*cdb);
          controller = std::make_unique<csi::ControllerService>(
              *controller_db, csi::ControllerOptions{o->cf.default_origin});
        }
        identity = std::make_unique<csi::IdentityService>(csi::kDriverName, o->controller);
        // Mounts again what was staged and published before a restart.
        node = std::make_unique<csi::NodeService>(
            **store, fetcher, csi::NodeOptions{node_id, staging, node_db.get()});
        server = ServeGrpc(o->csi_endpoint, {identity.get(), node.get(), controller.get()});
        if (!server) return 1;
        std::printf("strata node: CSI Identity%s on %s (node id %s)\n",
                    controller ? ", Node and Controller" : " and Node", o->csi_endpoint.c_str(), node_id.c_str());
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
      node.reset();  // stops serving; the records stay for the next start
      (*store)->Flush();
      std::printf("strata node: stopped\n");
      return 0;
    };
  });
}

void AddControllerCommand(CLI::App& app, Runner& run) {
  struct Opts {
    std::string state_dir = DefaultStateDir() + "-controller";
    std::string csi_endpoint = "unix:///csi/csi.sock";
    ControllerFlags cf;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* c = app.add_subcommand(
      "controller", "Serve CSI Identity and Controller (dynamic volumes) until SIGINT/SIGTERM");
  c->add_option("--state-dir", o->state_dir, "Where the volume records live")
      ->capture_default_str();
  c->add_option("--csi-endpoint", o->csi_endpoint, "Where to serve CSI")->capture_default_str();
  AddControllerFlags(c, o->cf);
  c->callback([o, &run] {
    run = [o]() -> int {
      sigset_t set = BlockStopSignals();
      auto db = csi::StateDb::Open(o->state_dir);
      if (!db.ok()) {
        spdlog::error("{}", db.status().message());
        return 1;
      }
      csi::IdentityService identity(csi::kDriverName, /*controller=*/true);
      csi::ControllerService controller(**db, csi::ControllerOptions{o->cf.default_origin});
      auto server = ServeGrpc(o->csi_endpoint, {&identity, &controller});
      if (!server) return 1;
      std::printf("strata controller: CSI Identity and Controller on %s, records in %s\n",
                  o->csi_endpoint.c_str(), o->state_dir.c_str());
      std::fflush(stdout);
      int sig = 0;
      sigwait(&set, &sig);
      server->Shutdown();
      std::printf("strata controller: stopped\n");
      return 0;
    };
  });
}

}  // namespace strata::cmd
