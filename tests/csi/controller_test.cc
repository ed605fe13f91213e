// The CSI Controller over gRPC: dynamic volumes as directories under a
// StorageClass's origin, with the idempotency, pagination and error codes
// the spec (and csi-sanity) expect.
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/driver.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

constexpr int64_t kGiB = 1ll << 30;

class CsiControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    origin_ = dir_.path() + "/volumes";
    std::filesystem::create_directories(origin_);
    driver_ = std::make_unique<TestDriver>(dir_.path() + "/d", "node-a", /*controller=*/true);
  }
  void TearDown() override {
    driver_.reset();
    UnmountUnder(dir_.path());
  }
  Context Params() { return {{"origin", "file://" + origin_}}; }

  TempDir dir_;
  std::string origin_;
  std::unique_ptr<TestDriver> driver_;
};

TEST_F(CsiControllerTest, CapabilitiesAndIdentity) {
  grpc::ClientContext c1, c2;
  ::csi::v1::ControllerGetCapabilitiesResponse caps;
  ASSERT_TRUE(driver_->controller().ControllerGetCapabilities(&c1, {}, &caps).ok());
  using Rpc = ::csi::v1::ControllerServiceCapability::RPC;
  std::set<int> got;
  for (const auto& c : caps.capabilities()) got.insert(c.rpc().type());
  EXPECT_EQ(got, (std::set<int>{Rpc::CREATE_DELETE_VOLUME, Rpc::LIST_VOLUMES, Rpc::GET_CAPACITY,
                                Rpc::EXPAND_VOLUME}));
  ::csi::v1::GetPluginCapabilitiesResponse pc;
  ASSERT_TRUE(driver_->identity().GetPluginCapabilities(&c2, {}, &pc).ok());
  bool controller = false;
  for (const auto& c : pc.capabilities())
    controller |= c.service().type() == ::csi::v1::PluginCapability::Service::CONTROLLER_SERVICE;
  EXPECT_TRUE(controller);
  // What is not advertised is Unimplemented.
  grpc::ClientContext c3;
  ::csi::v1::ControllerPublishVolumeResponse pr;
  EXPECT_EQ(driver_->controller().ControllerPublishVolume(&c3, {}, &pr).error_code(),
            Code::UNIMPLEMENTED);
}

TEST_F(CsiControllerTest, CreateIsIdempotentAndMakesTheDirectory) {
  ::csi::v1::CreateVolumeResponse a, b, c;
  ASSERT_TRUE(driver_->Create("pvc-1", Params(), 10 * kGiB, &a).ok());
  EXPECT_EQ(a.volume().volume_id(), "pvc-1");
  EXPECT_EQ(a.volume().capacity_bytes(), 10 * kGiB);
  EXPECT_EQ(a.volume().volume_context().at("origin"), "file://" + origin_ + "/pvc-1");
  EXPECT_TRUE(std::filesystem::is_directory(origin_ + "/pvc-1"));
  ASSERT_TRUE(driver_->Create("pvc-1", Params(), 10 * kGiB, &b).ok());
  EXPECT_EQ(b.volume().volume_id(), a.volume().volume_id());
  EXPECT_EQ(b.volume().volume_context().at("origin"), a.volume().volume_context().at("origin"));
  // Same name, another capacity.
  ASSERT_TRUE(driver_->Create("pvc-2", Params(), 10 * kGiB, &c, 10 * kGiB).ok());
  EXPECT_EQ(driver_->Create("pvc-2", Params(), 20 * kGiB, &c, 20 * kGiB).error_code(),
            Code::ALREADY_EXISTS);
  // Same name, another origin.
  std::filesystem::create_directories(origin_ + "2");
  EXPECT_EQ(
      driver_->Create("pvc-1", {{"origin", "file://" + origin_ + "2"}}, 10 * kGiB, &c).error_code(),
      Code::ALREADY_EXISTS);
  // A 128-character name (the spec's minimum to support).
  std::string longname(128, 'n');
  ASSERT_TRUE(driver_->Create(longname, Params(), 0, &c).ok());
  EXPECT_TRUE(std::filesystem::is_directory(origin_ + "/" + longname));
}

