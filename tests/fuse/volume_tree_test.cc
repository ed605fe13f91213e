// VolumeTree without a mount, driven through the Tree interface the FUSE
// engine calls: reads of objects addressed by a digest (OCI blobs), metadata
// ages on a fake clock, and writes staged for an object store.
#include "fuse/volume_tree.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <functional>
#include <map>

#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "gtest/gtest.h"
#include "origin/origin.h"
#include "origin/sigv4.h"
#include "tests/util/fake_clock.h"
#include "tests/util/test_util.h"

namespace strata::fuse {
namespace {

using strata::testing::FakeClock;
using strata::testing::Pattern;
using strata::testing::ReadPath;
using strata::testing::TempDir;
using strata::testing::WriteFile;

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
  if (cache::MemoryParts m = r.lease.memory(); !m.empty()) {
    return std::string(m.head) + std::string(m.tail);
  }
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

// A flat object store in memory (no POSIX directory behind it, so the tree
// stages its writes and uploads them with Put).
class MemoryObjects final : public origin::Origin {
 public:
  std::map<std::string, std::string> objects;

  const std::string& url() const override { return url_; }
  absl::StatusOr<origin::ObjectStat> Stat(const std::string& path) override {
    origin::ObjectStat st;
    if (path.empty()) {
      st.is_dir = true;
      return st;
    }
    auto it = objects.find(path);
    if (it == objects.end()) return absl::NotFoundError(path);
    st.size = it->second.size();
    st.version = std::to_string(std::hash<std::string>{}(it->second));
    return st;
  }
  absl::StatusOr<std::vector<origin::DirEntry>> List(const std::string& dir) override {
    std::vector<origin::DirEntry> out;
    if (!dir.empty()) return out;
    for (const auto& [name, content] : objects) out.push_back({name, *Stat(name)});
    return out;
  }
  absl::Status Put(const std::string& path, const std::string& local_file) override {
    objects[path] = ReadPath(local_file);
    return absl::OkStatus();
  }

 protected:
  absl::Status ReadInRange(const std::string& path, const origin::ObjectStat&, uint64_t offset,
                           absl::Span<char> out) override {
    auto it = objects.find(path);
    if (it == objects.end()) return absl::NotFoundError(path);
    it->second.copy(out.data(), out.size(), offset);
    return absl::OkStatus();
  }

 private:
  std::string url_ = "mem://objects";
};

// A file's cached attributes are served until the tree's clock passes the
// TTL, and then the origin is asked again: a change made at the origin
// meanwhile shows only after that.
TEST(VolumeTreeTest, CachedAttributesAreReusedUntilTheClockPassesTheTtl) {
  TempDir dir;
  WriteFile(dir.path() + "/origin/looked-up", "12345");
  WriteFile(dir.path() + "/origin/listed", "abc");
  auto origin = origin::OpenOrigin("file://" + dir.path() + "/origin", {});
  ASSERT_TRUE(origin.ok()) << origin.status();
  cache::StoreOptions so;
  so.dir = dir.path() + "/cache";
  so.chunk_size = kChunk;
  auto store = cache::ChunkStore::Open(so);
  ASSERT_TRUE(store.ok()) << store.status();
  cache::Fetcher fetcher(**store);
  FakeClock clock;
  VolumeOptions vo;
  vo.chunk_size = kChunk;
  vo.attr_ttl = absl::Seconds(10);
  vo.clock = &clock;
  VolumeTree tree(std::shared_ptr<origin::Origin>(std::move(*origin)), **store, fetcher, vo);

  auto looked_up = tree.Lookup(kRootIno, "looked-up");
  ASSERT_TRUE(looked_up.ok()) << looked_up.status();
  EXPECT_EQ(looked_up->size, 5u);
  // A listing stamps what it lists, as a lookup does.
  auto listing = tree.ReadDir(kRootIno);
  ASSERT_TRUE(listing.ok()) << listing.status();
  ASSERT_EQ(listing->size(), 2u);

  // Grown at the origin, in place (the same files), behind the tree's back.
  std::ofstream(dir.path() + "/origin/looked-up", std::ios::app) << "6789";
  std::ofstream(dir.path() + "/origin/listed", std::ios::app) << "defg";

  clock.Advance(absl::Seconds(9));
  auto cached = tree.Lookup(kRootIno, "looked-up");
  ASSERT_TRUE(cached.ok()) << cached.status();
  EXPECT_EQ(cached->ino, looked_up->ino);
  EXPECT_EQ(cached->size, 5u) << "asked the origin again within the TTL";
  auto listed = tree.Lookup(kRootIno, "listed");
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_EQ(listed->size, 3u) << "asked the origin again within the TTL";

  clock.Advance(absl::Seconds(2));
  auto fresh = tree.Lookup(kRootIno, "looked-up");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ(fresh->ino, looked_up->ino);
  EXPECT_EQ(fresh->size, 9u) << "served past the TTL";
  auto relisted = tree.GetAttr(listed->ino);
  ASSERT_TRUE(relisted.ok()) << relisted.status();
  EXPECT_EQ(relisted->size, 7u) << "served past the TTL";
}

// On an object store a new file is stamped with the tree's clock, shows what
// was written to its staged copy before it is uploaded, and reaches the
// origin on close.
TEST(VolumeTreeTest, ObjectStoreWritesAreStagedStampedAndUploadedOnClose) {
  TempDir dir;
  std::filesystem::create_directories(dir.path() + "/staging");
  auto origin = std::make_shared<MemoryObjects>();
  cache::StoreOptions so;
  so.dir = dir.path() + "/cache";
  so.chunk_size = kChunk;
  auto store = cache::ChunkStore::Open(so);
  ASSERT_TRUE(store.ok()) << store.status();
  cache::Fetcher fetcher(**store);
  FakeClock clock(absl::FromUnixSeconds(1'234'567'890));
  VolumeOptions vo;
  vo.chunk_size = kChunk;
  vo.staging_dir = dir.path() + "/staging";
  vo.clock = &clock;
  VolumeTree tree(origin, **store, fetcher, vo);

  auto created = tree.Create(kRootIno, "new", S_IFREG | 0644, O_WRONLY, Caller{1000, 1000});
  ASSERT_TRUE(created.ok()) << created.status();
  const auto& [attr, opened] = *created;
  EXPECT_EQ(attr.mtime_ns, absl::ToUnixNanos(absl::FromUnixSeconds(1'234'567'890)));
  EXPECT_EQ(attr.uid, 1000u);
  const std::string data = Pattern(3, 0, 1000);
  auto wrote = tree.Write(opened.handle, 0, absl::MakeConstSpan(data));
  ASSERT_TRUE(wrote.ok()) << wrote.status();
  EXPECT_EQ(*wrote, data.size());
  EXPECT_EQ(origin->objects.count("new"), 0u) << "uploaded before close";
  auto staged = tree.GetAttr(attr.ino);
  ASSERT_TRUE(staged.ok()) << staged.status();
  EXPECT_EQ(staged->size, data.size());

  tree.Release(opened.handle);
  ASSERT_EQ(origin->objects.count("new"), 1u) << "not uploaded on close";
  EXPECT_TRUE(origin->objects["new"] == data);
  EXPECT_TRUE(std::filesystem::is_empty(dir.path() + "/staging"));
  // Uploaded, the origin's object is what the tree shows, as the same inode.
  auto uploaded = tree.Lookup(kRootIno, "new");
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  EXPECT_EQ(uploaded->ino, attr.ino);
  EXPECT_EQ(uploaded->size, data.size());
}

}  // namespace
}  // namespace strata::fuse
