// Power loss in the middle of fills, and I/O faults at a seeded rate: the
// store's data and its index lose what was not on the disk (each its own
// share, at the same moment), and the store must reopen, never serve a wrong
// byte, and take new writes. The seeds make a failing round repeatable.
#include <filesystem>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cache/chunk_store.h"
#include "gtest/gtest.h"
#include "rocksdb/env.h"
#include "tests/cache/faulty_fs.h"
#include "tests/cache/power_loss_fs.h"
#include "tests/util/test_util.h"

namespace strata::cache {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;
using testing::FaultyFs;
using testing::PowerLossFileSystem;
using testing::PowerLossFs;
using testing::PowerSwitch;

constexpr uint32_t kChunk = 64 << 10;
constexpr uint32_t kChunks = 24;
constexpr uint64_t kSize = uint64_t{kChunks} * kChunk - 1000;

uint32_t ChunkLen(uint32_t i) { return i + 1 == kChunks ? kChunk - 1000 : kChunk; }

// Objects are named "r<round>-o<n>" and hold Pattern(round * 16 + n, ...), so
// any chunk of any round can be checked against what was written.
std::string Key(int round, int n) { return absl::StrCat("r", round, "-o", n); }
uint64_t SeedOf(const std::string& key) {
  std::vector<std::string> parts = absl::StrSplit(key.substr(1), "-o");
  int round = 0, n = 0;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &round) || !absl::SimpleAtoi(parts[1], &n)) {
    return ~0ull;
  }
  return uint64_t(round) * 16 + n;
}

// Reads every chunk of every object: a chunk is either missing or exactly
// what was written. Returns the number of chunks served.
uint64_t CheckEveryChunk(ChunkStore& store, const std::string& when) {
  uint64_t served = 0;
  std::string buf;
  for (const ObjectInfo& info : store.List()) {
    uint64_t seed = SeedOf(info.key);
    EXPECT_NE(seed, ~0ull) << "unexpected object " << info.key << " " << when;
    if (seed == ~0ull) continue;
    for (uint32_t i = 0; i < info.chunks; ++i) {
      buf.assign(ChunkLen(i), '\0');
      auto r = store.Read(info.key, uint64_t{i} * kChunk, absl::MakeSpan(buf));
      if (!r.ok() || !r->missing.empty()) continue;
      EXPECT_TRUE(buf == Pattern(seed, i, ChunkLen(i)))
          << info.key << " chunk " << i << " served wrong bytes " << when;
      ++served;
    }
  }
  return served;
}