TEST_F(CsiControllerTest, CreateChecksItsArguments) {
  ::csi::v1::CreateVolumeResponse r;
  EXPECT_EQ(driver_->Create("", Params(), 0, &r).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Create("a/b", Params(), 0, &r).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Create("..", Params(), 0, &r).error_code(), Code::INVALID_ARGUMENT);
  grpc::Status no_origin = driver_->Create("v", {}, 0, &r);
  EXPECT_EQ(no_origin.error_code(), Code::INVALID_ARGUMENT);
  EXPECT_THAT(no_origin.error_message(), HasSubstr("origin"));
  EXPECT_EQ(driver_->Create("v", {{"origin", "file://" + origin_}, {"chunkSize", "5MiB"}}, 0, &r)
                .error_code(),
            Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Create("v", {{"origin", "file://" + origin_}, {"subPathFrom", "node"}}, 0, &r)
                .error_code(),
            Code::INVALID_ARGUMENT);
  EXPECT_EQ(
      driver_->Create("v", {{"origin", "file://" + origin_}, {"typo", "1"}}, 0, &r).error_code(),
      Code::INVALID_ARGUMENT);
  // subPathFrom=pvc without the provisioner's metadata.
  grpc::Status pvc =
      driver_->Create("v", {{"origin", "file://" + origin_}, {"subPathFrom", "pvc"}}, 0, &r);
  EXPECT_EQ(pvc.error_code(), Code::INVALID_ARGUMENT);
  EXPECT_THAT(pvc.error_message(), HasSubstr("extra-create-metadata"));
  // A capacity range that cannot be met.
  EXPECT_EQ(driver_->Create("v", Params(), 2 * kGiB, &r, kGiB).error_code(), Code::OUT_OF_RANGE);
  // An origin that is not there.
  EXPECT_EQ(driver_->Create("v", {{"origin", "file://" + origin_ + "/none"}}, 0, &r).error_code(),
            Code::FAILED_PRECONDITION);
  {
    grpc::ClientContext ctx;
    ::csi::v1::CreateVolumeRequest req;
    req.set_name("v");
    (*req.mutable_parameters())["origin"] = "file://" + origin_;
    EXPECT_EQ(driver_->controller().CreateVolume(&ctx, req, &r).error_code(),
              Code::INVALID_ARGUMENT)
        << "no capabilities";
    grpc::ClientContext ctx2;
    req.add_volume_capabilities()->mutable_block();
    EXPECT_EQ(driver_->controller().CreateVolume(&ctx2, req, &r).error_code(),
              Code::INVALID_ARGUMENT)
        << "block";
  }
  EXPECT_TRUE(std::filesystem::is_empty(origin_)) << "a refused create left a directory";
}

TEST_F(CsiControllerTest, SubPathFromPvcAndDeleteOrRetain) {
  ::csi::v1::CreateVolumeResponse r;
  Context p = Params();
  p["subPathFrom"] = "pvc";
  p["csi.storage.k8s.io/pvc/namespace"] = "team-a";
  p["csi.storage.k8s.io/pvc/name"] = "weights";
  ASSERT_TRUE(driver_->Create("pvc-1", p, 0, &r).ok());
  EXPECT_EQ(r.volume().volume_context().at("origin"), "file://" + origin_ + "/team-a/weights");
  std::ofstream(origin_ + "/team-a/weights/f") << "x";
  ASSERT_TRUE(driver_->Delete("pvc-1").ok());
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/team-a/weights"));
  ASSERT_TRUE(driver_->Delete("pvc-1").ok()) << "deleting again is fine";
  ASSERT_TRUE(driver_->Delete("never-made").ok());
  EXPECT_EQ(driver_->Delete("").error_code(), Code::INVALID_ARGUMENT);

  Context keep = Params();
  keep["onDelete"] = "retain";
  ASSERT_TRUE(driver_->Create("pvc-2", keep, 0, &r).ok());
  std::ofstream(origin_ + "/pvc-2/f") << "kept";
  ASSERT_TRUE(driver_->Delete("pvc-2").ok());
  EXPECT_TRUE(std::filesystem::exists(origin_ + "/pvc-2/f"));
  // The record is gone: the name can be made again.
  ASSERT_TRUE(driver_->Create("pvc-2", keep, kGiB, &r).ok());
  EXPECT_EQ(r.volume().capacity_bytes(), kGiB);
}

