// Fetcher implementation. Readers fetch their first missing chunk on their
// own thread and hand the rest to demand workers; readahead and prefetch run
// on background workers. Every origin request passes a per-origin gate that
// serves waiting readers before readahead and readahead before prefetch.
#include "cache/fetcher.h"

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <optional>
#include <random>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "base/digest.h"
#include "base/logging.h"
#include "cache/prefetch_lanes.h"

namespace strata::cache {

std::string ObjectName(const FetchTarget& t) {
  return t.path.empty() ? t.origin->url() : absl::StrCat(t.origin->url(), "/", t.path);
}

std::string StoreKey(const FetchTarget& t) {
  if (!t.stat.digest.empty()) return t.stat.digest;
  return absl::StrCat(t.origin->url(), t.path.empty() ? "" : "/", t.path, "@", t.stat.version);
}

namespace {

// Nothing of the target is served before all of it matched its whole digest
// (no per-chunk digests vouch for parts of it).
bool WholeBeforeUse(const FetchTarget& t) {
  return !t.stat.digest.empty() && t.chunk_sha256.empty();
}

enum class Priority { kDemand = 0, kReadahead = 1, kPrefetch = 2 };

// Limits the requests in flight to one origin; a free slot goes to a waiting
// reader first, then readahead, then prefetch.
class OriginGate {
 public:
  explicit OriginGate(int limit) : limit_(limit) {}
  void Acquire(Priority p) {
    absl::MutexLock l(&mu_);
    int pi = static_cast<int>(p);
    ++waiting_[pi];
    auto ready = [this, pi]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      if (inflight_ >= limit_) return false;
      for (int q = 0; q < pi; ++q) {
        if (waiting_[q] > 0) return false;
      }
      return true;
    };
    while (!ready()) cv_.Wait(&mu_);
    --waiting_[pi];
    ++inflight_;
  }
  void Release() {
    absl::MutexLock l(&mu_);
    --inflight_;
    cv_.SignalAll();
  }

 private:
  absl::Mutex mu_;
  absl::CondVar cv_;
  const int limit_;
  int inflight_ ABSL_GUARDED_BY(mu_) = 0;
  int waiting_[3] ABSL_GUARDED_BY(mu_) = {0, 0, 0};
};

// The nice value prefetch runs at: a node's own work (a container starting,
// a reader's fetches) gets the CPU first, while an idle node still prefetches
// at full speed.
constexpr int kPrefetchNice = 10;

// How many of a prefetch's next chunks at an owner the owner is told of
// with each ask (ChunkId::next).
constexpr size_t kNextAtOwner = 2;

// Whether this process may raise a thread's priority back after lowering it
// (root, or CAP_SYS_NICE): tried on a thread of its own.
bool CanRenice() {
  bool ok = false;
  std::thread([&ok] {
    ok = ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kPrefetchNice) == 0 &&
         ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), 0) == 0;
  }).join();
  return ok;
}

// Threads that run queued tasks; a task queue per priority. Background
// threads also run demand tasks when there are some; they run prefetch tasks
// at kPrefetchNice where the process may renice its threads.
class WorkerPool {
 public:
  WorkerPool(int demand, int background) : renice_(CanRenice()) {
    if (!renice_) spdlog::info("fetcher: cannot renice threads; prefetch runs at normal priority");
    for (int i = 0; i < demand; ++i) threads_.emplace_back([this] { Loop(true); });
    for (int i = 0; i < background; ++i) threads_.emplace_back([this] { Loop(false); });
  }
  ~WorkerPool() {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    for (auto& t : threads_) t.join();
  }
  void Submit(Priority p, std::function<void()> fn) {
    absl::MutexLock l(&mu_);
    queues_[static_cast<int>(p)].push_back(std::move(fn));
  }

