// Unit tests of the chunk store against the real file system, with faults
// injected at the StoreFs seam where a test needs them.
#include "cache/chunk_store.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <rocksdb/db.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <set>
#include <thread>

#include "absl/cleanup/cleanup.h"
#include "base/digest.h"
#include "base/unique_fd.h"
#include "cache/chunk_index.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/faulty_fs.h"
#include "tests/util/fake_clock.h"
#include "tests/util/test_util.h"

namespace strata::cache {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;
using ::testing::ElementsAre;
using testing::FaultyFs;
using ::testing::IsEmpty;

constexpr uint32_t kChunk = 64 << 10;

class ChunkStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<ChunkStore> OpenStore(uint64_t capacity = 64 << 20) {
    StoreOptions o;
    o.dir = dir_.path();
    o.chunk_size = kChunk;
    o.capacity_bytes = capacity;
    o.memory_bytes = memory_bytes_;
    o.fs = fs_;
    o.clock = &clock_;
    o.held_at_open = held_at_open_;
    auto s = ChunkStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(*s) : nullptr;
  }

  // Writes chunks [0, n) of `key` (size n chunks unless `size` is given).
  void Put(ChunkStore& s, const std::string& key, uint32_t n, uint64_t size = 0,
           bool whole_before_use = false) {
    if (size == 0) size = uint64_t{n} * kChunk;
    ASSERT_TRUE(s.Register({key, size, "test", 0, whole_before_use}).ok());
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t len = std::min<uint64_t>(kChunk, size - uint64_t{i} * kChunk);
      auto r = s.WriteChunk(key, i, Pattern(1, i, len));
      ASSERT_TRUE(r.ok()) << r.status();
      ASSERT_TRUE(r->cached);
    }
  }

  std::string ReadAll(ChunkStore& s, const std::string& key, uint64_t off, size_t len) {
    std::string out(len, '\0');
    auto r = s.Read(key, off, absl::MakeSpan(out));
    EXPECT_TRUE(r.ok()) << r.status();
    if (!r.ok() || !r->missing.empty()) return "<missing>";
    out.resize(r->bytes);
    return out;
  }

  std::string ObjectFile(ChunkStore&, const std::string&) {
    for (auto& e : std::filesystem::directory_iterator(dir_.path() + "/objects")) {
      return e.path().string();  // tests that use this cache one object
    }
    return "";
  }

  TempDir dir_;
  uint64_t memory_bytes_ = StoreOptions{}.memory_bytes;
  std::vector<std::string> held_at_open_;
  std::shared_ptr<FaultyFs> fs_ = std::make_shared<FaultyFs>(NewPosixStoreFs());
  strata::testing::FakeClock clock_;
};

