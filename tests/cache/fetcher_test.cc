// The fetcher against a real nginx, directly and through the fault proxy:
// right bytes or a clear error in every fault case, never corrupt bytes,
// each chunk fetched once however many readers want it.
#include "cache/fetcher.h"

#include <openssl/sha.h>
#include <sys/resource.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/fake_clock.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/nginx.h"
#include "tests/util/test_util.h"

namespace strata::cache {
namespace {

using strata::testing::Fault;
using strata::testing::FaultProxy;
using strata::testing::Pattern;
using strata::testing::TempDir;
using ::testing::HasSubstr;

constexpr uint32_t kChunk = 256 << 10;
constexpr uint64_t kSize = 16 * kChunk + 12345;  // a short last chunk

std::string Sha256(absl::string_view d) {
  unsigned char md[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(d.data()), d.size(), md);
  return absl::BytesToHexString(absl::string_view(reinterpret_cast<char*>(md), sizeof md));
}

class FetcherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(root_.path() + "/www");
    data_ = Pattern(11, 0, kSize);
    std::ofstream(root_.path() + "/www/blob.bin", std::ios::binary) << data_;
    nginx_ = std::make_unique<strata::testing::Nginx>(root_.path() + "/www", work_.path());
    ASSERT_TRUE(nginx_->ok());
    StoreOptions so;
    so.dir = cache_.path();
    so.chunk_size = kChunk;
    so.capacity_bytes = 1ull << 30;
    auto s = ChunkStore::Open(so);
    ASSERT_TRUE(s.ok());
    store_ = std::move(*s);
  }

  // A target read through the proxy (or straight from nginx when null).
  FetchTarget Target(FaultProxy* proxy) {
    std::string url = proxy ? "http://127.0.0.1:" + std::to_string(proxy->port()) + "/blob.bin"
                            : nginx_->url("blob.bin");
    auto origin = origin::OpenOrigin(url, {});
    EXPECT_TRUE(origin.ok());
    FetchTarget t;
    t.origin = std::move(*origin);
    // Stat straight from nginx, so request counts at the proxy are GETs only.
    auto direct = origin::OpenOrigin(nginx_->url("blob.bin"), {});
    t.stat = *(*direct)->Stat("");
    t.chunk_size = kChunk;
    return t;
  }

  // The object read straight from its directory (a file:// origin).
  FetchTarget FileTarget() {
    auto origin = origin::OpenOrigin("file://" + root_.path() + "/www", {});
    EXPECT_TRUE(origin.ok());
    FetchTarget t;
    t.origin = std::move(*origin);
    t.path = "blob.bin";
    t.stat = *t.origin->Stat("blob.bin");
    t.chunk_size = kChunk;
    return t;
  }

  FetcherOptions FastRetries() {
    FetcherOptions o;
    o.backoff_initial = absl::Milliseconds(2);
    o.backoff_max = absl::Milliseconds(20);
    return o;
  }

  std::string ReadAll(Fetcher& f, const FetchTarget& t, size_t block, absl::Status* err = nullptr) {
    std::string out;
    std::string buf(block, '\0');
    for (uint64_t off = 0; off < t.stat.size; off += block) {
      auto n = f.Read(t, off, absl::MakeSpan(buf));
      if (!n.ok()) {
        if (err) *err = n.status();
        return out;
      }
      out.append(buf.data(), *n);
    }
    return out;
  }

  TempDir root_, work_, cache_;
  std::string data_;
  std::unique_ptr<strata::testing::Nginx> nginx_;
  std::unique_ptr<ChunkStore> store_;
};