 private:
  void Loop(bool demand_only) {
    int nice = 0;
    for (;;) {
      std::function<void()> fn;
      int q = 0;
      {
        absl::MutexLock l(&mu_);
        auto has_work = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
          if (stop_ || !queues_[0].empty()) return true;
          return !demand_only && (!queues_[1].empty() || !queues_[2].empty());
        };
        mu_.Await(absl::Condition(&has_work));
        while (q < 3 && (queues_[q].empty() || (demand_only && q > 0))) ++q;
        if (q == 3) return;  // stopping with nothing this thread may run
        fn = std::move(queues_[q].front());
        queues_[q].pop_front();
      }
      int want = q == static_cast<int>(Priority::kPrefetch) ? kPrefetchNice : 0;
      if (renice_ && want != nice &&
          ::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), want) == 0) {
        nice = want;
      }
      fn();
    }
  }

  absl::Mutex mu_;
  std::deque<std::function<void()>> queues_[3] ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  const bool renice_;
  std::vector<std::thread> threads_;
};

struct SequentialState {
  uint64_t next_offset = 0;
  uint64_t window = 0;
  uint64_t ahead_until = 0;  // readahead is queued up to here
};

}  // namespace

class Fetcher::Impl {
 public:
  Impl(ChunkStore& store, FetcherOptions opts)
      : store_(store),
        opts_(opts),
        clock_(opts.clock != nullptr ? opts.clock : RealClock()),
        pool_(opts.demand_workers, opts.background_workers) {}

  ~Impl() {
    stopping_ = true;  // queued background fetches end quickly
  }

  absl::StatusOr<size_t> Read(const FetchTarget& t, uint64_t offset, absl::Span<char> out,
                              bool verified = true) {
    std::string key = StoreKey(t);
    if (offset > t.stat.size) {
      return absl::OutOfRangeError(absl::StrFormat("%s: offset %u is past the end (%u bytes)",
                                                   Name(t), offset, t.stat.size));
    }
    size_t n = std::min<uint64_t>(out.size(), t.stat.size - offset);
    if (n == 0) return 0;
    out = out.subspan(0, n);
    if (absl::Status st = Register(t, key); !st.ok()) {
      if (!t.stat.digest.empty() || !t.chunk_sha256.empty()) return Fail(t, st);  // cannot check
      spdlog::warn("{}: not cached ({}); reading the origin directly", Name(t), st.message());
      absl::Status direct = ReadDirect(t, offset, out, Priority::kDemand);
      if (!direct.ok()) return Fail(t, direct);
      return n;
    }
    if (verified && WholeBeforeUse(t)) {
      if (absl::Status v = EnsureDigestVerified(t, key); !v.ok()) return Fail(t, v);
    }
    uint32_t cs = ChunkSize(key);
    // Readahead is queued as a read arrives, so that it runs beside the
    // fetch this read may have to wait for, not after it.
    Sequential(t, key, cs, offset, n);
    for (int attempt = 0; attempt < 4; ++attempt) {
      auto r = store_.Read(key, offset, out);
      if (!r.ok()) {
        if (absl::IsNotFound(r.status())) {  // evicted whole since Register
          if (absl::Status s = Register(t, key); !s.ok()) return Fail(t, s);
          continue;
        }
        return Fail(t, r.status());
      }
      if (r->missing.empty()) return n;
      std::vector<uint32_t> missing = std::move(r->missing);
      auto results = FetchAll(t, key, missing);
      if (!results.ok()) return Fail(t, results.status());
      // Serve fetched bytes from the fetch itself (they may not have fit in
      // the store), the rest from the store.
      absl::flat_hash_map<uint32_t, std::shared_ptr<const ChunkBytes>> fetched;
      for (size_t i = 0; i < missing.size(); ++i) {
        if ((*results)[i].bytes) fetched[missing[i]] = (*results)[i].bytes;
      }
      if (Assemble(key, cs, offset, out, fetched)) return n;
    }
    return Fail(t,
                absl::UnavailableError("chunks kept disappearing from the cache while being read"));
  }

