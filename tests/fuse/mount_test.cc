// Real FUSE mounts of a file:// origin through `strata mount`: POSIX reads,
// close-to-open visibility, crashes of the daemon, and bad input. Every test
// tears its mount down even when it fails (tests/util/mount.h).
#include "tests/util/mount.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/test_util.h"

namespace strata {
namespace {

using strata::testing::Pattern;
using strata::testing::ReadPath;
using strata::testing::SameBytes;
using strata::testing::TempDir;
using strata::testing::WriteFile;
using testing::StrataMount;

class MountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    origin_ = dir_.path() + "/origin";
    mnt_ = dir_.path() + "/mnt";
    std::filesystem::create_directories(origin_);
    std::filesystem::create_directories(mnt_);
    data_ = Pattern(41, 0, (9 << 20) + 4321);  // a few chunks at 1 MiB, a short last one
    WriteFile(origin_ + "/models/weights.bin", data_);
    WriteFile(origin_ + "/README", "hello\n");
  }

  std::unique_ptr<StrataMount> Mount(const std::string& mnt, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {
        "--cache-dir", dir_.path() + "/cache-" + std::filesystem::path(mnt).filename().string(),
        "--chunk-size", "1MiB"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto m = std::make_unique<StrataMount>(STRATA_PATH, "file://" + origin_, mnt, args);
    EXPECT_TRUE(m->ok()) << m->output();
    return m;
  }

  TempDir dir_;
  std::string origin_, mnt_, data_;
};

TEST_F(MountTest, ReadsAtOddOffsetsAndSizesAndThroughMmap) {
  auto m = Mount(mnt_);
  EXPECT_EQ(ReadPath(mnt_ + "/README"), "hello\n");
  std::string path = mnt_ + "/models/weights.bin";
  EXPECT_EQ(std::filesystem::file_size(path), data_.size());
  int fd = ::open(path.c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  for (auto [off, len] : std::vector<std::pair<uint64_t, size_t>>{{0, 1},
                                                                  {1, 4095},
                                                                  {4095, 2},
                                                                  {(1 << 20) - 3, 7},
                                                                  {5 << 20, 3 << 20},
                                                                  {data_.size() - 10, 100}}) {
    std::string buf(len, '\0');
    ssize_t n = ::pread(fd, buf.data(), len, off);
    ASSERT_GE(n, 0) << off;
    EXPECT_EQ(buf.substr(0, n), data_.substr(off, len)) << off;
  }
  void* p = ::mmap(nullptr, data_.size(), PROT_READ, MAP_PRIVATE, fd, 0);
  ASSERT_NE(p, MAP_FAILED);
  EXPECT_EQ(std::memcmp(p, data_.data(), data_.size()), 0);
  ::munmap(p, data_.size());
  ::close(fd);
  // Reread with the page cache dropped: now served from the chunk cache.
  std::ofstream("/proc/sys/vm/drop_caches") << "3";
  EXPECT_TRUE(SameBytes(ReadPath(path), data_));
}

TEST_F(MountTest, SequentialReadersGetAWideReadaheadWindow) {
  // The kernel starts a FUSE mount at 128 KiB; the daemon widens it to 4 MiB.
  auto m = Mount(mnt_);
  ASSERT_TRUE(m->ok());
  struct stat st;
  ASSERT_EQ(::stat(mnt_.c_str(), &st), 0);
  std::string kb =
      ReadPath("/sys/class/bdi/0:" + std::to_string(minor(st.st_dev)) + "/read_ahead_kb");
  EXPECT_EQ(kb, "4096\n");
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), data_));
}

TEST_F(MountTest, LargeDirectoriesAndConcurrentReaders) {
  for (int i = 0; i < 1500; ++i)
    WriteFile(origin_ + "/many/f" + std::to_string(i), std::to_string(i));
  auto m = Mount(mnt_);
  int count = 0;
  for (auto& e : std::filesystem::directory_iterator(mnt_ + "/many")) {
    ++count;
    ASSERT_TRUE(e.is_regular_file());
  }
  EXPECT_EQ(count, 1500);
  EXPECT_EQ(ReadPath(mnt_ + "/many/f1234"), "1234");
  std::vector<std::thread> ts;
  std::atomic<int> right{0};
  for (int t = 0; t < 8; ++t) {
    ts.emplace_back([&] {
      if (ReadPath(mnt_ + "/models/weights.bin") == data_) ++right;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(right.load(), 8);
}

TEST_F(MountTest, ChangesAtTheOriginAreSeenAtTheNextOpen) {
  auto a = Mount(mnt_);
  std::string mnt2 = dir_.path() + "/mnt2";
  std::filesystem::create_directories(mnt2);
  auto b = Mount(mnt2);  // a second node on the same origin
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), data_));
  EXPECT_TRUE(SameBytes(ReadPath(mnt2 + "/models/weights.bin"), data_));
  // Another writer replaces the file (same size, new bytes) and closes it.
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  std::string next = Pattern(42, 0, data_.size());
  WriteFile(origin_ + "/models/weights.bin", next);
  WriteFile(origin_ + "/new.txt", "new file");
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), next));
  EXPECT_TRUE(SameBytes(ReadPath(mnt2 + "/models/weights.bin"), next));
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // past the metadata TTL
  EXPECT_EQ(ReadPath(mnt2 + "/new.txt"), "new file");
}

