// A Strata CSI driver in the test process, served over a real gRPC unix
// socket (one chunk cache, one state directory, Identity + Node and,
// optionally, Controller), and a client making the calls kubelet and the
// external provisioner make.
#pragma once

#include <grpcpp/grpcpp.h>
#include <sys/mount.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "csi/controller_service.h"
#include "csi/node_service.h"
#include "csi/state_db.h"
#include "gmock/gmock.h"
#include "tests/util/mount.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {

using strata::testing::ReadPath;
using strata::testing::SameBytes;
using strata::testing::TempDir;
using ::testing::HasSubstr;
using Code = grpc::StatusCode;
using Context = std::map<std::string, std::string>;
using AccessMode = ::csi::v1::VolumeCapability::AccessMode;

inline ::csi::v1::VolumeCapability MountCap(
    AccessMode::Mode mode = AccessMode::MULTI_NODE_MULTI_WRITER, const std::string& group = "") {
  ::csi::v1::VolumeCapability cap;
  cap.mutable_mount()->set_volume_mount_group(group);
  cap.mutable_access_mode()->set_mode(mode);
  return cap;
}

// The calls kubelet and the external provisioner make, over one channel,
// as one-line helpers.
class CsiClient {
 public:
  CsiClient() = default;
  explicit CsiClient(const std::shared_ptr<grpc::Channel>& channel) { Connect(channel); }
  void Connect(const std::shared_ptr<grpc::Channel>& channel) {
    id_stub_ = ::csi::v1::Identity::NewStub(channel);
    node_stub_ = ::csi::v1::Node::NewStub(channel);
    ctl_stub_ = ::csi::v1::Controller::NewStub(channel);
  }

  ::csi::v1::Identity::Stub& identity() { return *id_stub_; }
  ::csi::v1::Node::Stub& node() { return *node_stub_; }
  ::csi::v1::Controller::Stub& controller() { return *ctl_stub_; }

  grpc::Status Stage(const std::string& id, const std::string& path, const Context& context,
                     const ::csi::v1::VolumeCapability& cap = MountCap(),
                     const Context& secrets = {}) {
    grpc::ClientContext ctx;
    ::csi::v1::NodeStageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(path);
    *req.mutable_volume_capability() = cap;
    for (const auto& [k, v] : context) (*req.mutable_volume_context())[k] = v;
    for (const auto& [k, v] : secrets) (*req.mutable_secrets())[k] = v;
    ::csi::v1::NodeStageVolumeResponse resp;
    return node_stub_->NodeStageVolume(&ctx, req, &resp);
  }

  grpc::Status Publish(const std::string& id, const std::string& staging, const std::string& target,
                       bool readonly, const ::csi::v1::VolumeCapability& cap = MountCap(),
                       const Context& context = {}) {
    grpc::ClientContext ctx;
    ::csi::v1::NodePublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging);
    req.set_target_path(target);
    req.set_readonly(readonly);
    *req.mutable_volume_capability() = cap;
    for (const auto& [k, v] : context) (*req.mutable_volume_context())[k] = v;
    ::csi::v1::NodePublishVolumeResponse resp;
    return node_stub_->NodePublishVolume(&ctx, req, &resp);
  }

  grpc::Status Unpublish(const std::string& id, const std::string& target) {
    grpc::ClientContext ctx;
    ::csi::v1::NodeUnpublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_target_path(target);
    ::csi::v1::NodeUnpublishVolumeResponse resp;
    return node_stub_->NodeUnpublishVolume(&ctx, req, &resp);
  }

  grpc::Status Unstage(const std::string& id, const std::string& path) {
    grpc::ClientContext ctx;
    ::csi::v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(path);
    ::csi::v1::NodeUnstageVolumeResponse resp;
    return node_stub_->NodeUnstageVolume(&ctx, req, &resp);
  }

  grpc::Status Stats(const std::string& id, const std::string& path,
                     ::csi::v1::NodeGetVolumeStatsResponse* resp) {
    grpc::ClientContext ctx;
    ::csi::v1::NodeGetVolumeStatsRequest req;
    req.set_volume_id(id);
    req.set_volume_path(path);
    return node_stub_->NodeGetVolumeStats(&ctx, req, resp);
  }

  grpc::Status Create(const std::string& name, const Context& params, int64_t required,
                      ::csi::v1::CreateVolumeResponse* resp, int64_t limit = 0,
                      const Context& secrets = {}) {
    grpc::ClientContext ctx;
    ::csi::v1::CreateVolumeRequest req;
    req.set_name(name);
    *req.add_volume_capabilities() = MountCap();
    if (required || limit) {
      req.mutable_capacity_range()->set_required_bytes(required);
      req.mutable_capacity_range()->set_limit_bytes(limit);
    }
    for (const auto& [k, v] : params) (*req.mutable_parameters())[k] = v;
    for (const auto& [k, v] : secrets) (*req.mutable_secrets())[k] = v;
    return ctl_stub_->CreateVolume(&ctx, req, resp);
  }

  grpc::Status Delete(const std::string& id, const Context& secrets = {}) {
    grpc::ClientContext ctx;
    ::csi::v1::DeleteVolumeRequest req;
    req.set_volume_id(id);
    for (const auto& [k, v] : secrets) (*req.mutable_secrets())[k] = v;
    ::csi::v1::DeleteVolumeResponse resp;
    return ctl_stub_->DeleteVolume(&ctx, req, &resp);
  }

 private:
  std::unique_ptr<::csi::v1::Identity::Stub> id_stub_;
  std::unique_ptr<::csi::v1::Node::Stub> node_stub_;
  std::unique_ptr<::csi::v1::Controller::Stub> ctl_stub_;
};

