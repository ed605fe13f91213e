// The CSI Identity and Node services over gRPC on a unix socket, driven as
// kubelet does, on real FUSE and bind mounts: stage and publish (repeated),
// read-only access, inline and static volumes, fsGroup, volume stats and
// condition; and every negative case with the code the spec names.
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/driver.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

class CsiNodeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    origin_ = dir_.path() + "/origin";
    std::filesystem::create_directories(origin_ + "/models");
    std::ofstream(origin_ + "/models/w.bin") << "weights";
    driver_ = std::make_unique<TestDriver>(dir_.path() + "/node", "node-a", false, "",
                                           std::vector<std::string>{"rw:file://" + origin_});
    staging_ = dir_.path() + "/kubelet/staging/pv-1";
    target_ = dir_.path() + "/kubelet/pods/p1/volumes/pv-1";
  }
  void TearDown() override {
    driver_.reset();
    UnmountUnder(dir_.path());
  }
  Context Origin() { return {{"origin", "file://" + origin_}}; }

  TempDir dir_;
  std::string origin_, staging_, target_;
  std::unique_ptr<TestDriver> driver_;
};

TEST_F(CsiNodeTest, IdentityAndNodeInfo) {
  grpc::ClientContext c1, c2, c3, c4, c5;
  ::csi::v1::GetPluginInfoResponse info;
  ASSERT_TRUE(driver_->identity().GetPluginInfo(&c1, {}, &info).ok());
  EXPECT_EQ(info.name(), "csi.strata.io");
  EXPECT_FALSE(info.vendor_version().empty());
  ::csi::v1::ProbeResponse probe;
  ASSERT_TRUE(driver_->identity().Probe(&c2, {}, &probe).ok());
  EXPECT_TRUE(probe.ready().value());
  ::csi::v1::GetPluginCapabilitiesResponse pc;
  ASSERT_TRUE(driver_->identity().GetPluginCapabilities(&c5, {}, &pc).ok());
  for (const auto& c : pc.capabilities()) {
    EXPECT_NE(c.service().type(), ::csi::v1::PluginCapability::Service::CONTROLLER_SERVICE)
        << "a node-only process advertised the controller";
  }
  ::csi::v1::NodeGetInfoResponse ni;
  ASSERT_TRUE(driver_->node().NodeGetInfo(&c3, {}, &ni).ok());
  EXPECT_EQ(ni.node_id(), "node-a");
  EXPECT_EQ(ni.accessible_topology().segments().at(kTopologyKey), "node-a");
  ::csi::v1::NodeGetCapabilitiesResponse caps;
  ASSERT_TRUE(driver_->node().NodeGetCapabilities(&c4, {}, &caps).ok());
  using Rpc = ::csi::v1::NodeServiceCapability::RPC;
  std::set<int> got;
  for (const auto& c : caps.capabilities()) got.insert(c.rpc().type());
  EXPECT_EQ(got, (std::set<int>{Rpc::STAGE_UNSTAGE_VOLUME, Rpc::GET_VOLUME_STATS,
                                Rpc::VOLUME_CONDITION, Rpc::VOLUME_MOUNT_GROUP}));
}

TEST_F(CsiNodeTest, LifecycleOnRealMountsIsIdempotent) {
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, Origin()).ok());
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, Origin()).ok());  // again: same answer
  EXPECT_EQ(ReadPath(staging_ + "/models/w.bin"), "weights");

  ASSERT_TRUE(driver_->Publish("pv-1", staging_, target_, false).ok());
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, target_, false).ok());
  EXPECT_EQ(ReadPath(target_ + "/models/w.bin"), "weights");
  std::ofstream(target_ + "/models/out.txt") << "from a pod";
  EXPECT_EQ(ReadPath(origin_ + "/models/out.txt"), "from a pod");
  // The same target asked for read-only now: another publication, refused.
  EXPECT_EQ(driver_->Publish("pv-1", staging_, target_, true).error_code(), Code::ALREADY_EXISTS);

  ASSERT_TRUE(driver_->Publish("pv-1", staging_, target_ + "-ro", true).ok());
  EXPECT_EQ(ReadPath(target_ + "-ro/models/out.txt"), "from a pod");
  std::ofstream ro(target_ + "-ro/models/nope.txt");
  EXPECT_FALSE(ro.good()) << "a read-only publish accepted a write";

  // Unstaging while published would pull the volume from under the pods.
  EXPECT_EQ(driver_->Unstage("pv-1", staging_).error_code(), Code::FAILED_PRECONDITION);
  ASSERT_TRUE(driver_->Unpublish("pv-1", target_).ok());
  ASSERT_TRUE(driver_->Unpublish("pv-1", target_).ok());
  EXPECT_FALSE(std::filesystem::exists(target_));  // what the driver made is gone
  ASSERT_TRUE(driver_->Unpublish("pv-1", target_ + "-ro").ok());
  ASSERT_TRUE(driver_->Unstage("pv-1", staging_).ok());
  ASSERT_TRUE(driver_->Unstage("pv-1", staging_).ok());
  EXPECT_FALSE(strata::testing::IsMounted(staging_));
  EXPECT_TRUE(std::filesystem::exists(staging_)) << "the staging directory is kubelet's";
}