TEST_F(MountTest, BadInputGetsClearErrors) {
  auto m = Mount(mnt_, {"--read-only"});
  struct stat st;
  errno = 0;
  EXPECT_NE(::stat((mnt_ + "/" + std::string(300, 'x')).c_str(), &st), 0);
  EXPECT_EQ(errno, ENAMETOOLONG);
  EXPECT_NE(::stat((mnt_ + "/missing").c_str(), &st), 0);
  EXPECT_EQ(errno, ENOENT);
  // "..": the kernel resolves it to the parent; it never escapes the origin.
  EXPECT_EQ(ReadPath(mnt_ + "/models/../README"), "hello\n");
  int fd = ::open((mnt_ + "/README").c_str(), O_WRONLY);
  EXPECT_LT(fd, 0);
  EXPECT_EQ(errno, EROFS);
  // The origin file deleted under an open reader: uncached bytes are an error, not a hang.
  fd = ::open((mnt_ + "/models/weights.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char c;
  ASSERT_EQ(::pread(fd, &c, 1, 0), 1);
  std::filesystem::remove(origin_ + "/models/weights.bin");
  std::string buf(1 << 20, '\0');
  ssize_t n = ::pread(fd, buf.data(), buf.size(), 7 << 20);
  EXPECT_LT(n, 0);
  EXPECT_EQ(errno, EIO);
  ::close(fd);
  m->Stop();
  EXPECT_THAT(m->output(), ::testing::HasSubstr("weights.bin"));  // the log names the cause
}

TEST_F(MountTest, SigkillDuringReadsThenRemountServesRightBytes) {
  auto m = Mount(mnt_);
  std::atomic<bool> wrong{false};
  std::thread reader([&] {
    for (int i = 0; i < 50; ++i) {
      int fd = ::open((mnt_ + "/models/weights.bin").c_str(), O_RDONLY);
      if (fd < 0) return;  // the daemon is gone: ENOTCONN
      std::string buf(256 << 10, '\0');
      for (uint64_t off = 0; off < data_.size(); off += buf.size()) {
        ssize_t n = ::pread(fd, buf.data(), buf.size(), off);
        if (n < 0) break;
        if (buf.compare(0, n, data_, off, n) != 0) wrong = true;
      }
      ::close(fd);
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(150));
  m->Stop(SIGKILL);
  reader.join();
  EXPECT_FALSE(wrong.load()) << "a read returned wrong bytes";
  auto again = Mount(mnt_);
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), data_));
}

TEST_F(MountTest, UnmountCommandDetachesADeadMount) {
  auto m = Mount(mnt_);
  m->Stop(SIGKILL);
  // (Stop already cleans up; mount again, kill, and use the command instead.)
  StrataMount n(STRATA_PATH, "file://" + origin_, mnt_, {"--cache-dir", dir_.path() + "/c2"});
  ASSERT_TRUE(n.ok()) << n.output();
  ::kill(n.pid(), SIGKILL);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  std::string out;
  EXPECT_EQ(testing::RunCommand({STRATA_PATH, "unmount", mnt_}, &out), 0) << out;
  EXPECT_FALSE(testing::IsMounted(mnt_));
}

TEST_F(MountTest, WritesGoThroughToTheOriginAndToOtherNodes) {
  auto a = Mount(mnt_);
  std::string mnt2 = dir_.path() + "/mnt2";
  std::filesystem::create_directories(mnt2);
  auto b = Mount(mnt2);
  std::string data = Pattern(43, 0, (3 << 20) + 17);
  {
    std::ofstream f(mnt_ + "/out/ckpt.bin", std::ios::binary);  // no such directory yet
    EXPECT_FALSE(f.good());
  }
  ASSERT_TRUE(std::filesystem::create_directory(mnt_ + "/out"));
  {
    int fd = ::open((mnt_ + "/out/ckpt.bin").c_str(), O_CREAT | O_WRONLY | O_EXCL, 0640);
    ASSERT_GE(fd, 0);
    // Odd sizes and offsets; the last write lands before the end.
    ASSERT_EQ(::pwrite(fd, data.data(), 1000, 0), 1000);
    ASSERT_EQ(::pwrite(fd, data.data() + 1000, data.size() - 1000, 1000),
              static_cast<ssize_t>(data.size() - 1000));
    ASSERT_EQ(::pwrite(fd, "XY", 2, 5), 2);
    ASSERT_EQ(::fsync(fd), 0);
    ASSERT_EQ(::close(fd), 0);
  }
  data[5] = 'X';
  data[6] = 'Y';
  EXPECT_TRUE(SameBytes(ReadPath(origin_ + "/out/ckpt.bin"), data));  // write-through
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/out/ckpt.bin"), data));     // this node
  // The other node, at its next open.
  EXPECT_TRUE(SameBytes(ReadPath(mnt2 + "/out/ckpt.bin"), data));
  EXPECT_EQ(
      std::filesystem::status(mnt_ + "/out/ckpt.bin").permissions() & std::filesystem::perms::all,
      std::filesystem::perms(0640));
  // Overwritten after being cached: never the stale cached bytes.
  std::string next = Pattern(44, 0, data.size());
  { std::ofstream(mnt_ + "/out/ckpt.bin", std::ios::binary | std::ios::trunc) << next; }
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/out/ckpt.bin"), next));
  EXPECT_TRUE(SameBytes(ReadPath(mnt2 + "/out/ckpt.bin"), next));
}

TEST_F(MountTest, NamespaceOperations) {
  auto m = Mount(mnt_);
  WriteFile(mnt_ + "/a.txt", "AAA");
  WriteFile(mnt_ + "/b.txt", "BBBBBB");
  // rename over an existing file
  std::filesystem::rename(mnt_ + "/a.txt", mnt_ + "/b.txt");
  EXPECT_FALSE(std::filesystem::exists(mnt_ + "/a.txt"));
  EXPECT_EQ(ReadPath(mnt_ + "/b.txt"), "AAA");
  EXPECT_EQ(ReadPath(origin_ + "/b.txt"), "AAA");
  // directories, renamed with their contents
  std::filesystem::create_directories(mnt_ + "/x/y");
  WriteFile(mnt_ + "/x/y/z.txt", "zed");
  std::filesystem::rename(mnt_ + "/x", mnt_ + "/w");
  EXPECT_EQ(ReadPath(mnt_ + "/w/y/z.txt"), "zed");
  std::error_code ec;
  std::filesystem::remove(mnt_ + "/w/y", ec);
  EXPECT_EQ(ec.value(), ENOTEMPTY);
  std::filesystem::remove(mnt_ + "/w/y/z.txt");
  std::filesystem::remove(mnt_ + "/w/y");
  std::filesystem::remove(mnt_ + "/w");
  EXPECT_FALSE(std::filesystem::exists(origin_ + "/w"));
  // symlinks
  std::filesystem::create_symlink("b.txt", mnt_ + "/link");
  EXPECT_EQ(std::filesystem::read_symlink(mnt_ + "/link"), "b.txt");
  EXPECT_EQ(ReadPath(mnt_ + "/link"), "AAA");
  EXPECT_TRUE(std::filesystem::is_symlink(origin_ + "/link"));
  // times and modes
  struct timespec ts[2] = {{1000000000, 0}, {1234567890, 500}};
  ASSERT_EQ(::utimensat(AT_FDCWD, (mnt_ + "/b.txt").c_str(), ts, 0), 0);
  struct stat st;
  ASSERT_EQ(::stat((origin_ + "/b.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_mtim.tv_sec, 1234567890);
  ASSERT_EQ(::chmod((mnt_ + "/b.txt").c_str(), 0600), 0);
  ASSERT_EQ(::stat((mnt_ + "/b.txt").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_EQ(::unlink((mnt_ + "/nope").c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(MountTest, TruncateWhileAnotherHandleReads) {
  auto m = Mount(mnt_);
  int rfd = ::open((mnt_ + "/models/weights.bin").c_str(), O_RDONLY);
  ASSERT_GE(rfd, 0);
  std::string buf(4096, '\0');
  ASSERT_EQ(::pread(rfd, buf.data(), buf.size(), 0), 4096);
  ASSERT_EQ(::truncate((mnt_ + "/models/weights.bin").c_str(), 100000), 0);
  EXPECT_EQ(std::filesystem::file_size(origin_ + "/models/weights.bin"), 100000u);
  // The reader sees the file as it is now: no bytes past the new end.
  ssize_t n = ::pread(rfd, buf.data(), buf.size(), 200000);
  EXPECT_LE(n, 0);
  n = ::pread(rfd, buf.data(), buf.size(), 99000);
  ASSERT_GE(n, 0);
  EXPECT_EQ(buf.substr(0, n), data_.substr(99000, n));
  ::close(rfd);
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), data_.substr(0, 100000)));
}

TEST_F(MountTest, ConcurrentReadersAndAWriter) {
  auto m = Mount(mnt_);
  std::string chunk = Pattern(45, 0, 64 << 10);
  std::atomic<bool> done{false}, wrong{false};
  std::thread writer([&] {
    int fd = ::open((mnt_ + "/log.bin").c_str(), O_CREAT | O_WRONLY | O_APPEND, 0644);
    for (int i = 0; i < 64 && fd >= 0; ++i) {
      if (::write(fd, chunk.data(), chunk.size()) != static_cast<ssize_t>(chunk.size())) break;
    }
    ::close(fd);
    done = true;
  });
  std::vector<std::thread> readers;
  for (int r = 0; r < 3; ++r) {
    readers.emplace_back([&] {
      while (!done) {
        std::string got = ReadPath(mnt_ + "/log.bin");
        // Whatever is visible is whole copies of `chunk` (and at most a partial last one).
        for (size_t off = 0; off + chunk.size() <= got.size(); off += chunk.size()) {
          if (got.compare(off, chunk.size(), chunk) != 0) wrong = true;
        }
      }
    });
  }
  writer.join();
  for (auto& t : readers) t.join();
  EXPECT_FALSE(wrong.load());
  EXPECT_EQ(std::filesystem::file_size(mnt_ + "/log.bin"), 64u * chunk.size());
}

TEST_F(MountTest, PermissionsAreEnforcedForOtherUsers) {
  WriteFile(origin_ + "/private.txt", "secret");
  ::chmod((origin_ + "/private.txt").c_str(), 0600);
  ::chmod(dir_.path().c_str(), 0755);  // so that nobody can reach the mountpoint
  auto m = Mount(mnt_);
  pid_t pid = ::fork();
  if (pid == 0) {
    // An unprivileged pod user: nobody.
    if (::setgid(65534) != 0 || ::setuid(65534) != 0) ::_exit(10);
    int fd = ::open((mnt_ + "/private.txt").c_str(), O_RDONLY);
    if (fd >= 0) ::_exit(11);
    if (errno != EACCES) ::_exit(12);
    fd = ::open((mnt_ + "/README").c_str(), O_RDONLY);  // 0644: readable
    ::_exit(fd >= 0 ? 0 : 13);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  EXPECT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
}

TEST_F(MountTest, MetricsAndHealthEndpoints) {
  auto m = Mount(mnt_);
  ASSERT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), data_));
  ASSERT_TRUE(SameBytes(ReadPath(mnt_ + "/models/weights.bin"), data_));
  size_t at = m->output().find("metrics on http://127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << m->output();
  std::string base = m->output().substr(at + 11, m->output().find("/metrics", at) - at - 11);
  std::string out;
  ASSERT_EQ(testing::RunCommand({"/usr/bin/curl", "-sf", base + "/metrics"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("# TYPE strata_fetch_latency_seconds histogram"));
  EXPECT_THAT(out, ::testing::HasSubstr("strata_fetch_latency_seconds_bucket{le=\"+Inf\"}"));
  EXPECT_THAT(out, ::testing::HasSubstr("strata_bytes_total{source=\"origin\"} " +
                                        std::to_string(data_.size())));
  EXPECT_THAT(out, ::testing::ContainsRegex("strata_read_hits_total [1-9]"));
  EXPECT_THAT(out, ::testing::HasSubstr("strata_cache_used_bytes " + std::to_string(data_.size())));
  ASSERT_EQ(testing::RunCommand({"/usr/bin/curl", "-sf", base + "/healthz"}, &out), 0);
  EXPECT_EQ(out, "ok\n");
  EXPECT_NE(testing::RunCommand({"/usr/bin/curl", "-sf", base + "/nope"}, &out), 0);
}

}  // namespace
}  // namespace strata
