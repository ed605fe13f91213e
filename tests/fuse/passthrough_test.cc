// FUSE passthrough over a real mount: a file whole in the store is read by
// the kernel from the store's file, held there against eviction while it is
// open, a new version gets a new backing file, and with passthrough off
// every read goes through the daemon.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <unistd.h>
#include <xxhash.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "fuse/engine.h"
#include "fuse/open_log.h"
#include "fuse/volume_tree.h"
#include "origin/origin.h"
#include "tests/util/local_cache.h"
#include "tests/util/test_util.h"

namespace strata::fuse {
namespace {

namespace fs = std::filesystem;
using strata::testing::CloseFdsUnder;
using strata::testing::Eventually;
using strata::testing::ReadFdUncached;
using strata::testing::SameBytes;
using strata::testing::TempDir;

std::string Pattern(size_t n, int seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(i * 31 + i / 4096 + seed);
  return s;
}

cache::EvictRequest EvictAll() {
  cache::EvictRequest r;
  r.mode = cache::EvictRequest::Mode::kAll;
  return r;
}

class PassthroughTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    fs::create_directories(mnt_);
    auto c = strata::testing::OpenLocalCache(dir_.path());
    ASSERT_TRUE(c.ok()) << c.status();
    cache_ = std::move(*c);
  }
  void TearDown() override {
    // A test that failed midway leaves files open: closed while the daemon
    // still answers, or the process would hang at exit flushing them.
    if (server_) CloseFdsUnder(mnt_);
    ::umount2(mnt_.c_str(), MNT_DETACH);
    if (server_) server_->Stop();
    if (serve_.joinable()) serve_.join();
    server_.reset();
    tree_.reset();
  }

  void Mount(bool passthrough, bool read_only = true,
             std::function<int(int, int)> open_backing = nullptr,
             absl::Duration attr_ttl = absl::Seconds(1)) {
    VolumeOptions vo;
    vo.read_only = read_only;
    vo.attr_ttl = attr_ttl;
    tree_ = std::make_unique<VolumeTree>(cache_.origin, *cache_.store, *cache_.fetcher, vo);
    MountOptions mo;
    mo.mountpoint = mnt_;
    mo.passthrough = passthrough;
    mo.open_log = log_;
    mo.open_backing = std::move(open_backing);
    auto server = FuseServer::Mount(*tree_, mo);
    ASSERT_TRUE(server.ok()) << server.status();
    server_ = std::move(*server);
    serve_ = std::thread([s = server_.get()] { s->Run().IgnoreError(); });
  }

  void Put(const std::string& name, const std::string& bytes) {
    std::ofstream(dir_.path() + "/origin/" + name, std::ios::binary | std::ios::trunc) << bytes;
  }
  int Open(const std::string& name) { return ::open((mnt_ + "/" + name).c_str(), O_RDONLY); }
  uint64_t Held() { return cache_.store->Stats().kernel_held_objects; }
  uint64_t DaemonReads() { return tree_->Stats().reads; }
  // What the open log says is open now (the daemon has seen every release).
  size_t LoggedOpens(IoMode mode) {
    auto open = OpenLog::Read(log_);
    EXPECT_TRUE(open.ok()) << open.status();
    size_t n = 0;
    if (open.ok()) {
      for (const auto& [h, r] : *open) n += r.mode == mode;
    }
    return n;
  }
  bool NothingOpen() {
    auto open = OpenLog::Read(log_);
    return open.ok() && open->empty();
  }

  TempDir dir_;
  std::string mnt_ = dir_.path() + "/mnt", log_ = dir_.path() + "/opens";
  strata::testing::LocalCache cache_;
  std::unique_ptr<VolumeTree> tree_;
  std::unique_ptr<FuseServer> server_;
  std::thread serve_;
};

