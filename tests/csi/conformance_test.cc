// The driver end to end, as Kubernetes uses it: the external provisioner
// creates a volume from StorageClass parameters, kubelet stages and
// publishes it on two nodes (ReadWriteMany, close-to-open visibility), and
// a restarted node mounts and publishes again.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/driver.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

class CsiConformanceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    origin_ = dir_.path() + "/volumes";
    std::filesystem::create_directories(origin_);
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    UnmountUnder(dir_.path());
  }
  std::string Kubelet(const std::string& node, const std::string& rest) {
    return dir_.path() + "/" + node + "/kubelet/" + rest;
  }

  TempDir dir_;
  std::string origin_;
  std::unique_ptr<TestDriver> a_, b_;
};

TEST_F(CsiConformanceTest, DynamicVolumeLifecycleOnTwoNodes) {
  a_ = std::make_unique<TestDriver>(dir_.path() + "/a", "node-a", /*controller=*/true);
  b_ = std::make_unique<TestDriver>(dir_.path() + "/b", "node-b");
  ::csi::v1::CreateVolumeResponse created;
  ASSERT_TRUE(
      a_->Create("pvc-7", {{"origin", "file://" + origin_}, {"attrTTL", "1"}}, 1ll << 30, &created)
          .ok());
  Context ctx(created.volume().volume_context().begin(), created.volume().volume_context().end());
  const std::string id = created.volume().volume_id();

  std::string stage_a = Kubelet("a", "plugins/csi.strata.io/pv/pvc-7/globalmount");
  std::string stage_b = Kubelet("b", "plugins/csi.strata.io/pv/pvc-7/globalmount");
  std::string pod_a = Kubelet("a", "pods/pa/volumes/kubernetes.io~csi/pvc-7/mount");
  std::string pod_b = Kubelet("b", "pods/pb/volumes/kubernetes.io~csi/pvc-7/mount");
  for (int i = 0; i < 2; ++i) {  // kubelet repeats calls; each answer is the same
    ASSERT_TRUE(a_->Stage(id, stage_a, ctx).ok());
    ASSERT_TRUE(b_->Stage(id, stage_b, ctx).ok());
    ASSERT_TRUE(a_->Publish(id, stage_a, pod_a, false, MountCap(), ctx).ok());
    ASSERT_TRUE(b_->Publish(id, stage_b, pod_b, false, MountCap(), ctx).ok());
  }

  // Node A writes and closes; node B's next open reads it.
  {
    std::ofstream f(pod_a + "/checkpoint.bin");
    f << std::string(3 << 20, 'a');
  }
  EXPECT_TRUE(SameBytes(ReadPath(pod_b + "/checkpoint.bin"), std::string(3 << 20, 'a')));
  // Node B rewrites it; node A's next open sees the new bytes, not its cache.
  {
    std::ofstream f(pod_b + "/checkpoint.bin", std::ios::trunc);
    f << "second version";
  }
  EXPECT_EQ(ReadPath(pod_a + "/checkpoint.bin"), "second version");
  std::filesystem::create_directories(pod_b + "/runs/1");
  EXPECT_TRUE(std::filesystem::is_directory(pod_a + "/runs/1"));
  EXPECT_EQ(ReadPath(origin_ + "/pvc-7/checkpoint.bin"), "second version");

  ::csi::v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(b_->Stats(id, pod_b, &stats).ok());
  EXPECT_FALSE(stats.volume_condition().abnormal());
  EXPECT_GT(stats.usage(0).total(), 0);

  for (TestDriver* d : {a_.get(), b_.get()}) {
    const std::string& pod = d == a_.get() ? pod_a : pod_b;
    const std::string& stage = d == a_.get() ? stage_a : stage_b;
    for (int i = 0; i < 2; ++i) {
      ASSERT_TRUE(d->Unpublish(id, pod).ok());
      ASSERT_TRUE(d->Unstage(id, stage).ok());
    }
    EXPECT_FALSE(std::filesystem::exists(pod));
    EXPECT_FALSE(strata::testing::IsMounted(stage));
  }
  ASSERT_TRUE(a_->Delete(id).ok());
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/pvc-7"));
}

TEST_F(CsiConformanceTest, RestartedNodeMountsAndPublishesAgain) {
  std::filesystem::create_directories(origin_ + "/v");
  std::ofstream(origin_ + "/v/data") << "still here";
  a_ = std::make_unique<TestDriver>(dir_.path() + "/a", "node-a", false, "",
                                    std::vector<std::string>{"file://" + origin_});
  std::string stage = Kubelet("a", "staging/v"), pod = Kubelet("a", "pods/p/v"),
              ro = Kubelet("a", "pods/q/v"), inline_pod = Kubelet("a", "pods/r/v");
  Context ctx{{"origin", "file://" + origin_ + "/v"}};
  ASSERT_TRUE(a_->Stage("v", stage, ctx).ok());
  ASSERT_TRUE(a_->Publish("v", stage, pod, false).ok());
  ASSERT_TRUE(a_->Publish("v", stage, ro, true).ok());
  Context eph = ctx;
  eph["csi.storage.k8s.io/ephemeral"] = "true";
  ASSERT_TRUE(a_->Publish("inline-1", "", inline_pod, false, MountCap(), eph).ok());

  a_->Restart();
  EXPECT_EQ(ReadPath(pod + "/data"), "still here");
  EXPECT_EQ(ReadPath(ro + "/data"), "still here");
  EXPECT_EQ(ReadPath(inline_pod + "/data"), "still here");
  EXPECT_FALSE(std::ofstream(ro + "/x").good()) << "read-only survives the restart";
  std::ofstream(pod + "/after") << "written after restart";
  EXPECT_EQ(ReadPath(origin_ + "/v/after"), "written after restart");
  // The restarted node knows what it published: repeats succeed, and the
  // teardown undoes everything.
  ASSERT_TRUE(a_->Publish("v", stage, pod, false).ok());
  ASSERT_TRUE(a_->Unpublish("v", pod).ok());
  ASSERT_TRUE(a_->Unpublish("v", ro).ok());
  ASSERT_TRUE(a_->Unpublish("inline-1", inline_pod).ok());
  ASSERT_TRUE(a_->Unstage("v", stage).ok());
  a_->Restart();  // nothing left to mount again
  for (const std::string& p : {stage, pod, ro, inline_pod})
    EXPECT_FALSE(strata::testing::IsMounted(p)) << p;
}

// The real daemon killed and started again as kubelet drives it is in
// restart_test.cc.

}  // namespace
}  // namespace strata::csi::testing
