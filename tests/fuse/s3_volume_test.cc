// An s3:// volume through `strata mount` against s3rver on 127.0.0.1: new
// files and whole rewrites are staged and uploaded on close or fsync;
// rename is copy and delete; what an object store cannot do is a clear errno.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "origin/origin.h"
#include "tests/util/mount.h"
#include "tests/util/s3_server.h"
#include "tests/util/test_util.h"

namespace strata {
namespace {

using strata::testing::Pattern;
using strata::testing::ReadPath;
using strata::testing::SameBytes;
using strata::testing::TempDir;
using testing::StrataMount;

bool WritePath(const std::string& path, const std::string& data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << data;
  f.close();
  return !f.fail();
}

class S3VolumeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    server_ = std::make_unique<testing::S3Server>(dir_.path() + "/s3", "vols");
    ASSERT_TRUE(server_->ok()) << server_->error();
    url_ = "s3://vols/pvc-1?endpoint=" + server_->endpoint();
    mnt_ = dir_.path() + "/mnt";
    std::filesystem::create_directories(mnt_);
  }
  void TearDown() override {
    mount_.reset();
    server_.reset();
  }

  void Mount(const std::string& mnt, const std::string& cache) {
    mount_ = std::make_unique<StrataMount>(
        STRATA_PATH, url_, mnt,
        std::vector<std::string>{"--cache-dir", cache, "--chunk-size", "1MiB"});
    ASSERT_TRUE(mount_->ok()) << mount_->output();
  }

  // The origin's own view, not through the mount.
  std::string AtOrigin(const std::string& path) {
    return strata::testing::ReadAtOrigin(url_, {}, path);
  }

  TempDir dir_;
  std::unique_ptr<testing::S3Server> server_;
  std::unique_ptr<StrataMount> mount_;
  std::string url_, mnt_;
};

TEST_F(S3VolumeTest, NewFilesAndRewritesAreUploadedOnClose) {
  Mount(mnt_, dir_.path() + "/cache");
  std::string data = Pattern(51, 0, (3 << 20) + 5);
  ASSERT_TRUE(std::filesystem::create_directory(mnt_ + "/ckpt"));
  ASSERT_TRUE(WritePath(mnt_ + "/ckpt/step-1.bin", data));
  EXPECT_TRUE(AtOrigin("ckpt/step-1.bin") == data);
  EXPECT_TRUE(ReadPath(mnt_ + "/ckpt/step-1.bin") == data);
  EXPECT_EQ(std::filesystem::file_size(mnt_ + "/ckpt/step-1.bin"), data.size());
  // A whole rewrite (O_TRUNC) replaces it; the cached chunks of the old one are not served.
  std::string next = Pattern(52, 0, 1000);
  ASSERT_TRUE(WritePath(mnt_ + "/ckpt/step-1.bin", next));
  EXPECT_EQ(AtOrigin("ckpt/step-1.bin"), next);
  EXPECT_TRUE(SameBytes(ReadPath(mnt_ + "/ckpt/step-1.bin"), next));
  // fsync uploads before close.
  int fd = ::open((mnt_ + "/synced.txt").c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "durable", 7), 7);
  ASSERT_EQ(::fsync(fd), 0);
  EXPECT_EQ(AtOrigin("synced.txt"), "durable");
  ::close(fd);
  // A second node sees the files at its next open.
  std::string mnt2 = dir_.path() + "/mnt2";
  std::filesystem::create_directories(mnt2);
  StrataMount other(STRATA_PATH, url_, mnt2, {"--cache-dir", dir_.path() + "/cache2"});
  ASSERT_TRUE(other.ok()) << other.output();
  EXPECT_TRUE(SameBytes(ReadPath(mnt2 + "/ckpt/step-1.bin"), next));
  EXPECT_EQ(ReadPath(mnt2 + "/synced.txt"), "durable");
}