TEST_F(ChunkStoreTest, ReadsBackWhatWasWrittenAtOddOffsets) {
  auto s = OpenStore();
  const uint64_t size = 3 * kChunk + 1234;
  Put(*s, "obj", 4, size);
  std::string whole;
  for (uint32_t i = 0; i < 4; ++i)
    whole += Pattern(1, i, std::min<uint64_t>(kChunk, size - i * kChunk));
  EXPECT_EQ(ReadAll(*s, "obj", 0, size), whole);
  EXPECT_EQ(ReadAll(*s, "obj", 7, 3), whole.substr(7, 3));
  EXPECT_EQ(ReadAll(*s, "obj", kChunk - 5, 10), whole.substr(kChunk - 5, 10));
  // Clipped at the end of the object; at the end exactly: zero bytes.
  EXPECT_EQ(ReadAll(*s, "obj", size - 10, 100), whole.substr(size - 10));
  EXPECT_EQ(ReadAll(*s, "obj", size, 100), "");
  std::string buf(1, '\0');
  EXPECT_EQ(s->Read("obj", size + 1, absl::MakeSpan(buf)).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s->Read("nope", 0, absl::MakeSpan(buf)).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ChunkStoreTest, ReadIsAllOrNothingAndNamesMissingChunks) {
  auto s = OpenStore();
  ASSERT_TRUE(s->Register({"obj", 4 * kChunk, "t", 0}).ok());
  ASSERT_TRUE(s->WriteChunk("obj", 1, Pattern(1, 1, kChunk)).ok());
  std::string out(3 * kChunk, 'x');
  auto r = s->Read("obj", 0, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->bytes, 0u);
  EXPECT_THAT(r->missing, ElementsAre(0, 2));
  EXPECT_EQ(out, std::string(3 * kChunk, 'x'));  // nothing copied
  EXPECT_EQ(s->Stats().read_misses, 1u);
}

TEST_F(ChunkStoreTest, RejectsBadInputWithClearErrors) {
  auto s = OpenStore();
  EXPECT_EQ(s->Register({"", 10, "", 0}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Register({std::string("a\0b", 3), 10, "", 0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Register({std::string(5000, 'k'), 10, "", 0}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->Register({"x", 10, "", 1000}).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(s->Register({"obj", 2 * kChunk, "", 0}).ok());
  auto r = s->WriteChunk("obj", 0, std::string(10, 'a'));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s->WriteChunk("obj", 2, std::string(kChunk, 'a')).status().code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(s->WriteChunk("other", 0, std::string(kChunk, 'a')).status().code(),
            absl::StatusCode::kNotFound);
  // A failed write leaves the chunk missing, not half there.
  std::string out(10, '\0');
  EXPECT_THAT(s->Read("obj", 0, absl::MakeSpan(out))->missing, ElementsAre(0));
}

// Keys come from outside (origin paths, S3 keys, digests): they name
// objects in the index, never files. Each lands in a file of its own under
// objects/, with a name of the store's making, and reads back as itself.
TEST_F(ChunkStoreTest, HostileKeysNeverBecomeFileNames) {
  auto s = OpenStore();
  const std::vector<std::string> keys = {"../../outside",    "/etc/passwd",          "a/../../b",
                                         "objects/../../x",  std::string(4000, '/'), "\n\t\x01\x7f",
                                         "sha256:../../../x"};
  for (size_t i = 0; i < keys.size(); ++i) Put(*s, keys[i], 2);
  for (size_t i = 0; i < keys.size(); ++i) {
    EXPECT_EQ(ReadAll(*s, keys[i], 0, 2 * kChunk), Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk));
  }
  std::set<std::string> top;
  for (auto& e : std::filesystem::directory_iterator(dir_.path())) {
    top.insert(e.path().filename().string());
  }
  for (const std::string& name : top) {
    EXPECT_TRUE(name == "objects" || name == "index" || name.rfind("LOCK", 0) == 0 ||
                name.rfind(".", 0) == 0)
        << "a file outside objects/: " << name;
  }
  size_t files = 0;
  for (auto& e : std::filesystem::recursive_directory_iterator(dir_.path() + "/objects")) {
    EXPECT_TRUE(e.is_regular_file()) << e.path();
    EXPECT_EQ(e.path().parent_path().string(), dir_.path() + "/objects") << e.path();
    ++files;
  }
  EXPECT_EQ(files, keys.size());
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/../outside"));
}

TEST_F(ChunkStoreTest, SizesNear2To64AreRefusedNotWrappedAround) {
  // (size + chunk - 1) / chunk once wrapped these to zero chunks; a later
  // read indexed chunks[0] of an empty vector.
  auto s = OpenStore();
  for (uint64_t size : {UINT64_MAX, UINT64_MAX - kChunk + 2, (uint64_t{1} << 50) + 1}) {
    SCOPED_TRACE(size);
    absl::Status st = s->Register({"huge", size, "t", 0});
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  }
  EXPECT_FALSE(s->Lookup("huge"));
  std::string out(10, '\0');
  EXPECT_EQ(s->Read("huge", 0, absl::MakeSpan(out)).status().code(), absl::StatusCode::kNotFound);
  // Large is fine when the chunks can count it.
  ASSERT_TRUE(s->Register({"large", uint64_t{1} << 40, "t", 256u << 20}).ok());
  EXPECT_EQ(s->Lookup("large")->chunks, 4096u);
}

TEST_F(ChunkStoreTest, ARecordWithTooFewChunksIsAnErrorNotACrash) {
  // An object recorded before sizes were bounded: its size wrapped to zero
  // chunks. Reading it must fail, not index past its chunks.
  {
    auto idx = ChunkIndex::Open(dir_.path() + "/index");
    ASSERT_TRUE(idx.ok()) << idx.status();
    ObjectRecord rec;
    rec.size = UINT64_MAX;
    rec.chunk_size = kChunk;
    rec.file = "0000000000000000-old";
    ASSERT_TRUE((*idx)->PutObject("old", rec).ok());
  }
  auto s = OpenStore();
  ASSERT_TRUE(s->Lookup("old"));
  std::string out(10, '\0');
  EXPECT_EQ(s->Read("old", 0, absl::MakeSpan(out)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s->MissingChunks("old", 0, 10).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s->MissingChunks("old", 5, UINT64_MAX).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s->Fill("old", 0, [](absl::Span<char>) { return absl::OkStatus(); }).status().code(),
            absl::StatusCode::kOutOfRange);
  // Registered again with a real size, it starts over.
  ASSERT_TRUE(s->Register({"old", kChunk, "t", 0}).ok());
  ASSERT_TRUE(s->WriteChunk("old", 0, Pattern(1, 0, kChunk)).ok());
  EXPECT_EQ(ReadAll(*s, "old", 0, 10), Pattern(1, 0, kChunk).substr(0, 10));
}

TEST_F(ChunkStoreTest, SurvivesReopenAndVerifiesOnFirstServe) {
  {
    auto s = OpenStore();
    Put(*s, "obj", 3);
  }
  auto s = OpenStore();
  auto info = s->Lookup("obj");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->chunks_present, 3u);
  EXPECT_EQ(ReadAll(*s, "obj", kChunk, 100), Pattern(1, 1, kChunk).substr(0, 100));
  EXPECT_EQ(s->Stats().chunks_verified, 1u);
  // Chunk 1 again, not where the last read ended (that would verify ahead,
  // in the background, and race this count).
  ReadAll(*s, "obj", kChunk + 10, 100);
  EXPECT_EQ(s->Stats().chunks_verified, 1u);  // once per start
}

TEST_F(ChunkStoreTest, CorruptBytesOnDiskAreAMissNeverServed) {
  {
    auto s = OpenStore();
    Put(*s, "obj", 2);
  }
  {
    // Flip one byte of chunk 1 behind the store's back.
    auto file = ObjectFile(*OpenStore(), "obj");
    int fd = ::open(file.c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    char c;
    ASSERT_EQ(::pread(fd, &c, 1, kChunk + 77), 1);
    c ^= 1;
    ASSERT_EQ(::pwrite(fd, &c, 1, kChunk + 77), 1);
    ::close(fd);
  }
  auto s = OpenStore();
  std::string out(2 * kChunk, '\0');
  auto r = s->Read("obj", 0, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->missing, ElementsAre(1));
  EXPECT_EQ(s->Stats().checksum_failures, 1u);
  EXPECT_EQ(ReadAll(*s, "obj", 0, kChunk), Pattern(1, 0, kChunk));
  // Refetch and serve right bytes.
  ASSERT_TRUE(s->WriteChunk("obj", 1, Pattern(1, 1, kChunk)).ok());
  EXPECT_EQ(ReadAll(*s, "obj", kChunk, kChunk), Pattern(1, 1, kChunk));
}

TEST_F(ChunkStoreTest, FaultyReadsAreMissesNotWrongBytes) {
  memory_bytes_ = 0;  // every read goes to the (faulty) disk
  {
    auto s = OpenStore();
    Put(*s, "obj", 2);
  }
  auto s = OpenStore();
  fs_->flip_read_bits = true;
  std::string out(kChunk, '\0');
  auto r = s->Read("obj", 0, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->missing, ElementsAre(0));
  fs_->flip_read_bits = false;
  fs_->short_reads = true;
  r = s->Read("obj", kChunk, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->missing, ElementsAre(1));
  fs_->short_reads = false;
  fs_->read_errno = EIO;
  ASSERT_TRUE(s->WriteChunk("obj", 0, Pattern(1, 0, kChunk)).ok());
  r = s->Read("obj", 0, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->missing, ElementsAre(0));  // I/O error on a verified chunk: a miss
  EXPECT_GE(s->Stats().checksum_failures, 3u);
}

TEST_F(ChunkStoreTest, WriteErrorsServeUncachedAndKeepServing) {
  auto s = OpenStore();
  ASSERT_TRUE(s->Register({"obj", 2 * kChunk, "t", 0}).ok());
  fs_->write_errno = EIO;
  auto r = s->WriteChunk("obj", 0, Pattern(1, 0, kChunk));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_FALSE(r->cached);
  ASSERT_TRUE(r->bytes);
  EXPECT_TRUE(r->bytes->view() == Pattern(1, 0, kChunk));
  EXPECT_EQ(s->Stats().write_errors, 1u);
  std::string out(10, '\0');
  EXPECT_THAT(s->Read("obj", 0, absl::MakeSpan(out))->missing, ElementsAre(0));
  EXPECT_EQ(s->Stats().used_bytes, 0u);
  fs_->write_errno = 0;
  ASSERT_TRUE(s->WriteChunk("obj", 0, Pattern(1, 0, kChunk))->cached);
  EXPECT_EQ(ReadAll(*s, "obj", 0, kChunk), Pattern(1, 0, kChunk));
}

TEST_F(ChunkStoreTest, UnusableDirectoryDegradesToServingWithoutCaching) {
  fs_->makedirs_errno = EROFS;
  StoreOptions o;
  o.dir = dir_.path() + "/cache";
  o.fs = fs_;
  o.chunk_size = kChunk;
  EXPECT_EQ(ChunkStore::Open(o).status().code(), absl::StatusCode::kPermissionDenied);
  o.degrade_on_error = true;
  auto s = ChunkStore::Open(o);
  ASSERT_TRUE(s.ok());
  EXPECT_FALSE((*s)->health().ok());
  EXPECT_THAT(std::string((*s)->health().message()), ::testing::HasSubstr("Read-only file system"));
  EXPECT_TRUE((*s)->Stats().degraded);
  ASSERT_TRUE((*s)->Register({"obj", kChunk, "t", 0}).ok());
  auto r = (*s)->WriteChunk("obj", 0, Pattern(1, 0, kChunk));
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->cached);
  EXPECT_TRUE(r->bytes->view() == Pattern(1, 0, kChunk));
}

TEST_F(ChunkStoreTest, ReadOnlyFileSystemDegrades) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to mount a read-only tmpfs";
  std::string mnt = dir_.path() + "/ro";
  std::filesystem::create_directory(mnt);
  ASSERT_EQ(::mount("tmpfs", mnt.c_str(), "tmpfs", MS_RDONLY, "size=1m"), 0) << strerror(errno);
  StoreOptions o;
  o.dir = mnt + "/cache";
  o.degrade_on_error = true;
  auto s = ChunkStore::Open(o);
  ::umount2(mnt.c_str(), MNT_DETACH);
  ASSERT_TRUE(s.ok());
  EXPECT_TRUE((*s)->Stats().degraded);
  EXPECT_THAT((*s)->Stats().health, ::testing::HasSubstr(mnt));
}

TEST_F(ChunkStoreTest, CorruptIndexRecordsAreDroppedAtOpen) {
  {
    auto s = OpenStore();
    Put(*s, "good", 2);
    Put(*s, "bad-object", 2);
    Put(*s, "bad-chunk", 2);
  }
  {
    auto idx = ChunkIndex::Open(dir_.path() + "/index");
    ASSERT_TRUE(idx.ok());
    auto* db = (*idx)->db_for_testing();
    // A truncated object record, and a chunk record with a flipped bit.
    std::string v;
    ASSERT_TRUE(db->Get({}, ChunkIndex::ObjectKeyForTesting("bad-object"), &v).ok());
    ASSERT_TRUE(
        db->Put({}, ChunkIndex::ObjectKeyForTesting("bad-object"), v.substr(0, v.size() / 2)).ok());
    ASSERT_TRUE(db->Get({}, ChunkIndex::ChunkKeyForTesting("bad-chunk", 1), &v).ok());
    v[3] ^= 0x10;
    ASSERT_TRUE(db->Put({}, ChunkIndex::ChunkKeyForTesting("bad-chunk", 1), v).ok());
    ASSERT_TRUE(db->Put({}, std::string("c\0garbage", 9), "zz").ok());
  }
  auto s = OpenStore();
  EXPECT_FALSE(s->Lookup("bad-object"));
  EXPECT_EQ(s->Lookup("bad-chunk")->chunks_present, 1u);
  EXPECT_EQ(ReadAll(*s, "good", 0, 2 * kChunk), Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk));
  EXPECT_EQ(ReadAll(*s, "bad-chunk", 0, kChunk), Pattern(1, 0, kChunk));
  EXPECT_GE(s->Stats().corrupt_index_records, 4u);  // object + its 2 chunks + chunk + garbage
  // The bad object's file was orphaned and removed.
  int files = 0;
  for ([[maybe_unused]] auto& e : std::filesystem::directory_iterator(dir_.path() + "/objects"))
    ++files;
  EXPECT_EQ(files, 2);
}

// What an origin last said about a name outlives the process, so that a
// reader can find the cached version without the origin; it goes with its
// object, and a damaged record is dropped, never misread.
TEST_F(ChunkStoreTest, LastSeenVersionsAreDurableAndGoWithTheirObjects) {
  const std::string digest = "sha256:" + std::string(64, 'a');
  {
    auto s = OpenStore();
    EXPECT_FALSE(s->LastSeen("http://o/a"));
    EXPECT_EQ(s->RecordSeen("http://o/a", {"a@v0", 1, "v0", 0, ""}).code(),
              absl::StatusCode::kFailedPrecondition);  // names only what the store holds
    EXPECT_EQ(s->RecordSeen("", {"a@v0", 1, "v0", 0, ""}).code(),
              absl::StatusCode::kInvalidArgument);
    Put(*s, "a@v1", 2);
    Put(*s, "a@v2", 1);
    Put(*s, "b@v1", 1);
    ASSERT_TRUE(s->RecordSeen("http://o/a", {"a@v1", 2 * kChunk, "v1", 11, ""}).ok());
    ASSERT_TRUE(s->RecordSeen("http://o/a", {"a@v2", kChunk, "v2", 22, ""}).ok());
    ASSERT_TRUE(s->RecordSeen("http://o/b", {"b@v1", kChunk, "v1", 33, digest}).ok());
  }
  {
    auto s = OpenStore();
    auto a = s->LastSeen("http://o/a");
    ASSERT_TRUE(a);
    EXPECT_EQ(a->key, "a@v2");  // the last one recorded
    EXPECT_EQ(a->size, kChunk);
    EXPECT_EQ(a->version, "v2");
    EXPECT_EQ(a->mtime_ns, 22);
    auto b = s->LastSeen("http://o/b");
    ASSERT_TRUE(b);
    EXPECT_EQ(b->digest, digest);
    // Until the next open, a record can name an object that is gone.
    ASSERT_TRUE(s->Remove("a@v2").ok());
    EXPECT_TRUE(s->LastSeen("http://o/a"));
  }
  {
    auto idx = ChunkIndex::Open(dir_.path() + "/index");
    ASSERT_TRUE(idx.ok());
    auto* db = (*idx)->db_for_testing();
    std::string v;
    ASSERT_TRUE(db->Get({}, ChunkIndex::NameKeyForTesting("http://o/b"), &v).ok());
    v[5] ^= 0x04;
    ASSERT_TRUE(db->Put({}, ChunkIndex::NameKeyForTesting("http://o/b"), v).ok());
  }
  auto s = OpenStore();
  EXPECT_FALSE(s->LastSeen("http://o/a"));  // its object was removed
  EXPECT_FALSE(s->LastSeen("http://o/b"));  // damaged
  EXPECT_EQ(s->Stats().corrupt_index_records, 1u);
  EXPECT_TRUE(s->Lookup("a@v1"));
  EXPECT_TRUE(s->Lookup("b@v1"));
}

TEST_F(ChunkStoreTest, DataFileDeletedBehindTheStoresBack) {
  {
    auto s = OpenStore();
    Put(*s, "obj", 2);
    std::filesystem::remove(ObjectFile(*s, "obj"));
    // While running: verify notices and drops the object's chunks.
    VerifyReport rep = s->Verify();
    EXPECT_EQ(rep.objects_missing_file, 1u);
    EXPECT_EQ(rep.chunks_bad, 2u);
    std::string out(10, '\0');
    EXPECT_THAT(s->Read("obj", 0, absl::MakeSpan(out))->missing, ElementsAre(0));
    Put(*s, "obj", 2);
  }
  std::filesystem::remove(ObjectFile(*OpenStore(), "obj"));
  // At start: the chunks of a missing file are reported missing.
  auto s = OpenStore();
  ASSERT_TRUE(s->Lookup("obj"));
  EXPECT_EQ(s->Lookup("obj")->chunks_present, 0u);
  ASSERT_TRUE(s->WriteChunk("obj", 0, Pattern(1, 0, kChunk))->cached);
  EXPECT_EQ(ReadAll(*s, "obj", 0, kChunk), Pattern(1, 0, kChunk));
}

TEST_F(ChunkStoreTest, TruncatedDataFileIsAMiss) {
  {
    auto s = OpenStore();
    Put(*s, "obj", 3);
  }
  std::filesystem::resize_file(ObjectFile(*OpenStore(), "obj"), kChunk + 10);
  auto s = OpenStore();
  EXPECT_EQ(ReadAll(*s, "obj", 0, kChunk), Pattern(1, 0, kChunk));
  std::string out(kChunk, '\0');
  EXPECT_THAT(s->Read("obj", kChunk, absl::MakeSpan(out))->missing, ElementsAre(1));
  EXPECT_THAT(s->Read("obj", 2 * kChunk, absl::MakeSpan(out))->missing, ElementsAre(2));
}

TEST_F(ChunkStoreTest, ReRegisterWithAnotherSizeStartsOver) {
  auto s = OpenStore();
  Put(*s, "obj", 2);
  ASSERT_TRUE(s->Register({"obj", 2 * kChunk, "t", 0}).ok());
  EXPECT_EQ(s->Lookup("obj")->chunks_present, 2u);
  ASSERT_TRUE(s->Register({"obj", 3 * kChunk, "t", 0}).ok());
  EXPECT_EQ(s->Lookup("obj")->chunks_present, 0u);
  EXPECT_EQ(s->Stats().used_bytes, 0u);
}

TEST_F(ChunkStoreTest, EvictsLeastRecentlyUsedBetweenWatermarks) {
  auto s = OpenStore(/*capacity=*/10 * kChunk);  // high 9 chunks, low 8
  for (int i = 0; i < 8; ++i) {
    clock_.Advance(absl::Milliseconds(1));
    Put(*s, "obj" + std::to_string(i), 1);
  }
  clock_.Advance(absl::Milliseconds(1));
  ReadAll(*s, "obj0", 0, 10);  // obj0 is now the most recent
  EvictReport rep = s->Evict({EvictRequest::Mode::kToTarget, 5 * kChunk, ""});
  EXPECT_EQ(rep.objects, 3u);
  EXPECT_FALSE(s->Lookup("obj1"));
  EXPECT_FALSE(s->Lookup("obj2"));
  EXPECT_FALSE(s->Lookup("obj3"));
  EXPECT_TRUE(s->Lookup("obj0"));
  EXPECT_EQ(s->Stats().used_bytes, 5 * kChunk);
  // Background eviction: crossing the high watermark brings use under low.
  for (int i = 10; i < 15; ++i) {
    clock_.Advance(absl::Milliseconds(1));
    Put(*s, "obj" + std::to_string(i), 1);
  }
  for (int t = 0; t < 500 && s->Stats().used_bytes > 8 * kChunk; ++t) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_LE(s->Stats().used_bytes, 8 * kChunk);
  EXPECT_TRUE(s->Lookup("obj14"));
  EXPECT_TRUE(s->Lookup("obj0"));
}

// Last use is the store's clock's time, kept across a restart: eviction
// after one still removes what was used longest ago by that clock.
TEST_F(ChunkStoreTest, LastUseIsTheClocksTimeAndOrdersEvictionAfterARestart) {
  const absl::Time t0 = clock_.Now();
  {
    auto s = OpenStore(/*capacity=*/10 * kChunk);
    Put(*s, "a", 1);
    clock_.Advance(absl::Hours(1));
    Put(*s, "b", 1);
    clock_.Advance(absl::Hours(1));
    Put(*s, "c", 1);
    clock_.Advance(absl::Hours(1));
    EXPECT_EQ(ReadAll(*s, "a", 0, 10), Pattern(1, 0, 10));
    EXPECT_EQ(s->Lookup("a")->last_use_us, absl::ToUnixMicros(t0 + absl::Hours(3)));
    EXPECT_EQ(s->Lookup("b")->last_use_us, absl::ToUnixMicros(t0 + absl::Hours(1)));
    EXPECT_EQ(s->Lookup("c")->last_use_us, absl::ToUnixMicros(t0 + absl::Hours(2)));
  }
  clock_.Advance(absl::Hours(1));
  auto s = OpenStore(/*capacity=*/10 * kChunk);
  EXPECT_EQ(s->Lookup("a")->last_use_us, absl::ToUnixMicros(t0 + absl::Hours(3)));
  EvictReport rep = s->Evict({EvictRequest::Mode::kToTarget, 2 * kChunk, ""});
  EXPECT_EQ(rep.objects, 1u);
  EXPECT_FALSE(s->Lookup("b"));
  EXPECT_TRUE(s->Lookup("a"));
  EXPECT_TRUE(s->Lookup("c"));
  // Evicting one more takes c (two hours), not a (three).
  rep = s->Evict({EvictRequest::Mode::kToTarget, kChunk, ""});
  EXPECT_EQ(rep.objects, 1u);
  EXPECT_FALSE(s->Lookup("c"));
  EXPECT_TRUE(s->Lookup("a"));
}

TEST_F(ChunkStoreTest, PunchesColdChunksOfALargeObject) {
  auto s = OpenStore(/*capacity=*/32 * kChunk);
  Put(*s, "big", 20);
  for (uint32_t i = 10; i < 20; ++i) {
    clock_.Advance(absl::Milliseconds(1));
    ReadAll(*s, "big", uint64_t{i} * kChunk, 10);
  }
  EvictReport rep = s->Evict({EvictRequest::Mode::kToTarget, 12 * kChunk, ""});
  EXPECT_EQ(rep.objects, 0u);
  EXPECT_EQ(rep.chunks, 8u);
  auto info = s->Lookup("big");
  ASSERT_TRUE(info);
  EXPECT_EQ(info->chunks_present, 12u);
  std::string out(kChunk, '\0');
  EXPECT_THAT(s->Read("big", 0, absl::MakeSpan(out))->missing, ElementsAre(0));  // cold: punched
  EXPECT_EQ(ReadAll(*s, "big", 15 * kChunk, kChunk), Pattern(1, 15, kChunk));    // hot: kept
  struct stat st;
  ASSERT_EQ(::stat(ObjectFile(*s, "big").c_str(), &st), 0);
  EXPECT_LE(static_cast<uint64_t>(st.st_blocks) * 512, 13ull * kChunk);  // holes really punched
}

TEST_F(ChunkStoreTest, NeverEvictsPinnedOrLeasedObjects) {
  auto s = OpenStore();
  Put(*s, "pinned", 2);
  Put(*s, "leased", 2);
  Put(*s, "free", 2);
  ASSERT_TRUE(s->Pin("pinned").ok());
  {
    auto lease = s->Lease("leased", 10, 100);
    ASSERT_TRUE(lease.ok()) << lease.status();
    EXPECT_EQ(lease->offset(), 10u);
    char buf[100];
    ASSERT_EQ(::pread(lease->fd(), buf, 100, lease->offset()), 100);
    EXPECT_EQ(std::string(buf, 100), Pattern(1, 0, kChunk).substr(10, 100));
    EvictReport rep = s->Evict({EvictRequest::Mode::kAll, 0, ""});
    EXPECT_EQ(rep.objects, 1u);
    EXPECT_EQ(rep.skipped_busy, 2u);
    EXPECT_TRUE(s->Lookup("leased"));
    EXPECT_EQ(s->Evict({EvictRequest::Mode::kKey, 0, "leased"}).skipped_busy, 1u);
  }
  EXPECT_EQ(s->Evict({EvictRequest::Mode::kKey, 0, "leased"}).objects, 1u);
  EXPECT_TRUE(s->Lookup("pinned"));
  ASSERT_TRUE(s->Unpin("pinned").ok());
  EXPECT_EQ(s->Unpin("pinned").code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s->Evict({EvictRequest::Mode::kAll, 0, ""}).objects, 1u);
  EXPECT_EQ(s->Stats().used_bytes, 0u);
  EXPECT_EQ(s->Lease("gone", 0, 1).status().code(), absl::StatusCode::kNotFound);
}

// Pages of the object's file in the page cache.
size_t CachedPages(const std::string& file, uint64_t size) {
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  EXPECT_GE(fd, 0) << file;
  if (fd < 0) return 0;
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
  EXPECT_NE(map, MAP_FAILED);
  size_t cached = 0;
  if (map != MAP_FAILED) {
    std::vector<unsigned char> resident((size + 4095) / 4096);
    EXPECT_EQ(::mincore(map, size, resident.data()), 0);
    for (unsigned char v : resident) cached += v & 1;
    ::munmap(map, size);
  }
  ::close(fd);
  return cached;
}

// A chunk passed on as stored (to a peer): its bytes and the checksum it
// was stored with; a chunk checked again after a restart, and found
// rotten, is not passed on.
TEST_F(ChunkStoreTest, AChunkIsPassedOnWithTheChecksumItWasStoredWith) {
  const uint64_t size = 2 * kChunk + 100;
  {
    auto s = OpenStore();
    Put(*s, "obj", 3, size);
    uint64_t disk_reads = fs_->reads;
    auto c = s->ReadChunk("obj", 2);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->bytes->view(), Pattern(1, 2, 100)) << "the last chunk is short";
    EXPECT_EQ(c->checksum, ChunkChecksum(Pattern(1, 2, 100)));
    EXPECT_EQ(fs_->reads, disk_reads) << "just filled: from memory";
    EXPECT_EQ(s->ReadChunk("obj", 3).status().code(), absl::StatusCode::kOutOfRange);
    EXPECT_EQ(s->ReadChunk("other", 0).status().code(), absl::StatusCode::kNotFound);
    ASSERT_TRUE(s->Register({"half", 2 * kChunk, "test", 0}).ok());
    ASSERT_TRUE(s->WriteChunk("half", 0, Pattern(2, 0, kChunk)).ok());
    EXPECT_EQ(s->ReadChunk("half", 1).status().code(), absl::StatusCode::kUnavailable);
    ASSERT_TRUE(s->Remove("half").ok());  // one object left: ObjectFile finds it
  }
  std::string file = ObjectFile(*OpenStore(), "obj");
  {
    UniqueFd fd(::open(file.c_str(), O_WRONLY | O_CLOEXEC));
    ASSERT_GE(fd.get(), 0);
    ASSERT_EQ(::pwrite(fd.get(), "X", 1, kChunk + 7), 1);  // chunk 1 rots while closed
  }
  memory_bytes_ = 0;
  auto s = OpenStore();
  auto c = s->ReadChunk("obj", 0);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->bytes->view(), Pattern(1, 0, kChunk));
  EXPECT_EQ(c->checksum, ChunkChecksum(Pattern(1, 0, kChunk)));
  EXPECT_EQ(s->ReadChunk("obj", 1).status().code(), absl::StatusCode::kUnavailable)
      << "checked on its first use since the restart, found rotten, dropped";
  EXPECT_EQ(s->Lookup("obj")->chunks_present, 2u);
}

// Every peer that reads a chunk asks its owner for it: the owner reads it
// from disk once, around the page cache (filling page-cache pages costs
// more than the read), and the next askers are served from memory.
TEST_F(ChunkStoreTest, AChunkPassedOnIsReadOnceAroundThePageCacheThenFromMemory) {
  memory_bytes_ = kChunk + 1024;  // one chunk: the last one filled
  auto s = OpenStore();
  Put(*s, "obj", 3);
  std::string file = ObjectFile(*s, "obj");
  struct statfs fs;
  ASSERT_EQ(::statfs(dir_.path().c_str(), &fs), 0);
  const bool tmpfs = fs.f_type == TMPFS_MAGIC;  // which keeps every page in memory
  uint64_t disk_reads = fs_->reads;
  auto c = s->ReadChunk("obj", 0);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->bytes->view() == Pattern(1, 0, kChunk));
  EXPECT_EQ(fs_->reads, disk_reads + 1);
  if (!tmpfs) {
    EXPECT_EQ(CachedPages(file, 3 * kChunk), 0u);
  }
  // Now in memory (chunk 2 made room): other askers and readers touch no file.
  for (int asker = 0; asker < 3; ++asker) {
    auto again = s->ReadChunk("obj", 0);
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(again->bytes.get(), c->bytes.get());
  }
  EXPECT_EQ(ReadAll(*s, "obj", 100, 200), Pattern(1, 0, kChunk).substr(100, 200));
  EXPECT_EQ(fs_->reads, disk_reads + 1);
  EXPECT_EQ(s->Stats().memory_hits, 4u);
}