TEST_F(CsiNodeTest, ReaderOnlyAccessModesPublishReadOnly) {
  auto cap = MountCap(AccessMode::MULTI_NODE_READER_ONLY);
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, Origin(), cap).ok());
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, target_, /*readonly=*/false, cap).ok());
  EXPECT_EQ(ReadPath(target_ + "/models/w.bin"), "weights");
  EXPECT_FALSE(std::ofstream(target_ + "/models/x").good());
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/models/x"));
}

TEST_F(CsiNodeTest, MountGroupGivesTheGroupTheOwnersAccess) {
  ::chmod((origin_ + "/models/w.bin").c_str(), 0600);
  ASSERT_TRUE(
      driver_
          ->Stage("pv-1", staging_, Origin(), MountCap(AccessMode::MULTI_NODE_MULTI_WRITER, "4321"))
          .ok());
  struct stat st {};
  ASSERT_EQ(::stat((staging_ + "/models/w.bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_gid, 4321u);
  EXPECT_EQ(st.st_mode & 0070, 0060u);
  ASSERT_EQ(::stat((origin_ + "/models/w.bin").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "the origin's own modes are left alone";
  EXPECT_EQ(driver_
                ->Stage("pv-2", staging_ + "2", Origin(),
                        MountCap(AccessMode::MULTI_NODE_MULTI_WRITER, "staff"))
                .error_code(),
            Code::INVALID_ARGUMENT);
}

// Two pods on one node with different fsGroups: each sees its own group
// (the second through a mount of its own), also after a restart, and the
// extra mount goes with its last publication.
TEST_F(CsiNodeTest, EachPodSeesItsOwnFsGroup) {
  ::chmod((origin_ + "/models/w.bin").c_str(), 0600);
  auto cap_a = MountCap(AccessMode::MULTI_NODE_MULTI_WRITER, "4321");
  auto cap_b = MountCap(AccessMode::MULTI_NODE_MULTI_WRITER, "5555");
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, Origin(), cap_a).ok());
  std::string pod_a = target_ + "-a", pod_b = target_ + "-b", pod_c = target_ + "-c";
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, pod_a, false, cap_a).ok());
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, pod_b, false, cap_b).ok());
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, pod_b, false, cap_b).ok());  // again
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, pod_c, false, cap_b).ok());
  auto group_of = [](const std::string& path) {
    struct stat st {};
    return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_gid) : -1;
  };
  EXPECT_EQ(group_of(pod_a + "/models/w.bin"), 4321);
  EXPECT_EQ(group_of(pod_b + "/models/w.bin"), 5555);
  EXPECT_EQ(group_of(pod_c + "/models/w.bin"), 5555);
  EXPECT_EQ(ReadPath(pod_b + "/models/w.bin"), "weights");
  std::ofstream(pod_b + "/models/from-b.txt") << "b";
  EXPECT_EQ(ReadPath(pod_a + "/models/from-b.txt"), "b");
  ::csi::v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(driver_->Stats("pv-1", pod_b, &stats).ok());
  EXPECT_FALSE(stats.volume_condition().abnormal()) << stats.volume_condition().message();

  driver_->Restart();
  EXPECT_EQ(group_of(pod_a + "/models/w.bin"), 4321);
  EXPECT_EQ(group_of(pod_b + "/models/w.bin"), 5555);
  EXPECT_EQ(ReadPath(pod_c + "/models/w.bin"), "weights");

  ASSERT_TRUE(driver_->Unpublish("pv-1", pod_b).ok());
  EXPECT_EQ(group_of(pod_c + "/models/w.bin"), 5555) << "pod c still uses the group mount";
  ASSERT_TRUE(driver_->Unpublish("pv-1", pod_c).ok());
  EXPECT_TRUE(std::filesystem::is_empty(dir_.path() + "/node/group-mounts"))
      << "the group mount went with its last publication";
  ASSERT_TRUE(driver_->Unpublish("pv-1", pod_a).ok());
  ASSERT_TRUE(driver_->Unstage("pv-1", staging_).ok());
}

