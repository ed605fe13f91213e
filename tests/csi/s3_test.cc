// A StorageClass on an S3 origin (s3rver on 127.0.0.1, which checks
// signatures): credentials come only from the CSI requests' secrets, as the
// provisioner and kubelet pass them; volumes are prefixes; the node keeps
// the secrets to mount again after a restart.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "origin/origin.h"
#include "tests/csi/driver.h"
#include "tests/util/s3_server.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

class CsiS3Test : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    server_ = std::make_unique<strata::testing::S3Server>(dir_.path() + "/s3", "models");
    ASSERT_TRUE(server_->ok()) << server_->error();
    // Nothing from the environment: the secrets must carry the keys.
    ::unsetenv("AWS_ACCESS_KEY_ID");
    ::unsetenv("AWS_SECRET_ACCESS_KEY");
    ::setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent", 1);
    base_ = "s3://models/volumes?endpoint=" + server_->endpoint() + "&region=us-east-1";
    secrets_ = {{"access_key_id", strata::testing::S3Server::kKey},
                {"secret_access_key", strata::testing::S3Server::kSecret}};
    driver_ = std::make_unique<TestDriver>(dir_.path() + "/d", "node-a", /*controller=*/true);
  }
  void TearDown() override {
    driver_.reset();
    UnmountUnder(dir_.path());
    server_.reset();
    ::unsetenv("AWS_SHARED_CREDENTIALS_FILE");
  }
  // The bucket's own view of `path` under the volume prefix.
  std::string AtOrigin(const std::string& url, const std::string& path) {
    return strata::testing::ReadAtOrigin(
        url, OriginOptionsFrom(StringMap(secrets_.begin(), secrets_.end())), path);
  }

  TempDir dir_;
  std::unique_ptr<strata::testing::S3Server> server_;
  std::string base_;
  Context secrets_;
  std::unique_ptr<TestDriver> driver_;
};

TEST_F(CsiS3Test, DynamicVolumeWithSecretsSurvivesARestartAndIsDeleted) {
  ::csi::v1::CreateVolumeResponse created;
  grpc::Status no_keys = driver_->Create("pvc-s3", {{"origin", base_}}, 0, &created);
  EXPECT_EQ(no_keys.error_code(), Code::PERMISSION_DENIED) << no_keys.error_message();
  ASSERT_TRUE(driver_
                  ->Create("pvc-s3", {{"origin", base_}, {"chunkSize", "1MiB"}}, 1 << 30, &created,
                           0, secrets_)
                  .ok());
  Context ctx(created.volume().volume_context().begin(), created.volume().volume_context().end());
  const std::string url = ctx.at("origin");
  EXPECT_EQ(url,
            "s3://models/volumes/pvc-s3?endpoint=" + server_->endpoint() + "&region=us-east-1");

  std::string stage = dir_.path() + "/kubelet/staging/pvc-s3",
              pod = dir_.path() + "/kubelet/pods/p/pvc-s3";
  EXPECT_EQ(driver_->Stage("pvc-s3", stage, ctx).error_code(), Code::PERMISSION_DENIED)
      << "staged without the node-stage secret";
  ASSERT_TRUE(driver_->Stage("pvc-s3", stage, ctx, MountCap(), secrets_).ok());
  // The record keeps the secrets: only root may read it.
  namespace fs = std::filesystem;
  EXPECT_EQ(fs::status(dir_.path() + "/d/state/node").permissions() & fs::perms::all,
            fs::perms::owner_all);
  ASSERT_TRUE(driver_->Publish("pvc-s3", stage, pod, false).ok());
  {
    std::ofstream f(pod + "/weights.bin");
    f << std::string(3 << 20, 'w');
  }  // uploaded on close
  EXPECT_TRUE(AtOrigin(url, "weights.bin") == std::string(3 << 20, 'w'));

  driver_->Restart();  // the record's secrets mount it again
  EXPECT_TRUE(ReadPath(pod + "/weights.bin") == std::string(3 << 20, 'w'));
  std::ofstream(pod + "/after-restart.txt") << "ok";
  EXPECT_EQ(AtOrigin(url, "after-restart.txt"), "ok");

  ASSERT_TRUE(driver_->Unpublish("pvc-s3", pod).ok());
  ASSERT_TRUE(driver_->Unstage("pvc-s3", stage).ok());
  EXPECT_EQ(driver_->Delete("pvc-s3").error_code(), Code::PERMISSION_DENIED)
      << "deleting needs the keys too";
  ASSERT_TRUE(driver_->Delete("pvc-s3", secrets_).ok());
  EXPECT_EQ(AtOrigin(url, "weights.bin"), "<missing>");
  EXPECT_EQ(AtOrigin(url, "after-restart.txt"), "<missing>");
  EXPECT_EQ(AtOrigin(base_, "pvc-s3"), "<missing>") << "the prefix's marker is gone too";
}

// The origin goes down under a published volume: what was read before is
// still served from the cache, and the volume condition says why it is
// abnormal; what was never read fails, with an error and no hang.
TEST_F(CsiS3Test, CachedFilesStayReadableWhileTheOriginIsDown) {
  ::csi::v1::CreateVolumeResponse created;
  ASSERT_TRUE(
      driver_->Create("pvc-down", {{"origin", base_}, {"attrTTL", "0"}}, 0, &created, 0, secrets_)
          .ok());
  Context ctx(created.volume().volume_context().begin(), created.volume().volume_context().end());
  std::string stage = dir_.path() + "/kubelet/staging/pvc-down",
              pod = dir_.path() + "/kubelet/pods/p/pvc-down";
  ASSERT_TRUE(driver_->Stage("pvc-down", stage, ctx, MountCap(), secrets_).ok());
  ASSERT_TRUE(driver_->Publish("pvc-down", stage, pod, false).ok());
  std::string weights(2 << 20, 'm');
  std::ofstream(pod + "/weights.bin") << weights;
  std::ofstream(pod + "/unread.txt") << "never read back";
  ASSERT_TRUE(ReadPath(pod + "/weights.bin") == weights);  // now cached

  server_.reset();  // the bucket's server stops
  EXPECT_TRUE(ReadPath(pod + "/weights.bin") == weights) << "cached bytes are still served";
  EXPECT_EQ(ReadPath(pod + "/unread.txt"), "") << "uncached bytes cannot be";
  ::csi::v1::NodeGetVolumeStatsResponse stats;
  ASSERT_TRUE(driver_->Stats("pvc-down", pod, &stats).ok());
  EXPECT_TRUE(stats.volume_condition().abnormal());
  EXPECT_THAT(stats.volume_condition().message(), HasSubstr("not reachable"));
  ASSERT_TRUE(driver_->Unpublish("pvc-down", pod).ok());
  ASSERT_TRUE(driver_->Unstage("pvc-down", stage).ok());
}

}  // namespace
}  // namespace strata::csi::testing