class TestDriver : public CsiClient {
 public:
  // `dir` holds the cache, the state and the socket. With `controller`, the
  // driver also serves the Controller service. `allowed_inline` is the
  // node's --allowed-inline-origins.
  TestDriver(std::string dir, std::string node_id, bool controller = false,
             std::string default_origin = "", std::vector<std::string> allowed_inline = {})
      : dir_(std::move(dir)),
        node_id_(std::move(node_id)),
        controller_(controller),
        default_origin_(std::move(default_origin)),
        allowed_inline_(std::move(allowed_inline)) {
    cache::StoreOptions so;
    so.dir = dir_ + "/cache";
    store_ = std::move(*cache::ChunkStore::Open(so));
    fetcher_ = std::make_unique<cache::Fetcher>(*store_);
    Start();
  }
  ~TestDriver() { Shutdown(); }

  // What `strata node` does when it stops and starts again: the services
  // and their FUSE sessions go; the new ones read the records.
  void Restart() {
    Shutdown();
    Start();
  }

  void Shutdown() {
    if (server_) server_->Shutdown();
    server_.reset();
    node_.reset();
    controller_svc_.reset();
    node_db_.reset();
    controller_db_.reset();
  }

  NodeService& node_service() { return *node_; }
  cache::ChunkStore& store() { return *store_; }
  // Where volume `id`'s opens are logged, as `strata node` logs them.
  std::string open_log(const std::string& id) const {
    return absl::StrCat(dir_, "/state/inodes/", absl::WebSafeBase64Escape(id), ".opens");
  }

 private:
  void Start() {
    node_db_ = std::move(*StateDb::Open(dir_ + "/state/node"));
    identity_ = std::make_unique<IdentityService>(kDriverName, controller_);
    NodeOptions no;
    no.node_id = node_id_;
    no.staging_dir = dir_ + "/staging";
    no.state = node_db_.get();
    no.group_mount_dir = dir_ + "/group-mounts";
    no.inode_dir = dir_ + "/state/inodes";
    no.inline_origins = *InlineOrigins::Parse(allowed_inline_);
    node_ = std::make_unique<NodeService>(*store_, *fetcher_, no);
    std::string socket = "unix://" + dir_ + "/csi.sock";
    grpc::ServerBuilder b;
    b.AddListeningPort(socket, grpc::InsecureServerCredentials());
    b.RegisterService(identity_.get());
    b.RegisterService(node_.get());
    if (controller_) {
      controller_db_ = std::move(*StateDb::Open(dir_ + "/state/controller"));
      controller_svc_ =
          std::make_unique<ControllerService>(*controller_db_, ControllerOptions{default_origin_});
      b.RegisterService(controller_svc_.get());
    }
    server_ = b.BuildAndStart();
    Connect(grpc::CreateChannel(socket, grpc::InsecureChannelCredentials()));
  }

  std::string dir_, node_id_;
  bool controller_;
  std::string default_origin_;
  std::vector<std::string> allowed_inline_;
  std::unique_ptr<cache::ChunkStore> store_;
  std::unique_ptr<cache::Fetcher> fetcher_;
  std::unique_ptr<StateDb> node_db_, controller_db_;
  std::unique_ptr<IdentityService> identity_;
  std::unique_ptr<NodeService> node_;
  std::unique_ptr<ControllerService> controller_svc_;
  std::unique_ptr<grpc::Server> server_;
};

using strata::testing::UnmountUnder;

}  // namespace strata::csi::testing
