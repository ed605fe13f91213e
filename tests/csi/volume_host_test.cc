// The node's volume lifecycle on fake mounts (tests/csi/fake_mounts.h):
// what a restarted node does with the records of the one before it, and
// how unmounts and binds that fail or find nothing are answered. Runs
// without root and without FUSE; node_test.cc does the same on real mounts.
#include "csi/volume_host.h"

#include <fcntl.h>
#include <sys/mount.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "fuse/fd_keeper.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/fake_mounts.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

using strata::testing::TempDir;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class VolumeHostTest : public ::testing::Test {
 protected:
  void SetUp() override {
    origin_ = dir_.path() + "/origin";
    std::filesystem::create_directories(origin_ + "/models");
    std::ofstream(origin_ + "/models/w.bin") << "weights";
    staging_ = dir_.path() + "/kubelet/staging/pv-1";
    target_ = dir_.path() + "/kubelet/pods/p1/volumes/pv-1";
    db_ = std::move(*StateDb::Open(dir_.path() + "/state"));
    host_ = NewHost();
  }

  std::unique_ptr<VolumeHost> NewHost() {
    VolumeHostOptions o;
    o.staging_dir = dir_.path() + "/staging";
    o.state = db_.get();
    o.group_mount_dir = dir_.path() + "/group-mounts";
    o.inline_origins = *InlineOrigins::Parse({"file://" + origin_});
    o.keeper = keeper_.get();
    return std::make_unique<VolumeHost>(mounter_, launcher_, std::move(o));
  }
  // The daemon is killed and another one starts: the sessions end without
  // unmounting anything, the records (and the FD keeper's descriptors)
  // stay. A killed daemon runs no destructor: the old host is only
  // destroyed at the end of the test.
  void CrashAndRestart() {
    launcher_.Crash();
    dead_hosts_.push_back(std::move(host_));
    mounter_.binds.clear();
    mounter_.unmounts.clear();
    mounter_.detaches.clear();
    launcher_.launches.clear();
    host_ = NewHost();
  }

  StringMap Context() { return {{"origin", "file://" + origin_}}; }
  StringMap InlineContext() {
    return {{"origin", "file://" + origin_}, {"csi.storage.k8s.io/ephemeral", "true"}};
  }
  absl::Status Stage(const std::string& id, const std::string& path, int64_t gid = -1) {
    return host_->Stage(id, path, Context(), {}, *ParseVolumeContext(Context()), gid);
  }
  absl::Status Publish(const std::string& target, bool read_only = false, unsigned long flags = 0,
                       int64_t gid = -1) {
    return host_->Publish("pv-1", staging_, target, PublishOptions{read_only, flags, gid});
  }

  TempDir dir_;
  std::string origin_, staging_, target_;
  std::unique_ptr<StateDb> db_;
  std::unique_ptr<fuse::FdKeeperClient> keeper_;  // declared before the host: it goes after
  FakeMounter mounter_;
  FakeLauncher launcher_{mounter_};
  std::vector<std::unique_ptr<VolumeHost>> dead_hosts_;
  std::unique_ptr<VolumeHost> host_;
};

