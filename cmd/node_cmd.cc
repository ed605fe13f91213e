// `strata node`: the per-node daemon. It owns the chunk cache and, with
// --csi-endpoint, serves CSI Identity and Node (and Controller with
// --controller) on a unix socket, hosting the volumes' FUSE filesystems.
// `strata controller`: CSI Identity and Controller alone.
#include <grpcpp/grpcpp.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "cmd/admin.h"
#include "cmd/cache_stack.h"
#include "cmd/commands.h"
#include "cmd/metrics_server.h"
#include "cmd/peers.h"
#include "csi/controller_service.h"
#include "csi/node_service.h"
#include "fuse/open_log.h"
#include "snapshotter/snapshots_service.h"

namespace strata::cmd {
namespace {

// A gRPC server for `services` on `endpoint` (unix:///path or host:port);
// a stale socket file from a previous run is removed first.
absl::StatusOr<std::unique_ptr<grpc::Server>> ServeGrpc(
    const std::string& endpoint, std::initializer_list<grpc::Service*> services) {
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
  if (!server) return absl::UnavailableError(absl::StrCat("cannot serve gRPC on ", endpoint));
  return server;
}

struct ControllerFlags {
  std::string default_origin;
  std::string state_origin;
};

void AddControllerFlags(CLI::App* c, ControllerFlags& f) {
  c->add_option("--default-origin", f.default_origin,
                "Origin of StorageClasses that name none (file:///dir, s3://bucket/prefix)");
  c->add_option("--state-origin", f.state_origin,
                "Keep the volume records here (file:///shared/dir, s3://bucket/prefix; S3 "
                "credentials from the environment) instead of the state directory, so that they "
                "follow the controller to any node");
}

// The controller's records: at --state-origin, else in `dir`. Records an
// earlier start kept in `dir` move to --state-origin first (all of them,
// then `dir` is renamed so that they never come back).
absl::StatusOr<std::unique_ptr<csi::StateDb>> OpenControllerRecords(const ControllerFlags& f,
                                                                    const std::string& dir) {
  if (f.state_origin.empty()) return csi::StateDb::Open(dir);
  auto db = csi::StateDb::OpenAt(f.state_origin);
  if (!db.ok() || !std::filesystem::exists(dir + "/CURRENT")) return db;
  size_t moved = 0;
  {
    auto old = csi::StateDb::Open(dir);
    if (!old.ok()) return old.status();
    auto all = (*old)->Scan("");
    if (!all.ok()) return all.status();
    for (const auto& [key, value] : *all) {
      if (absl::Status st = (*db)->Put(key, value); !st.ok()) return st;
    }
    moved = all->size();
  }
  std::error_code ec;
  std::filesystem::rename(dir, dir + ".moved", ec);
  if (ec) {
    return absl::InternalError(absl::StrCat("moved the records of ", dir, " to ", f.state_origin,
                                            " but cannot rename it: ", ec.message()));
  }
  spdlog::info("moved {} records from {} to {} (the old copy is {}.moved)", moved, dir,
               f.state_origin, dir);
  return db;
}

struct NodeFlags {
  std::string state_dir = DefaultStateDir();
  CacheFlags cache;
  std::string csi_endpoint;
  std::string node_id;
  bool controller = false;
  ControllerFlags cf;
  std::string fd_keeper = "spawn";
  std::string fd_keeper_socket;
  double fd_keeper_grace = 120;
  int metrics_port = -1;
  std::string metrics_address = "127.0.0.1";
  std::string admin_socket;
  std::vector<std::string> allowed_inline;
  PeerFlags peers;
  std::string snapshotter_address;
  bool lazy_layers = true;
  double layer_fetch_delay = 1;
  bool passthrough = true;
};

std::unique_ptr<fuse::FdKeeperClient> OpenKeeper(const NodeFlags& o) {
  if (o.fd_keeper == "off") return nullptr;
  std::string socket =
      o.fd_keeper_socket.empty() ? o.state_dir + "/fd-keeper.sock" : o.fd_keeper_socket;
  // A sidecar may start after this container: give it a moment.
  int tries = o.fd_keeper == "connect" ? 150 : 1;
  for (int i = 0; i < tries; ++i) {
    auto c = fuse::FdKeeperClient::Connect(socket);
    if (c.ok()) return std::move(*c);
    if (i + 1 < tries) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  if (o.fd_keeper == "spawn") {
    std::error_code ec;
    std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
    auto c = fuse::SpawnFdKeeper(exe, {socket, absl::Seconds(o.fd_keeper_grace), true},
                                 o.state_dir + "/fd-keeper.log");
    if (c.ok()) return std::move(*c);
    spdlog::warn("{}", c.status().message());
  }
  spdlog::warn(
      "no FD keeper on {}: after a restart, volumes are mounted again (pods holding "
      "them open see errors until they reopen)",
      socket);
  return nullptr;
}

struct FdKeeperFlags {
  std::string socket = DefaultStateDir() + "/fd-keeper.sock";
  double grace = 120;
  bool exit_when_idle = false;
};

absl::Status RunFdKeeper(const FdKeeperFlags& o) {
  sigset_t set = BlockStopSignals();
  std::atomic<bool> stop{false};
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&set, &sig);
    stop = true;
  });
  fuse::FdKeeperOptions fo{o.socket, absl::Seconds(o.grace), o.exit_when_idle};
  absl::Status st = fuse::ServeFdKeeper(fo, stop);
  if (!stop) ::kill(::getpid(), SIGTERM);  // idle exit: release the waiter
  waiter.join();
  // Another keeper serves the socket already: the node uses that one.
  if (absl::IsAlreadyExists(st)) {
    spdlog::info("{}", st.message());
    return absl::OkStatus();
  }
  return st;
}