TEST_F(S3VolumeTest, RenameUnlinkAndDirectories) {
  Mount(mnt_, dir_.path() + "/cache");
  ASSERT_TRUE(WritePath(mnt_ + "/a.bin", "AAAA"));
  std::filesystem::rename(mnt_ + "/a.bin", mnt_ + "/b.bin");
  EXPECT_EQ(AtOrigin("a.bin"), "<missing>");
  EXPECT_EQ(AtOrigin("b.bin"), "AAAA");
  EXPECT_EQ(ReadPath(mnt_ + "/b.bin"), "AAAA");
  ASSERT_TRUE(std::filesystem::create_directory(mnt_ + "/empty"));
  EXPECT_TRUE(std::filesystem::is_directory(mnt_ + "/empty"));
  ASSERT_TRUE(WritePath(mnt_ + "/full/x.bin", "") == false);  // no such directory yet
  std::filesystem::create_directory(mnt_ + "/full");
  ASSERT_TRUE(WritePath(mnt_ + "/full/x.bin", "x"));
  EXPECT_EQ(::rmdir((mnt_ + "/full").c_str()), -1);
  EXPECT_EQ(errno, ENOTEMPTY);
  EXPECT_EQ(::rename((mnt_ + "/full").c_str(), (mnt_ + "/moved").c_str()), -1);
  EXPECT_EQ(errno, EXDEV);  // mv copies directories itself then
  EXPECT_EQ(::rmdir((mnt_ + "/empty").c_str()), 0);
  EXPECT_FALSE(std::filesystem::exists(mnt_ + "/empty"));
  EXPECT_EQ(::unlink((mnt_ + "/b.bin").c_str()), 0);
  EXPECT_EQ(AtOrigin("b.bin"), "<missing>");
  EXPECT_EQ(::unlink((mnt_ + "/b.bin").c_str()), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(S3VolumeTest, WhatAnObjectStoreCannotDoIsAClearError) {
  Mount(mnt_, dir_.path() + "/cache");
  ASSERT_TRUE(WritePath(mnt_ + "/obj.bin", "0123456789"));
  // Writing into the middle of an existing object, or appending to it.
  EXPECT_LT(::open((mnt_ + "/obj.bin").c_str(), O_WRONLY), 0);
  EXPECT_EQ(errno, ENOTSUP);
  EXPECT_LT(::open((mnt_ + "/obj.bin").c_str(), O_WRONLY | O_APPEND), 0);
  EXPECT_EQ(errno, ENOTSUP);
  EXPECT_EQ(::link((mnt_ + "/obj.bin").c_str(), (mnt_ + "/hard").c_str()), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::symlink("obj.bin", (mnt_ + "/soft").c_str()), -1);
  EXPECT_EQ(errno, ENOTSUP);
  EXPECT_EQ(::chmod((mnt_ + "/obj.bin").c_str(), 0600), -1);
  EXPECT_EQ(errno, ENOTSUP);
  // No fifos or device nodes; a regular file by mknod is an empty object.
  EXPECT_EQ(::mkfifo((mnt_ + "/fifo").c_str(), 0644), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_EQ(::mknod((mnt_ + "/empty.bin").c_str(), S_IFREG | 0644, 0), 0);
  EXPECT_EQ(AtOrigin("empty.bin"), "");
  {
    // fallocate on a file being written: not possible on whole objects.
    int fd = ::open((mnt_ + "/new.bin").c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(::fallocate(fd, 0, 0, 4096), -1);
    EXPECT_EQ(errno, EOPNOTSUPP);
    EXPECT_EQ(::write(fd, "abc", 3), 3);
    EXPECT_EQ(::close(fd), 0);
    EXPECT_EQ(AtOrigin("new.bin"), "abc");
  }
  EXPECT_EQ(AtOrigin("obj.bin"), "0123456789");  // nothing was lost
  mount_->Stop();
  EXPECT_THAT(mount_->output(), ::testing::HasSubstr("has no hard links"));
  EXPECT_THAT(mount_->output(), ::testing::HasSubstr("keeps no fifos"));
  EXPECT_THAT(mount_->output(), ::testing::HasSubstr("O_TRUNC"));
}

}  // namespace
}  // namespace strata