// Peers that ask for one chunk at once (a node joining, several nodes at
// the same point of one file) share one read of it from disk: the others
// wait for the first asker's bytes rather than each read it again.
TEST_F(ChunkStoreTest, AChunkAskedForByManyAtOnceIsReadFromDiskOnce) {
  memory_bytes_ = 0;  // nothing is kept: only a read under way is shared
  auto s = OpenStore();
  Put(*s, "obj", 2);
  const uint64_t disk_reads = fs_->reads;
  fs_->HoldReads(true);
  constexpr int kAskers = 3;
  std::vector<absl::StatusOr<StoredChunk>> got(kAskers, absl::UnknownError("not run"));
  std::vector<std::thread> askers;
  // However this test ends, no read stays held and no thread is left.
  absl::Cleanup let_go = [&] {
    fs_->HoldReads(false);
    for (auto& t : askers) {
      if (t.joinable()) t.join();
    }
  };
  askers.emplace_back([&] { got[0] = s->ReadChunk("obj", 1); });
  ASSERT_TRUE(strata::testing::Eventually([&] { return fs_->reads_waiting == 1; }));
  for (int i = 1; i < kAskers; ++i)
    askers.emplace_back([&, i] { got[i] = s->ReadChunk("obj", 1); });
  // Both later askers are waiting on the first one's read, not reading.
  bool shared = strata::testing::Eventually(
      [&] { return s->Stats().read_waits == static_cast<uint64_t>(kAskers - 1); });
  fs_->HoldReads(false);
  for (auto& t : askers) t.join();
  askers.clear();
  ASSERT_TRUE(shared);
  EXPECT_EQ(fs_->reads, disk_reads + 1);
  for (const auto& c : got) {
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ(c->bytes.get(), got[0]->bytes.get());
    EXPECT_TRUE(c->bytes->view() == Pattern(1, 1, kChunk));
    EXPECT_EQ(c->checksum, ChunkChecksum(Pattern(1, 1, kChunk)));
  }
  // A chunk that fails its read fails every asker waiting on it, and is
  // dropped once.
  fs_->flip_read_bits = true;
  fs_->HoldReads(true);
  std::vector<absl::Status> failed(2);
  askers.emplace_back([&] { failed[0] = s->ReadChunk("obj", 0).status(); });
  ASSERT_TRUE(strata::testing::Eventually([&] { return fs_->reads_waiting == 1; }));
  askers.emplace_back([&] { failed[1] = s->ReadChunk("obj", 0).status(); });
  shared = strata::testing::Eventually(
      [&] { return s->Stats().read_waits == static_cast<uint64_t>(kAskers); });
  fs_->HoldReads(false);
  for (auto& t : askers) t.join();
  fs_->flip_read_bits = false;
  ASSERT_TRUE(shared);
  EXPECT_EQ(failed[0].code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(failed[1].code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s->Stats().checksum_failures, 1u);
  EXPECT_EQ(s->Lookup("obj")->chunks_present, 1u);
}

// A chunk that reads back wrong, short or not at all is dropped, as a read
// drops it: nothing wrong is passed on, and it is fetched again.
TEST_F(ChunkStoreTest, AChunkThatCannotBeReadRightIsDroppedNotPassedOn) {
  memory_bytes_ = 0;  // every chunk comes from the (faulty) disk
  auto s = OpenStore();
  Put(*s, "obj", 3);
  fs_->flip_read_bits = true;
  EXPECT_EQ(s->ReadChunk("obj", 0).status().code(), absl::StatusCode::kUnavailable);
  fs_->flip_read_bits = false;
  fs_->short_reads = true;
  EXPECT_EQ(s->ReadChunk("obj", 1).status().code(), absl::StatusCode::kUnavailable);
  fs_->short_reads = false;
  fs_->read_errno = EIO;
  EXPECT_EQ(s->ReadChunk("obj", 2).status().code(), absl::StatusCode::kUnavailable);
  fs_->read_errno = 0;
  EXPECT_EQ(s->Stats().checksum_failures, 3u);
  EXPECT_EQ(s->Lookup("obj")->chunks_present, 0u);
  std::string out(kChunk, '\0');
  auto r = s->Read("obj", 0, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(r->missing, ElementsAre(0));
  // Fetched again, it is passed on right.
  ASSERT_TRUE(s->WriteChunk("obj", 0, Pattern(1, 0, kChunk)).ok());
  auto c = s->ReadChunk("obj", 0);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_TRUE(c->bytes->view() == Pattern(1, 0, kChunk));
}

// After a restart, objects the kernel still reads (FUSE passthrough backing
// files of a killed daemon) are held from the store's first moment: the
// evictor, which starts at once when the store is over its high watermark,
// passes them by until they are let go of.
TEST_F(ChunkStoreTest, ObjectsTheKernelReadsAreHeldFromTheStoresOpen) {
  {
    auto s = OpenStore();
    Put(*s, "backing", 4);
    Put(*s, "other", 4);
  }
  held_at_open_ = {"backing", "never-cached"};
  auto s = OpenStore(4 * kChunk);  // over its high watermark: the evictor runs at once
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->Stats().kernel_held_objects, 1u);
  // The evictor may be dropping "other" right now (a busy object, which an
  // eviction skips): evicting everything until it is gone; then nothing
  // but the held object is left, and an eviction passes it by.
  EXPECT_TRUE(strata::testing::Eventually([&] {
    s->Evict({EvictRequest::Mode::kAll, 0, ""});
    return !s->Lookup("other");
  }));
  EvictReport rep = s->Evict({EvictRequest::Mode::kAll, 0, ""});
  EXPECT_EQ(rep.skipped_busy, 1u);
  EXPECT_EQ(rep.objects, 0u);
  EXPECT_EQ(ReadAll(*s, "backing", 0, 4 * kChunk), Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk) +
                                                       Pattern(1, 2, kChunk) +
                                                       Pattern(1, 3, kChunk));
  s->ReleaseOpenHolds();
  s->ReleaseOpenHolds();  // once only
  EXPECT_EQ(s->Stats().kernel_held_objects, 0u);
  s->Evict({EvictRequest::Mode::kAll, 0, ""});  // or the evictor did, meanwhile
  EXPECT_FALSE(s->Lookup("backing"));
}

