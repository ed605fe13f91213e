// One registration of the cache flags and one opener of the cache stack,
// for every subcommand that has a cache.
#include "cmd/cache_stack.h"

#include <filesystem>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "base/size.h"
#include "cmd/commands.h"

namespace strata::cmd {
namespace {

// A size flag's value, or a usage error that names the flag.
absl::StatusOr<uint64_t> SizeFlag(const char* name, const std::string& value) {
  auto bytes = ParseSize(value);
  if (!bytes.ok()) {
    return UsageError(
        absl::Status(bytes.status().code(), absl::StrCat(name, ": ", bytes.status().message())));
  }
  return bytes;
}

}  // namespace

void AddCacheFlags(CLI::App& command, CacheFlags& flags, const CacheFlagSpec& spec) {
  flags.spec = spec;
  std::string dir_help = "Chunk cache directory";
  if (spec.dir == CacheFlagSpec::Dir::kUnderStateDir) {
    absl::StrAppend(&dir_help, " (default: STATE_DIR/cache)");
  }
  if (spec.dir_note) absl::StrAppend(&dir_help, " ", spec.dir_note);
  CLI::Option* dir = command.add_option("--cache-dir", flags.dir, dir_help);
  switch (spec.dir) {
    case CacheFlagSpec::Dir::kStateDir:
      flags.dir = DefaultStateDir() + "/cache";
      dir->capture_default_str();
      break;
    case CacheFlagSpec::Dir::kUnderStateDir:
      break;
    case CacheFlagSpec::Dir::kRequired:
      dir->required();
      break;
  }
  if (spec.capacity) {
    command
        .add_option("--cache-capacity", flags.capacity,
                    "Byte budget of the cache, e.g. 100GiB (0: 80% of its file system)")
        ->capture_default_str();
  }
  if (spec.memory) {
    command
        .add_option("--cache-memory", flags.memory,
                    "Recently filled (or peer-served) chunks kept in memory for the readers right "
                    "behind (0: none)")
        ->capture_default_str();
  }
  switch (spec.chunk_size) {
    case CacheFlagSpec::ChunkSize::kNone:
      break;
    case CacheFlagSpec::ChunkSize::kStore:
      command.add_option("--chunk-size", flags.chunk_size, "Default chunk size")
          ->capture_default_str();
      break;
    case CacheFlagSpec::ChunkSize::kVolume:
      command.add_option("--chunk-size", flags.chunk_size, "Chunk size of this volume's objects")
          ->capture_default_str();
      break;
  }
}

absl::StatusOr<CacheStackOptions> CacheFlags::Parse() const {
  CacheStackOptions o;
  o.store.dir = dir;
  // Flags a subcommand does not take leave the store's defaults alone.
  if (spec.capacity) {
    auto bytes = SizeFlag("--cache-capacity", capacity);
    if (!bytes.ok()) return bytes.status();
    o.store.capacity_bytes = *bytes;
  }
  if (spec.memory) {
    auto bytes = SizeFlag("--cache-memory", memory);
    if (!bytes.ok()) return bytes.status();
    o.store.memory_bytes = *bytes;
  }
  if (spec.chunk_size != CacheFlagSpec::ChunkSize::kNone) {
    auto bytes = SizeFlag("--chunk-size", chunk_size);
    if (!bytes.ok()) return bytes.status();
    o.chunk_size = static_cast<uint32_t>(*bytes);
    if (spec.chunk_size == CacheFlagSpec::ChunkSize::kStore) o.store.chunk_size = o.chunk_size;
  }
  return o;
}

absl::StatusOr<CacheStack> OpenCacheStack(const CacheStackOptions& options) {
  CacheStack s;
  auto store = cache::ChunkStore::Open(options.store);
  if (!store.ok()) {
    return absl::Status(store.status().code(),
                        absl::StrCat("cannot open the chunk store: ", store.status().message()));
  }
  s.store = std::move(*store);
  if (options.staging) {
    s.staging_dir = options.store.dir + "/staging";
    if (std::error_code ec; !std::filesystem::create_directories(s.staging_dir, ec) && ec) {
      return absl::InternalError(
          absl::StrCat("cannot create the staging directory ", s.staging_dir, ": ", ec.message()));
    }
  }
  if (options.fetcher) s.fetcher = std::make_unique<cache::Fetcher>(*s.store, *options.fetcher);
  return s;
}

absl::StatusOr<CacheStack> OpenDaemonCacheStack(CacheStackOptions options) {
  options.store.degrade_on_error = true;
  options.staging = true;
  return OpenCacheStack(options);
}

}  // namespace strata::cmd