TEST_F(PassthroughTest, AWholeFileIsReadByTheKernelAndHeldAgainstEviction) {
  Mount(/*passthrough=*/true);
  const std::string v1 = Pattern((8 << 20) + 4097, 1);
  Put("w.bin", v1);

  // Cold: the first open is served by the daemon, which fills the store.
  int fd = Open("w.bin");
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v1));
  EXPECT_EQ(LoggedOpens(IoMode::kCached), 1u);
  EXPECT_EQ(Held(), 0u);
  ::close(fd);
  ASSERT_TRUE(Eventually([&] { return NothingOpen(); })) << "the release never arrived";

  // Whole and checked now: the next open reads the store's file, and the
  // daemon sees none of its reads.
  fd = Open("w.bin");
  ASSERT_GE(fd, 0);
  EXPECT_EQ(LoggedOpens(IoMode::kPassthrough), 1u);
  EXPECT_EQ(Held(), 1u);
  uint64_t before = DaemonReads();
  EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v1));
  EXPECT_EQ(DaemonReads(), before) << "a passthrough read reached the daemon";

  // A second open of the same inode shares the backing file.
  int fd2 = Open("w.bin");
  ASSERT_GE(fd2, 0) << std::strerror(errno);
  EXPECT_EQ(LoggedOpens(IoMode::kPassthrough), 2u);
  EXPECT_TRUE(SameBytes(ReadFdUncached(fd2), v1));
  ::close(fd2);

  // Eviction passes it by, whatever it is asked.
  cache::EvictReport rep = cache_.store->Evict(EvictAll());
  EXPECT_GE(rep.skipped_busy, 1u);
  EXPECT_EQ(rep.objects, 0u);
  EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v1));
  ::close(fd);

  // Closed: no longer held, and eviction takes it.
  ASSERT_TRUE(Eventually([&] { return Held() == 0; }));
  ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
  rep = cache_.store->Evict(EvictAll());
  EXPECT_EQ(rep.objects, 1u);
  EXPECT_EQ(cache_.store->Stats().objects, 0u);
}

TEST_F(PassthroughTest, ANewVersionGetsANewBackingFile) {
  Mount(/*passthrough=*/true);
  const std::string v1 = Pattern(3 << 20, 1), v2 = Pattern((5 << 20) + 11, 2);
  Put("w.bin", v1);
  for (int i = 0; i < 2; ++i) {
    int fd = Open("w.bin");
    ASSERT_GE(fd, 0);
    EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v1));
    ::close(fd);
    ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
  }
  // The origin file changes: the next open is a new version, read through
  // the daemon until it is whole, then passed through on its own backing.
  Put("w.bin", v2);
  for (IoMode mode : {IoMode::kCached, IoMode::kPassthrough}) {
    int fd = Open("w.bin");
    ASSERT_GE(fd, 0);
    EXPECT_EQ(LoggedOpens(mode), 1u);
    EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v2));
    ::close(fd);
    ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
  }
}

// The file changes in place at the origin while the kernel reads it from a
// backing file: new opens see the new version (through the daemon until it
// is whole, then from a backing file of its own), while the open from
// before keeps reading the version it opened, as it was.
TEST_F(PassthroughTest, ANewVersionUnderAnOpenPassthroughFileIsAnotherInode) {
  Mount(/*passthrough=*/true);
  const std::string v1 = Pattern((3 << 20) + 7, 1), v2 = Pattern((5 << 20) + 11, 2);
  Put("w.bin", v1);
  int fd = Open("w.bin");
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v1));
  ::close(fd);
  ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
  int old_fd = Open("w.bin");
  ASSERT_GE(old_fd, 0);
  ASSERT_EQ(LoggedOpens(IoMode::kPassthrough), 1u);
  struct stat old_st;
  ASSERT_EQ(::fstat(old_fd, &old_st), 0);

  Put("w.bin", v2);  // rewritten in place: the origin's inode is the same
  for (IoMode mode : {IoMode::kCached, IoMode::kPassthrough}) {
    SCOPED_TRACE(mode == IoMode::kCached ? "cold" : "whole");
    fd = Open("w.bin");
    ASSERT_GE(fd, 0) << std::strerror(errno);
    EXPECT_EQ(LoggedOpens(mode), mode == IoMode::kCached ? 1u : 2u);
    EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v2));
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    EXPECT_EQ(st.st_size, static_cast<off_t>(v2.size()));
    EXPECT_NE(st.st_ino, old_st.st_ino);
    if (mode == IoMode::kPassthrough) {
      EXPECT_EQ(Held(), 2u) << "one backing file per version";
    }
    ::close(fd);
  }
  // The first open reads what it opened, and says so.
  EXPECT_TRUE(SameBytes(ReadFdUncached(old_fd), v1));
  struct stat st;
  ASSERT_EQ(::fstat(old_fd, &st), 0);
  EXPECT_EQ(st.st_size, static_cast<off_t>(v1.size()));
  EXPECT_EQ(st.st_ino, old_st.st_ino);
  ::close(old_fd);
  ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
  ASSERT_TRUE(Eventually([&] { return Held() == 0; }));
}