TEST_F(ChunkStoreTest, SingleFlightFetchesEachChunkOnce) {
  auto s = OpenStore();
  ASSERT_TRUE(s->Register({"obj", 4 * kChunk, "t", 0}).ok());
  std::atomic<int> fetches{0};
  std::atomic<int> ok{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 16; ++t) {
    ts.emplace_back([&, t] {
      uint32_t idx = t % 4;
      auto r = s->Fill("obj", idx, [&](absl::Span<char> out) {
        ++fetches;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        std::string p = Pattern(1, idx, out.size());
        std::copy(p.begin(), p.end(), out.begin());
        return absl::OkStatus();
      });
      if (r.ok() && (!r->bytes || r->bytes->view() == Pattern(1, idx, kChunk))) ++ok;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(fetches.load(), 4);
  EXPECT_EQ(ok.load(), 16);
  EXPECT_GE(s->Stats().fill_waits, 1u);
  EXPECT_EQ(ReadAll(*s, "obj", 0, 4 * kChunk), Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk) +
                                                   Pattern(1, 2, kChunk) + Pattern(1, 3, kChunk));
}

TEST_F(ChunkStoreTest, AFailedFetchIsSharedAndRetryable) {
  auto s = OpenStore();
  ASSERT_TRUE(s->Register({"obj", kChunk, "t", 0}).ok());
  std::atomic<int> fetches{0};
  std::vector<std::thread> ts;
  std::atomic<int> failed{0};
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&] {
      auto r = s->Fill("obj", 0, [&](absl::Span<char>) {
        ++fetches;
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        return absl::UnavailableError("origin down");
      });
      if (absl::IsUnavailable(r.status())) ++failed;
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(failed.load(), 4);
  EXPECT_LE(fetches.load(), 4);
  ASSERT_TRUE(s->WriteChunk("obj", 0, Pattern(1, 0, kChunk))->cached);
}

TEST_F(ChunkStoreTest, ConcurrentReadersWritersAndEviction) {
  auto s = OpenStore(/*capacity=*/24 * kChunk);
  constexpr int kObjects = 8, kChunks = 6;
  for (int o = 0; o < kObjects; ++o) {
    ASSERT_TRUE(s->Register({"o" + std::to_string(o), kChunks * kChunk, "t", 0}).ok());
  }
  std::atomic<int> wrong{0}, served{0};
  std::vector<std::thread> ts;
  for (int t = 0; t < 6; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::string out(kChunk, '\0');
      for (int n = 0; n < 400; ++n) {
        std::string key = "o" + std::to_string(rng() % kObjects);
        uint32_t idx = rng() % kChunks;
        if (!s->Lookup(key)) {
          ASSERT_TRUE(s->Register({key, kChunks * kChunk, "t", 0}).ok());
        }
        auto r = s->Read(key, uint64_t{idx} * kChunk, absl::MakeSpan(out));
        if (!r.ok()) continue;  // evicted between Lookup and Read
        if (!r->missing.empty()) {
          auto f = s->Fill(key, idx, [&](absl::Span<char> b) {
            std::string p = Pattern(7, idx, b.size());
            std::copy(p.begin(), p.end(), b.begin());
            return absl::OkStatus();
          });
          if (f.ok() && f->bytes && f->bytes->view() != Pattern(7, idx, kChunk)) ++wrong;
          continue;
        }
        ++served;
        if (out != Pattern(7, idx, kChunk)) ++wrong;
      }
    });
  }
  for (auto& t : ts) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_GT(served.load(), 0);
  // The store's own evictor and verifier may still hold an object (busy
  // objects are skipped): they are stopped first, so that what is left to
  // evict depends on nothing running.
  s->Flush();
  s->Evict({EvictRequest::Mode::kToTarget, 0, ""});
  EXPECT_EQ(s->Stats().used_bytes, 0u);
}

