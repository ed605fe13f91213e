// The driver end to end, as Kubernetes uses it: the external provisioner
// creates a volume from StorageClass parameters, kubelet stages and
// publishes it on two nodes (ReadWriteMany, close-to-open visibility), and
// a node daemon killed with SIGKILL while a pod reads comes back with the
// pod's volume serving again.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/csi/driver.h"
#include "tests/util/subprocess.h"

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
  EXPECT_EQ(ReadPath(pod_b + "/checkpoint.bin"), std::string(3 << 20, 'a'));
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

// The real daemon, killed with SIGKILL while a reader has a file open on a
// published volume, then started again on the same state directory: the
// FD keeper kept the mount alive, the new daemon takes it over, and the
// reader's open file and a pod's private view of the mount (its own mount
// namespace, where a new bind mount would never show) both read on.
TEST_F(CsiConformanceTest, NodeKilledWhileReadingServesAgainAfterRestart) {
  std::string state = dir_.path() + "/state", socket = dir_.path() + "/csi.sock";
  auto start = [&] {
    return strata::testing::Spawn({STRATA_PATH, "node", "--state-dir", state, "--csi-endpoint",
                                   "unix://" + socket, "--node-id", "node-a", "--controller",
                                   "--fd-keeper-grace", "10"});
  };
  strata::testing::Child node = start();
  ASSERT_GT(node.pid, 0);
  std::string out = strata::testing::ReadUntil(node.out, "running", std::chrono::seconds(30));
  ASSERT_THAT(out, HasSubstr("running"));
  // Each daemon gets a channel of its own: gRPC would otherwise share the
  // dead daemon's connection with the new channel.
  auto connect = [&] {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto ch =
        grpc::CreateCustomChannel("unix://" + socket, grpc::InsecureChannelCredentials(), args);
    EXPECT_TRUE(ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(10)));
    return ch;
  };
  CsiClient client(connect());
  ::csi::v1::CreateVolumeResponse created;
  ASSERT_TRUE(client.Create("pvc-k", {{"origin", "file://" + origin_}}, 0, &created).ok());
  Context ctx(created.volume().volume_context().begin(), created.volume().volume_context().end());
  std::string weights(8 << 20, '\0');
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<char>(i * 7 + i / 4096);
  std::ofstream(origin_ + "/pvc-k/weights.bin", std::ios::binary) << weights;
  std::string stage = Kubelet("a", "staging/pvc-k"), pod = Kubelet("a", "pods/p/pvc-k");
  ASSERT_TRUE(client.Stage("pvc-k", stage, ctx).ok());
  ASSERT_TRUE(client.Publish("pvc-k", stage, pod, false).ok());
  int fd = ::open((pod + "/weights.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string head(1 << 20, '\0');
  ASSERT_EQ(::pread(fd, head.data(), head.size(), 0), static_cast<ssize_t>(head.size()));
  EXPECT_EQ(head, weights.substr(0, head.size()));

  // A pod: its own mount namespace, with private propagation, made while
  // the first daemon serves. It reads the volume when told to.
  std::string flag = dir_.path() + "/go", seen = dir_.path() + "/seen";
  strata::testing::Child pod_ns = strata::testing::Spawn(
      {"/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
       "i=0; while [ ! -e " + flag +
           " ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; "
           "cat " +
           pod + "/weights.bin > " + seen});
  ASSERT_GT(pod_ns.pid, 0);

  // Another reader keeps the daemon busy across the kill: its page cache
  // dropped before each read, so every read is a FUSE request. A request
  // the killed daemon had taken may fail (ECONNABORTED); none may return
  // wrong bytes, and reading goes on once the next daemon serves.
  std::atomic<bool> stop{false}, restarted{false};
  std::atomic<int> busy_ok{0}, busy_ok_after{0}, busy_aborted{0}, busy_wrong{0}, busy_other{0};
  std::thread busy([&] {
    int bfd = ::open((pod + "/weights.bin").c_str(), O_RDONLY);
    std::string buf(1 << 20, '\0');
    for (int i = 0; i < 20000 && !stop; ++i) {
      off_t off = static_cast<off_t>((i % 8) << 20);
      ::posix_fadvise(bfd, off, buf.size(), POSIX_FADV_DONTNEED);
      ssize_t got = ::pread(bfd, buf.data(), buf.size(), off);
      if (got == static_cast<ssize_t>(buf.size())) {
        if (buf != weights.substr(off, buf.size())) {
          ++busy_wrong;
        } else {
          ++busy_ok;
          if (restarted) ++busy_ok_after;
        }
      } else if (got < 0 && errno == ECONNABORTED) {
        ++busy_aborted;
      } else {
        ++busy_other;
      }
    }
    ::close(bfd);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));

  ::kill(node.pid, SIGKILL);
  strata::testing::Wait(node, std::chrono::seconds(10));
  // The reader goes on reading; its request waits for the next daemon.
  std::string after(1 << 20, '\0');
  ssize_t n = -1;
  int read_errno = 0;
  std::thread reader([&] {
    n = ::pread(fd, after.data(), after.size(), 5 << 20);
    read_errno = errno;
  });

  node = start();
  ASSERT_GT(node.pid, 0);
  out = strata::testing::ReadUntil(node.out, "running", std::chrono::seconds(30));
  ASSERT_THAT(out, HasSubstr("running"));
  restarted = true;
  reader.join();
  for (int i = 0; i < 200 && busy_ok_after < 20; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  stop = true;
  busy.join();
  EXPECT_EQ(busy_wrong, 0);
  EXPECT_EQ(busy_other, 0);
  EXPECT_LE(busy_aborted, 16) << "at most the requests the killed daemon held";
  EXPECT_GE(busy_ok_after, 20) << "reading went on after the restart";
  ASSERT_EQ(n, static_cast<ssize_t>(after.size()))
      << std::strerror(read_errno) << "\n"
      << out << strata::testing::ReadUntil(node.out, "", std::chrono::seconds(1));
  EXPECT_EQ(after, weights.substr(5 << 20, after.size()));
  ::close(fd);
  EXPECT_EQ(ReadPath(pod + "/weights.bin"), weights) << out;
  EXPECT_TRUE(strata::testing::IsMounted(stage));
  std::ofstream(flag) << "";
  EXPECT_EQ(strata::testing::Wait(pod_ns, std::chrono::seconds(30)), 0);
  EXPECT_EQ(ReadPath(seen), weights) << "the pod's private view of the volume";

  // kubelet's teardown works against the restarted daemon.
  client.Connect(connect());
  grpc::Status st = client.Unpublish("pvc-k", pod);
  ASSERT_TRUE(st.ok()) << st.error_message();
  st = client.Unstage("pvc-k", stage);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(strata::testing::IsMounted(stage));
  EXPECT_FALSE(std::filesystem::exists(pod));
  ::kill(node.pid, SIGTERM);
  EXPECT_EQ(strata::testing::Wait(node, std::chrono::seconds(30)), 0);
  // The keeper the daemon started would leave by itself once idle for its
  // grace period; the test does not wait for that.
  strata::testing::RunCommand({"/usr/bin/pkill", "-f", state + "/fd-keeper.sock"});
}

}  // namespace
}  // namespace strata::csi::testing
