// A node daemon killed at any moment, driven as kubelet drives it: the real
// `strata node` with its default flags (so it spawns its FD keeper), a
// static file:// PV staged and published over the CSI socket, pods reading
// and listing it. Each kill is followed by a new daemon on the same state
// directory, which must take the mount over without hanging on it, and
// every request a pod made meanwhile is answered: a pause, never an error
// or a wrong byte.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "fuse/open_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/driver.h"
#include "tests/util/mount.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

using strata::testing::Child;

// Linux 6.9 lets a new FUSE server have the kernel resend what the dead one
// had taken; before it, such a request fails once with ECONNABORTED.
bool KernelResends() {
  utsname u{};
  if (::uname(&u) != 0) return false;
  int major = 0, minor = 0;
  if (std::sscanf(u.release, "%d.%d", &major, &minor) != 2) return false;
  return major > 6 || (major == 6 && minor >= 9);
}

class NodeRestartTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    state_ = dir_.path() + "/state";
    socket_ = dir_.path() + "/csi.sock";
    origin_ = dir_.path() + "/origin/vol";
    std::filesystem::create_directories(origin_ + "/dir");
    weights_.resize(32 << 20);
    for (size_t i = 0; i < weights_.size(); ++i) weights_[i] = static_cast<char>(i * 13 + i / 4096);
    std::ofstream(origin_ + "/weights.bin", std::ios::binary) << weights_;
    std::ofstream(origin_ + "/config.json") << "{\"layers\": 4}\n";
    for (int i = 0; i < 20; ++i) std::ofstream(origin_ + "/dir/f" + std::to_string(i)) << i;
    stage_ = dir_.path() + "/kubelet/plugins/kubernetes.io/csi/csi.strata.io/abc/globalmount";
    pod_ = dir_.path() + "/kubelet/pods/uid-1/volumes/kubernetes.io~csi/pv-w/mount";
  }
  void TearDown() override {
    StopWorkers();
    if (node_.pid > 0) Kill();
    // The keeper the daemon spawned outlives it by design; and a mount it
    // still holds would wait for a server: abort it first.
    strata::testing::AbortFuse(pod_);
    strata::testing::AbortFuse(stage_);
    strata::testing::StopMatching(state_ + "/fd-keeper.sock");
    UnmountUnder(dir_.path());
  }

  // kubelet's way: `strata node` with the defaults and its CSI socket.
  void StartNode(const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {STRATA_PATH, "node",           "--state-dir",
                                     state_,      "--csi-endpoint", "unix://" + socket_,
                                     "--node-id", "node-a"};
    argv.insert(argv.end(), extra.begin(), extra.end());
    node_ = strata::testing::Spawn(argv);
    ASSERT_GT(node_.pid, 0);
  }
  void AwaitRunning() {
    std::string out = strata::testing::ReadUntil(node_.out, "running", std::chrono::seconds(60));
    log_ += out;
    ASSERT_THAT(out, ::testing::HasSubstr("running")) << log_;
    // From now on its output is drained, so that it never blocks on a pipe.
    draining_ = true;
    drain_ = std::thread([this, fd = node_.out] {
      char buf[4096];
      while (draining_) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        if (::read(fd, buf, sizeof buf) <= 0) break;
      }
    });
  }
  // Stops the running daemon for good in the syscall exit of the next write
  // it makes to `path` (strace holds it there; each thread's first write
  // after this returns): that one thread, after the write and before
  // whatever it does next. Kill() ends both.
  strata::testing::Child HoldAfterNextWriteTo(const std::string& path) {
    strata::testing::Child tracer = strata::testing::Spawn(
        {"/usr/bin/strace", "-f", "-o", "/dev/null", "-P", path, "-e", "trace=write", "-e",
         "inject=write:delay_exit=3600s:when=1", "-p", std::to_string(node_.pid)});
    std::string said = strata::testing::ReadUntil(tracer.out, "threads", std::chrono::seconds(30));
    EXPECT_THAT(said, ::testing::HasSubstr("attached")) << said;
    return tracer;
  }
  // Kill() under such a tracer: the daemon first (the held thread would go
  // on the moment its tracer is gone), then the tracer, which until it goes
  // keeps the dead daemon from being reaped.
  void KillHeld(strata::testing::Child& tracer) {
    ::kill(node_.pid, SIGKILL);
    EXPECT_TRUE(strata::testing::Eventually([&] {
      std::ifstream stat(absl::StrCat("/proc/", node_.pid, "/stat"));
      std::string line;
      std::getline(stat, line);
      size_t end = line.rfind(") ");
      return end != std::string::npos && line.size() > end + 2 && line[end + 2] == 'Z';
    })) << "the daemon did not die";
    ::kill(tracer.pid, SIGKILL);
    strata::testing::Wait(tracer, std::chrono::seconds(10));
    Kill();
  }
  void Kill() {
    ::kill(node_.pid, SIGKILL);
    draining_ = false;
    if (drain_.joinable()) drain_.join();
    strata::testing::Wait(node_, std::chrono::seconds(10));
    node_.pid = -1;
  }

  std::shared_ptr<grpc::Channel> Connect() {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // not the dead daemon's connection
    auto ch =
        grpc::CreateCustomChannel("unix://" + socket_, grpc::InsecureChannelCredentials(), args);
    EXPECT_TRUE(ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30)));
    return ch;
  }

  // Pods at work, each a process of its own (tests/util/pod.cc): the test
  // process keeps no file of the mount open, since a child it forks to
  // start the next daemon would flush that file at exec and wait for the
  // very daemon it is about to become. One reads the weights in 1 MiB
  // pieces, its page cache dropped each time (every read is a FUSE
  // request); one stats, reads and lists. Both go on until StopWorkers.
  void StartWorkers() {
    std::filesystem::remove(stop_file_);
    pods_.push_back(strata::testing::Spawn(
        {POD_PATH, "-", "reader", pod_ + "/weights.bin", origin_ + "/weights.bin", stop_file_}));
    pods_.push_back(strata::testing::Spawn({POD_PATH, "-", "meta", pod_, stop_file_}));
  }
  // Stops the pods and adds up what they saw; one that cannot finish
  // within a minute (a hang on the mount) fails the test, and the
  // connection is aborted to free it.
  void StopWorkers() {
    if (pods_.empty()) return;
    std::ofstream(stop_file_) << "";
    for (Child& pod : pods_) {
      std::string out = strata::testing::ReadUntil(pod.out, "\n", std::chrono::seconds(60));
      if (out.find('\n') == std::string::npos) {
        ADD_FAILURE() << "a pod's request hung for 60 s";
        strata::testing::AbortFuse(stage_);
      }
      strata::testing::Wait(pod, std::chrono::seconds(10));
      long ok = 0, wrong = 0, aborted = 0, other = 0;
      int err = 0;
      if (std::sscanf(out.c_str(), "ok=%ld wrong=%ld aborted=%ld other=%ld errno=%d", &ok, &wrong,
                      &aborted, &other, &err) != 5) {
        ADD_FAILURE() << "a pod said: " << out;
      }
      ok_ += ok;
      wrong_ += wrong;
      aborted_ += aborted;
      other_ += other;
      if (err != 0) last_errno_ = err;
    }
    pods_.clear();
  }

  // `ls` of the volume, as a user would type it; false if it did not
  // answer within `limit`.
  bool LsAnswers(std::chrono::seconds limit) {
    std::string out;
    int rc = strata::testing::RunCommand(
        {"/usr/bin/timeout", std::to_string(limit.count()), "/bin/ls", pod_}, &out);
    return rc == 0 && out.find("weights.bin") != std::string::npos;
  }

  // Stage and publish the static PV.
  void StageAndPublish() {
    CsiClient client(Connect());
    Context ctx{{"origin", "file://" + origin_}};
    grpc::Status st = client.Stage("pv-w", stage_, ctx);
    ASSERT_TRUE(st.ok()) << st.error_message();
    st = client.Publish("pv-w", stage_, pod_, false, MountCap(), ctx);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }

  // Stage and publish the static PV read-only, where whole files are
  // passed through.
  void StageAndPublishReadOnly() {
    CsiClient client(Connect());
    Context ctx{{"origin", "file://" + origin_}};
    auto cap = MountCap(AccessMode::MULTI_NODE_READER_ONLY);
    grpc::Status st = client.Stage("pv-w", stage_, ctx, cap);
    ASSERT_TRUE(st.ok()) << st.error_message();
    st = client.Publish("pv-w", stage_, pod_, true, cap, ctx);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  // The volume's open log, and how many opens it holds (of `mode`, if given).
  std::string OpenLogPath() const {
    return state_ + "/csi-node-inodes/" + absl::WebSafeBase64Escape("pv-w") + ".opens";
  }
  size_t OpensLogged(std::optional<fuse::IoMode> mode) const {
    auto open = fuse::OpenLog::Read(OpenLogPath());
    size_t n = 0;
    if (open.ok()) {
      for (const auto& [h, r] : *open) n += !mode || r.mode == *mode;
    }
    return n;
  }

  void ExpectNoErrors() {
    int allowed_aborts = KernelResends() ? 0 : 1000;
    EXPECT_EQ(wrong_, 0);
    EXPECT_EQ(other_, 0) << std::strerror(last_errno_);
    EXPECT_LE(aborted_, allowed_aborts)
        << "requests the killed daemon had taken must be answered by the next one";
  }

  TempDir dir_;
  std::string state_, socket_, origin_, stage_, pod_, weights_, log_;
  Child node_;
  std::atomic<bool> draining_{false};
  std::thread drain_;
  std::string stop_file_ = dir_.path() + "/stop-pods";
  std::vector<Child> pods_;
  // What the pods saw, added up when they stop.
  long ok_ = 0, wrong_ = 0, aborted_ = 0, other_ = 0;
  int last_errno_ = 0;
};