TEST_F(ChunkStoreTest, DigestVerifiedMarkPersistsUntilAChunkIsDropped) {
  {
    auto s = OpenStore();
    ASSERT_TRUE(s->Register({"blob", 3 * kChunk, "t", 0}).ok());
    ASSERT_TRUE(s->WriteChunk("blob", 0, Pattern(1, 0, kChunk)).ok());
    EXPECT_EQ(s->MarkDigestVerified("blob").code(), absl::StatusCode::kFailedPrecondition);
    Put(*s, "blob", 3);
    ASSERT_TRUE(s->MarkDigestVerified("blob").ok());
    EXPECT_TRUE(s->Lookup("blob")->digest_verified);
  }
  {
    auto s = OpenStore();
    EXPECT_TRUE(s->Lookup("blob")->digest_verified);
    // Punching one chunk out drops the mark, in memory and on disk.
    s->Evict({EvictRequest::Mode::kToTarget, 2 * kChunk, ""});
    EXPECT_EQ(s->Lookup("blob")->chunks_present, 2u);
    EXPECT_FALSE(s->Lookup("blob")->digest_verified);
  }
  auto s = OpenStore();
  EXPECT_FALSE(s->Lookup("blob")->digest_verified);
}

TEST_F(ChunkStoreTest, SequentialReadsVerifyAheadAndNeverServeCorruptChunks) {
  {
    auto s = OpenStore();
    Put(*s, "obj", 8);
  }
  {
    // Damage chunk 5 behind the store's back.
    int fd = ::open(ObjectFile(*OpenStore(), "obj").c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::pwrite(fd, "!", 1, 5 * kChunk + 3), 1);
    ::close(fd);
  }
  auto s = OpenStore();
  std::string out(kChunk / 4, '\0');
  int missing = 0;
  for (uint64_t off = 0; off < 8ull * kChunk; off += out.size()) {
    auto r = s->Read("obj", off, absl::MakeSpan(out));
    ASSERT_TRUE(r.ok());
    if (!r->missing.empty()) {
      EXPECT_THAT(r->missing, ElementsAre(5));
      ++missing;
      continue;
    }
    uint32_t idx = off / kChunk;
    ASSERT_EQ(out, Pattern(1, idx, kChunk).substr(off % kChunk, out.size())) << off;
  }
  EXPECT_EQ(missing, 4);  // every read of chunk 5, none of the others
  EXPECT_EQ(s->Stats().checksum_failures, 1u);
  EXPECT_GE(s->Stats().chunks_verified, 7u);
}