TEST_F(CsiNodeTest, StaticVolumeOptionsAreChecked) {
  Context ctx = Origin();
  ctx["chunkSize"] = "1MiB";
  ctx["attrTTL"] = "0.5";
  ctx["csi.storage.k8s.io/pod.name"] = "p1";  // the CO's keys are fine
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, ctx).ok());
  EXPECT_EQ(ReadPath(staging_ + "/models/w.bin"), "weights");
  ASSERT_TRUE(driver_->Unstage("pv-1", staging_).ok());
  for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
           {"chunkSize", "3MiB"}, {"attrTTL", "soon"}, {"readOnly", "maybe"}, {"orign", "x"}}) {
    Context bad = Origin();
    bad[key] = value;
    grpc::Status st = driver_->Stage("pv-1", staging_, bad);
    EXPECT_EQ(st.error_code(), Code::INVALID_ARGUMENT) << key;
    EXPECT_THAT(st.error_message(), HasSubstr(key.substr(0, 4))) << key;
  }
}

// A pod names an inline volume's origin itself: only what the node's
// administrator allowed is served, never a way onto the node.
TEST_F(CsiNodeTest, InlineOriginsMustBeAllowedByTheNode) {
  const std::string allowed = dir_.path() + "/allowed", other = dir_.path() + "/other";
  std::filesystem::create_directories(allowed + "/models");
  std::filesystem::create_directories(other);
  std::ofstream(allowed + "/models/w.bin") << "weights";
  std::ofstream(other + "/token") << "service account token";
  std::filesystem::create_directory_symlink(other, allowed + "/escape");
  driver_.reset();
  driver_ = std::make_unique<TestDriver>(dir_.path() + "/node", "node-a", false, "",
                                         std::vector<std::string>{"file://" + allowed});
  auto publish = [&](const std::string& origin, bool writable = false) {
    Context ctx{{"origin", origin}, {"csi.storage.k8s.io/ephemeral", "true"}};
    if (writable) ctx["readOnly"] = "false";
    return driver_->Publish("csi-inline", "", target_, false, MountCap(), ctx);
  };
  for (const std::string& bad :
       {"file://" + other, std::string("file:///var/lib/kubelet/pods"),
        "file://" + allowed + "/../other", "file://" + allowed + "/./models",
        "file://" + allowed + "-evil", "file://" + allowed + "//models",
        std::string("http://169.254.169.254/latest/meta-data")}) {
    grpc::Status st = publish(bad);
    EXPECT_EQ(st.error_code(), Code::PERMISSION_DENIED) << bad;
    EXPECT_THAT(st.error_message(), HasSubstr("--allowed-inline-origins")) << bad;
    EXPECT_FALSE(strata::testing::IsMounted(target_)) << bad;
  }
  // A symlink under the allowed directory is not a way out of it.
  EXPECT_FALSE(publish("file://" + allowed + "/escape").ok());
  EXPECT_FALSE(strata::testing::IsMounted(target_));
  // Writes need an "rw:" entry.
  EXPECT_EQ(publish("file://" + allowed + "/models", true).error_code(), Code::PERMISSION_DENIED);
  // What is allowed is served, read-only.
  grpc::Status st = publish("file://" + allowed + "/models");
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(ReadPath(target_ + "/w.bin"), "weights");
  EXPECT_FALSE(std::ofstream(target_ + "/new").good());
  ASSERT_TRUE(driver_->Unpublish("csi-inline", target_).ok());

  // A node that allows nothing (the default) serves no inline volume.
  driver_.reset();
  driver_ = std::make_unique<TestDriver>(dir_.path() + "/node", "node-a");
  st = publish("file://" + allowed + "/models");
  EXPECT_EQ(st.error_code(), Code::PERMISSION_DENIED);
  EXPECT_THAT(st.error_message(), HasSubstr("allows no inline origins"));
}

