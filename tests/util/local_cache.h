// A node's cache over a local origin, for tests of what sits on top of it:
// a file:// origin at DIR/origin, a chunk store (1 MiB chunks) at DIR/cache
// and its fetcher.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "origin/origin.h"

namespace strata::testing {

struct LocalCache {
  std::shared_ptr<origin::Origin> origin;
  std::unique_ptr<cache::ChunkStore> store;
  std::unique_ptr<cache::Fetcher> fetcher;
};

inline absl::StatusOr<LocalCache> OpenLocalCache(const std::string& dir) {
  std::filesystem::create_directories(dir + "/origin");
  auto o = origin::OpenOrigin("file://" + dir + "/origin", {});
  if (!o.ok()) return o.status();
  cache::StoreOptions so;
  so.dir = dir + "/cache";
  so.chunk_size = 1 << 20;
  auto store = cache::ChunkStore::Open(so);
  if (!store.ok()) return store.status();
  LocalCache c;
  c.origin = std::shared_ptr<origin::Origin>(std::move(*o));
  c.store = std::move(*store);
  c.fetcher = std::make_unique<cache::Fetcher>(*c.store);
  return c;
}

}  // namespace strata::testing