TEST_F(ChunkStoreTest, OpenFilesStayWithinTheirBudget) {
  StoreOptions o;
  o.dir = dir_.path();
  o.chunk_size = kChunk;
  o.max_open_files = 4;
  o.fs = fs_;
  auto s = ChunkStore::Open(o);
  ASSERT_TRUE(s.ok());
  for (int i = 0; i < 12; ++i) Put(**s, "obj" + std::to_string(i), 2);
  EXPECT_LE((*s)->Stats().open_files, 4u);
  // Every object still reads right, its file reopened as needed.
  for (int round = 0; round < 2; ++round) {
    for (int i = 0; i < 12; ++i) {
      EXPECT_EQ(ReadAll(**s, "obj" + std::to_string(i), kChunk, kChunk), Pattern(1, 1, kChunk));
      EXPECT_LE((*s)->Stats().open_files, 4u);
    }
  }
  // A leased object's file is never closed under the lease.
  auto lease = (*s)->Lease("obj0", 0, 100);
  ASSERT_TRUE(lease.ok());
  for (int i = 1; i < 12; ++i) ReadAll(**s, "obj" + std::to_string(i), 0, 10);
  char buf[100];
  ASSERT_EQ(::pread(lease->fd(), buf, 100, 0), 100);
  EXPECT_EQ(std::string(buf, 100), Pattern(1, 0, kChunk).substr(0, 100));
}

