// VolumeTree without a mount: what it serves for reads of objects whose
// content is addressed by a digest (OCI blobs), driven through the Tree
// interface the FUSE engine calls.
#include "fuse/volume_tree.h"

#include <fcntl.h>
#include <unistd.h>

#include <fstream>
#include <map>

#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "gtest/gtest.h"
#include "origin/origin.h"
#include "origin/sigv4.h"
#include "tests/util/test_util.h"

namespace strata::fuse {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;

constexpr uint32_t kChunk = 64 << 10;

// A file:// origin that names each file's sha256, as a registry names blobs
// (the seam: the bytes still come from real files).
class DigestOrigin final : public origin::Origin {
 public:
  explicit DigestOrigin(std::unique_ptr<origin::Origin> base) : base_(std::move(base)) {}
  std::map<std::string, std::string> digests;

  const std::string& url() const override { return base_->url(); }
  absl::StatusOr<origin::ObjectStat> Stat(const std::string& path) override {
    auto st = base_->Stat(path);
    if (st.ok() && digests.count(path)) st->digest = digests[path];
    return st;
  }
  absl::StatusOr<std::vector<origin::DirEntry>> List(const std::string& dir) override {
    auto l = base_->List(dir);
    if (l.ok()) {
      for (auto& e : *l) {
        if (digests.count(e.name)) e.stat.digest = digests[e.name];
      }
    }
    return l;
  }

 protected:
  absl::Status ReadInRange(const std::string& path, const origin::ObjectStat& stat, uint64_t offset,
                           absl::Span<char> out) override {
    return base_->ReadRange(path, stat, offset, out);
  }

 private:
  std::unique_ptr<origin::Origin> base_;
};

// The bytes a read answered with, whichever way it came.
std::string Served(const ReadResult& r) {
  if (!r.lease.memory().empty()) return std::string(r.lease.memory());
  if (r.lease.fd() >= 0) {
    std::string out(r.lease.length(), '\0');
    if (::pread(r.lease.fd(), out.data(), out.size(), static_cast<off_t>(r.lease.offset())) !=
        static_cast<ssize_t>(out.size())) {
      return "<short read from the cache file>";
    }
    return out;
  }
  return r.bytes;
}

TEST(VolumeTreeTest, UncheckedChunksOfADigestObjectAreNeverServed) {
  TempDir dir;
  std::string content = Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk) + Pattern(1, 2, 1000);
  std::filesystem::create_directories(dir.path() + "/origin");
  std::ofstream(dir.path() + "/origin/blob", std::ios::binary) << content;
  auto base = origin::OpenOrigin("file://" + dir.path() + "/origin", {});
  ASSERT_TRUE(base.ok()) << base.status();
  auto origin = std::make_shared<DigestOrigin>(std::move(*base));
  origin->digests["blob"] = "sha256:" + strata::Sha256Hex(content);

  cache::StoreOptions so;
  so.dir = dir.path() + "/cache";
  so.chunk_size = kChunk;
  auto store = cache::ChunkStore::Open(so);
  ASSERT_TRUE(store.ok()) << store.status();
  // The cache already holds chunks for this blob that were never checked
  // against its digest, and they are wrong (a check that failed while the
  // object was busy, or a crash before the check finished).
  cache::FetchTarget t{origin, "blob", *origin->Stat("blob"), kChunk, {}};
  const std::string key = cache::StoreKey(t);
  ASSERT_TRUE((*store)->Register({key, content.size(), "test", kChunk}).ok());
  for (uint32_t i = 0; i < 3; ++i) {
    ASSERT_TRUE((*store)->WriteChunk(key, i, Pattern(9, i, i < 2 ? kChunk : 1000)).ok());
  }
  ASSERT_FALSE((*store)->DigestVerified(key));

  cache::Fetcher fetcher(**store);
  VolumeOptions vo;
  vo.chunk_size = kChunk;
  VolumeTree tree(origin, **store, fetcher, vo);
  auto attr = tree.Lookup(1, "blob");
  ASSERT_TRUE(attr.ok()) << attr.status();
  auto open = tree.Open(attr->ino, O_RDONLY);
  ASSERT_TRUE(open.ok()) << open.status();
  // Each read is the blob's bytes or an error; never the unchecked ones.
  std::string got;
  for (uint64_t off = 0; off < content.size();) {
    auto r = tree.Read(open->handle, off, 32 << 10);
    ASSERT_TRUE(r.ok()) << r.status();
    std::string piece = Served(*r);
    ASSERT_FALSE(piece.empty());
    got += piece;
    off += piece.size();
  }
  EXPECT_TRUE(got == content) << "served bytes that do not match the digest";
  EXPECT_TRUE((*store)->DigestVerified(key));
  tree.Release(open->handle);
}

}  // namespace
}  // namespace strata::fuse