absl::Status RunNode(const NodeFlags& o) {
  auto cache_options = o.cache.Parse();
  if (!cache_options.ok()) return cache_options.status();
  sigset_t set = BlockStopSignals();  // before any thread starts

  if (cache_options->store.dir.empty()) cache_options->store.dir = o.state_dir + "/cache";
  auto opened_peers = OpenPeers(o.peers);
  if (!opened_peers.ok()) return opened_peers.status();
  Peers peers = std::move(*opened_peers);
  if (peers.enabled()) cache_options->fetcher->peers = peers.client.get();
  // Files a killed predecessor gave the kernel to read itself: held before
  // the evictor can punch them (the kernel's reads never mark them used),
  // until the volumes are taken over and hold them per open.
  const std::string inode_dir = o.state_dir + "/csi-node-inodes";
  const std::string layer_opens_dir = o.state_dir + "/snapshotter-opens";
  cache_options->store.held_at_open = fuse::OpenLog::BackingsIn(inode_dir);
  for (std::string& b : fuse::OpenLog::BackingsIn(layer_opens_dir)) {
    cache_options->store.held_at_open.push_back(std::move(b));
  }
  auto cache = OpenDaemonCacheStack(*cache_options);
  if (!cache.ok()) return cache.status();
  cache::ChunkStore& store = *cache->store;
  cache::Fetcher& fetcher = *cache->fetcher;
  // The peer server goes before the store it serves, however this returns.
  absl::Cleanup stop_peers = [&peers] { peers.Stop(); };
  if (absl::Status st = peers.Serve(store, cache_options->store.memory_bytes); !st.ok()) return st;
  if (peers.enabled()) {
    std::printf("strata node: serving peers on %s (%s, %zu static peers%s%s)\n",
                o.peers.address.c_str(), o.peers.insecure ? "plain TCP" : "mutual TLS",
                o.peers.peers.size(), o.peers.service.empty() ? "" : ", DNS ",
                o.peers.service.c_str());
  }
  std::unique_ptr<AdminServer> admin;
  if (o.admin_socket != "off") {
    std::string path = o.admin_socket.empty() ? o.state_dir + "/admin.sock" : o.admin_socket;
    std::error_code ec;
    std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ec);
    auto a = AdminServer::Start(path, fetcher);
    if (a.ok()) {
      admin = std::move(*a);
    } else if (!o.admin_socket.empty()) {
      return a.status();
    } else {  // the default socket is a convenience, not a reason not to serve
      spdlog::warn("no admin socket ({}); strata prefetch cannot reach this node",
                   a.status().message());
    }
  }
  std::unique_ptr<csi::StateDb> node_db, controller_db;
  std::unique_ptr<fuse::FdKeeperClient> keeper;
  std::unique_ptr<csi::IdentityService> identity;
  std::unique_ptr<csi::NodeService> node;
  std::unique_ptr<csi::ControllerService> controller;
  std::unique_ptr<grpc::Server> server;
  // Mounts that must outlive a restart: volumes and lazily served layers.
  if (!o.csi_endpoint.empty() || !o.snapshotter_address.empty()) keeper = OpenKeeper(o);
  if (!o.csi_endpoint.empty()) {
    std::string node_id = o.node_id;
    if (node_id.empty()) {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      node_id = host;
    }
    auto db = csi::StateDb::Open(o.state_dir + "/csi-node");
    if (!db.ok()) return db.status();
    node_db = std::move(*db);
    if (o.controller) {
      auto cdb = OpenControllerRecords(o.cf, o.state_dir + "/csi-controller");
      if (!cdb.ok()) return cdb.status();
      controller_db = std::move(*cdb);
      controller = std::make_unique<csi::ControllerService>(
          *controller_db, csi::ControllerOptions{o.cf.default_origin});
    }
    identity = std::make_unique<csi::IdentityService>(csi::kDriverName, o.controller);
    // Mounts again what was staged and published before a restart.
    csi::NodeOptions no;
    no.node_id = node_id;
    no.staging_dir = cache->staging_dir;
    no.state = node_db.get();
    no.keeper = keeper.get();
    no.inode_dir = inode_dir;
    no.passthrough = o.passthrough;
    no.group_mount_dir = o.state_dir + "/csi-node-group-mounts";
    auto inline_origins = csi::InlineOrigins::Parse(o.allowed_inline);
    if (!inline_origins.ok()) return UsageError(inline_origins.status());
    no.inline_origins = std::move(*inline_origins);
    node = std::make_unique<csi::NodeService>(store, fetcher, no);
    auto grpc_server = ServeGrpc(o.csi_endpoint, {identity.get(), node.get(), controller.get()});
    if (!grpc_server.ok()) return grpc_server.status();
    server = std::move(*grpc_server);
    std::printf("strata node: CSI Identity%s on %s (node id %s)\n",
                controller ? ", Node and Controller" : " and Node", o.csi_endpoint.c_str(),
                node_id.c_str());
  }
  std::unique_ptr<snapshotter::LazyLayers> lazy_layers;
  std::unique_ptr<snapshotter::Snapshotter> snapshots;
  std::unique_ptr<snapshotter::SnapshotsService> snapshots_service;
  std::unique_ptr<grpc::Server> snapshots_server;
  if (!o.snapshotter_address.empty()) {
    if (o.lazy_layers) {
      snapshotter::LazyLayerOptions lo;
      lo.keeper = keeper.get();
      lo.background_delay = absl::Seconds(o.layer_fetch_delay);
      lo.open_log_dir = layer_opens_dir;
      lo.passthrough = o.passthrough;
      lazy_layers = std::make_unique<snapshotter::LazyLayers>(store, fetcher, lo);
    }
    auto sn = snapshotter::Snapshotter::Open({o.state_dir + "/snapshotter", lazy_layers.get()});
    if (!sn.ok()) return sn.status();
    snapshots = std::move(*sn);
    snapshots_service = std::make_unique<snapshotter::SnapshotsService>(*snapshots);
    auto s = ServeGrpc("unix://" + o.snapshotter_address, {snapshots_service.get()});
    if (!s.ok()) return s.status();
    snapshots_server = std::move(*s);
    std::printf("strata node: containerd snapshotter on %s (snapshots in %s/snapshotter)\n",
                o.snapshotter_address.c_str(), o.state_dir.c_str());
  }
  // Taken over (or mounted afresh): each passthrough open holds its own.
  store.ReleaseOpenHolds();
  std::unique_ptr<MetricsServer> metrics;
  if (o.metrics_port >= 0) {
    csi::NodeService* n = node.get();
    auto ms = MetricsServer::Start(
        o.metrics_address, o.metrics_port,
        [&, n] {
          std::string text = PrometheusText(
              store.Stats(), fetcher.Stats(),
              n ? std::optional<fuse::VolumeStats>(n->VolumeTotals()) : std::nullopt);
          text += peers.MetricsText();
          if (snapshotter::LazyLayers* lazy = lazy_layers.get()) {
            snapshotter::LazyLayers::Stats ls = lazy->GetStats();
            absl::StrAppend(
                &text, "# HELP strata_lazy_layers Image layers this node serves lazily.\n",
                "# TYPE strata_lazy_layers gauge\nstrata_lazy_layers ", ls.layers,
                "\n# HELP strata_lazy_layer_read_bytes_total Bytes containers read from lazily "
                "served layers.\n# TYPE strata_lazy_layer_read_bytes_total counter\n"
                "strata_lazy_layer_read_bytes_total ",
                ls.bytes_read, "\n");
          }
          if (n) {
            absl::StrAppend(&text, "# HELP strata_volumes Volumes this node serves.\n",
                            "# TYPE strata_volumes gauge\nstrata_volumes ", n->Volumes(),
                            "\n# HELP strata_volumes_dead Volumes whose FUSE session ended.\n",
                            "# TYPE strata_volumes_dead gauge\nstrata_volumes_dead ",
                            n->DeadVolumes(), "\n");
          }
          return text;
        },
        [&, n]() -> absl::Status {
          if (n && n->DeadVolumes() > 0) {
            return absl::UnavailableError(
                absl::StrCat(n->DeadVolumes(), " volumes' FUSE sessions have ended (see the log)"));
          }
          return store.health();
        });
    if (!ms.ok()) return ms.status();
    metrics = std::move(*ms);
    std::printf("strata node: metrics on http://%s:%d/metrics\n",
                o.metrics_address == "0.0.0.0" ? "127.0.0.1" : o.metrics_address.c_str(),
                metrics->port());
  }
  cache::StoreStats s = store.Stats();
  std::printf(
      "strata node: state in %s, chunk cache in %s (%llu objects, %.1f of %.1f GiB used%s)\n",
      o.state_dir.c_str(), cache_options->store.dir.c_str(),
      static_cast<unsigned long long>(s.objects), s.used_bytes / 1073741824.0,
      s.capacity_bytes / 1073741824.0, s.degraded ? ", NOT CACHING: " : "");
  if (s.degraded) std::printf("  %s\n", s.health.c_str());
  std::printf("strata node: running; stop with Ctrl-C or SIGTERM\n");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  spdlog::info("received signal {}; flushing the cache index", sig);
  admin.reset();  // prefetches in flight stop; the socket goes
  peers.Stop();   // askers fall back to others or their origin
  if (keeper) {
    // The mounts stay, held by the keeper, for the next daemon to take
    // over; this process only has to go, quickly, since requests queue
    // until the successor answers. FUSE requests in flight fail
    // (ECONNABORTED); CSI calls in flight are retried by kubelet.
    store.Flush();
    std::printf("strata node: stopped; mounts left to the FD keeper\n");
    std::fflush(stdout);
    ::_exit(0);
  }
  // Calls in flight get a moment; kubelet retries what is cut off.
  if (server) server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  if (snapshots_server) {
    snapshots_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  metrics.reset();  // it reads what goes next
  snapshots.reset();
  lazy_layers.reset();  // unmounts the layers: the containers over them are gone too
  node.reset();         // stops serving; the records stay for the next start
  store.Flush();
  std::printf("strata node: stopped\n");
  return absl::OkStatus();
}

