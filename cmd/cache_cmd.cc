// `strata cache stats|ls|verify|evict`: inspect and repair a node's chunk
// store. They open the store directly, so the node daemon must be stopped
// (RocksDB's lock says so if it is not).
#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/size.h"
#include "cmd/cache_stack.h"
#include "cmd/commands.h"

namespace strata::cmd {
namespace {

// The store alone, without its background work: the tools only look, or
// repair in the foreground.
absl::StatusOr<std::unique_ptr<cache::ChunkStore>> OpenForTool(const CacheFlags& flags) {
  auto options = flags.Parse();
  if (!options.ok()) return options.status();
  options->store.background_work = false;
  options->fetcher = std::nullopt;
  auto cache = OpenCacheStack(*options);
  if (!cache.ok()) return cache.status();
  return std::move(cache->store);
}

std::string Human(uint64_t b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = b;
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

void PrintStats(const cache::StoreStats& s) {
  std::printf("health:               %s\n", s.health.c_str());
  std::printf("capacity:             %s\n", Human(s.capacity_bytes).c_str());
  std::printf("used:                 %s (%.1f%%)\n", Human(s.used_bytes).c_str(),
              s.capacity_bytes ? 100.0 * s.used_bytes / s.capacity_bytes : 0.0);
  std::printf("objects:              %llu\n", static_cast<unsigned long long>(s.objects));
  std::printf("chunks present:       %llu\n", static_cast<unsigned long long>(s.chunks_present));
  std::printf("corrupt index records dropped at open: %llu\n",
              static_cast<unsigned long long>(s.corrupt_index_records));
}

}  // namespace

void AddCacheCommands(CLI::App& app, Runner& run) {
  CLI::App* cache = app.add_subcommand("cache", "Inspect and repair a node's chunk cache");
  cache->require_subcommand(1);
  auto flags = std::make_shared<CacheFlags>();
  auto add = [&](const char* name, const char* help) {
    CLI::App* c = cache->add_subcommand(name, help);
    AddCacheFlags(*c, *flags);
    return c;
  };

  add("stats", "Capacity, use and contents of the cache")->callback([flags, &run] {
    run = StatusRunner([flags]() -> absl::Status {
      auto store = OpenForTool(*flags);
      if (!store.ok()) return store.status();
      PrintStats((*store)->Stats());
      return absl::OkStatus();
    });
  });

  add("ls", "List cached objects")->callback([flags, &run] {
    run = StatusRunner([flags]() -> absl::Status {
      auto store = OpenForTool(*flags);
      if (!store.ok()) return store.status();
      std::printf("%-12s %-12s %-8s %s\n", "SIZE", "CACHED", "CHUNKS", "KEY (IDENTITY)");
      for (const auto& o : (*store)->List()) {
        std::printf("%-12s %-12s %u/%-6u %s (%s)\n", Human(o.size).c_str(),
                    Human(o.bytes_present).c_str(), o.chunks_present, o.chunks, o.key.c_str(),
                    o.identity.c_str());
      }
      return absl::OkStatus();
    });
  });

  // Bad chunks found (and dropped) are the command's answer, not its
  // failure: exit code 3, so that a script can tell them from an error.
  add("verify", "Read every cached chunk, check its checksum and drop bad ones")
      ->callback([flags, &run] {
        run = [flags]() -> absl::StatusOr<int> {
          auto store = OpenForTool(*flags);
          if (!store.ok()) return store.status();
          cache::VerifyReport r = (*store)->Verify();
          std::printf(
              "checked %llu chunks in %llu objects: %llu bad (dropped), %llu data files missing\n",
              static_cast<unsigned long long>(r.chunks_checked),
              static_cast<unsigned long long>(r.objects),
              static_cast<unsigned long long>(r.chunks_bad),
              static_cast<unsigned long long>(r.objects_missing_file));
          return r.chunks_bad == 0 ? 0 : 3;
        };
      });

  auto target = std::make_shared<std::string>();
  auto key = std::make_shared<std::string>();
  auto all = std::make_shared<bool>(false);
  CLI::App* ev = add("evict", "Evict cached data: down to a size, one object, or everything");
  auto* t = ev->add_option("--to", *target,
                           "Evict least recently used data until at most this much is cached");
  auto* k = ev->add_option("--key", *key, "Evict this object");
  auto* a = ev->add_flag("--all", *all, "Evict everything");
  t->excludes(k)->excludes(a);
  k->excludes(a);
  ev->callback([flags, target, key, all, &run] {
    run = StatusRunner([flags, target, key, all]() -> absl::Status {
      cache::EvictRequest req;
      if (*all) {
        req.mode = cache::EvictRequest::Mode::kAll;
      } else if (!key->empty()) {
        req.mode = cache::EvictRequest::Mode::kKey;
        req.key = *key;
      } else if (!target->empty()) {
        auto bytes = ParseSize(*target);
        if (!bytes.ok()) return UsageError(bytes.status());
        req.target_bytes = *bytes;
      } else {
        return UsageError("say what to evict: --to SIZE, --key KEY or --all");
      }
      auto store = OpenForTool(*flags);
      if (!store.ok()) return store.status();
      if (req.mode == cache::EvictRequest::Mode::kKey && !(*store)->Lookup(req.key)) {
        return absl::NotFoundError(absl::StrCat("no object ", req.key, " in the cache"));
      }
      cache::EvictReport r = (*store)->Evict(req);
      std::printf("evicted %llu objects and %llu chunks (%s)\n",
                  static_cast<unsigned long long>(r.objects),
                  static_cast<unsigned long long>(r.chunks), Human(r.bytes).c_str());
      return absl::OkStatus();
    });
  });
}

}  // namespace strata::cmd