// A reader's request that crosses from one chunk into the next (the kernel
// asks for up to max_read from wherever its readahead got to) is served
// from memory when both chunks are there; with only one of them there,
// from the file.
TEST_F(ChunkStoreTest, ARangeAcrossTwoChunksInMemoryIsServedFromMemory) {
  memory_bytes_ = 2 * (kChunk + 1024);  // the last two chunks filled
  auto s = OpenStore();
  Put(*s, "obj", 4);
  uint64_t disk_reads = fs_->reads;
  const std::string all = Pattern(1, 2, kChunk) + Pattern(1, 3, kChunk);
  const uint64_t at = 2 * uint64_t{kChunk} + kChunk - 100;  // 100 bytes before chunk 3
  auto lease = s->Lease("obj", at, 300);
  ASSERT_TRUE(lease.ok()) << lease.status();
  cache::MemoryParts m = lease->memory();
  EXPECT_EQ(m.head, all.substr(kChunk - 100, 100));
  EXPECT_EQ(m.tail, all.substr(kChunk, 200));
  EXPECT_EQ(ReadAll(*s, "obj", at - 7, 250), all.substr(kChunk - 107, 250));
  EXPECT_EQ(fs_->reads, disk_reads);
  EXPECT_EQ(s->Stats().memory_hits, 2u);
  // Chunks 1 and 2: chunk 1 is on disk only.
  lease = s->Lease("obj", uint64_t{kChunk} + kChunk - 100, 300);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(lease->memory().empty());
  EXPECT_EQ(ReadAll(*s, "obj", uint64_t{kChunk} + kChunk - 100, 300),
            Pattern(1, 1, kChunk).substr(kChunk - 100) + Pattern(1, 2, kChunk).substr(0, 200));
  EXPECT_GT(fs_->reads, disk_reads);
}

TEST_F(ChunkStoreTest, JustFilledChunksAreServedFromMemoryWithinItsBudget) {
  memory_bytes_ = 3 * (kChunk + 1024);  // three chunks and their bookkeeping
  auto s = OpenStore();
  Put(*s, "obj", 5);
  uint64_t disk_reads = fs_->reads;
  // The last three chunks filled are in memory: leases and reads of them
  // touch no file.
  for (uint32_t i = 2; i < 5; ++i) {
    auto lease = s->Lease("obj", uint64_t{i} * kChunk + 10, 100);
    ASSERT_TRUE(lease.ok()) << lease.status();
    EXPECT_TRUE(lease->memory().head == Pattern(1, i, kChunk).substr(10, 100));
    EXPECT_EQ(ReadAll(*s, "obj", uint64_t{i} * kChunk + 5, 50),
              Pattern(1, i, kChunk).substr(5, 50));
  }
  EXPECT_EQ(fs_->reads, disk_reads);
  EXPECT_EQ(s->Stats().memory_hits, 6u);
  EXPECT_GT(s->Stats().memory_bytes, 3u * kChunk);
  EXPECT_LE(s->Stats().memory_bytes, memory_bytes_);
  // Older ones were let go: they come from the file, which holds them.
  auto lease = s->Lease("obj", 10, 100);
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_TRUE(lease->memory().empty());
  char buf[100];
  ASSERT_EQ(::pread(lease->fd(), buf, 100, lease->offset()), 100);
  EXPECT_EQ(std::string(buf, 100), Pattern(1, 0, kChunk).substr(10, 100));
  EXPECT_EQ(ReadAll(*s, "obj", 5, 50), Pattern(1, 0, kChunk).substr(5, 50));
  EXPECT_GT(fs_->reads, disk_reads);
  // A range over two chunks comes whole (both are in memory).
  EXPECT_EQ(ReadAll(*s, "obj", 3 * kChunk - 5, 10),
            Pattern(1, 2, kChunk).substr(kChunk - 5) + Pattern(1, 3, kChunk).substr(0, 5));
}

TEST_F(ChunkStoreTest, DroppedOrRemovedChunksAreNotServedFromMemory) {
  auto s = OpenStore();
  Put(*s, "obj", 2);
  ASSERT_TRUE(s->Remove("obj").ok());
  ASSERT_TRUE(s->Register({"obj", 2 * kChunk, "test", 0}).ok());
  std::string out(100, '\0');
  auto r = s->Read("obj", 0, absl::MakeSpan(out));
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->missing, ElementsAre(0));
  // Refilled with other bytes: those are what is served.
  ASSERT_TRUE(s->WriteChunk("obj", 0, Pattern(2, 0, kChunk)).ok());
  EXPECT_EQ(ReadAll(*s, "obj", 0, 100), Pattern(2, 0, kChunk).substr(0, 100));
  // Evicted chunks are gone from memory too.
  Put(*s, "other", 2);
  EXPECT_EQ(s->Evict({EvictRequest::Mode::kKey, 0, "other"}).objects, 1u);
  EXPECT_FALSE(s->Lookup("other"));
  EXPECT_EQ(s->Read("other", 0, absl::MakeSpan(out)).status().code(), absl::StatusCode::kNotFound);
}