struct ControllerCommandFlags {
  std::string state_dir = DefaultStateDir() + "-controller";
  std::string csi_endpoint = "unix:///csi/csi.sock";
  ControllerFlags cf;
};

absl::Status RunController(const ControllerCommandFlags& o) {
  sigset_t set = BlockStopSignals();
  auto db = OpenControllerRecords(o.cf, o.state_dir);
  if (!db.ok()) return db.status();
  csi::IdentityService identity(csi::kDriverName, /*controller=*/true);
  csi::ControllerService controller(**db, csi::ControllerOptions{o.cf.default_origin});
  auto server = ServeGrpc(o.csi_endpoint, {&identity, &controller});
  if (!server.ok()) return server.status();
  std::printf("strata controller: CSI Identity and Controller on %s, records in %s\n",
              o.csi_endpoint.c_str(),
              (o.cf.state_origin.empty() ? o.state_dir : o.cf.state_origin).c_str());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  (*server)->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  std::printf("strata controller: stopped\n");
  return absl::OkStatus();
}

}  // namespace

void AddFdKeeperCommand(CLI::App& app, Runner& run) {
  auto o = std::make_shared<FdKeeperFlags>();
  CLI::App* c = app.add_subcommand(
      "fd-keeper", "Hold FUSE descriptors so that strata node can restart under live mounts");
  c->add_option("--socket", o->socket, "Unix socket to serve on")->capture_default_str();
  c->add_option("--grace", o->grace,
                "Seconds to hold descriptors while no daemon is connected (then let them go)")
      ->capture_default_str();
  c->add_flag("--exit-when-idle", o->exit_when_idle,
              "Exit after the grace period with no daemon and nothing held");
  c->callback([o, &run] { run = StatusRunner([o] { return RunFdKeeper(*o); }); });
}