  absl::StatusOr<bool> Ensure(const FetchTarget& t, uint64_t offset, uint64_t length) {
    std::string key = StoreKey(t);
    if (offset >= t.stat.size || length == 0) return true;
    length = std::min<uint64_t>(length, t.stat.size - offset);
    if (absl::Status st = Register(t, key); !st.ok())
      return false;  // Read falls back to the origin
    if (WholeBeforeUse(t)) {
      if (absl::Status v = EnsureDigestVerified(t, key); !v.ok()) return Fail(t, v);
    }
    uint32_t cs = ChunkSize(key);
    auto missing = store_.MissingChunks(key, offset, length);
    if (!missing.ok()) return false;
    if (!missing->empty()) {
      auto results = FetchAll(t, key, *missing);
      if (!results.ok()) return Fail(t, results.status());
      for (const FillResult& r : *results) {
        if (!r.cached) return false;
      }
    }
    Sequential(t, key, cs, offset, length);
    return true;
  }

  absl::Status Prefetch(const FetchTarget& t, const Fetcher::Ranges& ranges,
                        const std::function<void(uint64_t, uint64_t)>& progress,
                        const std::function<bool()>& stop) {
    std::string key = StoreKey(t);
    if (absl::Status st = Register(t, key); !st.ok()) return Fail(t, st);
    uint32_t cs = ChunkSize(key);
    // The chunks under the ranges, each once, in order.
    std::vector<uint32_t> chunks;
    Fetcher::Ranges whole = {{0, t.stat.size}};
    for (auto [off, len] : ranges.empty() ? whole : ranges) {
      if (off >= t.stat.size || len == 0) continue;
      uint64_t end = off + std::min(t.stat.size - off, len);  // off + len may wrap
      for (uint64_t c = off / cs; c <= (end - 1) / cs; ++c)
        chunks.push_back(static_cast<uint32_t>(c));
    }
    std::sort(chunks.begin(), chunks.end());
    chunks.erase(std::unique(chunks.begin(), chunks.end()), chunks.end());
    // The chunks this node owns from the origin and the rest from their
    // owners, both at once (see PrefetchLanes); split again when owners
    // change.
    PrefetchLanes::OwnerFn owner;
    const bool shared = opts_.peers != nullptr && t.origin->SharedVersion(t.stat);
    if (shared) {
      owner = [&](uint32_t c) { return opts_.peers->Owner({key, c, t.stat.size, cs, {}}); };
    }
    uint64_t epoch = shared ? opts_.peers->Epoch() : 0;
    auto chunk_len = [&](uint32_t c) {
      return std::min<uint64_t>(cs, t.stat.size - uint64_t{c} * cs);
    };
    uint64_t total = 0;
    for (uint32_t c : chunks) total += chunk_len(c);
    PrefetchLanes lanes(std::move(chunks), owner);
    absl::Mutex mu;
    absl::CondVar cv;
    uint64_t done_bytes = 0;
    std::optional<uint64_t> reported;  // the count progress() last heard
    int outstanding[2] = {0, 0};
    absl::Status first_error;
    // A bounded number queued, so a huge prefetch does not flood the pool.
    const int workers = std::max(1, opts_.background_workers);
    bool stopped = false;
    absl::MutexLock l(&mu);
    while (!lanes.Empty() || outstanding[0] + outstanding[1] > 0) {
      if (stop && !lanes.Empty() && first_error.ok()) {
        mu.Unlock();
        stopped = stop();
        mu.Lock();
        if (stopped) lanes.Clear();  // queue no more; wait for those in flight
      }
      if (shared && !lanes.Empty()) {
        if (uint64_t e = opts_.peers->Epoch(); e != epoch) {
          epoch = e;
          lanes.Resplit();
        }
      }
      for (auto k : {PrefetchLanes::kOwn, PrefetchLanes::kTheirs}) {
        while (lanes.Left(k) > 0 && outstanding[k] < lanes.Window(k, workers) && first_error.ok()) {
          uint32_t idx = lanes.Take(k);
          ++outstanding[k];
          ++prefetch_chunks_;
          // The owner is told which of its chunks come next, to read them
          // from its disk while this one is on its way: a chunk read from
          // disk only when asked for kept a worker here waiting for that
          // read (11 ms of a 4 MiB chunk's 17 ms, bench/peers.sh's join).
          // Two: the next one is often asked for at the same time already.
          // Only chunks still missing here: a present one is not asked for.
          std::vector<uint32_t> next;
          if (k == PrefetchLanes::kTheirs) {
            for (uint32_t c : lanes.NextAtOwner(idx, 2 * kNextAtOwner)) {
              auto missing = store_.MissingChunks(key, uint64_t{c} * cs, chunk_len(c));
              if (next.size() < kNextAtOwner && missing.ok() && !missing->empty()) {
                next.push_back(c);
              }
            }
          }
          pool_.Submit(Priority::kPrefetch, [&, idx, k, next = std::move(next)] {
            auto r = FetchChunk(t, key, idx, Priority::kPrefetch, next);
            absl::MutexLock l2(&mu);
            --outstanding[k];
            if (!r.ok() && first_error.ok()) first_error = r.status();
            if (r.ok()) done_bytes += chunk_len(idx);
            cv.Signal();
          });
        }
      }
      if (!first_error.ok()) lanes.Clear();  // queue no more; wait for the rest
      int before = outstanding[0] + outstanding[1];
      while (outstanding[0] + outstanding[1] == before && before > 0) cv.Wait(&mu);
      if (progress) {
        uint64_t d = done_bytes;
        reported = d;
        mu.Unlock();
        progress(d, total);
        mu.Lock();
      }
    }
    if (!first_error.ok()) return Fail(t, first_error);
    if (stopped) return absl::CancelledError("the prefetch was stopped");
    // The last chunks can land while an earlier count is being reported, and
    // end the loop unreported: the caller always hears the final count.
    if (progress && reported != total) {
      mu.Unlock();
      progress(total, total);
      mu.Lock();
    }
    if (WholeBeforeUse(t) && ranges.empty()) {
      mu.Unlock();
      absl::Status v = EnsureDigestVerified(t, key);
      mu.Lock();
      if (!v.ok()) return Fail(t, v);
    }
    return absl::OkStatus();
  }

