// The store on a small file system of the test's own (a size-limited tmpfs):
// filling it must give clear errors and uncached-but-correct bytes, keep what
// was cached readable, shrink the cache to what fits, and recover.
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "cache/chunk_store.h"
#include "gtest/gtest.h"
#include "tests/util/test_util.h"

namespace strata::cache {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;

constexpr uint32_t kChunk = 256 << 10;

class DiskFullTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a size-limited tmpfs";
    mnt_ = dir_.path() + "/small";
    std::filesystem::create_directory(mnt_);
    ASSERT_EQ(::mount("tmpfs", mnt_.c_str(), "tmpfs", 0, "size=12m"), 0) << std::strerror(errno);
    mounted_ = true;
  }
  void TearDown() override {
    if (mounted_) ::umount2(mnt_.c_str(), MNT_DETACH);
  }

  TempDir dir_;
  std::string mnt_;
  bool mounted_ = false;
};

TEST_F(DiskFullTest, FullDiskGivesClearErrorsAndRecovers) {
  StoreOptions o;
  o.dir = mnt_ + "/cache";
  o.chunk_size = kChunk;
  o.capacity_bytes = 1ull << 30;  // far more than the file system holds
  auto store = ChunkStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  auto& s = *store;

  // Fill until a write fails; every fill still hands back the right bytes.
  int cached = 0, failed = 0;
  for (int obj = 0; obj < 20 && failed == 0; ++obj) {
    std::string key = "obj" + std::to_string(obj);
    ASSERT_TRUE(s->Register({key, 8 * kChunk, "t", 0}).ok());
    for (uint32_t i = 0; i < 8; ++i) {
      auto r = s->WriteChunk(key, i, Pattern(obj, i, kChunk));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->bytes);
      EXPECT_TRUE(r->bytes->view() == Pattern(obj, i, kChunk));
      if (r->cached) {
        ++cached;
      } else {
        ++failed;
        break;
      }
    }
  }
  ASSERT_GT(failed, 0) << "the 12 MiB file system never filled";
  ASSERT_GT(cached, 0);
  EXPECT_GE(s->Stats().write_errors, 1u);

  // What was cached before the disk filled still reads back exactly.
  std::string buf(kChunk, '\0');
  for (int obj = 0; obj < 20; ++obj) {
    std::string key = "obj" + std::to_string(obj);
    if (!s->Lookup(key)) continue;
    for (uint32_t i = 0; i < 8; ++i) {
      auto r = s->Read(key, uint64_t{i} * kChunk, absl::MakeSpan(buf));
      if (!r.ok() || !r->missing.empty()) continue;
      ASSERT_EQ(buf, Pattern(obj, i, kChunk)) << key << " chunk " << i;
    }
  }

  // The evictor lowers the capacity to what fits and frees room below it.
  for (int t = 0; t < 500 && s->Stats().capacity_bytes == (1ull << 30); ++t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LT(s->Stats().capacity_bytes, 12u << 20);
  for (int t = 0; t < 500 && s->Stats().used_bytes > s->Stats().capacity_bytes * 0.9; ++t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_TRUE(s->Register({"after", kChunk, "t", 0}).ok());
  auto r = s->WriteChunk("after", 0, Pattern(7, 0, kChunk));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->cached) << "no room was made after the disk filled";
  s.reset();

  // Reopened, the store still serves only right bytes.
  o.capacity_bytes = 10 << 20;
  store = ChunkStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  auto rr = (*store)->Read("after", 0, absl::MakeSpan(buf));
  ASSERT_TRUE(rr.ok());
  ASSERT_TRUE(rr->missing.empty());
  EXPECT_EQ(buf, Pattern(7, 0, kChunk));
}

}  // namespace
}  // namespace strata::cache