TEST_F(CsiNodeTest, VolumeIdsWithControlCharactersOrHashAreRefused) {
  for (const std::string& id : {std::string("pv\n1"), std::string("pv#gid=1"),
                                std::string("pv\x01"), std::string("pv\0x", 4)}) {
    EXPECT_EQ(driver_->Stage(id, staging_, Origin()).error_code(), Code::INVALID_ARGUMENT);
    EXPECT_FALSE(strata::testing::IsMounted(staging_));
  }
  // A ',' cannot add mount options through the file system's name.
  ASSERT_TRUE(driver_->Stage("pv,suid,dev", staging_, Origin()).ok());
  std::ifstream mounts("/proc/self/mountinfo");
  std::string line, found;
  while (std::getline(mounts, line)) {
    if (line.find(" " + staging_ + " ") != std::string::npos) found = line;
  }
  EXPECT_THAT(found, HasSubstr("nosuid"));
  EXPECT_THAT(found, HasSubstr("nodev"));
  ASSERT_TRUE(driver_->Unstage("pv,suid,dev", staging_).ok());
}

TEST(InlineOriginsTest, URLsAreMatchedByTheirParts) {
  auto origins = InlineOrigins::Parse({"https://models.example",
                                       "rw:s3://bucket/team?endpoint=http://127.0.0.1:9000",
                                       "oci://registry.example:5000/models/llama"});
  ASSERT_TRUE(origins.ok()) << origins.status();
  auto allowed = [&](const std::string& url) { return origins->Check(url).ok(); };
  EXPECT_TRUE(allowed("https://models.example/llama/w.bin"));
  EXPECT_TRUE(allowed("https://models.example"));
  EXPECT_FALSE(allowed("https://models.example.evil/w.bin"));
  EXPECT_FALSE(allowed("https://models.example@evil/w.bin"));
  EXPECT_FALSE(allowed("https://models.example:8443/w.bin"));
  EXPECT_FALSE(allowed("https://models.example/a/../../w.bin"));
  EXPECT_FALSE(allowed("https://models.example/%2E%2e/w.bin"));
  EXPECT_FALSE(allowed("https://models.example/w.bin#frag"));
  EXPECT_FALSE(allowed("http://models.example/w.bin"));
  EXPECT_TRUE(allowed("s3://bucket/team/x?endpoint=http://127.0.0.1:9000"));
  EXPECT_TRUE(origins->Check("s3://bucket/team/x?endpoint=http://127.0.0.1:9000")->writable);
  EXPECT_FALSE(allowed("s3://bucket/team/x"));  // the node's own endpoint and keys: not this
  EXPECT_FALSE(allowed("s3://bucket/team/x?endpoint=http://169.254.169.254"));
  EXPECT_FALSE(allowed("s3://bucket/teammate?endpoint=http://127.0.0.1:9000"));
  EXPECT_TRUE(allowed("oci://registry.example:5000/models/llama:v1"));
  EXPECT_TRUE(allowed("oci://registry.example:5000/models/llama@sha256:" + std::string(64, 'a')));
  EXPECT_FALSE(origins->Check("oci://registry.example:5000/models/llama:v1")->writable);
  EXPECT_FALSE(allowed("oci://registry.example:5000/models/llamas:v1"));
  EXPECT_FALSE(allowed("oci://registry.example:5000@evil/models/llama:v1"));
  for (const char* bad : {"file:///", "ftp://x/y", "file:///srv/../etc", "not a url"}) {
    EXPECT_FALSE(InlineOrigins::Parse({bad}).ok()) << bad;
  }
}