// A pod that can write its volume's parent (another volume of the class,
// the class's origin mounted whole) swaps volume directories for symlinks
// to the node's files: deleting the volumes removes the links, never what
// they point to.
TEST_F(CsiControllerTest, DeleteRemovesASwappedInSymlinkNotItsTarget) {
  const std::string outside = dir_.path() + "/outside";
  std::filesystem::create_directories(outside + "/sub");
  std::ofstream(outside + "/precious") << "keep";
  std::ofstream(outside + "/sub/also") << "keep";
  ::csi::v1::CreateVolumeResponse r;
  // The volume directory itself is a link.
  ASSERT_TRUE(driver_->Create("pvc-link", Params(), 0, &r).ok());
  std::filesystem::remove_all(origin_ + "/pvc-link");
  std::filesystem::create_directory_symlink(outside, origin_ + "/pvc-link");
  EXPECT_TRUE(driver_->Delete("pvc-link").ok());
  EXPECT_FALSE(std::filesystem::is_symlink(origin_ + "/pvc-link"));
  // A namespace directory above the volume is a link (namespace/name).
  Context p = Params();
  p["subPathFrom"] = "pvc";
  p["csi.storage.k8s.io/pvc/namespace"] = "team-b";
  p["csi.storage.k8s.io/pvc/name"] = "sub";
  ASSERT_TRUE(driver_->Create("pvc-ns", p, 0, &r).ok());
  std::filesystem::remove_all(origin_ + "/team-b");
  std::filesystem::create_directory_symlink(outside, origin_ + "/team-b");
  grpc::Status st = driver_->Delete("pvc-ns");
  EXPECT_FALSE(st.ok()) << "the volume's directory cannot be reached beneath the origin";
  // A link inside the volume is removed as a link.
  ASSERT_TRUE(driver_->Create("pvc-inner", Params(), 0, &r).ok());
  std::filesystem::create_directory_symlink(outside, origin_ + "/pvc-inner/escape");
  EXPECT_TRUE(driver_->Delete("pvc-inner").ok());
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/pvc-inner"));

  EXPECT_EQ(ReadPath(outside + "/precious"), "keep");
  EXPECT_EQ(ReadPath(outside + "/sub/also"), "keep");
  // Creating through a swapped namespace directory makes nothing outside.
  p["csi.storage.k8s.io/pvc/name"] = "new";
  EXPECT_FALSE(driver_->Create("pvc-ns-2", p, 0, &r).ok());
  EXPECT_FALSE(std::filesystem::exists(outside + "/new"));
}

