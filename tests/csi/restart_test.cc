// A node daemon killed at any moment, driven as kubelet drives it: the real
// `strata node` with its default flags (so it spawns its FD keeper), a
// static file:// PV staged and published over the CSI socket, pods reading
// and listing it. Each kill is followed by a new daemon on the same state
// directory, which must take the mount over without hanging on it, and
// every request a pod made meanwhile is answered: a pause, never an error
// or a wrong byte.
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/csi/driver.h"
#include "tests/util/mount.h"
#include "tests/util/subprocess.h"

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

// What the pods saw, counted by kind.
struct Seen {
  std::atomic<int> ok{0}, wrong{0}, aborted{0}, other{0};
  std::atomic<int> last_errno{0};
  void Failed() {
    int e = errno;
    if (e == ECONNABORTED) {
      ++aborted;
    } else {
      ++other;
      last_errno = e;
    }
  }
};

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
    strata::testing::RunCommand({"/usr/bin/pkill", "-f", state_ + "/fd-keeper.sock"});
    UnmountUnder(dir_.path());
  }

  // kubelet's way: `strata node` with the defaults and its CSI socket.
  void StartNode() {
    node_ = strata::testing::Spawn({STRATA_PATH, "node", "--state-dir", state_, "--csi-endpoint",
                                    "unix://" + socket_, "--node-id", "node-a"});
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

  // Pods at work, each a process of its own (the test process keeps no
  // file of the mount open: a process it forks to start the next daemon
  // would flush it on exec, and wait for that very daemon). One reads the
  // weights in 1 MiB pieces, its page cache dropped each time (every read
  // is a FUSE request); one opens, lists and stats. Both go on until
  // StopWorkers.
  void StartWorkers() {
    shared_->stop = false;
    pods_.push_back(Fork([this] {
      Seen& seen = shared_->reads;
      int fd = ::open((pod_ + "/weights.bin").c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return seen.Failed();
      std::string buf(1 << 20, '\0');
      for (int i = 0; i < 1000000 && !shared_->stop; ++i) {
        off_t off = static_cast<off_t>((i * 7 % 32) << 20);
        ::posix_fadvise(fd, off, buf.size(), POSIX_FADV_DONTNEED);
        ssize_t got = ::pread(fd, buf.data(), buf.size(), off);
        if (got < 0) {
          seen.Failed();
        } else if (got != static_cast<ssize_t>(buf.size()) ||
                   buf.compare(0, buf.size(), weights_, off, buf.size()) != 0) {
          ++seen.wrong;
        } else {
          ++seen.ok;
        }
      }
      ::close(fd);
    }));
    pods_.push_back(Fork([this] {
      Seen& seen = shared_->meta;
      for (int i = 0; i < 1000000 && !shared_->stop; ++i) {
        struct stat st;
        if (::stat((pod_ + "/config.json").c_str(), &st) != 0) {
          seen.Failed();
        } else if (st.st_size != 14) {
          ++seen.wrong;
        }
        if (int fd = ::open((pod_ + "/config.json").c_str(), O_RDONLY | O_CLOEXEC); fd >= 0) {
          char b[64];
          ssize_t n = ::read(fd, b, sizeof b);
          if (n < 0) seen.Failed();
          if (n >= 0 && std::string(b, n) != "{\"layers\": 4}\n") ++seen.wrong;
          ::close(fd);
        } else {
          seen.Failed();
        }
        if (DIR* d = ::opendir((pod_ + "/dir").c_str())) {
          int names = 0;
          errno = 0;
          while (dirent* e = ::readdir(d)) names += e->d_name[0] != '.';
          if (errno != 0) seen.Failed();
          ::closedir(d);
          if (names != 20) ++seen.wrong;
        } else {
          seen.Failed();
        }
        ++seen.ok;
      }
    }));
  }
  static pid_t Fork(const std::function<void()>& work) {
    pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      work();
      ::_exit(0);
    }
    return pid;
  }
  // Stops the pods; one that cannot finish within a minute (a hang on the
  // mount) fails the test, and the connection is aborted to free it.
  void StopWorkers() {
    shared_->stop = true;
    for (pid_t pid : pods_) {
      int status;
      bool done = false;
      for (int i = 0; i < 600 && !done; ++i) {
        done = ::waitpid(pid, &status, WNOHANG) == pid;
        if (!done) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      if (!done) {
        ADD_FAILURE() << "a pod's request hung for 60 s";
        strata::testing::AbortFuse(stage_);
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
      }
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

  void ExpectNoErrors() {
    const Seen &reads = shared_->reads, &meta = shared_->meta;
    int allowed_aborts = KernelResends() ? 0 : 1000;
    EXPECT_EQ(reads.wrong, 0);
    EXPECT_EQ(meta.wrong, 0);
    EXPECT_EQ(reads.other, 0) << std::strerror(reads.last_errno);
    EXPECT_EQ(meta.other, 0) << std::strerror(meta.last_errno);
    EXPECT_LE(reads.aborted + meta.aborted, allowed_aborts)
        << "requests the killed daemon had taken must be answered by the next one";
  }

  TempDir dir_;
  std::string state_, socket_, origin_, stage_, pod_, weights_, log_;
  Child node_;
  std::atomic<bool> draining_{false};
  std::thread drain_;
  // What the pods (other processes) saw, in memory shared with them.
  struct Shared {
    std::atomic<bool> stop{false};
    Seen reads, meta;
  };
  Shared* shared_ = new (::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE,
                                MAP_SHARED | MAP_ANONYMOUS, -1, 0)) Shared();
  std::vector<pid_t> pods_;
  Seen& reads_ = shared_->reads;
  Seen& meta_ = shared_->meta;
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
  int before = reads_.ok;
  for (int i = 0; i < 200 && reads_.ok < before + 10; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_GE(reads_.ok, before + 10) << "reading went on after the restart";
  StopWorkers();
  std::ofstream(flag) << "";
  EXPECT_EQ(strata::testing::Wait(pod_ns, std::chrono::seconds(60)), 0);
  EXPECT_TRUE(ReadPath(seen) == weights_) << "the pod's private view of the volume";

  // Nothing in flight.
  Kill();
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  StartNode();
  AwaitRunning();
  EXPECT_TRUE(LsAnswers(std::chrono::seconds(10)));
  ExpectNoErrors();
  EXPECT_EQ(ReadPath(pod_ + "/weights.bin"), weights_);

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
  EXPECT_TRUE(LsAnswers(std::chrono::seconds(10)));
  int before = reads_.ok + meta_.ok;
  for (int i = 0; i < 200 && reads_.ok + meta_.ok < before + 10; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  StopWorkers();
  ExpectNoErrors();
  EXPECT_GT(reads_.ok, 20);
  EXPECT_GT(meta_.ok, 20);
  EXPECT_EQ(ReadPath(pod_ + "/weights.bin"), weights_);
}

}  // namespace
}  // namespace strata::csi::testing