TEST_F(CsiNodeTest, InlineVolumeMountsAtTheTargetReadOnlyByDefault) {
  Context ctx = Origin();
  ctx["csi.storage.k8s.io/ephemeral"] = "true";
  ASSERT_TRUE(driver_->Publish("csi-inline-1", "", target_, false, MountCap(), ctx).ok());
  ASSERT_TRUE(driver_->Publish("csi-inline-1", "", target_, false, MountCap(), ctx).ok());
  EXPECT_EQ(ReadPath(target_ + "/models/w.bin"), "weights");
  EXPECT_FALSE(std::ofstream(target_ + "/models/x").good());
  ::csi::v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(driver_->Stats("csi-inline-1", target_, &stats).ok());
  EXPECT_FALSE(stats.volume_condition().abnormal());
  ASSERT_TRUE(driver_->Unpublish("csi-inline-1", target_).ok());
  EXPECT_FALSE(strata::testing::IsMounted(target_));
  EXPECT_FALSE(std::filesystem::exists(target_));

  ctx["readOnly"] = "false";
  ASSERT_TRUE(driver_->Publish("csi-inline-2", "", target_, false, MountCap(), ctx).ok());
  std::ofstream(target_ + "/models/y") << "scratch";
  EXPECT_EQ(ReadPath(origin_ + "/models/y"), "scratch");
  ASSERT_TRUE(driver_->Unpublish("csi-inline-2", target_).ok());
  // Without a staging path and without an origin there is nothing to mount.
  grpc::Status st = driver_->Publish("pv-9", "", target_, false);
  EXPECT_EQ(st.error_code(), Code::INVALID_ARGUMENT);
  EXPECT_THAT(st.error_message(), HasSubstr("staging_target_path"));
}

TEST_F(CsiNodeTest, VolumeStatsAndCondition) {
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, Origin()).ok());
  ASSERT_TRUE(driver_->Publish("pv-1", staging_, target_, false).ok());
  ::csi::v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(driver_->Stats("pv-1", target_, &stats).ok());
  ASSERT_EQ(stats.usage_size(), 2);
  struct statvfs sv {};
  ASSERT_EQ(::statvfs(origin_.c_str(), &sv), 0);
  EXPECT_EQ(stats.usage(0).unit(), ::csi::v1::VolumeUsage::BYTES);
  EXPECT_EQ(stats.usage(0).total(), static_cast<int64_t>(sv.f_blocks * sv.f_frsize));
  EXPECT_GT(stats.usage(0).available(), 0);
  EXPECT_EQ(stats.usage(1).unit(), ::csi::v1::VolumeUsage::INODES);
  EXPECT_FALSE(stats.volume_condition().abnormal()) << stats.volume_condition().message();
  // df inside the pod sees the same numbers.
  ASSERT_EQ(::statvfs(target_.c_str(), &sv), 0);
  EXPECT_EQ(static_cast<int64_t>(sv.f_blocks * sv.f_frsize), stats.usage(0).total());

  // The origin goes away: abnormal, and the message says why.
  std::filesystem::rename(origin_, origin_ + ".moved");
  stats.Clear();
  ASSERT_TRUE(driver_->Stats("pv-1", staging_, &stats).ok());
  EXPECT_TRUE(stats.volume_condition().abnormal());
  EXPECT_THAT(stats.volume_condition().message(), HasSubstr("not reachable"));
  std::filesystem::rename(origin_ + ".moved", origin_);

  // The FUSE session dies (aborted from outside): abnormal.
  strata::testing::AbortFuse(staging_);
  // The daemon notices when its session ends: asked until it has, within a
  // bound that only a daemon that never notices reaches.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  do {
    stats.Clear();
    ASSERT_TRUE(driver_->Stats("pv-1", target_, &stats).ok());
    if (stats.volume_condition().abnormal()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  } while (std::chrono::steady_clock::now() < deadline);
  EXPECT_TRUE(stats.volume_condition().abnormal());
  EXPECT_THAT(stats.volume_condition().message(), HasSubstr("FUSE session"));

  EXPECT_EQ(driver_->Stats("pv-1", "some/path", &stats).error_code(), Code::NOT_FOUND);
  EXPECT_EQ(driver_->Stats("pv-9", target_, &stats).error_code(), Code::NOT_FOUND);
  EXPECT_EQ(driver_->Stats("", target_, &stats).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Stats("pv-1", "", &stats).error_code(), Code::INVALID_ARGUMENT);
}