TEST_F(VolumeHostTest, RestartMountsStagedVolumesAgainAndBindsTheirPublications) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  ASSERT_TRUE(Publish(target_).ok());
  ASSERT_TRUE(Publish(target_ + "-ro", /*read_only=*/true, MS_NOSUID | MS_NODEV).ok());

  CrashAndRestart();
  // The dead mounts went first, then one new mount, then a bind for each
  // target with the flags it was published with.
  EXPECT_THAT(mounter_.unmounts, ElementsAre(target_, target_ + "-ro", staging_));
  ASSERT_EQ(launcher_.launches.size(), 1u);
  EXPECT_EQ(launcher_.launches[0].mountpoint, staging_);
  EXPECT_FALSE(launcher_.launches[0].adopted);
  EXPECT_THAT(mounter_.At(staging_), ElementsAre("fuse:pv-1"));
  EXPECT_THAT(mounter_.At(target_), ElementsAre(staging_));
  EXPECT_THAT(mounter_.At(target_ + "-ro"), ElementsAre(staging_));
  ASSERT_EQ(mounter_.binds.size(), 2u);
  EXPECT_FALSE(mounter_.binds[0].options.read_only);
  EXPECT_EQ(mounter_.binds[0].options.flags, 0u);
  EXPECT_TRUE(mounter_.binds[1].options.read_only);
  EXPECT_EQ(mounter_.binds[1].options.flags, static_cast<unsigned long>(MS_NOSUID | MS_NODEV));
  EXPECT_EQ(host_->Volumes(), 1);
  EXPECT_EQ(host_->DeadVolumes(), 0);

  // The new daemon knows what the old one did: kubelet's retries are
  // answered as before.
  EXPECT_TRUE(Stage("pv-1", staging_).ok());
  EXPECT_TRUE(Publish(target_).ok());
  EXPECT_EQ(Publish(target_, /*read_only=*/true).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(host_->Unstage("pv-1", staging_).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(launcher_.launches.size(), 1u);
  EXPECT_EQ(mounter_.binds.size(), 2u);
}

TEST_F(VolumeHostTest, AVolumeThatCannotComeBackKeepsItsRecordsUntilKubeletSettlesThem) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  ASSERT_TRUE(Publish(target_).ok());
  std::filesystem::remove_all(origin_);

  CrashAndRestart();
  EXPECT_EQ(host_->Volumes(), 0);
  EXPECT_THAT(launcher_.launches, IsEmpty()) << "the origin is checked before mounting";
  EXPECT_THAT(mounter_.binds, IsEmpty());
  // The dead mounts are gone all the same: a pod sees an empty directory,
  // not a hung one.
  EXPECT_FALSE(mounter_.IsMountPoint(staging_));
  EXPECT_FALSE(mounter_.IsMountPoint(target_));
  EXPECT_EQ(host_->Health("pv-1", target_).status().code(), absl::StatusCode::kNotFound);
  // kubelet's repeated publish is not answered from the record: nothing is
  // mounted there, and the volume must be staged again first.
  EXPECT_EQ(Publish(target_).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(mounter_.binds, IsEmpty());

  ASSERT_TRUE(host_->Unpublish("pv-1", target_).ok());
  EXPECT_FALSE(std::filesystem::exists(target_));
  ASSERT_TRUE(host_->Unstage("pv-1", staging_).ok());

  std::filesystem::create_directories(origin_);
  CrashAndRestart();
  EXPECT_EQ(host_->Volumes(), 0) << "unpublish and unstage dropped the records";
  EXPECT_THAT(launcher_.launches, IsEmpty());
  EXPECT_THAT(mounter_.binds, IsEmpty());
}

TEST_F(VolumeHostTest, ARepeatedPublishBindsAgainWhereTheBindWentAway) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  ASSERT_TRUE(Publish(target_).ok());
  ASSERT_EQ(mounter_.binds.size(), 1u);
  ASSERT_TRUE(mounter_.Unmount(target_).ok());  // unmounted behind the driver's back
  ASSERT_TRUE(Publish(target_).ok());
  EXPECT_EQ(mounter_.binds.size(), 2u) << "the record alone was taken for a mount";
  EXPECT_TRUE(mounter_.IsMountPoint(target_));
  EXPECT_TRUE(Publish(target_).ok());
  EXPECT_EQ(mounter_.binds.size(), 2u) << "a publish that holds is answered without a bind";
}

TEST_F(VolumeHostTest, RestartServesInlineVolumesAtTheirTargetsWithoutABind) {
  ASSERT_TRUE(host_
                  ->PublishInline("inline-1", target_, *ParseVolumeContext(InlineContext()),
                                  InlineContext(), {}, PublishOptions{})
                  .ok());
  CrashAndRestart();
  ASSERT_EQ(launcher_.launches.size(), 1u);
  EXPECT_EQ(launcher_.launches[0].mountpoint, target_);
  EXPECT_TRUE(launcher_.launches[0].read_only) << "an inline volume is read-only unless asked";
  EXPECT_THAT(mounter_.At(target_), ElementsAre("fuse:inline-1"));
  EXPECT_THAT(mounter_.binds, IsEmpty());
  ASSERT_TRUE(host_->Unpublish("inline-1", target_).ok());
  EXPECT_EQ(host_->Volumes(), 0);
  EXPECT_FALSE(mounter_.IsMountPoint(target_));
}