// Dirty and under-writeback pages of a file, by cachestat(2) (Linux 6.5;
// the structures are not in this system's headers). Empty if unsupported.
std::optional<uint64_t> UnwrittenPages(const std::string& file) {
  struct {
    uint64_t off = 0, len = 0;  // len 0: to the end of the file
  } range;
  struct {
    uint64_t cache, dirty, writeback, evicted, recently_evicted;
  } stat{};
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  constexpr long kCachestat = 451;
  long r = ::syscall(kCachestat, fd, &range, &stat, 0);
  ::close(fd);
  if (r != 0) return std::nullopt;
  return stat.dirty + stat.writeback;
}

TEST_F(ChunkStoreTest, ChunksAreWrittenAroundThePageCache) {
  struct statfs fs;
  ASSERT_EQ(::statfs(dir_.path().c_str(), &fs), 0);
  if (fs.f_type == TMPFS_MAGIC) GTEST_SKIP() << "tmpfs keeps every page in memory";
  auto s = OpenStore();
  const uint64_t size = 2 * kChunk + 1000;  // the tail is not block-aligned
  Put(*s, "obj", 3, size);
  std::string file = ObjectFile(*s, "obj");
  ASSERT_FALSE(file.empty());
  // Only the unaligned tail went through the page cache.
  EXPECT_LE(CachedPages(file, size), 1u);
  // And the bytes are there, tail included.
  s.reset();
  s = OpenStore();
  std::string whole = Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk) + Pattern(1, 2, 1000);
  EXPECT_TRUE(ReadAll(*s, "obj", 0, size) == whole);
}

TEST_F(ChunkStoreTest, AnObjectServedOnlyWhenWholeIsWrittenThroughThePageCache) {
  // Every chunk of it is read back as soon as the last lands (to check its
  // digest, then to serve it): from memory, not from disk.
  auto s = OpenStore();
  const uint64_t size = 2 * kChunk + 1000;
  Put(*s, "blob", 3, size, /*whole_before_use=*/true);
  std::string file = ObjectFile(*s, "blob");
  ASSERT_FALSE(file.empty());
  EXPECT_EQ(CachedPages(file, size), (size + 4095) / 4096);
  // And already on disk: no pile of dirty pages for the next sync to wait on.
  if (auto unwritten = UnwrittenPages(file)) {
    EXPECT_EQ(*unwritten, 0u);
  }
  s.reset();
  s = OpenStore();
  std::string whole = Pattern(1, 0, kChunk) + Pattern(1, 1, kChunk) + Pattern(1, 2, 1000);
  EXPECT_TRUE(ReadAll(*s, "blob", 0, size) == whole);
}

TEST_F(ChunkStoreTest, MemoryTierCountsWhatItHolds) {
  memory_bytes_ = 64 << 10;
  auto s = OpenStore();
  // Small objects cost their whole buffers and bookkeeping, not their bytes:
  // a tier of many small chunks stays within its budget.
  for (int i = 0; i < 100; ++i) {
    std::string key = "small" + std::to_string(i);
    ASSERT_TRUE(s->Register({key, 100, "test", 0}).ok());
    ASSERT_TRUE(s->WriteChunk(key, 0, Pattern(3, i, 100)).ok());
    uint64_t held = s->Stats().memory_bytes;
    EXPECT_LE(held, 64u << 10);
    EXPECT_GE(held, 4096u);
  }
  EXPECT_EQ(ReadAll(*s, "small99", 0, 100), Pattern(3, 99, 100));
  EXPECT_EQ(ReadAll(*s, "small0", 0, 100), Pattern(3, 0, 100));  // from the file
}

TEST_F(ChunkStoreTest, OnlySequentialFillsReserveDiskAhead) {
  auto s = OpenStore();
  ASSERT_TRUE(s->Register({"big", 100ull * kChunk, "test", 0}).ok());
  auto allocated = [&] {
    struct stat st;
    EXPECT_EQ(::stat(ObjectFile(*s, "big").c_str(), &st), 0);
    return static_cast<uint64_t>(st.st_blocks) * 512;
  };
  // A reader of the header: its chunk, nothing more.
  ASSERT_TRUE(s->WriteChunk("big", 0, Pattern(1, 0, kChunk))->cached);
  EXPECT_LE(allocated(), uint64_t{kChunk} + 4096);
  // A sequential reader: the file is reserved ahead of what was written.
  for (uint32_t i = 1; i < 8; ++i) {
    ASSERT_TRUE(s->WriteChunk("big", i, Pattern(1, i, kChunk))->cached);
  }
  EXPECT_GT(allocated(), 8ull * kChunk);
  EXPECT_LE(allocated(), 8ull * kChunk + (64ull << 20));
  // A jump far ahead reserves nothing beyond its chunk.
  uint64_t before = allocated();
  ASSERT_TRUE(s->WriteChunk("big", 90, Pattern(1, 90, kChunk))->cached);
  EXPECT_LE(allocated(), before + kChunk + 4096);
  EXPECT_EQ(ReadAll(*s, "big", 0, 8 * kChunk).substr(7 * kChunk), Pattern(1, 7, kChunk));
}

// The flags the kernel shows for the mapping that holds `p` (smaps' VmFlags).
std::string VmFlagsOf(const void* p) {
  std::ifstream smaps("/proc/self/smaps");
  auto at = reinterpret_cast<uintptr_t>(p);
  bool inside = false;
  for (std::string line; std::getline(smaps, line);) {
    unsigned long lo = 0, hi = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx ", &lo, &hi) == 2) {
      inside = lo <= at && at < hi;
    } else if (inside && line.rfind("VmFlags:", 0) == 0) {
      return line;
    }
  }
  return "";
}

// A chunk buffer is what the store's direct reads and writes go through: a
// block device splits a request at max_segments pieces (254 on virtio-blk),
// so a 4 MiB chunk in 4 KiB pages went to the disk as five requests. A
// buffer of a huge page or more starts on a huge-page boundary and is advised
// to huge pages (whether the kernel has one free is its business); a smaller
// one is page-aligned, from the heap.
TEST(ChunkBytesTest, AChunkOfAHugePageOrMoreSitsOnHugePages) {
  if (!std::filesystem::exists("/sys/kernel/mm/transparent_hugepage")) {
    GTEST_SKIP() << "this kernel has no transparent huge pages";
  }
  ChunkBytes big(kDefaultChunkSize);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(big.data()) % IoBuffer::kHugePage, 0u);
  EXPECT_THAT(VmFlagsOf(big.data()), ::testing::HasSubstr(" hg"));
  std::memset(big.data(), 7, kDefaultChunkSize);  // all of it is writable
  big.resize(kDefaultChunkSize);
  EXPECT_EQ(big.view().back(), 7);

  ChunkBytes odd(kDefaultChunkSize + 100);  // a size that is no page multiple
  EXPECT_EQ(reinterpret_cast<uintptr_t>(odd.data()) % IoBuffer::kHugePage, 0u);
  std::memset(odd.data(), 1, kDefaultChunkSize + 100);

  ChunkBytes small(64 << 10);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(small.data()) % kIoAlign, 0u);
  std::memset(small.data(), 1, 64 << 10);

  IoBuffer moved = IoBuffer::Allocate(IoBuffer::kHugePage);
  char* where = moved.data();
  IoBuffer to = std::move(moved);
  EXPECT_FALSE(moved);
  EXPECT_EQ(to.data(), where);
  EXPECT_EQ(to.size(), IoBuffer::kHugePage);
}

}  // namespace
}  // namespace strata::cache