  FetcherStats Stats() const {
    FetcherStats s;
    s.origin_requests = requests_;
    s.origin_bytes = bytes_;
    s.peer_bytes = peer_bytes_;
    s.peer_corrupt_chunks = peer_corrupt_;
    s.retries = retries_;
    s.failures = failures_;
    s.corrupt_chunks = corrupt_;
    s.digest_failures = digest_failures_;
    s.readahead_chunks = readahead_chunks_;
    s.prefetch_chunks = prefetch_chunks_;
    s.latency = latency_.Counts();
    return s;
  }

 private:
  static std::string Name(const FetchTarget& t) { return ObjectName(t); }

  absl::Status Fail(const FetchTarget& t, const absl::Status& st) {
    ++failures_;
    std::string msg(st.message());
    std::string name = Name(t);
    if (msg.find(name) == std::string::npos) msg = absl::StrCat(name, ": ", msg);
    return absl::Status(st.code(), msg);
  }

  absl::Status Register(const FetchTarget& t, const std::string& key) {
    absl::Status st = store_.Register({key, t.stat.size, absl::StrCat(Name(t), " ", t.stat.version),
                                       t.chunk_size, WholeBeforeUse(t)});
    if (st.ok() && opts_.record_seen) RecordSeen(t, key);
    return st;
  }

  // Records the version of the target as the one last seen for its object,
  // once per object and version in this process: a later process finds it
  // cached when the origin cannot be asked. Under the lock, so that records
  // of two versions of one object are written in the order they are noted.
  void RecordSeen(const FetchTarget& t, const std::string& key) {
    std::string name = Name(t);
    absl::MutexLock l(&seen_mu_);
    auto it = seen_.find(name);
    if (it != seen_.end() && it->second == key) return;
    absl::Status st =
        store_.RecordSeen(name, {key, t.stat.size, t.stat.version, t.stat.mtime_ns, t.stat.digest});
    if (!st.ok()) {
      // Only serving without the origin later depends on it.
      spdlog::debug("{}: cannot record its version: {}", name, st.message());
      return;
    }
    if (seen_.size() >= 4096) seen_.clear();  // bounded: recording again is harmless
    seen_[name] = key;
  }