TEST_F(FetcherTest, ColdThenWarmAtOddOffsets) {
  Fetcher f(*store_);
  FetchTarget t = Target(nullptr);
  EXPECT_EQ(ReadAll(f, t, 100000), data_);
  uint64_t requests = f.Stats().origin_requests;
  EXPECT_GE(requests, 17u);
  std::string out(333, '\0');
  for (uint64_t off : {uint64_t{0}, uint64_t{7}, uint64_t{kChunk} - 1, kSize - 333}) {
    auto n = f.Read(t, off, absl::MakeSpan(out));
    ASSERT_TRUE(n.ok());
    EXPECT_EQ(out.substr(0, *n), data_.substr(off, 333));
  }
  EXPECT_EQ(f.Stats().origin_requests, requests);  // all from the cache now
  auto past = f.Read(t, kSize + 1, absl::MakeSpan(out));
  EXPECT_EQ(past.status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(FetcherTest, ConcurrentReadersFetchEachChunkOnce) {
  std::atomic<int> gets{0};
  FaultProxy proxy(nginx_->port(), [&](uint64_t, const std::string& line, const std::string&) {
    if (line.rfind("GET", 0) == 0) ++gets;
    return Fault{};
  });
  proxy.Throttle(64 << 20, 2);  // slow enough for readers to overlap
  Fetcher f(*store_);
  FetchTarget t = Target(&proxy);
  std::vector<std::thread> ts;
  std::atomic<int> right{0};
  for (int i = 0; i < 8; ++i) {
    ts.emplace_back([&, i] {
      std::string buf(kChunk / 3, '\0');
      std::string got(kSize, '\0');
      // Each reader walks the object's blocks from a different place.
      uint64_t blocks = (kSize + buf.size() - 1) / buf.size();
      for (uint64_t k = 0; k < blocks; ++k) {
        uint64_t off = ((k + i * 7) % blocks) * buf.size();
        auto n = f.Read(t, off, absl::MakeSpan(buf));
        if (!n.ok()) return;
        std::memcpy(got.data() + off, buf.data(), *n);
      }
      if (got == data_) ++right;
    });
  }
  for (auto& th : ts) th.join();
  EXPECT_EQ(right.load(), 8);
  EXPECT_EQ(gets.load(), 17) << "the origin saw some chunk more than once";
}

// The first `times` requests for each range get `fault`; then it is served.
struct FaultCase {
  const char* name;
  Fault fault;
  int times;
};

TEST_F(FetcherTest, TransientFaultsEndInTheRightBytes) {
  std::vector<FaultCase> cases = {
      {"503", {Fault::Kind::kStatus, 503}, 1},
      {"500 twice in a row", {Fault::Kind::kStatus, 500}, 2},
      {"429", {Fault::Kind::kStatus, 429}, 1},
      {"connection reset", {Fault::Kind::kReset}, 2},
      {"truncated body", {Fault::Kind::kTruncate, 0, 1000}, 1},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    absl::Mutex mu;
    std::map<std::string, int> seen;
    FaultProxy proxy(nginx_->port(), [&](uint64_t, const std::string&, const std::string& range) {
      absl::MutexLock l(&mu);
      return seen[range]++ < c.times ? c.fault : Fault{};
    });
    TempDir cache;
    StoreOptions so;
    so.dir = cache.path();
    so.chunk_size = kChunk;
    auto store = ChunkStore::Open(so);
    ASSERT_TRUE(store.ok());
    Fetcher f(**store, FastRetries());
    absl::Status err;
    EXPECT_TRUE(ReadAll(f, Target(&proxy), 1 << 20, &err) == data_) << err;
    EXPECT_GT(f.Stats().retries, 0u);
    EXPECT_GT(proxy.faults(), 0u);
  }
}

TEST_F(FetcherTest, PersistentFailureIsAClearBoundedError) {
  FaultProxy proxy(nginx_->port(), [](uint64_t, const std::string&, const std::string&) {
    return Fault{Fault::Kind::kStatus, 500};
  });
  FetcherOptions o = FastRetries();
  o.max_attempts = 4;
  Fetcher f(*store_, o);
  FetchTarget t = Target(&proxy);
  std::string buf(1000, '\0');
  auto n = f.Read(t, 5000, absl::MakeSpan(buf));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable);
  std::string msg(n.status().message());
  EXPECT_THAT(msg, HasSubstr("127.0.0.1:" + std::to_string(proxy.port())));  // the origin
  EXPECT_THAT(msg, HasSubstr("blob.bin"));                                   // the object
  EXPECT_THAT(msg, HasSubstr("HTTP 500"));                                   // the cause
  EXPECT_EQ(proxy.requests(), 4u);
}

TEST_F(FetcherTest, CorruptChunksAreNeverServed) {
  // Per-chunk digests (as a table of contents gives): a corrupted transfer is
  // discarded and fetched again.
  // Two corrupt transfers: fewer than a chunk's three attempts, however the
  // parallel fetches share them out.
  std::atomic<int> corrupt_left{2};
  FaultProxy proxy(nginx_->port(), [&](uint64_t, const std::string&, const std::string&) {
    return corrupt_left-- > 0 ? Fault{Fault::Kind::kCorrupt, 0, 4321} : Fault{};
  });
  Fetcher f(*store_, FastRetries());
  FetchTarget t = Target(&proxy);
  for (uint64_t off = 0; off < kSize; off += kChunk) {
    t.chunk_sha256.push_back(Sha256(absl::string_view(data_).substr(off, kChunk)));
  }
  absl::Status err;
  EXPECT_TRUE(ReadAll(f, t, 1 << 20, &err) == data_) << err;
  EXPECT_GE(f.Stats().corrupt_chunks, 1u);

  // An origin that always corrupts: an error, no bytes.
  FaultProxy bad(nginx_->port(), [](uint64_t, const std::string&, const std::string&) {
    return Fault{Fault::Kind::kCorrupt, 0, 77};
  });
  TempDir cache;
  StoreOptions so;
  so.dir = cache.path();
  so.chunk_size = kChunk;
  auto store = ChunkStore::Open(so);
  Fetcher f2(**store, FastRetries());
  FetchTarget t2 = Target(&bad);
  t2.chunk_sha256 = t.chunk_sha256;
  std::string buf(100, '\0');
  auto n = f2.Read(t2, 0, absl::MakeSpan(buf));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(n.status().message()), HasSubstr("digest"));
}

