// The CSI Identity and Node services over gRPC on a unix socket, driven as
// kubelet does: stage, publish (read-write and read-only), unpublish,
// unstage, each repeated; and the negative cases with their status codes.
#include <grpcpp/grpcpp.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "csi/node_service.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/util/mount.h"

namespace strata::csi {
namespace {

using cache::testing::ReadPath;
using cache::testing::TempDir;
using ::testing::HasSubstr;

class CsiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    origin_ = dir_.path() + "/origin";
    std::filesystem::create_directories(origin_ + "/models");
    std::ofstream(origin_ + "/models/w.bin") << "weights";
    cache::StoreOptions so;
    so.dir = dir_.path() + "/cache";
    store_ = std::move(*cache::ChunkStore::Open(so));
    fetcher_ = std::make_unique<cache::Fetcher>(*store_);
    identity_ = std::make_unique<IdentityService>(kDriverName);
    node_ = std::make_unique<NodeService>(*store_, *fetcher_,
                                          NodeOptions{"node-a", dir_.path() + "/staging"});
    std::string socket = "unix://" + dir_.path() + "/csi.sock";
    grpc::ServerBuilder b;
    b.AddListeningPort(socket, grpc::InsecureServerCredentials());
    b.RegisterService(identity_.get());
    b.RegisterService(node_.get());
    server_ = b.BuildAndStart();
    ASSERT_TRUE(server_);
    auto channel = grpc::CreateChannel(socket, grpc::InsecureChannelCredentials());
    id_stub_ = ::csi::v1::Identity::NewStub(channel);
    node_stub_ = ::csi::v1::Node::NewStub(channel);
    staging_ = dir_.path() + "/kubelet/staging/pv-1";
    target_ = dir_.path() + "/kubelet/pods/p1/volumes/pv-1";
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
    node_.reset();  // unmounts what is still staged
    for (const std::string& p : {target_, target_ + "-ro", staging_}) {
      if (strata::testing::IsMounted(p)) ::umount2(p.c_str(), MNT_DETACH);
    }
  }

