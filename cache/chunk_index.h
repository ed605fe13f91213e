// The chunk store's persistent index in RocksDB: one record per object and
// one per present chunk. Every record carries a format version and its own
// checksum, so a torn or corrupt record is recognised and dropped, not used.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
class Env;
}  // namespace rocksdb

namespace strata::cache {

struct ObjectRecord {
  uint64_t size = 0;
  uint32_t chunk_size = 0;
  int64_t last_use_us = 0;
  uint32_t flags = 0;    // kObjectDigestVerified
  std::string file;      // name of the object's data file under objects/
  std::string identity;  // where the bytes came from and which version
};

// The whole object was checked against its content digest after its chunks
// were written; cleared whenever a chunk is dropped.
inline constexpr uint32_t kObjectDigestVerified = 1;

struct ChunkRecord {
  uint64_t checksum = 0;  // xxh3-64 of the chunk's bytes
  uint32_t length = 0;
};

// What an origin last said about one of its objects, recorded under the
// object's name (origin URL and path): its version and the object key it is
// cached under.
struct NameRecord {
  std::string key;
  uint64_t size = 0;
  std::string version;
  int64_t mtime_ns = 0;
  std::string digest;
};

class ChunkIndex {
 public:
  // Opens (creating) the index in `dir`. A database RocksDB itself reports as
  // corrupt is moved aside and replaced by an empty one, which is logged; the
  // caller then finds no objects and discards their files. `env` is where
  // RocksDB does its I/O (null: the real one); tests pass one that injects
  // faults or loses unsynced data.
  static absl::StatusOr<std::unique_ptr<ChunkIndex>> Open(const std::string& dir,
                                                          rocksdb::Env* env = nullptr);
  ~ChunkIndex();

  struct LoadStats {
    uint64_t corrupt_records = 0;  // dropped: undecodable, or chunks of no object
    uint64_t stale_names = 0;      // dropped: name records of objects no longer cached
  };
  // Calls `on_object` for every object, then `on_chunk` for every chunk whose
  // object was seen. Corrupt records are deleted and counted, and so are
  // name records whose object is gone.
  absl::StatusOr<LoadStats> Load(
      const std::function<void(const std::string& key, const ObjectRecord&)>& on_object,
      const std::function<void(const std::string& key, uint32_t index, const ChunkRecord&)>&
          on_chunk);

  absl::Status PutObject(const std::string& key, const ObjectRecord& rec);
  absl::Status PutChunk(const std::string& key, uint32_t index, const ChunkRecord& rec);
  absl::Status DeleteChunks(const std::string& key, const std::vector<uint32_t>& indexes);
  // Deletes the object record and its chunk records [0, chunks) in one batch.
  absl::Status DeleteObject(const std::string& key, uint32_t chunks);
  // Writes many objects' last-use times in one batch.
  absl::Status PutObjects(const std::vector<std::pair<std::string, ObjectRecord>>& recs);

  absl::Status PutName(const std::string& name, const NameRecord& rec);
  // The record of `name`: nullopt when there is none, or when it is corrupt
  // (it is then deleted).
  absl::StatusOr<std::optional<NameRecord>> GetName(const std::string& name);

  // Raw access for fault-injection tests that damage records on purpose.
  rocksdb::DB* db_for_testing() { return db_.get(); }
  static std::string ObjectKeyForTesting(const std::string& key);
  static std::string ChunkKeyForTesting(const std::string& key, uint32_t index);
  static std::string NameKeyForTesting(const std::string& name);

 private:
  explicit ChunkIndex(std::unique_ptr<rocksdb::DB> db);
  absl::Status Recover();  // after a failed write (for example ENOSPC)
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace strata::cache