TEST_F(VolumeHostTest, UnstageSucceedsWhenTheMountIsAlreadyGone) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  launcher_.End(staging_);
  EXPECT_EQ(host_->DeadVolumes(), 1);
  ASSERT_TRUE(host_->Unstage("pv-1", staging_).ok());
  EXPECT_THAT(mounter_.unmounts, IsEmpty()) << "nothing was mounted to unmount";
  EXPECT_EQ(host_->Volumes(), 0);
  ASSERT_TRUE(host_->Unstage("pv-1", staging_).ok());  // and again
  CrashAndRestart();
  EXPECT_EQ(host_->Volumes(), 0) << "the record went with the unstage";
}

TEST_F(VolumeHostTest, StagingAgainMountsAVolumeWhoseSessionEnded) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  launcher_.End(staging_);
  auto health = host_->Health("pv-1", staging_);
  ASSERT_TRUE(health.ok());
  EXPECT_TRUE(health->abnormal);
  EXPECT_THAT(health->message, HasSubstr("FUSE session has ended"));

  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  EXPECT_EQ(launcher_.launches.size(), 2u);
  EXPECT_THAT(mounter_.At(staging_), ElementsAre("fuse:pv-1"));
  EXPECT_EQ(host_->DeadVolumes(), 0);
  health = host_->Health("pv-1", staging_);
  ASSERT_TRUE(health.ok());
  EXPECT_FALSE(health->abnormal) << health->message;
  ASSERT_TRUE(health->usage.ok());
  EXPECT_EQ(health->usage->f_blocks, 100u);
}

TEST_F(VolumeHostTest, AFailedBindIsInternalAndLeavesNoPublicationBehind) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  mounter_.bind_failures[target_] =
      absl::InternalError("bind mount at " + target_ + ": Permission denied");
  // Another fsGroup than staged: a group mount is made for the bind, and
  // goes again when the bind fails.
  absl::Status st = Publish(target_, false, 0, /*gid=*/4321);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_THAT(st.message(), HasSubstr("Permission denied"));
  ASSERT_EQ(launcher_.launches.size(), 2u);
  EXPECT_EQ(launcher_.launches[1].mount_gid, 4321);
  EXPECT_FALSE(mounter_.IsMountPoint(launcher_.launches[1].mountpoint));
  EXPECT_EQ(host_->Volumes(), 1);
  EXPECT_TRUE(host_->Unstage("pv-1", staging_).ok()) << "no publication was kept";

  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  EXPECT_FALSE(Publish(target_).ok());
  CrashAndRestart();
  EXPECT_THAT(mounter_.binds, IsEmpty()) << "no publication was recorded";
  mounter_.bind_failures.clear();
  ASSERT_TRUE(Publish(target_).ok());
  EXPECT_THAT(mounter_.At(target_), ElementsAre(staging_));
}

TEST_F(VolumeHostTest, ABusyTargetIsDetachedAndOneThatCannotBeIsReported) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  ASSERT_TRUE(Publish(target_).ok());
  mounter_.busy.insert(target_);
  mounter_.stuck.insert(target_);
  absl::Status st = host_->Unpublish("pv-1", target_);
  EXPECT_EQ(st.code(), absl::StatusCode::kInternal);
  EXPECT_EQ(st.message(), "unmount " + target_ + ": Invalid argument");
  EXPECT_EQ(host_->Unstage("pv-1", staging_).code(), absl::StatusCode::kFailedPrecondition)
      << "the publication stays until its unmount succeeds";

  mounter_.stuck.clear();
  ASSERT_TRUE(host_->Unpublish("pv-1", target_).ok());
  EXPECT_THAT(mounter_.detaches, ElementsAre(target_, target_));
  EXPECT_FALSE(mounter_.IsMountPoint(target_));
  EXPECT_TRUE(host_->Unstage("pv-1", staging_).ok());
}

