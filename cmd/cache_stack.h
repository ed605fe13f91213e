// The cache stack a subcommand works on: the chunk store, a fetcher on it and
// the staging directory of writes bound for object stores. Every subcommand
// with a cache registers the same --cache-* flags (AddCacheFlags) and opens
// the stack through OpenCacheStack, so the two never drift apart.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"

namespace strata::cmd {

// Which cache flags a subcommand takes and where its role makes one read
// differently; names, defaults and help are otherwise the same everywhere
// (README, deploy/ and the bench scripts name them).
struct CacheFlagSpec {
  enum class Dir {
    kStateDir,       // default DefaultStateDir()/cache, shown in --help
    kUnderStateDir,  // default STATE_DIR/cache of the node's own --state-dir,
                     // which parsing cannot know: the flag stays empty
    kRequired,       // no default: the benchmarks want a scratch directory
  };
  Dir dir = Dir::kStateDir;
  const char* dir_note = nullptr;  // appended to --cache-dir's help
  bool capacity = false;           // --cache-capacity
  bool memory = false;             // --cache-memory
  enum class ChunkSize {
    kNone,
    kStore,   // the store's default chunk size (node: volumes that name none)
    kVolume,  // the one volume's chunk size (mount); the store keeps its
              // own default, so a bad value fails reads, not the mount
  };
  ChunkSize chunk_size = ChunkSize::kNone;
};

// The pieces to open: the store's options (the flags' values, then what the
// subcommand's use adds: degrade or fail, background work) and which others.
struct CacheStackOptions {
  cache::StoreOptions store;
  // nullopt: the store alone (the cache tools, the benchmarks).
  std::optional<cache::FetcherOptions> fetcher = cache::FetcherOptions{};
  // Create STORE_DIR/staging, where the daemons' volumes stage writes bound
  // for object stores until their upload.
  bool staging = false;
  // --chunk-size as given (the store's too with ChunkSize::kStore).
  uint32_t chunk_size = cache::kDefaultChunkSize;
};

// The cache flags' values as typed; AddCacheFlags binds them to the
// options of a subcommand (several subcommands may share one CacheFlags).
struct CacheFlags {
  std::string dir;
  std::string capacity = "0";
  std::string memory = "64MiB";
  std::string chunk_size = "4MiB";
  CacheFlagSpec spec;  // as registered

  // The flags as options. A size that is no size is a usage error (see
  // UsageError): it is reported before anything is opened.
  absl::StatusOr<CacheStackOptions> Parse() const;
};

void AddCacheFlags(CLI::App& command, CacheFlags& flags, const CacheFlagSpec& spec = {});

// The pieces, owned together. Members are destroyed in reverse: the fetcher,
// which holds the store, goes first.
struct CacheStack {
  std::unique_ptr<cache::ChunkStore> store;
  std::unique_ptr<cache::Fetcher> fetcher;  // null without options.fetcher
  std::string staging_dir;                  // empty without options.staging
};

// Opens the store, the fetcher and the staging directory as `options` say.
// The error says which piece could not be opened; its code is the store's
// (a store that another process holds is FailedPrecondition).
absl::StatusOr<CacheStack> OpenCacheStack(const CacheStackOptions& options);

// The stack of a daemon that serves volumes (mount, node): it serves
// uncached rather than not at all when the store cannot be used, and stages
// writes bound for object stores.
absl::StatusOr<CacheStack> OpenDaemonCacheStack(CacheStackOptions options);

}  // namespace strata::cmd
