// The FD keeper's request handling, with the keeper served on a thread of
// the test: it keeps only /dev/fuse descriptors, closes any other that
// comes with a request, refuses requests cut short, and removes nothing at
// its socket path but a stale socket.
#include "fuse/fd_keeper.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/test_util.h"

namespace strata::fuse {
namespace {

using strata::testing::TempDir;
using ::testing::HasSubstr;

// Descriptors open in this process (the keeper's included: it runs here).
int OpenFds() {
  return static_cast<int>(std::distance(std::filesystem::directory_iterator("/proc/self/fd"),
                                        std::filesystem::directory_iterator()));
}

class FdKeeperTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::access("/dev/fuse", R_OK | W_OK) != 0) GTEST_SKIP() << "needs /dev/fuse";
    socket_ = dir_.path() + "/keeper.sock";
  }
  void TearDown() override { Stop(); }

  void Start() {
    FdKeeperOptions o;
    o.socket = socket_;
    server_ = std::thread([this, o] { served_ = ServeFdKeeper(o, stop_); });
    for (int i = 0; i < 200; ++i) {
      auto c = FdKeeperClient::Connect(socket_);
      if (c.ok()) {
        client_ = std::move(*c);
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "the keeper does not answer on " << socket_;
  }
  void Stop() {
    client_.reset();
    stop_ = true;
    if (server_.joinable()) server_.join();
  }

  // Sends `msg` with `fd` on a connection of its own and returns the answer.
  std::string Raw(const std::string& msg, int fd) {
    auto addr = UnixAddress(socket_);
    int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    EXPECT_EQ(::connect(s, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr), 0);
    EXPECT_TRUE(SendWithFd(s, msg, fd));
    char answer[256];
    ssize_t n = ::recv(s, answer, sizeof answer, 0);
    ::close(s);
    return n > 0 ? std::string(answer, n) : "<none>";
  }

  TempDir dir_;
  std::string socket_;
  std::atomic<bool> stop_{false};
  std::thread server_;
  absl::Status served_;
  std::unique_ptr<FdKeeperClient> client_;
};

TEST_F(FdKeeperTest, KeepsOnlyFuseDescriptors) {
  Start();
  int fuse = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  ASSERT_GE(fuse, 0);
  ASSERT_TRUE(client_->Put("vol-1", fuse).ok());
  auto back = client_->Get("vol-1");
  ASSERT_TRUE(back.ok()) << back.status();
  struct stat st;
  ASSERT_EQ(::fstat(*back, &st), 0);
  EXPECT_EQ(st.st_rdev, makedev(10, 229));
  ::close(*back);

  // A pipe is not a FUSE connection: refused, and not left open.
  int p[2];
  ASSERT_EQ(::pipe2(p, O_CLOEXEC), 0);
  int before = OpenFds();
  absl::Status put = client_->Put("vol-2", p[0]);
  EXPECT_FALSE(put.ok());
  EXPECT_THAT(std::string(put.message()), HasSubstr("/dev/fuse"));
  EXPECT_EQ(OpenFds(), before);
  EXPECT_EQ(client_->Get("vol-2").status().code(), absl::StatusCode::kNotFound);
  ::close(p[0]);
  ::close(p[1]);
  ::close(fuse);
}

TEST_F(FdKeeperTest, DescriptorsSentWithOtherRequestsAreClosed) {
  Start();
  int fuse = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  ASSERT_GE(fuse, 0);
  ASSERT_TRUE(client_->Put("vol", fuse).ok());
  Raw("D nothing", fuse);  // a first connection, so counts below are steady
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  int before = OpenFds();
  for (const char* req : {"G vol", "D nothing", "X what", "P "}) {
    SCOPED_TRACE(req);
    std::string answer = Raw(req, fuse);
    EXPECT_NE(answer, "<none>");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the keeper closes its end
    EXPECT_EQ(OpenFds(), before);
  }
  // "G vol" came with a descriptor but was still answered.
  EXPECT_TRUE(client_->Get("vol").ok());
  ::close(fuse);
}

TEST_F(FdKeeperTest, RequestsCutShortAreRefused) {
  Start();
  int fuse = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
  ASSERT_GE(fuse, 0);
  // Two keys longer than a message, the same in what fits: neither may land
  // under the cut key, where the other would find it.
  std::string a = std::string(5000, 'k') + "a";
  EXPECT_EQ(Raw("P " + a, fuse), "NO request too long");
  std::string cut = std::string(4094, 'k');
  EXPECT_EQ(client_->Get(cut).status().code(), absl::StatusCode::kNotFound);
  // The client refuses such a key itself.
  EXPECT_EQ(client_->Put(a, fuse).code(), absl::StatusCode::kInvalidArgument);
  ::close(fuse);
}

TEST_F(FdKeeperTest, OnlyAStaleSocketIsRemovedAtItsPath) {
  // A file where the socket should be is not the keeper's to delete.
  std::ofstream(socket_) << "precious";
  FdKeeperOptions o;
  o.socket = socket_;
  std::atomic<bool> stop{true};
  EXPECT_FALSE(ServeFdKeeper(o, stop).ok());
  EXPECT_EQ(strata::testing::ReadPath(socket_), "precious");
  std::filesystem::remove(socket_);

  // A socket left by a keeper that died is replaced.
  auto addr = UnixAddress(socket_);
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  ASSERT_EQ(::bind(s, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr), 0);
  ::close(s);
  Start();
  EXPECT_TRUE(client_->Delete("x").ok());
}

}  // namespace
}  // namespace strata::fuse