void AddNodeCommand(CLI::App& app, Runner& run) {
  auto o = std::make_shared<NodeFlags>();
  CLI::App* c = app.add_subcommand(
      "node", "Run the node daemon (chunk cache, CSI node service) until SIGINT/SIGTERM");
  c->add_option("--state-dir", o->state_dir, "Where state that outlives the process lives")
      ->capture_default_str();
  AddCacheFlags(*c, o->cache,
                {.dir = CacheFlagSpec::Dir::kUnderStateDir,
                 .capacity = true,
                 .memory = true,
                 .chunk_size = CacheFlagSpec::ChunkSize::kStore});
  c->add_option("--csi-endpoint", o->csi_endpoint,
                "Serve CSI Identity and Node here, e.g. unix:///csi/csi.sock (empty: no CSI)");
  c->add_option("--node-id", o->node_id, "This node's CSI node id (default: the host name)");
  c->add_flag("--controller", o->controller,
              "Serve the CSI Controller too (small clusters, tests)");
  AddControllerFlags(c, o->cf);
  c->add_option("--fd-keeper", o->fd_keeper,
                "Keep mounts alive across restarts in an FD keeper: spawn (use one, or start "
                "one), connect (use the one that runs beside, e.g. a sidecar) or off")
      ->check(CLI::IsMember({"spawn", "connect", "off"}))
      ->capture_default_str();
  c->add_option("--fd-keeper-socket", o->fd_keeper_socket,
                "The FD keeper's socket (default: STATE_DIR/fd-keeper.sock)");
  c->add_option("--fd-keeper-grace", o->fd_keeper_grace,
                "Seconds a spawned keeper holds mounts for a daemon that does not come back")
      ->capture_default_str();
  c->add_option("--metrics-port", o->metrics_port,
                "Port for /metrics and /healthz (0: any free port; -1: none)")
      ->capture_default_str();
  c->add_option("--admin-socket", o->admin_socket,
                "Socket (root's alone) through which `strata prefetch` warms this node's cache "
                "(default: STATE_DIR/admin.sock; off: none)");
  c->add_option("--allowed-inline-origins", o->allowed_inline,
                "Origin prefixes that inline volumes in pod specs may name, comma-separated "
                "(file:///srv/models, oci://registry/models/, s3://bucket/prefix?endpoint=...); "
                "read-only unless prefixed rw:. Default: none, inline volumes are refused")
      ->delimiter(',');
  c->add_option("--metrics-address", o->metrics_address,
                "Address of the metrics endpoint (0.0.0.0 for a scraper outside the pod)")
      ->capture_default_str();
  AddPeerFlags(*c, o->peers);
  c->add_option("--snapshotter-address", o->snapshotter_address,
                "Serve containerd's snapshots API on this unix socket, for a proxy_plugins "
                "entry of type snapshot (empty: no snapshotter)");
  c->add_flag("!--no-fuse-passthrough", o->passthrough,
              "Read every cached file through the daemon (by default, the kernel reads files "
              "whole in the cache from the cache's file itself: FUSE passthrough)");
  c->add_flag("!--no-lazy-layers", o->lazy_layers,
              "Let containerd pull every layer (by default, layers that can be read lazily are "
              "served from the registry through the cache without being pulled)");
  c->add_option("--layer-fetch-delay", o->layer_fetch_delay,
                "Seconds a layer served lazily waits, once mounted, before the rest of it is "
                "fetched in the background, so that a container's start goes first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  c->callback([o, &run] { run = StatusRunner([o] { return RunNode(*o); }); });
}

void AddControllerCommand(CLI::App& app, Runner& run) {
  auto o = std::make_shared<ControllerCommandFlags>();
  CLI::App* c = app.add_subcommand(
      "controller", "Serve CSI Identity and Controller (dynamic volumes) until SIGINT/SIGTERM");
  c->add_option("--state-dir", o->state_dir, "Where the volume records live")
      ->capture_default_str();
  c->add_option("--csi-endpoint", o->csi_endpoint, "Where to serve CSI")->capture_default_str();
  AddControllerFlags(c, o->cf);
  c->callback([o, &run] { run = StatusRunner([o] { return RunController(*o); }); });
}

}  // namespace strata::cmd