TEST_F(CsiNodeTest, NegativeCasesGetTheSpecsCodes) {
  EXPECT_EQ(driver_->Stage("", staging_, Origin()).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Stage("pv-1", "", Origin()).error_code(), Code::INVALID_ARGUMENT);
  grpc::Status no_origin = driver_->Stage("pv-1", staging_, {});
  EXPECT_EQ(no_origin.error_code(), Code::INVALID_ARGUMENT);
  EXPECT_THAT(no_origin.error_message(), HasSubstr("origin"));
  EXPECT_EQ(driver_->Stage("pv-1", staging_, {{"origin", "gopher://x"}}).error_code(),
            Code::INVALID_ARGUMENT);
  // An origin that is not there: the precondition fails, nothing stays mounted.
  EXPECT_EQ(
      driver_->Stage("pv-1", staging_, {{"origin", "file://" + origin_ + "/none"}}).error_code(),
      Code::FAILED_PRECONDITION);
  EXPECT_FALSE(strata::testing::IsMounted(staging_));
  {
    ::csi::v1::VolumeCapability none;
    EXPECT_EQ(driver_->Stage("pv-1", staging_, Origin(), none).error_code(),
              Code::INVALID_ARGUMENT);
    ::csi::v1::VolumeCapability block;
    block.mutable_block();
    block.mutable_access_mode()->set_mode(AccessMode::SINGLE_NODE_WRITER);
    EXPECT_EQ(driver_->Stage("pv-1", staging_, Origin(), block).error_code(),
              Code::INVALID_ARGUMENT);
    ::csi::v1::VolumeCapability no_mode = MountCap();
    no_mode.clear_access_mode();
    EXPECT_EQ(driver_->Stage("pv-1", staging_, Origin(), no_mode).error_code(),
              Code::INVALID_ARGUMENT);
    ::csi::v1::VolumeCapability xfs = MountCap();
    xfs.mutable_mount()->set_fs_type("xfs");
    EXPECT_EQ(driver_->Stage("pv-1", staging_, Origin(), xfs).error_code(), Code::INVALID_ARGUMENT);
    ::csi::v1::VolumeCapability odd_flag = MountCap();
    odd_flag.mutable_mount()->add_mount_flags("sync");
    EXPECT_EQ(driver_->Stage("pv-1", staging_, Origin(), odd_flag).error_code(),
              Code::INVALID_ARGUMENT);
  }
  // Publishing what was never staged, or without a capability.
  EXPECT_EQ(driver_->Publish("pv-9", staging_, target_, false).error_code(),
            Code::FAILED_PRECONDITION);
  EXPECT_EQ(driver_->Publish("pv-9", staging_, target_, false, ::csi::v1::VolumeCapability())
                .error_code(),
            Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Publish("", staging_, target_, false).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Publish("pv-1", staging_, "", false).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Unpublish("", target_).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Unpublish("pv-1", "").error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Unstage("", staging_).error_code(), Code::INVALID_ARGUMENT);
  EXPECT_EQ(driver_->Unstage("pv-1", "").error_code(), Code::INVALID_ARGUMENT);
  // Never published, never staged: nothing to undo.
  EXPECT_TRUE(driver_->Unpublish("pv-9", target_).ok());
  EXPECT_TRUE(driver_->Unstage("pv-9", staging_).ok());
  // The same volume id staged elsewhere, or from another origin.
  ASSERT_TRUE(driver_->Stage("pv-1", staging_, Origin()).ok());
  EXPECT_EQ(driver_->Stage("pv-1", staging_ + "-other", Origin()).error_code(),
            Code::ALREADY_EXISTS);
  EXPECT_EQ(
      driver_->Stage("pv-1", staging_, {{"origin", "file://" + origin_ + "/models"}}).error_code(),
      Code::ALREADY_EXISTS);
  // Another volume on a staging path in use.
  EXPECT_EQ(driver_->Stage("pv-2", staging_, Origin()).error_code(), Code::ALREADY_EXISTS);
  ASSERT_TRUE(driver_->Unstage("pv-1", staging_).ok());
}

}  // namespace
}  // namespace strata::csi::testing
