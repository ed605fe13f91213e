// `strata bench ...`: the handles that bench/ scripts measure Strata through.
#include <chrono>
#include <cstdio>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "base/logging.h"
#include "cache/chunk_store.h"
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

}  // namespace

void AddBenchCommands(CLI::App& app, Runner& run) {
  CLI::App* bench = app.add_subcommand("bench", "Measurement handles used by bench/ scripts");
  bench->require_subcommand(1);

  struct ReadOpts {
    std::string dir;
    std::string size = "2GiB";
    std::string block = "1MiB";
    std::string key = "bench/store-read";
    bool populate = false;
    int passes = 1;
  };
  auto ro = std::make_shared<ReadOpts>();
  CLI::App* sr = bench->add_subcommand(
      "store-read", "Sequential reads of one object from the chunk store; prints MiB/s per pass");
  sr->add_option("--cache-dir", ro->dir, "Chunk cache directory")->required();
  sr->add_option("--size", ro->size, "Object size")->capture_default_str();
  sr->add_option("--block", ro->block, "Read size")->capture_default_str();
  sr->add_option("--key", ro->key, "Object key")->capture_default_str();
  sr->add_option("--passes", ro->passes, "Read passes")->capture_default_str();
  sr->add_flag("--populate", ro->populate, "Write the object first, then print its data file");
  sr->callback([ro, &run] {
    run = [ro]() -> int {
      auto size = ParseSize(ro->size);
      auto block = ParseSize(ro->block);
      if (!size.ok() || !block.ok() || *block == 0) {
        spdlog::error("bad --size or --block");
        return 2;
      }
      cache::StoreOptions so;
      so.dir = ro->dir;
      so.background_work = true;  // as a node runs it: verify-ahead on
      auto store_or = cache::ChunkStore::Open(so);
      if (!store_or.ok()) {
        spdlog::error("{}", store_or.status().message());
        return 1;
      }
      auto& store = *store_or;
      if (auto st = store->Register({ro->key, *size, "bench", 0}); !st.ok()) {
        spdlog::error("{}", st.message());
        return 1;
      }
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
            spdlog::error("populate failed at chunk {}: {}", i,
                          r.ok() ? "not cached" : r.status().message());
            return 1;
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
            spdlog::error("read at {} failed: {}", off,
                          r.ok() ? absl::StrFormat("%u chunks missing", r->missing.size())
                                 : std::string(r.status().message()));
            return 1;
          }
          total += r->bytes;
        }
        double s = Seconds(t0);
        std::printf("pass=%d bytes=%llu seconds=%.3f mibps=%.1f\n", p,
                    static_cast<unsigned long long>(total), s, total / 1048576.0 / s);
      }
      return 0;
    };
  });

  struct LookupOpts {
    std::string dir;
    int objects = 2000;
    double seconds = 2;
    int threads = 2;
  };
  auto lo = std::make_shared<LookupOpts>();
  CLI::App* il = bench->add_subcommand(
      "index-lookups", "Chunk index lookups per second on the hit path (lease of a cached range)");
  il->add_option("--cache-dir", lo->dir, "Chunk cache directory (a scratch one)")->required();
  il->add_option("--objects", lo->objects, "Objects to spread lookups over")->capture_default_str();
  il->add_option("--seconds", lo->seconds, "How long to measure")->capture_default_str();
  il->add_option("--threads", lo->threads, "Looking-up threads")->capture_default_str();
  il->callback([lo, &run] {
    run = [lo]() -> int {
      constexpr uint32_t kChunk = 64 << 10;
      cache::StoreOptions so;
      so.dir = lo->dir;
      so.chunk_size = kChunk;
      so.background_work = false;
      auto store_or = cache::ChunkStore::Open(so);
      if (!store_or.ok()) {
        spdlog::error("{}", store_or.status().message());
        return 1;
      }
      auto& store = *store_or;
      std::vector<char> buf(kChunk);
      std::vector<std::string> keys;
      for (int i = 0; i < lo->objects; ++i) {
        keys.push_back(absl::StrFormat("bench/lookup/%06d", i));
        FillPattern(i, absl::MakeSpan(buf));
        if (!store->Register({keys.back(), 4 * kChunk, "bench", 0}).ok()) return 1;
        for (uint32_t c = 0; c < 4; ++c) {
          if (!store->WriteChunk(keys.back(), c, buf).ok()) return 1;
        }
      }
      // Warm-up: the first lease of a chunk after a start verifies it.
      for (const std::string& key : keys) {
        if (!store->Lease(key, 0, 4 * kChunk).ok()) return 1;
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
      if (failed) {
        spdlog::error("a lookup failed");
        return 1;
      }
      std::printf("lookups=%llu seconds=%.2f per_second=%.0f\n",
                  static_cast<unsigned long long>(total.load()), lo->seconds, total / lo->seconds);
      return 0;
    };
  });
}

}  // namespace strata::cmd