TEST(PowerLossTest, UnsyncedDataDroppedAtRandomPointsOfAFillNeverServesWrongBytes) {
  TempDir dir;
  const std::string cache = dir.path() + "/cache";
  std::mt19937_64 rng(20261202);
  uint64_t served_total = 0, undone_total = 0, index_bytes_dropped = 0, caught_total = 0;
  constexpr int kRounds = 16;
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(absl::StrCat("round ", round));
    // Odd rounds fill a small cache, so the cut also lands in eviction.
    const bool pressure = round % 2 == 1;
    auto power = std::make_shared<PowerSwitch>();
    power->writes_left = static_cast<int64_t>(1 + rng() % 120);
    auto fs = std::make_shared<PowerLossFs>(NewPosixStoreFs(), power);
    auto index_fs = std::make_shared<PowerLossFileSystem>(power);
    std::unique_ptr<rocksdb::Env> index_env = rocksdb::NewCompositeEnv(index_fs);
    {
      StoreOptions o;
      o.dir = cache;
      o.chunk_size = kChunk;
      o.capacity_bytes = pressure ? 40ull * kChunk : 1ull << 30;
      o.memory_bytes = 0;
      o.background_work = pressure;
      o.fs = fs;
      o.index_env = index_env.get();
      auto store = ChunkStore::Open(o);
      ASSERT_TRUE(store.ok()) << store.status();
      // Writes, removals and reads until a while past the cut.
      int after_cut = 0;
      for (int op = 0; op < 5000 && after_cut < 30; ++op) {
        if (power->off) ++after_cut;
        int n = static_cast<int>(rng() % 4);
        std::string key = Key(round, n);
        if (rng() % 50 == 0) {
          (*store)->Remove(key).IgnoreError();
          continue;
        }
        if (!(*store)->Register({key, kSize, "power-loss", 0}).ok()) continue;
        uint32_t i = static_cast<uint32_t>(rng() % kChunks);
        (*store)
            ->WriteChunk(key, i, Pattern(uint64_t(round) * 16 + n, i, ChunkLen(i)))
            .IgnoreError();
        if (rng() % 8 == 0) CheckEveryChunk(**store, "while filling");
      }
      EXPECT_TRUE(power->off) << "the power cut never came";
    }  // the store closes with the power off: nothing more reaches the disk
    undone_total += fs->UndoUnsyncedWrites(rng(), /*undo_one_in=*/2);
    index_bytes_dropped += index_fs->DropUnsyncedData(rng());
    index_env.reset();

    StoreOptions o;
    o.dir = cache;
    o.chunk_size = kChunk;
    o.capacity_bytes = 1ull << 30;
    o.memory_bytes = 0;
    o.background_work = false;
    auto store = ChunkStore::Open(o);
    ASSERT_TRUE(store.ok()) << "the store does not reopen after a power cut: " << store.status();
    served_total += CheckEveryChunk(**store, "after the power cut");
    caught_total += (*store)->Stats().checksum_failures;
    // The store takes new writes and serves them.
    std::string key = Key(round, 9);
    ASSERT_TRUE((*store)->Register({key, kSize, "after", 0}).ok());
    auto w = (*store)->WriteChunk(key, 0, Pattern(uint64_t(round) * 16 + 9, 0, kChunk));
    ASSERT_TRUE(w.ok() && w->cached) << w.status();
    std::string out(kChunk, '\0');
    auto r = (*store)->Read(key, 0, absl::MakeSpan(out));
    ASSERT_TRUE(r.ok() && r->missing.empty());
    EXPECT_TRUE(out == Pattern(uint64_t(round) * 16 + 9, 0, kChunk));
  }
  std::fprintf(stderr,
               "%llu chunks served right, %llu recorded chunks caught by their checksum, %llu "
               "writes undone, %llu index bytes dropped\n",
               static_cast<unsigned long long>(served_total),
               static_cast<unsigned long long>(caught_total),
               static_cast<unsigned long long>(undone_total),
               static_cast<unsigned long long>(index_bytes_dropped));
  EXPECT_GT(undone_total, 0u) << "no power cut ever undid a write: the test tests nothing";
  EXPECT_GT(served_total, 0u) << "no chunk ever survived a power cut";
  EXPECT_GT(caught_total, 0u)
      << "no index record ever outlived its data, so the dangerous case was never exercised";
}

TEST(FaultInjectionTest, WriteAndReadErrorsAtASeededRateAreMissesNeverWrongBytes) {
  TempDir dir;
  auto fs = std::make_shared<FaultyFs>(NewPosixStoreFs(), /*seed=*/20261202);
  fs->write_fail_one_in = 5;
  fs->read_fail_one_in = 7;
  StoreOptions o;
  o.dir = dir.path() + "/cache";
  o.chunk_size = kChunk;
  o.capacity_bytes = 1ull << 30;
  o.memory_bytes = 0;  // every read goes to the faulty disk
  o.background_work = false;
  o.fs = fs;
  std::mt19937 rng(7);
  {
    auto store = ChunkStore::Open(o);
    ASSERT_TRUE(store.ok()) << store.status();
    for (int op = 0; op < 300; ++op) {
      int n = static_cast<int>(rng() % 3);
      std::string key = Key(0, n);
      ASSERT_TRUE((*store)->Register({key, kSize, "faults", 0}).ok());
      uint32_t i = static_cast<uint32_t>(rng() % kChunks);
      auto w = (*store)->WriteChunk(key, i, Pattern(n, i, ChunkLen(i)));
      ASSERT_TRUE(w.ok()) << "a failed write must still hand back the bytes: " << w.status();
      CheckEveryChunk(**store, "under faults");
    }
  }
  EXPECT_GT(fs->injected.load(), 0u);
  // Without faults, the same store reopens and what it kept is right.
  fs->write_fail_one_in = 0;
  fs->read_fail_one_in = 0;
  auto store = ChunkStore::Open(o);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_GT(CheckEveryChunk(**store, "after the faults stopped"), 0u);
}

}  // namespace
}  // namespace strata::cache