  ::csi::v1::VolumeCapability MountCap() {
    ::csi::v1::VolumeCapability cap;
    cap.mutable_mount();
    cap.mutable_access_mode()->set_mode(
        ::csi::v1::VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
    return cap;
  }

  grpc::Status Stage(const std::string& id, const std::string& path, const std::string& origin) {
    grpc::ClientContext ctx;
    ::csi::v1::NodeStageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(path);
    *req.mutable_volume_capability() = MountCap();
    if (!origin.empty()) (*req.mutable_volume_context())["origin"] = origin;
    ::csi::v1::NodeStageVolumeResponse resp;
    return node_stub_->NodeStageVolume(&ctx, req, &resp);
  }

  grpc::Status Publish(const std::string& id, const std::string& target, bool readonly) {
    grpc::ClientContext ctx;
    ::csi::v1::NodePublishVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging_);
    req.set_target_path(target);
    req.set_readonly(readonly);
    *req.mutable_volume_capability() = MountCap();
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

  grpc::Status Unstage(const std::string& id) {
    grpc::ClientContext ctx;
    ::csi::v1::NodeUnstageVolumeRequest req;
    req.set_volume_id(id);
    req.set_staging_target_path(staging_);
    ::csi::v1::NodeUnstageVolumeResponse resp;
    return node_stub_->NodeUnstageVolume(&ctx, req, &resp);
  }

  TempDir dir_;
  std::string origin_, staging_, target_;
  std::unique_ptr<cache::ChunkStore> store_;
  std::unique_ptr<cache::Fetcher> fetcher_;
  std::unique_ptr<IdentityService> identity_;
  std::unique_ptr<NodeService> node_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<::csi::v1::Identity::Stub> id_stub_;
  std::unique_ptr<::csi::v1::Node::Stub> node_stub_;
};

TEST_F(CsiNodeTest, IdentityAndNodeInfo) {
  grpc::ClientContext c1, c2, c3, c4;
  ::csi::v1::GetPluginInfoResponse info;
  ASSERT_TRUE(id_stub_->GetPluginInfo(&c1, {}, &info).ok());
  EXPECT_EQ(info.name(), "csi.strata.io");
  EXPECT_FALSE(info.vendor_version().empty());
  ::csi::v1::ProbeResponse probe;
  ASSERT_TRUE(id_stub_->Probe(&c2, {}, &probe).ok());
  EXPECT_TRUE(probe.ready().value());
  ::csi::v1::NodeGetInfoResponse ni;
  ASSERT_TRUE(node_stub_->NodeGetInfo(&c3, {}, &ni).ok());
  EXPECT_EQ(ni.node_id(), "node-a");
  EXPECT_EQ(ni.accessible_topology().segments().at(kTopologyKey), "node-a");
  ::csi::v1::NodeGetCapabilitiesResponse caps;
  ASSERT_TRUE(node_stub_->NodeGetCapabilities(&c4, {}, &caps).ok());
  ASSERT_EQ(caps.capabilities_size(), 1);
  EXPECT_EQ(caps.capabilities(0).rpc().type(),
            ::csi::v1::NodeServiceCapability::RPC::STAGE_UNSTAGE_VOLUME);
}

TEST_F(CsiNodeTest, LifecycleOnRealMountsIsIdempotent) {
  std::string origin = "file://" + origin_;
  ASSERT_TRUE(Stage("pv-1", staging_, origin).ok());
  ASSERT_TRUE(Stage("pv-1", staging_, origin).ok());  // again: same answer
  EXPECT_EQ(ReadPath(staging_ + "/models/w.bin"), "weights");

  ASSERT_TRUE(Publish("pv-1", target_, false).ok());
  ASSERT_TRUE(Publish("pv-1", target_, false).ok());
  EXPECT_EQ(ReadPath(target_ + "/models/w.bin"), "weights");
  std::ofstream(target_ + "/models/out.txt") << "from a pod";
  EXPECT_EQ(ReadPath(origin_ + "/models/out.txt"), "from a pod");

  ASSERT_TRUE(Publish("pv-1", target_ + "-ro", true).ok());
  EXPECT_EQ(ReadPath(target_ + "-ro/models/out.txt"), "from a pod");
  std::ofstream ro(target_ + "-ro/models/nope.txt");
  EXPECT_FALSE(ro.good()) << "a read-only publish accepted a write";

  ASSERT_TRUE(Unpublish("pv-1", target_).ok());
  ASSERT_TRUE(Unpublish("pv-1", target_).ok());
  EXPECT_FALSE(std::filesystem::exists(target_));  // what the driver made is gone
  ASSERT_TRUE(Unpublish("pv-1", target_ + "-ro").ok());
  ASSERT_TRUE(Unstage("pv-1").ok());
  ASSERT_TRUE(Unstage("pv-1").ok());
  EXPECT_FALSE(strata::testing::IsMounted(staging_));
}

TEST_F(CsiNodeTest, NegativeCasesGetTheSpecsCodes) {
  EXPECT_EQ(Stage("", staging_, "file://" + origin_).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Stage("pv-1", "", "file://" + origin_).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  grpc::Status no_origin = Stage("pv-1", staging_, "");
  EXPECT_EQ(no_origin.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(no_origin.error_message(), HasSubstr("origin"));
  EXPECT_EQ(Stage("pv-1", staging_, "gopher://x").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    ::csi::v1::NodeStageVolumeRequest req;
    req.set_volume_id("pv-1");
    req.set_staging_target_path(staging_);
    ::csi::v1::NodeStageVolumeResponse resp;
    EXPECT_EQ(node_stub_->NodeStageVolume(&ctx, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
    req.mutable_volume_capability()->mutable_block();
    grpc::ClientContext ctx2;
    EXPECT_EQ(node_stub_->NodeStageVolume(&ctx2, req, &resp).error_code(),
              grpc::StatusCode::INVALID_ARGUMENT);
  }
  // Publishing what was never staged.
  EXPECT_EQ(Publish("pv-9", target_, false).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(Unpublish("", target_).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Unpublish("pv-1", "").error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  // The same volume id staged elsewhere, or from another origin.
  ASSERT_TRUE(Stage("pv-1", staging_, "file://" + origin_).ok());
  EXPECT_EQ(Stage("pv-1", staging_ + "-other", "file://" + origin_).error_code(),
            grpc::StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(Unstage("pv-1").ok());
}

}  // namespace
}  // namespace strata::csi
