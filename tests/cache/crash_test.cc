// SIGKILL a process that is writing chunks, at random moments, many times;
// after each kill the store must serve only right bytes, keep every chunk
// the writer saw complete (when nothing evicts), and accept new writes.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>
#include <thread>

#include "cache/chunk_store.h"
#include "gtest/gtest.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::cache {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;

constexpr uint32_t kChunk = 64 << 10;

// Starts the writer and returns it once it has opened the store.
strata::testing::Child StartWriter(const std::string& dir, const std::string& journal, int seed,
                                   uint64_t capacity) {
  // The writer logs to stderr (left as the test's own); stdout says "ready".
  strata::testing::Child c = strata::testing::Spawn(
      {CRASH_WRITER_PATH, dir, journal, std::to_string(seed), std::to_string(capacity)},
      /*merge_stderr=*/false);
  if (c.pid < 0) return c;
  std::string got = strata::testing::ReadUntil(c.out, "ready", std::chrono::seconds(20));
  if (got.find("ready") == std::string::npos) {
    ::kill(c.pid, SIGKILL);
    strata::testing::Wait(c);
    c.pid = -1;
  }
  return c;
}

TEST(CrashTest, SigkillAtRandomMomentsNeverServesWrongBytes) {
  TempDir dir;
  std::string cache = dir.path() + "/cache";
  std::string journal = dir.path() + "/journal";
  std::mt19937 rng(20261127);
  uint64_t verified_total = 0;
  constexpr int kRounds = 24;
  for (int round = 0; round < kRounds; ++round) {
    // Odd rounds run under capacity pressure, so kills also land in eviction.
    bool pressure = round % 2 == 1;
    uint64_t capacity = pressure ? 48 * kChunk : 1ull << 30;
    std::filesystem::remove(journal);
    std::fprintf(stderr, "round %d starts\n", round);
    strata::testing::Child writer = StartWriter(cache, journal, round, capacity);
    ASSERT_GT(writer.pid, 0) << "crash_writer did not start in round " << round;
    std::this_thread::sleep_for(std::chrono::milliseconds(5 + rng() % 150));
    ASSERT_EQ(::kill(writer.pid, SIGKILL), 0);
    int status = strata::testing::Wait(writer);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
        << "writer ended on its own in round " << round << " (status " << status << ")";

    StoreOptions o;
    o.dir = cache;
    o.chunk_size = kChunk;
    o.capacity_bytes = 1ull << 30;
    o.background_work = false;
    auto store = ChunkStore::Open(o);
    ASSERT_TRUE(store.ok()) << store.status();
    std::string buf;
    uint64_t present = 0;
    for (const ObjectInfo& info : (*store)->List()) {
      int obj = std::stoi(info.key.substr(3));
      for (uint32_t i = 0; i < info.chunks; ++i) {
        uint32_t len = std::min<uint64_t>(kChunk, info.size - uint64_t{i} * kChunk);
        buf.assign(len, '\0');
        auto r = (*store)->Read(info.key, uint64_t{i} * kChunk, absl::MakeSpan(buf));
        ASSERT_TRUE(r.ok()) << r.status();
        if (!r->missing.empty()) continue;
        ASSERT_EQ(buf, Pattern(obj, i, len)) << info.key << " chunk " << i << " round " << round;
        ++present;
      }
    }
    if (!pressure) {
      // Everything the writer saw complete is still there.
      std::ifstream j(journal);
      std::string key;
      int idx;
      std::set<std::pair<std::string, int>> complete;
      while (j >> key >> idx) {
        if (idx < 0) {
          std::erase_if(complete, [&](const auto& e) { return e.first == key; });
        } else {
          complete.emplace(key, idx);
        }
      }
      for (const auto& [key, idx] : complete) {
        std::string out(10, '\0');
        auto r = (*store)->Read(key, static_cast<uint64_t>(idx) * kChunk, absl::MakeSpan(out));
        if (!r.ok()) {
          std::ifstream jj(journal);
          std::string line, all;
          while (std::getline(jj, line))
            if (line.rfind(key + " ", 0) == 0) all += line + ",";
          FAIL() << key << " " << r.status() << " journal: " << all;
        }
        EXPECT_TRUE(r->missing.empty())
            << key << " chunk " << idx << " was complete before the kill";
      }
    }
    // The store accepts new writes.
    ASSERT_TRUE((*store)->Register({"after-crash", kChunk, "t", 0}).ok());
    auto w = (*store)->WriteChunk("after-crash", 0, Pattern(99, round, kChunk));
    ASSERT_TRUE(w.ok() && w->cached) << w.status();
    ASSERT_TRUE((*store)->Remove("after-crash").ok());
    verified_total += present;
    std::fprintf(stderr, "round %d: %llu chunks present and right\n", round,
                 static_cast<unsigned long long>(present));
  }
  EXPECT_GT(verified_total, 0u) << "the writer never got a chunk in before the kill";
}

}  // namespace
}  // namespace strata::cache