// Another name of a file passed through (a hard link at the origin) is the
// same file, however often it is looked up: not taken for a new version.
TEST_F(PassthroughTest, AHardLinkOfAFilePassedThroughStaysTheSameInode) {
  Mount(/*passthrough=*/true, /*read_only=*/true, nullptr, absl::ZeroDuration());
  const std::string v = Pattern((2 << 20) + 3, 5);
  Put("a.bin", v);
  ASSERT_EQ(
      ::link((dir_.path() + "/origin/a.bin").c_str(), (dir_.path() + "/origin/b.bin").c_str()), 0);
  int fd = Open("a.bin");
  ASSERT_GE(fd, 0);
  EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v));
  ::close(fd);
  ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
  fd = Open("a.bin");
  ASSERT_GE(fd, 0);
  ASSERT_EQ(LoggedOpens(IoMode::kPassthrough), 1u);
  struct stat held;
  ASSERT_EQ(::fstat(fd, &held), 0);
  for (const char* name : {"b.bin", "b.bin", "a.bin", "b.bin"}) {
    SCOPED_TRACE(name);
    struct stat st;
    ASSERT_EQ(::stat((mnt_ + "/" + name).c_str(), &st), 0);  // a lookup each: no entry TTL
    EXPECT_EQ(st.st_ino, held.st_ino);
  }
  int other = Open("b.bin");
  ASSERT_GE(other, 0) << std::strerror(errno);
  EXPECT_TRUE(SameBytes(ReadFdUncached(other), v));
  ::close(other);
  ::close(fd);
  ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
}

// The kernel refusing a backing file for want of memory costs that one
// open: it is read through the daemon, its bytes are not held, and the next
// open passes through. A refusal every backing file would get (no
// privilege) turns passthrough off for the mount after that one try.
TEST_F(PassthroughTest, ATransientRefusalCostsOneOpenAndAPermanentOneTheMount) {
  for (int err : {ENOMEM, EPERM}) {
    SCOPED_TRACE(std::strerror(err));
    std::atomic<int> tries{0};
    Mount(/*passthrough=*/true, /*read_only=*/true, [&](int fuse_fd, int backing_fd) {
      return tries++ == 0 ? -err : KernelOpenBacking(fuse_fd, backing_fd);
    });
    const std::string v = Pattern((2 << 20) + 5, err);
    const std::string name = absl::StrCat("w", err, ".bin");
    Put(name, v);
    // Cold, then refused, then (for ENOMEM) passed through.
    for (IoMode mode : {IoMode::kCached, IoMode::kCached,
                        err == ENOMEM ? IoMode::kPassthrough : IoMode::kCached}) {
      int fd = Open(name);
      ASSERT_GE(fd, 0) << std::strerror(errno);
      EXPECT_EQ(LoggedOpens(mode), 1u);
      EXPECT_EQ(Held(), mode == IoMode::kPassthrough ? 1u : 0u);
      uint64_t before = DaemonReads();
      EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v));
      EXPECT_EQ(DaemonReads() > before, mode == IoMode::kCached);
      ::close(fd);
      ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
    }
    EXPECT_EQ(tries.load(), err == ENOMEM ? 2 : 1) << "a refused mount kept trying";
    TearDown();
  }
}

TEST_F(PassthroughTest, OffOrWritableEveryReadGoesThroughTheDaemon) {
  for (bool writable : {false, true}) {
    SCOPED_TRACE(writable ? "writable volume" : "passthrough off");
    Mount(/*passthrough=*/writable, /*read_only=*/!writable);
    const std::string v = Pattern(2 << 20, writable ? 3 : 4);
    Put("w.bin", v);
    for (int i = 0; i < 2; ++i) {
      int fd = Open("w.bin");
      ASSERT_GE(fd, 0);
      EXPECT_EQ(Held(), 0u);
      uint64_t before = DaemonReads();
      EXPECT_TRUE(SameBytes(ReadFdUncached(fd), v));
      EXPECT_GT(DaemonReads(), before);
      ::close(fd);
      if (writable) {
        // No log is kept where nothing is ever passed through.
        EXPECT_FALSE(fs::exists(log_));
      } else {
        // Off, the opens are still logged: a successor with passthrough on
        // must know that the kernel holds them cached.
        ASSERT_TRUE(Eventually([&] { return NothingOpen(); }));
      }
    }
    TearDown();
  }
}

// The open log outside a mount: what a successor is told, and what it
// refuses to believe.
class OpenLogTest : public ::testing::Test {
 protected:
  OpenRecord Passed(uint64_t ino, int32_t id, std::string backing) {
    return OpenRecord{ino, IoMode::kPassthrough, id, std::move(backing)};
  }
  TempDir dir_;
  std::string path_ = dir_.path() + "/v.opens";
};

TEST_F(OpenLogTest, OpensAndClosesAreReadBackAndATornTailIsDropped) {
  auto log = OpenLog::Start(path_, {{7, OpenRecord{3, IoMode::kCached, 0, ""}}});
  ASSERT_TRUE(log.ok()) << log.status();
  OpenFiles open = {{7, OpenRecord{3, IoMode::kCached, 0, ""}}, {8, Passed(4, 2, "k@v1")}};
  (*log)->Opened(8, open[8], open);
  open.erase(7);
  (*log)->Closed(7, open);
  auto read = OpenLog::Read(path_);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 1u);
  EXPECT_EQ(read->at(8).backing, "k@v1");
  EXPECT_EQ(read->at(8).backing_id, 2);
  // A daemon killed mid-write leaves part of a record: it never happened.
  std::ofstream(path_, std::ios::app) << std::string(11, '\x7f');
  read = OpenLog::Read(path_);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->size(), 1u);
}