TEST_F(CsiControllerTest, ValidateVolumeCapabilities) {
  ::csi::v1::CreateVolumeResponse r;
  ASSERT_TRUE(driver_->Create("pvc-1", Params(), 0, &r).ok());
  auto validate = [&](const std::string& id, std::vector<::csi::v1::VolumeCapability> caps,
                      ::csi::v1::ValidateVolumeCapabilitiesResponse* resp) {
    grpc::ClientContext ctx;
    ::csi::v1::ValidateVolumeCapabilitiesRequest req;
    req.set_volume_id(id);
    for (auto& c : caps) *req.add_volume_capabilities() = c;
    return driver_->controller().ValidateVolumeCapabilities(&ctx, req, resp);
  };
  ::csi::v1::ValidateVolumeCapabilitiesResponse resp;
  ASSERT_TRUE(validate("pvc-1", {MountCap(AccessMode::MULTI_NODE_MULTI_WRITER)}, &resp).ok());
  ASSERT_TRUE(resp.has_confirmed());
  EXPECT_EQ(resp.confirmed().volume_capabilities_size(), 1);
  ::csi::v1::VolumeCapability block;
  block.mutable_block();
  block.mutable_access_mode()->set_mode(AccessMode::SINGLE_NODE_WRITER);
  resp.Clear();
  ASSERT_TRUE(validate("pvc-1", {block}, &resp).ok());
  EXPECT_FALSE(resp.has_confirmed());
  EXPECT_THAT(resp.message(), HasSubstr("block"));
  EXPECT_EQ(validate("", {MountCap()}, &resp).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(validate("pvc-1", {}, &resp).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(validate("fake-vol-id", {MountCap()}, &resp).error_code(), Code::NOT_FOUND);
  // A read-only class confirms reader modes only.
  Context ro = Params();
  ro["readOnly"] = "true";
  ASSERT_TRUE(driver_->Create("pvc-ro", ro, 0, &r).ok());
  EXPECT_EQ(r.volume().volume_context().at("readOnly"), "true");
  resp.Clear();
  ASSERT_TRUE(validate("pvc-ro", {MountCap(AccessMode::MULTI_NODE_MULTI_WRITER)}, &resp).ok());
  EXPECT_FALSE(resp.has_confirmed());
  resp.Clear();
  ASSERT_TRUE(validate("pvc-ro", {MountCap(AccessMode::MULTI_NODE_READER_ONLY)}, &resp).ok());
  EXPECT_TRUE(resp.has_confirmed());
}

TEST_F(CsiControllerTest, ListVolumesPaginates) {
  ::csi::v1::CreateVolumeResponse r;
  for (int i = 0; i < 7; ++i)
    ASSERT_TRUE(driver_->Create("pvc-" + std::to_string(i), Params(), kGiB, &r).ok());
  auto list = [&](int max, const std::string& token, ::csi::v1::ListVolumesResponse* resp) {
    grpc::ClientContext ctx;
    ::csi::v1::ListVolumesRequest req;
    req.set_max_entries(max);
    req.set_starting_token(token);
    return driver_->controller().ListVolumes(&ctx, req, resp);
  };
  ::csi::v1::ListVolumesResponse all;
  ASSERT_TRUE(list(0, "", &all).ok());
  EXPECT_EQ(all.entries_size(), 7);
  EXPECT_TRUE(all.next_token().empty());
  EXPECT_EQ(all.entries(0).volume().capacity_bytes(), kGiB);

  std::vector<std::string> seen;
  std::string token;
  ::csi::v1::ListVolumesResponse page;
  ASSERT_TRUE(list(3, "", &page).ok());
  ASSERT_EQ(page.entries_size(), 3);
  for (const auto& e : page.entries()) seen.push_back(e.volume().volume_id());
  // The last volume of the page is deleted before the next page is asked
  // for: the token still works, and nothing is skipped or repeated.
  ASSERT_TRUE(driver_->Delete(seen.back()).ok());
  token = page.next_token();
  for (int pages = 0; !token.empty() && pages < 10; ++pages) {
    page.Clear();
    ASSERT_TRUE(list(3, token, &page).ok());
    for (const auto& e : page.entries()) seen.push_back(e.volume().volume_id());
    token = page.next_token();
  }
  EXPECT_EQ(seen.size(), 7u);
  EXPECT_EQ(std::set<std::string>(seen.begin(), seen.end()).size(), 7u);

  EXPECT_EQ(list(0, "invalid-token", &page).error_code(), Code::ABORTED);
  EXPECT_EQ(list(-1, "", &page).error_code(), Code::INVALID_ARGUMENT);
}

TEST_F(CsiControllerTest, ExpandRecordsTheNewSize) {
  ::csi::v1::CreateVolumeResponse r;
  ASSERT_TRUE(driver_->Create("pvc-1", Params(), 10 * kGiB, &r).ok());
  auto expand = [&](const std::string& id, int64_t required,
                    ::csi::v1::ControllerExpandVolumeResponse* resp, bool range = true) {
    grpc::ClientContext ctx;
    ::csi::v1::ControllerExpandVolumeRequest req;
    req.set_volume_id(id);
    if (range) req.mutable_capacity_range()->set_required_bytes(required);
    *req.mutable_volume_capability() = MountCap();
    return driver_->controller().ControllerExpandVolume(&ctx, req, resp);
  };
  ::csi::v1::ControllerExpandVolumeResponse e;
  ASSERT_TRUE(expand("pvc-1", 11 * kGiB, &e).ok());
  EXPECT_EQ(e.capacity_bytes(), 11 * kGiB);
  EXPECT_FALSE(e.node_expansion_required());
  ASSERT_TRUE(expand("pvc-1", 5 * kGiB, &e).ok()) << "smaller: already big enough";
  EXPECT_EQ(e.capacity_bytes(), 11 * kGiB);
  ::csi::v1::ListVolumesResponse all;
  grpc::ClientContext ctx;
  ASSERT_TRUE(driver_->controller().ListVolumes(&ctx, {}, &all).ok());
  EXPECT_EQ(all.entries(0).volume().capacity_bytes(), 11 * kGiB);
  EXPECT_EQ(expand("", 11 * kGiB, &e).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(expand("pvc-1", 0, &e, false).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(expand("nope", 11 * kGiB, &e).error_code(), Code::NOT_FOUND);
}

TEST_F(CsiControllerTest, GetCapacityReportsThePosixOrigin) {
  grpc::ClientContext c1, c2;
  ::csi::v1::GetCapacityRequest req;
  (*req.mutable_parameters())["origin"] = "file://" + origin_;
  ::csi::v1::GetCapacityResponse resp;
  ASSERT_TRUE(driver_->controller().GetCapacity(&c1, req, &resp).ok());
  EXPECT_GT(resp.available_capacity(), 0);
  ::csi::v1::GetCapacityResponse empty;
  ASSERT_TRUE(driver_->controller().GetCapacity(&c2, {}, &empty).ok());  // no class: unknown
  EXPECT_EQ(empty.available_capacity(), 0);
}

TEST_F(CsiControllerTest, RecordsOutliveTheController) {
  ::csi::v1::CreateVolumeResponse r;
  ASSERT_TRUE(driver_->Create("pvc-1", Params(), kGiB, &r).ok());
  driver_->Restart();
  ::csi::v1::CreateVolumeResponse again;
  ASSERT_TRUE(driver_->Create("pvc-1", Params(), kGiB, &again).ok());
  EXPECT_EQ(again.volume().volume_context().at("origin"), r.volume().volume_context().at("origin"));
  ASSERT_TRUE(driver_->Delete("pvc-1").ok());
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/pvc-1"));
}

// csi-sanity and single-class clusters send no parameters: the
// controller's --default-origin stands in for the class's origin.
TEST_F(CsiControllerTest, DefaultOriginServesClassesWithoutOne) {
  driver_.reset();
  driver_ = std::make_unique<TestDriver>(dir_.path() + "/d2", "node-a", /*controller=*/true,
                                         "file://" + origin_);
  ::csi::v1::CreateVolumeResponse r;
  ASSERT_TRUE(driver_->Create("sanity", {}, 0, &r).ok());
  EXPECT_EQ(r.volume().volume_context().at("origin"), "file://" + origin_ + "/sanity");
  EXPECT_TRUE(std::filesystem::is_directory(origin_ + "/sanity"));
  grpc::ClientContext ctx;
  ::csi::v1::GetCapacityResponse cap;
  ASSERT_TRUE(driver_->controller().GetCapacity(&ctx, {}, &cap).ok());
  EXPECT_GT(cap.available_capacity(), 0);
  ASSERT_TRUE(driver_->Delete("sanity").ok());
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/sanity"));
}

}  // namespace
}  // namespace strata::csi::testing