// The sequence of the report: a reader in flight, SIGKILL, a pause longer
// than the attribute timeout (so the kernel must ask the daemon), `ls`, a
// new daemon. Then the same with nothing in flight.
TEST_F(NodeRestartTest, KilledNodeTakesItsMountOverAndAnswersWhatWasPending) {
  StartNode();
  AwaitRunning();
  StageAndPublish();
  // A pod with a mount namespace of its own (private propagation), made
  // while the first daemon serves: a new mount would never show there, so
  // it reads on only if the mount is taken over.
  const std::string flag = dir_.path() + "/go", seen = dir_.path() + "/seen";
  Child pod_ns = strata::testing::Spawn(
      {"/usr/bin/unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
       "i=0; while [ ! -e " + flag + " ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done; " +
           "cat " + pod_ + "/weights.bin > " + seen});
  ASSERT_GT(pod_ns.pid, 0);
  StartWorkers();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  std::atomic<bool> ls_ok{false};
  std::thread ls([&] { ls_ok = LsAnswers(std::chrono::seconds(60)); });
  StartNode();
  AwaitRunning();
  ls.join();
  EXPECT_TRUE(ls_ok) << "ls of the volume after the restart";
  // The pods' calls go on: their open files and directories stay valid.
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  StopWorkers();
  EXPECT_GT(ok_, 0);
  std::ofstream(flag) << "";
  EXPECT_EQ(strata::testing::Wait(pod_ns, std::chrono::seconds(60)), 0);
  EXPECT_TRUE(ReadPath(seen) == weights_) << "the pod's private view of the volume";

  // Nothing in flight.
  Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  StartNode();
  AwaitRunning();
  EXPECT_TRUE(LsAnswers(std::chrono::seconds(60)));
  ExpectNoErrors();
  EXPECT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), weights_));

  // kubelet's teardown works against the last daemon.
  CsiClient client(Connect());
  ASSERT_TRUE(client.Unpublish("pv-w", pod_).ok());
  ASSERT_TRUE(client.Unstage("pv-w", stage_).ok());
  EXPECT_FALSE(strata::testing::IsMounted(stage_));
}