// An open record as daemons wrote it before request ids: u32 length, u32
// XXH32 of the rest, u8 kind, u64 handle, u64 inode, i32 backing id, the
// backing's id.
std::string OldRecord(uint8_t kind, uint64_t handle, uint64_t ino, int32_t id,
                      const std::string& backing) {
  std::string body(1 + 8 + 8 + 4, '\0');
  std::memcpy(body.data(), &kind, 1);
  std::memcpy(body.data() + 1, &handle, 8);
  std::memcpy(body.data() + 9, &ino, 8);
  std::memcpy(body.data() + 17, &id, 4);
  body += backing;
  const uint32_t len = static_cast<uint32_t>(8 + body.size());
  const uint32_t sum = XXH32(body.data(), body.size(), 0);
  std::string out(8, '\0');
  std::memcpy(out.data(), &len, 4);
  std::memcpy(out.data() + 4, &sum, 4);
  return out + body;
}

TEST_F(OpenLogTest, RequestIdsAreReadBackAndOlderRecordsHaveNone) {
  OpenRecord cached{3, IoMode::kCached, 0, ""};
  cached.request = 0x1234;
  OpenRecord passed = Passed(4, 2, "k@v1");
  passed.request = 0x7ffffffffffffffe;  // the largest id the kernel gives
  OpenFiles open = {{7, cached}};
  auto log = OpenLog::Start(path_, open);
  ASSERT_TRUE(log.ok()) << log.status();
  open[8] = passed;
  (*log)->Opened(8, passed, open);
  log->reset();
  // Then a record of a daemon from before request ids, as after an upgrade.
  std::ofstream(path_, std::ios::app | std::ios::binary) << OldRecord(2, 9, 5, 3, "k@v2");
  auto read = OpenLog::Read(path_);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), 3u);
  EXPECT_EQ(read->at(7).request, 0x1234u);
  EXPECT_EQ(read->at(7).mode, IoMode::kCached);
  EXPECT_EQ(read->at(8).request, 0x7ffffffffffffffeu);
  EXPECT_EQ(read->at(8).mode, IoMode::kPassthrough);
  EXPECT_EQ(read->at(8).backing, "k@v1");
  EXPECT_EQ(read->at(8).backing_id, 2);
  EXPECT_EQ(read->at(9).request, 0u);
  EXPECT_EQ(read->at(9).backing, "k@v2");
  EXPECT_EQ(read->at(9).backing_id, 3);
}

TEST_F(OpenLogTest, ALogThatCannotStartLeavesNoOlderOneBehind) {
  ASSERT_TRUE(OpenLog::Start(path_, {{1, Passed(5, 1, "k@v1")}}).ok());
  ASSERT_TRUE(fs::exists(path_));
  // The next mount's log cannot be written (its temporary name is taken by
  // a directory): the old one, of another connection's backing ids, goes.
  fs::create_directories(path_ + ".new/x");
  auto log = OpenLog::Start(path_, {});
  EXPECT_FALSE(log.ok());
  EXPECT_FALSE(fs::exists(path_));
  EXPECT_EQ(OpenLog::Read(path_).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(OpenLogTest, OpensTheKernelWouldNotAllowTogetherAreNotBelieved) {
  const std::vector<std::pair<std::string, OpenFiles>> lies = {
      {"passed through no backing id", {{1, Passed(5, 0, "k@v1")}}},
      {"passed through no backing file", {{1, Passed(5, 3, "")}}},
      {"two backing files for one inode", {{1, Passed(5, 3, "k@v1")}, {2, Passed(5, 4, "k@v2")}}},
      {"cached and passed through at once",
       {{1, Passed(5, 3, "k@v1")}, {2, OpenRecord{5, IoMode::kCached, 0, ""}}}},
  };
  for (const auto& [what, open] : lies) {
    SCOPED_TRACE(what);
    ASSERT_TRUE(OpenLog::Start(path_, open).ok());
    auto read = OpenLog::Read(path_);
    EXPECT_EQ(read.status().code(), absl::StatusCode::kDataLoss) << read.status();
  }
  // Nor a file far larger than a log ever grows.
  ASSERT_TRUE(OpenLog::Start(path_, {}).ok());
  fs::resize_file(path_, (64 << 20) + 1);
  EXPECT_EQ(OpenLog::Read(path_).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace strata::fuse