TEST_F(FetcherTest, WholeObjectDigestIsCheckedBeforeAnythingIsServed) {
  std::atomic<int> corrupt_left{1};
  FaultProxy proxy(nginx_->port(), [&](uint64_t, const std::string&, const std::string&) {
    return corrupt_left-- > 0 ? Fault{Fault::Kind::kCorrupt, 0, 99} : Fault{};
  });
  Fetcher f(*store_, FastRetries());
  FetchTarget t = Target(&proxy);
  t.stat.digest = "sha256:" + Sha256(data_);
  std::string buf(100, '\0');
  auto n = f.Read(t, 0, absl::MakeSpan(buf));
  ASSERT_FALSE(n.ok()) << "a corrupt transfer was served";
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_FALSE(store_->Lookup(t.stat.digest)) << "the corrupt object was kept";
  // The next read fetches again, verifies, and serves.
  absl::Status err;
  EXPECT_TRUE(ReadAll(f, t, 1 << 20, &err) == data_) << err;
  EXPECT_TRUE(store_->Lookup(t.stat.digest)->digest_verified);
  // A wrong digest: never served.
  FetchTarget wrong = Target(nullptr);
  wrong.stat.digest = "sha256:" + std::string(64, '0');
  n = f.Read(wrong, 0, absl::MakeSpan(buf));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kDataLoss);
}