// Kills at moments drawn from a seeded generator: during reads and metadata
// calls, and during a restart itself (the new daemon killed while it takes
// the mount over), each followed by another start.
TEST_F(NodeRestartTest, KillsAtRandomMomentsNeverHangOrFailAPod) {
  StartNode();
  AwaitRunning();
  StageAndPublish();
  StartWorkers();
  std::mt19937 rng(20261202);
  for (int round = 0; round < 20; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    std::this_thread::sleep_for(std::chrono::milliseconds(50 + rng() % 400));
    Kill();
    StartNode();
    if (round % 5 == 4) {
      // Killed while adopting: before or just after it reports running.
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));
      Kill();
      StartNode();
    }
    AwaitRunning();
    if (HasFailure()) break;
  }
  EXPECT_TRUE(LsAnswers(std::chrono::seconds(60)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  StopWorkers();
  ExpectNoErrors();
  EXPECT_GT(ok_, 40);
  EXPECT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), weights_));
}

// A pod reading a file that the kernel reads from the store itself (FUSE
// passthrough, on a read-only volume) reads on while the daemon is dead and
// after a new one takes the mount over. The new daemon knows from the open
// log that the kernel holds that file's backing file, holds it again, and
// answers a new open of the file with the same backing file (any other
// answer, the kernel would fail with EIO), also when restarted with
// passthrough off.
TEST_F(NodeRestartTest, PassthroughFilesReadOnAcrossAKill) {
  StartNode();
  AwaitRunning();
  ASSERT_NO_FATAL_FAILURE(StageAndPublishReadOnly());
  const std::string log = OpenLogPath();
  auto opens = [&](std::optional<fuse::IoMode> mode) { return OpensLogged(mode); };
  // Through the daemon, which fills the cache; then, whole, passed through.
  ASSERT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), weights_));
  ASSERT_TRUE(strata::testing::Eventually([&] { return opens(std::nullopt) == 0; }));
  std::filesystem::remove(stop_file_);
  pods_.push_back(strata::testing::Spawn(
      {POD_PATH, "-", "reader", pod_ + "/weights.bin", origin_ + "/weights.bin", stop_file_}));
  ASSERT_TRUE(strata::testing::Eventually([&] { return opens(fuse::IoMode::kPassthrough) == 1; }))
      << "the pod's open was not passed through";

  Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  StartNode();
  AwaitRunning();
  EXPECT_EQ(opens(fuse::IoMode::kPassthrough), 1u) << "the new daemon's log";
  EXPECT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), weights_)) << "a new open of the file";

  // Again, now with passthrough off (an operator's way out): no new backing
  // files, but the one the kernel holds is still known, so a new open of
  // that file is answered with it (any other answer, the kernel fails).
  Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  StartNode({"--no-fuse-passthrough"});
  AwaitRunning();
  EXPECT_EQ(opens(fuse::IoMode::kPassthrough), 1u) << "the third daemon's log";
  EXPECT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), weights_))
      << "a new open of the file, passthrough off";

  // The file rewritten in place at the origin, while the kernel reads the
  // version the pod opened from a backing file held since two daemons ago:
  // a new open sees the new version (another inode), and the pod reads on
  // the version it opened.
  std::string v2(24 << 20, '\0');
  for (size_t i = 0; i < v2.size(); ++i) v2[i] = static_cast<char>(i * 7 + i / 8192 + 1);
  std::ofstream(origin_ + "/weights.bin", std::ios::binary | std::ios::trunc) << v2;
  EXPECT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), v2)) << "a new open of the new version";
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the pod reads on
  StopWorkers();
  EXPECT_GT(ok_, 0);
  ExpectNoErrors();
  EXPECT_TRUE(strata::testing::Eventually([&] { return opens(std::nullopt) == 0; }));

  CsiClient client(Connect());
  ASSERT_TRUE(client.Unpublish("pv-w", pod_).ok());
  ASSERT_TRUE(client.Unstage("pv-w", stage_).ok());
  EXPECT_FALSE(std::filesystem::exists(log)) << "the open log outlived its mount";
}