TEST_F(VolumeHostTest, SomethingElseMountedIsAlreadyExists) {
  mounter_.Mount(staging_, "tmpfs");
  EXPECT_EQ(Stage("pv-1", staging_).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(launcher_.launches, IsEmpty());
  mounter_.Remove(staging_);
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  mounter_.Mount(target_, "tmpfs");
  EXPECT_EQ(Publish(target_).code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(mounter_.binds, IsEmpty());
}

// With an FD keeper, the previous daemon's mounts stayed alive: they are
// taken over where they are, and the pods' bind mounts of them are left as
// they are.
class VolumeHostKeeperTest : public VolumeHostTest {
 protected:
  void SetUp() override {
    // The keeper takes /dev/fuse descriptors only (the fake sessions open
    // one, which mounts nothing).
    int fuse = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
    if (fuse < 0) GTEST_SKIP() << "the FD keeper needs an open /dev/fuse";
    ::close(fuse);
    socket_ = dir_.path() + "/keeper.sock";
    fuse::FdKeeperOptions o;
    o.socket = socket_;
    keeper_thread_ = std::thread([this, o] { (void)fuse::ServeFdKeeper(o, stop_); });
    for (int i = 0; i < 500 && !keeper_; ++i) {
      auto c = fuse::FdKeeperClient::Connect(socket_);
      if (c.ok()) {
        keeper_ = std::move(*c);
      } else {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
    }
    ASSERT_NE(keeper_, nullptr) << "the keeper does not answer on " << socket_;
    VolumeHostTest::SetUp();
  }
  void TearDown() override {
    host_.reset();
    dead_hosts_.clear();
    keeper_.reset();
    stop_ = true;
    if (keeper_thread_.joinable()) keeper_thread_.join();
  }

  std::string socket_;
  std::atomic<bool> stop_{false};
  std::thread keeper_thread_;
};

TEST_F(VolumeHostKeeperTest, RestartTakesKeptMountsOverWithoutTouchingThePods) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  ASSERT_TRUE(Publish(target_).ok());
  auto kept = keeper_->Get("volume/pv-1");
  ASSERT_TRUE(kept.ok()) << "the mount's descriptor was not kept";
  ::close(*kept);

  CrashAndRestart();
  ASSERT_EQ(launcher_.launches.size(), 1u);
  EXPECT_TRUE(launcher_.launches[0].adopted);
  EXPECT_THAT(mounter_.unmounts, IsEmpty());
  EXPECT_THAT(mounter_.binds, IsEmpty());
  EXPECT_THAT(mounter_.At(staging_), ElementsAre("fuse:pv-1"));
  EXPECT_THAT(mounter_.At(target_), ElementsAre(staging_));
  EXPECT_EQ(host_->DeadVolumes(), 0);

  ASSERT_TRUE(host_->Unpublish("pv-1", target_).ok());
  ASSERT_TRUE(host_->Unstage("pv-1", staging_).ok());
  EXPECT_FALSE(mounter_.IsMountPoint(staging_));
  EXPECT_EQ(keeper_->Get("volume/pv-1").status().code(), absl::StatusCode::kNotFound)
      << "an unstaged volume's descriptor is let go";
}

TEST_F(VolumeHostKeeperTest, AMountThatIsGoneIsMountedAgainDespiteItsKeptDescriptor) {
  ASSERT_TRUE(Stage("pv-1", staging_).ok());
  ASSERT_TRUE(Publish(target_).ok());
  auto kept = keeper_->Get("volume/pv-1");
  ASSERT_TRUE(kept.ok()) << "the mount's descriptor was not kept";
  ::close(*kept);
  mounter_.Remove(staging_);  // unmounted by someone while no daemon ran
  CrashAndRestart();
  ASSERT_EQ(launcher_.launches.size(), 1u);
  EXPECT_FALSE(launcher_.launches[0].adopted);
  EXPECT_THAT(mounter_.At(staging_), ElementsAre("fuse:pv-1"));
  EXPECT_THAT(mounter_.At(target_), ElementsAre(staging_)) << "the dead bind was replaced";
  EXPECT_EQ(mounter_.binds.size(), 1u);
}

}  // namespace
}  // namespace strata::csi::testing