TEST_F(FetcherTest, SequentialReadersGetReadahead) {
  Fetcher f(*store_);
  FetchTarget t = Target(nullptr);
  std::string buf(kChunk / 2, '\0');
  for (uint64_t off = 0; off < 4 * kChunk; off += buf.size()) {
    ASSERT_TRUE(f.Read(t, off, absl::MakeSpan(buf)).ok());
  }
  EXPECT_GT(f.Stats().readahead_chunks, 0u);
  // Chunks past what was read arrive without being asked for (bounded wait).
  auto present = [&] { return store_->Lookup(StoreKey(t))->chunks_present; };
  for (int i = 0; i < 200 && present() <= 4; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_GT(present(), 4u);
}

// The kernel's readahead sends several reads of a stream at once, and the
// mount's workers hand them over in any order: a read that arrives late,
// behind where the stream has got to, does not reset it, and the next read
// in order still gets readahead.
TEST_F(FetcherTest, AReadArrivingLateDoesNotResetTheStream) {
  Fetcher f(*store_);
  FetchTarget t = Target(nullptr);
  const uint64_t half = kChunk / 2;
  std::string buf(half, '\0');
  auto read = [&](uint64_t off) {
    ASSERT_TRUE(f.Read(t, off, absl::MakeSpan(buf)).ok());
    EXPECT_TRUE(buf == data_.substr(off, half)) << "at " << off;
  };
  for (uint64_t i : {0, 1, 3, 2}) read(i * half);  // the read of 2 arrives late
  const uint64_t queued = f.Stats().readahead_chunks;
  EXPECT_GT(queued, 0u);
  read(4 * half);
  EXPECT_GT(f.Stats().readahead_chunks, queued) << "the late read reset the stream";
}

// An origin in memory: one object at version v1, no listing. Subclasses
// read it, each with its own faults.
class MemOrigin : public origin::Origin {
 public:
  MemOrigin(std::string url, std::string data) : url_(std::move(url)), data_(std::move(data)) {}
  const std::string& url() const override { return url_; }
  absl::StatusOr<origin::ObjectStat> Stat(const std::string&) override {
    origin::ObjectStat st;
    st.size = data_.size();
    st.version = "v1";
    return st;
  }
  absl::StatusOr<std::vector<origin::DirEntry>> List(const std::string&) override {
    return absl::UnimplementedError("no listing");
  }

 protected:
  const std::string url_;
  const std::string data_;
};

// An origin in memory whose reads of chunk `gated` wait until it is
// released; it records which chunks were asked for.
class GatedOrigin final : public MemOrigin {
 public:
  GatedOrigin(std::string data, uint32_t gated)
      : MemOrigin("mem://gated", std::move(data)), gated_(gated) {}
  void Release() { gate_.Notify(); }
  bool Asked(uint32_t chunk) {
    absl::MutexLock l(&mu_);
    return asked_.count(chunk) > 0;
  }

 protected:
  absl::Status ReadInRange(const std::string&, const origin::ObjectStat&, uint64_t offset,
                           absl::Span<char> out) override {
    const uint32_t chunk = static_cast<uint32_t>(offset / kChunk);
    {
      absl::MutexLock l(&mu_);
      asked_.insert(chunk);
    }
    if (chunk == gated_ && !gate_.WaitForNotificationWithTimeout(absl::Seconds(30))) {
      return absl::UnavailableError("never released");
    }
    std::memcpy(out.data(), data_.data() + offset, out.size());
    return absl::OkStatus();
  }

 private:
  const uint32_t gated_;
  absl::Notification gate_;
  absl::Mutex mu_;
  std::set<uint32_t> asked_ ABSL_GUARDED_BY(mu_);
};

// Readahead is queued as a sequential read arrives, so it runs beside the
// fetch that read waits for: while a reader waits on a slow chunk, the
// chunks after it are already being fetched.
TEST_F(FetcherTest, ReadaheadRunsBesideTheFetchAReaderWaitsFor) {
  auto origin = std::make_shared<GatedOrigin>(data_, /*gated=*/2);
  Fetcher f(*store_);
  FetchTarget t;
  t.origin = origin;
  t.stat = *origin->Stat("");
  t.chunk_size = kChunk;
  std::string buf(kChunk, '\0');
  // Chunks 0 and 1: sequential, readahead queued for chunks 2 and 3.
  for (uint64_t off : {uint64_t{0}, uint64_t{kChunk}}) {
    ASSERT_TRUE(f.Read(t, off, absl::MakeSpan(buf)).ok());
  }
  // Chunk 2 waits on the gate; its read widens the window to chunk 4 and
  // 5 before it waits.
  std::string got(kChunk, '\0');
  absl::StatusOr<size_t> n;
  std::thread reader([&] { n = f.Read(t, 2 * kChunk, absl::MakeSpan(got)); });
  bool asked = false;
  for (int i = 0; i < 1000 && !(asked = origin->Asked(5)); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  origin->Release();
  reader.join();
  EXPECT_TRUE(asked) << "chunk 5 was not asked for while the reader waited for chunk 2";
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_TRUE(got == data_.substr(2 * kChunk, kChunk));
}

TEST_F(FetcherTest, PrefetchWarmsAndReportsProgressWithoutStarvingReaders) {
  FaultProxy proxy(nginx_->port(), nullptr);
  // 1 MiB/s: the whole prefetch takes about 4 s, far longer than one read
  // of a chunk at 1 MiB/s, however loaded the machine.
  proxy.Throttle(1 << 20, 0);
  FetcherOptions o;
  o.max_inflight_per_origin = 2;
  Fetcher f(*store_, o);
  FetchTarget t = Target(&proxy);
  std::atomic<bool> prefetch_done{false};
  uint64_t last_done = 0, calls = 0;
  std::thread pre([&] {
    EXPECT_TRUE(f.Prefetch(t, {}, [&](uint64_t done, uint64_t total) {
                   EXPECT_EQ(total, kSize);
                   EXPECT_GE(done, last_done);
                   last_done = done;
                   ++calls;
                 }).ok());
    prefetch_done = true;
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  // A reader of the last chunk goes ahead of the queued prefetch.
  std::string buf(1000, '\0');
  auto n = f.Read(t, kSize - 1000, absl::MakeSpan(buf));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(buf, data_.substr(kSize - 1000));
  EXPECT_FALSE(prefetch_done.load()) << "the reader waited for the whole prefetch";
  pre.join();
  EXPECT_EQ(last_done, kSize);
  EXPECT_GT(calls, 1u);
  uint64_t before = f.Stats().origin_requests;
  EXPECT_EQ(ReadAll(f, t, 1 << 20), data_);
  EXPECT_EQ(f.Stats().origin_requests, before);
}

// The last chunks can land while an earlier count is being reported, which
// ends the prefetch: the caller hears the final count all the same (a
// progress line of `strata prefetch` went missing so under load).
TEST_F(FetcherTest, PrefetchAlwaysReportsTheFinalCount) {
  Fetcher f(*store_);
  FetchTarget t = Target(nullptr);
  const std::string key = StoreKey(t);
  const uint64_t span = 4 * kChunk;  // fewer chunks than are queued at once
  std::vector<uint64_t> reports;
  ASSERT_TRUE(f.Prefetch(t, {{0, span}}, [&](uint64_t done, uint64_t total) {
                 EXPECT_EQ(total, span);
                 if (reports.empty()) {
                   // The first report returns only once every chunk landed.
                   auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
                   while (std::chrono::steady_clock::now() < deadline) {
                     auto missing = store_->MissingChunks(key, 0, span);
                     if (missing.ok() && missing->empty()) break;
                     std::this_thread::sleep_for(std::chrono::milliseconds(5));
                   }
                   std::this_thread::sleep_for(std::chrono::milliseconds(100));
                 }
                 reports.push_back(done);
               }).ok());
  ASSERT_FALSE(reports.empty());
  EXPECT_EQ(reports.back(), span);
  // An empty object is done at once, and says so.
  reports.clear();
  ASSERT_TRUE(f.Prefetch(t, {{kSize, 10}}, [&](uint64_t done, uint64_t total) {
                 EXPECT_EQ(done, total);
                 reports.push_back(done);
               }).ok());
  EXPECT_EQ(reports.size(), 1u);
}

TEST_F(FetcherTest, PrefetchOfAListOfRanges) {
  Fetcher f(*store_);
  FetchTarget t = Target(nullptr);
  // Two ranges in chunks 1-2 and one in chunk 9; overlapping ranges count once.
  Fetcher::Ranges ranges = {{kChunk + 10, kChunk}, {kChunk + 20, 100}, {9 * kChunk + 5, 10}};
  uint64_t total = 0;
  ASSERT_TRUE(f.Prefetch(t, ranges, [&](uint64_t, uint64_t tot) { total = tot; }).ok());
  EXPECT_EQ(total, 3ull * kChunk);
  auto info = store_->Lookup(StoreKey(t));
  ASSERT_TRUE(info);
  EXPECT_EQ(info->chunks_present, 3u);
  EXPECT_EQ(f.Stats().origin_requests, 3u);
}

TEST_F(FetcherTest, FileOriginChangedUnderAReaderIsAnError) {
  FetchTarget t = FileTarget();
  Fetcher f(*store_);
  std::string buf(1000, '\0');
  ASSERT_TRUE(f.Read(t, 0, absl::MakeSpan(buf)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  std::ofstream(root_.path() + "/www/blob.bin", std::ios::binary) << Pattern(12, 0, kSize);
  auto n = f.Read(t, 5 * kChunk, absl::MakeSpan(buf));
  ASSERT_FALSE(n.ok());
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(n.status().message()), HasSubstr("changed"));
  // Under its new version it reads the new bytes.
  t.stat = *t.origin->Stat("blob.bin");
  ASSERT_TRUE(f.Read(t, 5 * kChunk, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(buf, Pattern(12, 0, kSize).substr(5 * kChunk, 1000));
}

// An origin in memory that fails its first `failures` reads with a transient
// error, and takes `latency` of the test's clock per read.
class FlakyOrigin final : public MemOrigin {
 public:
  FlakyOrigin(std::string data, int failures, strata::testing::FakeClock* clock,
              absl::Duration latency)
      : MemOrigin("mem://flaky", std::move(data)),
        failures_(failures),
        clock_(clock),
        latency_(latency) {}

  int reads() const { return reads_; }

 protected:
  absl::Status ReadInRange(const std::string&, const origin::ObjectStat&, uint64_t offset,
                           absl::Span<char> out) override {
    clock_->Advance(latency_);
    if (++reads_ <= failures_) return absl::UnavailableError("origin is busy");
    std::memcpy(out.data(), data_.data() + offset, out.size());
    return absl::OkStatus();
  }

 private:
  const int failures_;
  strata::testing::FakeClock* const clock_;
  const absl::Duration latency_;
  std::atomic<int> reads_{0};
};

// The fetcher's deadlines and backoff on a fake clock: every retry's wait
// moves the clock instead of the test's thread, so the waits are checked
// exactly (within the jitter) without taking any time.
// The peers seam: a fake at ChunkPeers that records what it is asked and
// answers from the origin, or with bytes of its own (a lying peer).
class RecordingPeers final : public ChunkPeers {
 public:
  absl::StatusOr<ChunkFrom> Fetch(
      const ChunkId& chunk, absl::Span<char> out,
      absl::FunctionRef<absl::Status(absl::Span<char>)> from_origin) override {
    absl::MutexLock l(&mu_);
    asked_.push_back(std::string(chunk.key) + "#" + std::to_string(chunk.index));
    nice_[chunk.index] = ::getpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()));
    if (lie_) {
      std::memset(out.data(), 'x', out.size());
      return ChunkFrom::kPeer;
    }
    absl::Status st = from_origin(out);
    if (!st.ok()) return st;
    return ChunkFrom::kOrigin;
  }
  std::string Owner(const ChunkId& chunk) const override {
    return owned_.contains(chunk.index) ? "" : "peer-" + std::to_string(chunk.index % 2);
  }
  uint64_t Epoch() const override { return 0; }
  std::vector<std::string> asked() {
    absl::MutexLock l(&mu_);
    return asked_;
  }
  void Lie() { lie_ = true; }
  // The chunks this node owns (set before use); the others' owners are
  // peer-0 (even chunks) and peer-1 (odd ones).
  void Own(std::set<uint32_t> chunks) { owned_ = std::move(chunks); }
  // The nice value of the thread that fetched each chunk.
  std::map<uint32_t, int> nice() {
    absl::MutexLock l(&mu_);
    return nice_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> asked_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, int> nice_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> lie_{false};
  std::set<uint32_t> owned_;
};

TEST_F(FetcherTest, ChunksOfASharedVersionAreAskedOfPeersFirst) {
  RecordingPeers peers;
  FetcherOptions o;
  o.peers = &peers;
  Fetcher f(*store_, o);
  FetchTarget t = Target(nullptr);  // nginx: a strong ETag, the same for every node
  ASSERT_TRUE(t.origin->SharedVersion(t.stat));
  EXPECT_EQ(ReadAll(f, t, 1 << 20), data_);
  auto asked = peers.asked();
  EXPECT_EQ(asked.size(), 17u);
  for (const auto& a : asked) EXPECT_THAT(a, ::testing::StartsWith(StoreKey(t) + "#"));
}

// Nodes warming one object at once read the chunks they own from the origin
// and take the others from their owners at the same time: two lanes, the
// owned chunks in order, the others in the order their owners read them.
TEST_F(FetcherTest, APrefetchReadsItsOwnChunksAndAsksForTheOthersAtOnce) {
  RecordingPeers peers;
  peers.Own({3, 9, 12});
  FetcherOptions o;
  o.peers = &peers;
  o.background_workers = 1;  // each lane's chunks are fetched in the order they are queued
  Fetcher f(*store_, o);
  FetchTarget t = Target(nullptr);
  ASSERT_TRUE(f.Prefetch(t, {{2 * kChunk, 12 * kChunk}}).ok());  // chunks 2 to 13
  std::vector<uint32_t> own, theirs;
  for (const std::string& a : peers.asked()) {
    ASSERT_THAT(a, ::testing::StartsWith(StoreKey(t) + "#"));
    uint32_t i = std::stoul(a.substr(a.rfind('#') + 1));
    (i == 3 || i == 9 || i == 12 ? own : theirs).push_back(i);
  }
  EXPECT_EQ(own, (std::vector<uint32_t>{3, 9, 12}));
  // peer-0 has 2, 4, 6, 8, 10; peer-1 has 5, 7, 11, 13: first of each, second...
  EXPECT_EQ(theirs, (std::vector<uint32_t>{2, 5, 4, 7, 6, 11, 8, 13, 10}));
  std::string all(t.stat.size, '\0');
  ASSERT_TRUE(f.Read(t, 0, absl::MakeSpan(all)).ok());
  EXPECT_TRUE(all == data_);
}

// A prefetch that is told to stop (its client went away, the node is
// stopping) queues nothing more, lets the chunks in flight land, and says
// it was cancelled.
TEST_F(FetcherTest, AStoppedPrefetchQueuesNothingMore) {
  FetcherOptions o;
  o.background_workers = 1;  // two chunks queued at a time
  Fetcher f(*store_, o);
  FetchTarget t = Target(nullptr);
  int asked = 0;
  std::vector<uint64_t> seen;
  absl::Status st = f.Prefetch(
      t, {}, [&](uint64_t done, uint64_t) { seen.push_back(done); }, [&] { return ++asked > 1; });
  EXPECT_EQ(st.code(), absl::StatusCode::kCancelled) << st;
  // Asked before the first two chunks were queued (go on), and when the
  // first landed (stop); not again, with nothing left to queue.
  EXPECT_EQ(asked, 2);
  EXPECT_EQ(f.Stats().prefetch_chunks, 2u);
  EXPECT_EQ(seen.back(), 2u * kChunk);
  auto missing = store_->MissingChunks(StoreKey(t), 0, kSize);
  ASSERT_TRUE(missing.ok());
  EXPECT_EQ(missing->size(), 17u - 2u);
  EXPECT_EQ(missing->front(), 2u);
  // Nothing was lost: a read has it all.
  EXPECT_EQ(ReadAll(f, t, 1 << 20), data_);
}

TEST_F(FetcherTest, AVersionOnlyThisNodeKnowsIsNeverAskedOfPeers) {
  RecordingPeers peers;
  FetcherOptions o;
  o.peers = &peers;
  Fetcher f(*store_, o);
  // A file on this machine's own file system: its inode and mtime say
  // nothing about another node's file of that name.
  FetchTarget t = FileTarget();
  EXPECT_FALSE(t.origin->SharedVersion(t.stat));
  EXPECT_EQ(ReadAll(f, t, 1 << 20), data_);
  EXPECT_TRUE(peers.asked().empty());
}

TEST_F(FetcherTest, PrefetchRunsAtALowerCpuPriorityThanReaders) {
  if (::geteuid() != 0) GTEST_SKIP() << "renicing a thread back up needs root (CAP_SYS_NICE)";
  RecordingPeers peers;  // asked on the thread that fetches
  FetcherOptions o;
  o.peers = &peers;
  Fetcher f(*store_, o);
  FetchTarget t = Target(nullptr);
  std::string buf(2 * kChunk, '\0');
  ASSERT_TRUE(f.Read(t, 0, absl::MakeSpan(buf)).ok());          // chunks 0 and 1: a reader's
  ASSERT_TRUE(f.Prefetch(t, {{4 * kChunk, 4 * kChunk}}).ok());  // chunks 4 to 7
  // A reader again, on threads that may just have prefetched.
  ASSERT_TRUE(f.Read(t, 15 * kChunk, absl::MakeSpan(buf)).ok());  // chunks 15 and 16
  std::map<uint32_t, int> want = {{0, 0},  {1, 0},  {4, 10}, {5, 10},
                                  {6, 10}, {7, 10}, {15, 0}, {16, 0}};
  EXPECT_EQ(peers.nice(), want);
}

TEST_F(FetcherTest, APeersBytesThatDoNotMatchTheirDigestAreFetchedAgain) {
  RecordingPeers peers;
  peers.Lie();
  FetcherOptions o;
  o.peers = &peers;
  Fetcher f(*store_, o);
  FetchTarget t = Target(nullptr);
  for (uint64_t off = 0; off < kSize; off += kChunk) {
    t.chunk_sha256.push_back(Sha256(absl::string_view(data_).substr(off, kChunk)));
  }
  EXPECT_EQ(ReadAll(f, t, 1 << 20), data_);
  EXPECT_EQ(f.Stats().peer_corrupt_chunks, 17u);
  EXPECT_EQ(f.Stats().peer_bytes, 0u);
  EXPECT_GE(f.Stats().origin_requests, 17u);
}

class FetcherClockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    StoreOptions so;
    so.dir = cache_.path();
    so.chunk_size = kChunk;
    so.capacity_bytes = 64 << 20;
    so.background_work = false;
    auto s = ChunkStore::Open(so);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  // A one-chunk object, so that every origin read happens on the reader's
  // thread, in order.
  FetchTarget Target(const std::shared_ptr<FlakyOrigin>& origin) {
    FetchTarget t;
    t.origin = origin;
    t.stat = *origin->Stat("");
    return t;
  }

  FetcherOptions Options(absl::Duration initial, absl::Duration max, int attempts) {
    FetcherOptions o;
    o.clock = &clock_;
    o.demand_workers = 1;
    o.background_workers = 1;
    o.backoff_initial = initial;
    o.backoff_max = max;
    o.max_attempts = attempts;
    return o;
  }

  TempDir cache_;
  std::unique_ptr<ChunkStore> store_;
  strata::testing::FakeClock clock_;
  const std::string data_ = Pattern(13, 0, 10000);
};

TEST_F(FetcherClockTest, RetriesWaitOnTheClockWithCappedBackoff) {
  auto origin =
      std::make_shared<FlakyOrigin>(data_, /*failures=*/3, &clock_, absl::Milliseconds(30));
  Fetcher f(*store_, Options(absl::Seconds(1), absl::Seconds(2), /*attempts=*/6));
  const absl::Time t0 = clock_.Now();
  std::string out(data_.size(), '\0');
  auto n = f.Read(Target(origin), 0, absl::MakeSpan(out));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(out, data_);
  EXPECT_EQ(origin->reads(), 4);
  FetcherStats st = f.Stats();
  EXPECT_EQ(st.retries, 3u);
  EXPECT_EQ(st.origin_requests, 4u);
  // Latencies are the clock's: 30 ms per request.
  EXPECT_DOUBLE_EQ(st.latency.sum_ms, 4 * 30.0);
  EXPECT_EQ(st.latency.buckets[4], 4u);  // (25, 50] ms
  EXPECT_EQ(st.latency.count(), 4u);
  // Backoffs of 1 s, then 2 s twice (capped), each jittered to [0.5, 1.5)
  // of itself.
  absl::Duration waited = clock_.Now() - t0 - 4 * absl::Milliseconds(30);
  EXPECT_GE(waited, absl::Milliseconds(2500));
  EXPECT_LT(waited, absl::Milliseconds(7500));
}

TEST_F(FetcherClockTest, PersistentFailureStopsAtMaxAttemptsOrTheDeadline) {
  {
    SCOPED_TRACE("max_attempts");
    auto origin =
        std::make_shared<FlakyOrigin>(data_, /*failures=*/1000, &clock_, absl::ZeroDuration());
    Fetcher f(*store_, Options(absl::Seconds(1), absl::Seconds(10), /*attempts=*/4));
    const absl::Time t0 = clock_.Now();
    std::string out(data_.size(), '\0');
    auto n = f.Read(Target(origin), 0, absl::MakeSpan(out));
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(std::string(n.status().message()), HasSubstr("mem://flaky"));
    EXPECT_EQ(origin->reads(), 4);
    EXPECT_EQ(f.Stats().retries, 3u);
    // 1 s, 2 s and 4 s, jittered.
    EXPECT_GE(clock_.Now() - t0, absl::Milliseconds(3500));
    EXPECT_LT(clock_.Now() - t0, absl::Milliseconds(10500));
  }
  {
    SCOPED_TRACE("read_deadline");
    auto origin =
        std::make_shared<FlakyOrigin>(data_, /*failures=*/1000, &clock_, absl::ZeroDuration());
    FetcherOptions o = Options(absl::Seconds(4), absl::Seconds(4), /*attempts=*/1000);
    o.read_deadline = absl::Seconds(20);
    Fetcher f(*store_, o);
    const absl::Time t0 = clock_.Now();
    std::string out(data_.size(), '\0');
    auto n = f.Read(Target(origin), 0, absl::MakeSpan(out));
    ASSERT_FALSE(n.ok());
    EXPECT_EQ(n.status().code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_THAT(std::string(n.status().message()), HasSubstr("gave up after"));
    // No wait runs past the deadline. Each is 2 s to 6 s: three fit in it
    // for sure, ten at most.
    EXPECT_LE(clock_.Now() - t0, absl::Seconds(20));
    EXPECT_GE(origin->reads(), 4);
    EXPECT_LE(origin->reads(), 11);
  }
}

}  // namespace
}  // namespace strata::cache