  uint32_t ChunkSize(const std::string& key) {
    auto info = store_.Lookup(key);
    return info ? info->chunk_size : kDefaultChunkSize;
  }

  OriginGate& Gate(const origin::Origin* o) {
    absl::MutexLock l(&gates_mu_);
    auto& g = gates_[o];
    if (!g) g = std::make_unique<OriginGate>(opts_.max_inflight_per_origin);
    return *g;
  }

  // One ranged read with retries, jittered exponential backoff and a deadline,
  // all in the fetcher's clock's time (request latencies too).
  absl::Status ReadDirect(const FetchTarget& t, uint64_t offset, absl::Span<char> out, Priority p) {
    absl::Time deadline = clock_->Now() + opts_.read_deadline;
    absl::Duration backoff = opts_.backoff_initial;
    thread_local std::mt19937_64 rng(std::random_device{}());
    OriginGate& gate = Gate(t.origin.get());
    absl::Status st;
    for (int attempt = 1;; ++attempt) {
      gate.Acquire(p);
      absl::Time start = clock_->Now();
      st = t.origin->ReadRange(t.path, t.stat, offset, out);
      gate.Release();
      latency_.Record(clock_->Now() - start);
      ++requests_;
      if (st.ok()) {
        bytes_ += out.size();
        return st;
      }
      if (!origin::IsTransient(st) || attempt >= opts_.max_attempts || stopping_) return st;
      absl::Duration sleep =
          backoff * (0.5 + std::uniform_real_distribution<double>(0, 1)(rng));  // full jitter
      if (clock_->Now() + sleep > deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat("gave up after ", attempt, " attempts: ", st.message()));
      }
      ++retries_;
      spdlog::debug("{} [{}, +{}): {}; retrying in {}", Name(t), offset, out.size(), st.message(),
                    absl::FormatDuration(sleep));
      clock_->SleepFor(sleep);
      backoff = std::min(backoff * 2, opts_.backoff_max);
    }
  }

  absl::StatusOr<FillResult> FetchChunk(const FetchTarget& t, const std::string& key, uint32_t idx,
                                        Priority p, absl::Span<const uint32_t> next = {}) {
    uint32_t cs = ChunkSize(key);
    return store_.Fill(key, idx, [&](absl::Span<char> out) -> absl::Status {
      auto from_origin = [&](absl::Span<char> o) { return FromOrigin(t, idx, cs, o, p); };
      if (opts_.peers == nullptr || !t.origin->SharedVersion(t.stat)) return from_origin(out);
      auto from = opts_.peers->Fetch({key, idx, t.stat.size, cs, next}, out, from_origin);
      if (!from.ok()) return from.status();
      if (*from == ChunkFrom::kOrigin) return absl::OkStatus();
      // A peer's bytes passed its checksum on the wire; a table of contents
      // also vouches for them. (A whole-object digest is checked over all
      // chunks, wherever they came from, before any is served.)
      if (!t.chunk_sha256.empty() && !ChunkMatches(t, idx, out)) {
        ++peer_corrupt_;
        spdlog::error("{}: chunk {} from a peer does not match its digest; fetching it again",
                      Name(t), idx);
        return from_origin(out);
      }
      peer_bytes_ += out.size();
      return absl::OkStatus();
    });
  }

  bool ChunkMatches(const FetchTarget& t, uint32_t idx, absl::Span<const char> bytes) {
    return idx < t.chunk_sha256.size() &&
           Sha256Hex(std::string_view(bytes.data(), bytes.size())) == t.chunk_sha256[idx];
  }

  // Chunk `idx` from the origin, checked against its digest when a table of
  // contents gives one (a corrupt answer is fetched again, up to three times).
  absl::Status FromOrigin(const FetchTarget& t, uint32_t idx, uint32_t cs, absl::Span<char> out,
                          Priority p) {
    for (int attempt = 1;; ++attempt) {
      absl::Status st = ReadDirect(t, uint64_t{idx} * cs, out, p);
      if (!st.ok() || t.chunk_sha256.empty()) return st;
      if (idx >= t.chunk_sha256.size()) {
        return absl::InvalidArgumentError(absl::StrFormat("no digest for chunk %u", idx));
      }
      if (ChunkMatches(t, idx, out)) return absl::OkStatus();
      ++corrupt_;
      spdlog::error("{}: chunk {} from the origin does not match its sha256 {}; discarded", Name(t),
                    idx, t.chunk_sha256[idx]);
      if (attempt >= 3) {
        return absl::DataLossError(absl::StrFormat(
            "chunk %u does not match its digest after %d fetches: the origin serves corrupt data",
            idx, attempt));
      }
    }
  }

  // Fetches `missing` at reader priority: the first chunk on this thread,
  // the rest on demand workers. The first error, or every chunk's result.
  absl::StatusOr<std::vector<FillResult>> FetchAll(const FetchTarget& t, const std::string& key,
                                                   const std::vector<uint32_t>& missing) {
    std::vector<absl::StatusOr<FillResult>> results(missing.size(), absl::UnknownError(""));
    absl::BlockingCounter done(static_cast<int>(missing.size()) - 1);
    for (size_t i = 1; i < missing.size(); ++i) {
      pool_.Submit(Priority::kDemand, [&, i] {
        results[i] = FetchChunk(t, key, missing[i], Priority::kDemand);
        done.DecrementCount();
      });
    }
    results[0] = FetchChunk(t, key, missing[0], Priority::kDemand);
    done.Wait();
    std::vector<FillResult> out;
    for (auto& r : results) {
      if (!r.ok()) return r.status();
      out.push_back(std::move(*r));
    }
    return out;
  }

  // Copies [offset, offset + out.size()) chunk by chunk from fetched bytes
  // or the store; false if a chunk went missing meanwhile.
  bool Assemble(const std::string& key, uint32_t cs, uint64_t offset, absl::Span<char> out,
                const absl::flat_hash_map<uint32_t, std::shared_ptr<const ChunkBytes>>& fetched) {
    uint64_t pos = offset, end = offset + out.size();
    while (pos < end) {
      uint32_t idx = pos / cs;
      uint64_t cend = std::min<uint64_t>((uint64_t{idx} + 1) * cs, end);
      absl::Span<char> dst = out.subspan(pos - offset, cend - pos);
      auto it = fetched.find(idx);
      if (it != fetched.end()) {
        std::memcpy(dst.data(), it->second->data() + (pos - uint64_t{idx} * cs), dst.size());
      } else {
        auto r = store_.Read(key, pos, dst);
        if (!r.ok() || !r->missing.empty()) return false;
      }
      pos = cend;
    }
    return true;
  }

  // Grows a readahead window for readers that continue where they stopped.
  void Sequential(const FetchTarget& t, const std::string& key, uint32_t cs, uint64_t offset,
                  size_t n) {
    uint32_t from = 0, to = 0;
    {
      absl::MutexLock l(&seq_mu_);
      if (seq_.size() > 4096) seq_.clear();  // bounded: forget old streams
      SequentialState& s = seq_[key];
      // The kernel's own readahead sends several reads of a stream at once,
      // and the mount's workers hand them over in any order: a read that
      // arrives late (up to two chunks behind where the stream has got to,
      // within what is queued) is still the stream, and does not reset it.
      const uint64_t slack = 2ull * cs;
      const bool in_stream = s.next_offset != 0 && offset + slack >= s.next_offset &&
                             offset <= std::max(s.ahead_until, s.next_offset);
      if (in_stream && offset != 0) {
        if (offset + n > s.next_offset) {
          s.window = std::min<uint64_t>(std::max<uint64_t>(s.window * 2, 2ull * cs),
                                        opts_.readahead_max_bytes);
        }
      } else if (offset != 0 || s.next_offset != 0) {
        s.window = 0;
        s.ahead_until = 0;
        s.next_offset = 0;
      } else {
        s.window = 0;  // a first read at 0: wait for the second to call it sequential
      }
      s.next_offset = std::max(s.next_offset, offset + n);
      if (s.window == 0) return;
      uint64_t start = std::max(s.ahead_until, offset + n);
      uint64_t stop = std::min(t.stat.size, offset + n + s.window);
      if (start >= stop) return;
      from = start / cs;
      to = (stop - 1) / cs;
      s.ahead_until = (uint64_t{to} + 1) * cs;
    }
    for (uint32_t idx = from; idx <= to; ++idx) {
      ++readahead_chunks_;
      pool_.Submit(Priority::kReadahead, [this, t, key, idx] {
        if (stopping_) return;
        auto r = FetchChunk(t, key, idx, Priority::kReadahead);
        if (!r.ok())
          spdlog::debug("readahead of chunk {} of {}: {}", idx, Name(t), r.status().message());
      });
    }
  }

  // A content-addressed object is served only after its complete bytes were
  // hashed and matched its digest; once per object, recorded in the store.
  absl::Status EnsureDigestVerified(const FetchTarget& t, const std::string& key) {
    auto info = store_.Lookup(key);
    if (info && info->digest_verified) return absl::OkStatus();
    std::shared_ptr<absl::Mutex> m;
    {
      absl::MutexLock l(&verify_mu_);
      auto& slot = verify_locks_[key];
      if (!slot) slot = std::make_shared<absl::Mutex>();
      m = slot;
    }
    absl::MutexLock one(m.get());
    info = store_.Lookup(key);
    if (info && info->digest_verified) return absl::OkStatus();
    if (!t.stat.digest.starts_with("sha256:")) {
      return absl::InvalidArgumentError(absl::StrCat("unsupported digest '", t.stat.digest, "'"));
    }
    uint32_t cs = ChunkSize(key);
    // Not (size + cs - 1) / cs, which wraps for sizes near 2^64.
    uint64_t chunk_count = t.stat.size / cs + (t.stat.size % cs != 0);
    if (chunk_count > UINT32_MAX) {
      return absl::InvalidArgumentError(absl::StrFormat("%u bytes is too large", t.stat.size));
    }
    uint32_t chunks = static_cast<uint32_t>(chunk_count);
    Sha256 sha;
    absl::Status st;
    // Fetch in windows of parallel chunks and hash in order; the next window
    // is in flight while one is hashed, so the link never waits on the hash.
    const uint32_t window = std::max(1, opts_.max_inflight_per_origin);
    struct Window {
      uint32_t base = 0, stop = 0;
      std::vector<absl::StatusOr<FillResult>> res;
      std::unique_ptr<absl::BlockingCounter> done;
    };
    auto start = [&](uint32_t base) {
      auto w = std::make_unique<Window>();
      w->base = base;
      w->stop = std::min(chunks, base + window);
      w->res.assign(w->stop - base, absl::UnknownError(""));
      w->done = std::make_unique<absl::BlockingCounter>(w->stop - base);
      for (uint32_t i = base; i < w->stop; ++i) {
        Window* raw = w.get();
        pool_.Submit(Priority::kDemand, [this, &t, &key, raw, i] {
          raw->res[i - raw->base] = FetchChunk(t, key, i, Priority::kDemand);
          raw->done->DecrementCount();
        });
      }
      return w;
    };
    std::unique_ptr<Window> cur = chunks > 0 ? start(0) : nullptr;
    while (cur) {
      std::unique_ptr<Window> next = cur->stop < chunks ? start(cur->stop) : nullptr;
      cur->done->Wait();
      std::string buf;
      for (uint32_t i = cur->base; i < cur->stop && st.ok(); ++i) {
        auto& res = cur->res[i - cur->base];
        if (!res.ok()) {
          st = res.status();
          break;
        }
        uint32_t len = std::min<uint64_t>(cs, t.stat.size - uint64_t{i} * cs);
        if (res->bytes) {
          sha.Update(std::string_view(res->bytes->data(), len));
          if (!res->cached) {
            st = absl::FailedPreconditionError(
                "the cache has no room for it, and its digest can only be checked over the "
                "complete object");
          }
          continue;
        }
        buf.resize(len);
        auto r = store_.Read(key, uint64_t{i} * cs, absl::MakeSpan(buf));
        if (!r.ok() || !r->missing.empty()) {
          st = absl::UnavailableError("chunks were evicted while the digest was being checked");
          break;
        }
        sha.Update(std::string_view(buf.data(), len));
      }
      if (!st.ok()) {
        if (next) next->done->Wait();  // its fetches point into it
        break;
      }
      cur = std::move(next);
    }
    if (!st.ok()) return st;
    std::string got = "sha256:" + sha.HexDigest();
    if (got != t.stat.digest) {
      ++digest_failures_;
      spdlog::error("{}: content has digest {}, want {}; discarded", Name(t), got, t.stat.digest);
      store_.Remove(key).IgnoreError();
      return absl::DataLossError(absl::StrCat("content does not match its digest ", t.stat.digest,
                                              " (got ", got, "); discarded, not served"));
    }
    return store_.MarkDigestVerified(key);
  }

  ChunkStore& store_;
  FetcherOptions opts_;
  Clock* const clock_;
  std::atomic<bool> stopping_{false};
  std::atomic<uint64_t> requests_{0}, bytes_{0}, retries_{0}, failures_{0}, corrupt_{0};
  std::atomic<uint64_t> digest_failures_{0}, readahead_chunks_{0}, prefetch_chunks_{0};
  std::atomic<uint64_t> peer_bytes_{0}, peer_corrupt_{0};
  LatencyHistogram latency_;  // of origin requests
  absl::Mutex gates_mu_;
  absl::flat_hash_map<const origin::Origin*, std::unique_ptr<OriginGate>> gates_
      ABSL_GUARDED_BY(gates_mu_);
  absl::Mutex seq_mu_;
  absl::flat_hash_map<std::string, SequentialState> seq_ ABSL_GUARDED_BY(seq_mu_);
  absl::Mutex seen_mu_;
  absl::flat_hash_map<std::string, std::string> seen_ ABSL_GUARDED_BY(seen_mu_);  // name -> key
  absl::Mutex verify_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<absl::Mutex>> verify_locks_
      ABSL_GUARDED_BY(verify_mu_);
  WorkerPool pool_;  // last: its threads stop before the state they use goes
};

Fetcher::Fetcher(ChunkStore& store, FetcherOptions options)
    : impl_(std::make_unique<Impl>(store, options)) {}
Fetcher::~Fetcher() = default;

absl::StatusOr<size_t> Fetcher::Read(const FetchTarget& t, uint64_t offset, absl::Span<char> out) {
  return impl_->Read(t, offset, out);
}

absl::StatusOr<size_t> Fetcher::ReadUnverified(const FetchTarget& t, uint64_t offset,
                                               absl::Span<char> out) {
  return impl_->Read(t, offset, out, /*verified=*/false);
}

absl::Status Fetcher::Prefetch(const FetchTarget& t, const Ranges& ranges,
                               const std::function<void(uint64_t, uint64_t)>& progress,
                               const std::function<bool()>& stop) {
  return impl_->Prefetch(t, ranges, progress, stop);
}

absl::StatusOr<bool> Fetcher::Ensure(const FetchTarget& t, uint64_t offset, uint64_t length) {
  return impl_->Ensure(t, offset, length);
}

FetcherStats Fetcher::Stats() const { return impl_->Stats(); }

}  // namespace strata::cache
