// `strata bench ...`: the handles that bench/ scripts measure Strata through.
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/size.h"
#include "cmd/cache_stack.h"
#include "cmd/commands.h"

namespace strata::cmd {
namespace {

// Deterministic, incompressible bytes for chunk `index` of a bench object.
void FillPattern(uint32_t index, absl::Span<char> out) {
  uint64_t x = 0x9e3779b97f4a7c15ull * (index + 1);
  size_t i = 0;
  for (; i + 8 <= out.size(); i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(out.data() + i, &x, 8);
  }
  for (; i < out.size(); ++i) out[i] = static_cast<char>(x >> (i % 8));
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// The store alone, as `background_work` says, on the scratch directory of
// --cache-dir; `chunk_size` 0: the store's default.
absl::StatusOr<std::unique_ptr<cache::ChunkStore>> OpenBenchStore(const CacheFlags& flags,
                                                                  bool background_work,
                                                                  uint32_t chunk_size = 0) {
  auto options = flags.Parse();
  if (!options.ok()) return options.status();
  options->store.background_work = background_work;
  if (chunk_size) options->store.chunk_size = chunk_size;
  options->fetcher = std::nullopt;
  auto cache = OpenCacheStack(*options);
  if (!cache.ok()) return cache.status();
  return std::move(cache->store);
}

}  // namespace

void AddBenchCommands(CLI::App& app, Runner& run) {
  CLI::App* bench = app.add_subcommand("bench", "Measurement handles used by bench/ scripts");
  bench->require_subcommand(1);

  struct ReadOpts {
    CacheFlags cache;
    std::string size = "2GiB";
    std::string block = "1MiB";
    std::string key = "bench/store-read";
    bool populate = false;
    int passes = 1;
  };
  auto ro = std::make_shared<ReadOpts>();
  CLI::App* sr = bench->add_subcommand(
      "store-read", "Sequential reads of one object from the chunk store; prints MiB/s per pass");
  AddCacheFlags(*sr, ro->cache, {.dir = CacheFlagSpec::Dir::kRequired});
  sr->add_option("--size", ro->size, "Object size")->capture_default_str();
  sr->add_option("--block", ro->block, "Read size")->capture_default_str();
  sr->add_option("--key", ro->key, "Object key")->capture_default_str();
  sr->add_option("--passes", ro->passes, "Read passes")->capture_default_str();
  sr->add_flag("--populate", ro->populate, "Write the object first, then print its data file");
  sr->callback([ro, &run] {
    run = StatusRunner([ro]() -> absl::Status {
      auto size = ParseSize(ro->size);
      auto block = ParseSize(ro->block);
      if (!size.ok() || !block.ok() || *block == 0) return UsageError("bad --size or --block");
      // As a node runs it: verify-ahead on.
      auto store_or = OpenBenchStore(ro->cache, /*background_work=*/true);
      if (!store_or.ok()) return store_or.status();
      auto& store = *store_or;
      if (auto st = store->Register({ro->key, *size, "bench", 0}); !st.ok()) return st;
      auto info = *store->Lookup(ro->key);
      if (ro->populate) {
        auto t0 = std::chrono::steady_clock::now();
        std::vector<char> buf(info.chunk_size);
        for (uint32_t i = 0; i < info.chunks; ++i) {
          uint32_t len = static_cast<uint32_t>(
              std::min<uint64_t>(info.chunk_size, *size - uint64_t{i} * info.chunk_size));
          FillPattern(i, absl::MakeSpan(buf.data(), len));
          auto r = store->WriteChunk(ro->key, i, absl::MakeConstSpan(buf.data(), len));
          if (!r.ok() || !r->cached) {
            return absl::Status(r.ok() ? absl::StatusCode::kInternal : r.status().code(),
                                absl::StrCat("populate failed at chunk ", i, ": ",
                                             r.ok() ? "not cached" : r.status().message()));
          }
        }
        std::printf("populated %s in %.2fs\n", ro->key.c_str(), Seconds(t0));
      }
      std::vector<char> buf(*block);
      for (int p = 1; p <= ro->passes; ++p) {
        auto t0 = std::chrono::steady_clock::now();
        uint64_t total = 0;
        for (uint64_t off = 0; off < *size; off += *block) {
          auto r = store->Read(ro->key, off, absl::MakeSpan(buf));
          if (!r.ok() || !r->missing.empty()) {
            return absl::Status(
                r.ok() ? absl::StatusCode::kInternal : r.status().code(),
                absl::StrCat("read at ", off, " failed: ",
                             r.ok() ? absl::StrFormat("%u chunks missing", r->missing.size())
                                    : std::string(r.status().message())));
          }
          total += r->bytes;
        }
        double s = Seconds(t0);
        std::printf("pass=%d bytes=%llu seconds=%.3f mibps=%.1f\n", p,
                    static_cast<unsigned long long>(total), s, total / 1048576.0 / s);
      }
      return absl::OkStatus();
    });
  });

  struct LookupOpts {
    CacheFlags cache;
    int objects = 2000;
    double seconds = 2;
    int threads = 2;
  };
  auto lo = std::make_shared<LookupOpts>();
  CLI::App* il = bench->add_subcommand(
      "index-lookups", "Chunk index lookups per second on the hit path (lease of a cached range)");
  AddCacheFlags(*il, lo->cache,
                {.dir = CacheFlagSpec::Dir::kRequired, .dir_note = "(a scratch one)"});
  il->add_option("--objects", lo->objects, "Objects to spread lookups over")->capture_default_str();
  il->add_option("--seconds", lo->seconds, "How long to measure")->capture_default_str();
  il->add_option("--threads", lo->threads, "Looking-up threads")->capture_default_str();
  il->callback([lo, &run] {
    run = StatusRunner([lo]() -> absl::Status {
      constexpr uint32_t kChunk = 64 << 10;
      auto store_or = OpenBenchStore(lo->cache, /*background_work=*/false, kChunk);
      if (!store_or.ok()) return store_or.status();
      auto& store = *store_or;
      std::vector<char> buf(kChunk);
      std::vector<std::string> keys;
      for (int i = 0; i < lo->objects; ++i) {
        keys.push_back(absl::StrFormat("bench/lookup/%06d", i));
        FillPattern(i, absl::MakeSpan(buf));
        if (auto st = store->Register({keys.back(), 4 * kChunk, "bench", 0}); !st.ok()) return st;
        for (uint32_t c = 0; c < 4; ++c) {
          if (auto w = store->WriteChunk(keys.back(), c, buf); !w.ok()) return w.status();
        }
      }
      // Warm-up: the first lease of a chunk after a start verifies it.
      for (const std::string& key : keys) {
        if (auto lease = store->Lease(key, 0, 4 * kChunk); !lease.ok()) return lease.status();
      }
      std::atomic<uint64_t> total{0};
      std::atomic<bool> failed{false};
      auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(lo->seconds);
      std::vector<std::thread> ts;
      for (int t = 0; t < lo->threads; ++t) {
        ts.emplace_back([&, t] {
          std::mt19937_64 rng(t);
          uint64_t n = 0;
          while (std::chrono::steady_clock::now() < deadline) {
            for (int k = 0; k < 256; ++k, ++n) {
              const std::string& key = keys[rng() % keys.size()];
              auto lease = store->Lease(key, (rng() % (4 * kChunk / 4096)) * 4096, 4096);
              if (!lease.ok()) failed = true;
            }
          }
          total += n;
        });
      }
      for (auto& th : ts) th.join();
      if (failed) return absl::InternalError("a lookup failed");
      std::printf("lookups=%llu seconds=%.2f per_second=%.0f\n",
                  static_cast<unsigned long long>(total.load()), lo->seconds, total / lo->seconds);
      return absl::OkStatus();
    });
  });
}

}  // namespace strata::cmd