// A daemon killed after it logged an open (here one passed through) but
// before the kernel had its answer. The kernel sends that open again to the
// next daemon, which must forget the logged one: the kernel will never
// release it, and it would hold the file's backing file and cache object
// until the volume is unmounted. Once the pod closes the file, nothing is
// open. strace holds the daemon's write of that record at its exit, so the
// kill falls exactly there.
TEST_F(NodeRestartTest, AnOpenLoggedButNeverAnsweredIsForgottenWhenTheKernelSendsItAgain) {
  if (!KernelResends()) GTEST_SKIP() << "the kernel resends no requests (Linux 6.9+)";
  StartNode();
  AwaitRunning();
  ASSERT_NO_FATAL_FAILURE(StageAndPublishReadOnly());
  const std::string log = OpenLogPath();
  auto opens = [&](std::optional<fuse::IoMode> mode) { return OpensLogged(mode); };
  // Read whole through the daemon, so that the next open is passed through.
  ASSERT_TRUE(SameBytes(ReadPath(pod_ + "/weights.bin"), weights_));
  ASSERT_TRUE(strata::testing::Eventually([&] { return opens(std::nullopt) == 0; }));

  strata::testing::Child tracer = HoldAfterNextWriteTo(log);
  std::filesystem::remove(stop_file_);
  pods_.push_back(strata::testing::Spawn(
      {POD_PATH, "-", "reader", pod_ + "/weights.bin", origin_ + "/weights.bin", stop_file_}));
  ASSERT_TRUE(strata::testing::Eventually([&] { return opens(fuse::IoMode::kPassthrough) == 1; }))
      << "the pod's open was not logged as passed through: " << opens(std::nullopt) << " opens";
  KillHeld(tracer);
  std::this_thread::sleep_for(std::chrono::milliseconds(500));

  StartNode();
  AwaitRunning();
  // The pod's open, sent again, is answered: it reads, through one open.
  EXPECT_TRUE(strata::testing::Eventually([&] {
    auto open = fuse::OpenLog::Read(log);
    return open.ok() && open->size() == 1 && open->begin()->second.request != 0;
  })) << "opens the third daemon knows: "
      << opens(std::nullopt);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // the pod reads on
  StopWorkers();
  EXPECT_GT(ok_, 0);
  ExpectNoErrors();
  EXPECT_TRUE(strata::testing::Eventually([&] { return opens(std::nullopt) == 0; }))
      << "an open the kernel never had is still held: " << opens(std::nullopt);

  CsiClient client(Connect());
  ASSERT_TRUE(client.Unpublish("pv-w", pod_).ok());
  ASSERT_TRUE(client.Unstage("pv-w", stage_).ok());
}

}  // namespace
}  // namespace strata::csi::testing
