// Opening a chunk store: checking options, opening the index (the one
// ChunkIndex::Open) and the objects directory, and recovering what the index
// records, dropping records the data files do not back and files no record names.
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "base/logging.h"
#include "cache/chunk_store_impl.h"

namespace strata::cache::internal {

ChunkStoreImpl::ChunkStoreImpl(StoreOptions opts)
    : opts_(std::move(opts)), fs_(opts_.fs), memory_(opts_.memory_bytes) {
  objects_dir_ = opts_.dir + "/objects";
}

ChunkStoreImpl::~ChunkStoreImpl() { Flush(); }

absl::Status ChunkStoreImpl::Init() {
  if (opts_.chunk_size < kMinChunkSize || opts_.chunk_size > kMaxChunkSize ||
      opts_.chunk_size % kMinChunkSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "chunk size %u must be a multiple of 4096 between 4 KiB and 256 MiB", opts_.chunk_size));
  }
  if (!(opts_.low_watermark > 0 && opts_.low_watermark < opts_.high_watermark &&
        opts_.high_watermark <= 1.0)) {
    return absl::InvalidArgumentError("watermarks must satisfy 0 < low < high <= 1");
  }
  if (opts_.chunk_size >= IoBuffer::kHugePage && !IoBuffer::HugePagesOn()) {
    spdlog::warn(
        "transparent huge pages are off on this node: a chunk goes to the disk in several "
        "requests instead of one, and disk reads are slower (set "
        "/sys/kernel/mm/transparent_hugepage/enabled to madvise)");
  }
  absl::Status st = OpenDisk();
  if (!st.ok()) {
    if (!opts_.degrade_on_error) return st;
    spdlog::error("chunk store at {} cannot cache ({}); serving without caching", opts_.dir,
                  st.message());
    absl::MutexLock l(&mu_);
    health_ = st;
  }
  if (opts_.background_work) {
    evictor_ = std::thread([this] { EvictorLoop(); });
    verifier_ = std::thread([this] { VerifierLoop(); });
  }
  return absl::OkStatus();
}

absl::Status ChunkStoreImpl::OpenDisk() {
  if (auto st = fs_->MakeDirs(objects_dir_); !st.ok()) return st;
  auto idx = ChunkIndex::Open(opts_.dir + "/index", opts_.index_env);
  if (!idx.ok()) return idx.status();
  index_ = std::move(*idx);
  auto files = fs_->ListFiles(objects_dir_);
  if (!files.ok()) return files.status();
  absl::flat_hash_set<std::string> on_disk(files->begin(), files->end());

  absl::flat_hash_map<std::string, ObjectPtr> loaded;
  absl::flat_hash_map<std::string, std::vector<uint32_t>> bad_chunks;
  absl::flat_hash_set<std::string> referenced;
  auto stats = index_->Load(
      [&](const std::string& key, const ObjectRecord& rec) {
        auto o = std::make_shared<Object>();
        o->key = key;
        o->rec = rec;
        o->fs = fs_.get();
        o->chunks.resize((rec.size + rec.chunk_size - 1) / rec.chunk_size);
        referenced.insert(rec.file);
        loaded[key] = std::move(o);
      },
      [&](const std::string& key, uint32_t index, const ChunkRecord& rec) {
        Object& o = *loaded[key];
        if (index >= o.chunks.size() || rec.length != o.ChunkLength(index) ||
            !on_disk.contains(o.rec.file)) {
          bad_chunks[key].push_back(index);
          return;
        }
        Chunk& c = o.chunks[index];
        c.state = ChunkState::kPresent;
        c.checksum = rec.checksum;
        c.last_use_us = o.rec.last_use_us;
        o.bytes_present += rec.length;
      });
  if (!stats.ok()) return stats.status();
  ctr_.corrupt_index_records += stats->corrupt_records;
  for (auto& [key, idxs] : bad_chunks) {
    spdlog::error("cache: {} chunk records of {} do not match its data file {}; dropped",
                  idxs.size(), key, loaded[key]->rec.file);
    ctr_.corrupt_index_records += idxs.size();
    index_->DeleteChunks(key, idxs).IgnoreError();
  }
  int orphans = 0;
  for (const std::string& f : *files) {
    if (!referenced.contains(f)) {
      fs_->Unlink(objects_dir_ + "/" + f).IgnoreError();
      ++orphans;
    }
  }
  if (orphans > 0) spdlog::info("cache: removed {} data files no index record names", orphans);

  uint64_t used = 0;
  for (auto& [k, o] : loaded) used += o->bytes_present;
  uint64_t capacity = opts_.capacity_bytes;
  if (capacity == 0) {
    auto space = fs_->Space(opts_.dir);
    if (!space.ok()) return space.status();
    capacity = space->total_bytes / 10 * 8;
  }
  absl::MutexLock l(&mu_);
  objects_ = std::move(loaded);
  // As LeaseWhole(as_is) holds them; the evictor starts after this.
  for (const std::string& key : opts_.held_at_open) {
    auto it = objects_.find(key);
    if (it == objects_.end() || it->second->rec.size == 0) continue;
    ++it->second->readers;
    ++it->second->kernel_holds;
    open_holds_.push_back(it->second);
  }
  used_ = used;
  capacity_ = capacity;
  health_ok_ = true;
  if (used_ > HighLocked()) evict_kick_ = true;
  return absl::OkStatus();
}

}  // namespace strata::cache::internal

namespace strata::cache {

absl::StatusOr<std::unique_ptr<ChunkStore>> ChunkStore::Open(StoreOptions options) {
  if (options.dir.empty()) return absl::InvalidArgumentError("the cache directory is not set");
  if (!options.fs) options.fs = NewPosixStoreFs();
  if (options.clock == nullptr) options.clock = RealClock();
  auto store = std::make_unique<internal::ChunkStoreImpl>(std::move(options));
  if (auto st = store->Init(); !st.ok()) return st;
  return store;
}

}  // namespace strata::cache
