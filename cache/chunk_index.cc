// Record layout. Keys: "o\0<object key>", "c\0<object key>\0<index, 4 bytes
// big endian>", so an object's chunks sort together after its own record, and
// "n\0<origin object name>" for what an origin last said about an object.
// Values: a version byte, fixed-width little-endian fields, length-prefixed
// strings, and a trailing 4-byte xxh3 of everything before it.
#include "cache/chunk_index.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>
#include <xxhash.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <optional>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/rocksdb_status.h"

namespace strata::cache {
namespace {

constexpr uint8_t kVersion = 1;

void PutFixed(std::string& s, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) s.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutString(std::string& s, const std::string& v) {
  PutFixed(s, v.size(), 4);
  s += v;
}

class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  bool Fixed(uint64_t* v, int bytes) {
    if (s_.size() < static_cast<size_t>(bytes)) return false;
    *v = 0;
    for (int i = 0; i < bytes; ++i)
      *v |= static_cast<uint64_t>(static_cast<uint8_t>(s_[i])) << (8 * i);
    s_.remove_prefix(bytes);
    return true;
  }
  bool String(std::string* v) {
    uint64_t n;
    if (!Fixed(&n, 4) || s_.size() < n) return false;
    v->assign(s_.substr(0, n));
    s_.remove_prefix(n);
    return true;
  }
  bool Done() const { return s_.empty(); }

 private:
  std::string_view s_;
};

void Seal(std::string& v) {
  PutFixed(v, static_cast<uint32_t>(XXH3_64bits(v.data(), v.size())), 4);
}

// Returns the payload after the version byte if the trailer matches.
std::optional<std::string_view> Unseal(std::string_view v) {
  if (v.size() < 5) return std::nullopt;
  std::string_view body = v.substr(0, v.size() - 4);
  uint64_t want = 0;
  Reader(v.substr(v.size() - 4)).Fixed(&want, 4);
  if (static_cast<uint32_t>(XXH3_64bits(body.data(), body.size())) != want) return std::nullopt;
  if (static_cast<uint8_t>(body[0]) != kVersion) return std::nullopt;
  return body.substr(1);
}

std::string EncodeObject(const ObjectRecord& r) {
  std::string v(1, static_cast<char>(kVersion));
  PutFixed(v, r.size, 8);
  PutFixed(v, r.chunk_size, 4);
  PutFixed(v, static_cast<uint64_t>(r.last_use_us), 8);
  PutFixed(v, r.flags, 4);
  PutString(v, r.file);
  PutString(v, r.identity);
  Seal(v);
  return v;
}

std::optional<ObjectRecord> DecodeObject(std::string_view v) {
  auto body = Unseal(v);
  if (!body) return std::nullopt;
  Reader rd(*body);
  ObjectRecord r;
  uint64_t cs, lu, flags;
  if (!rd.Fixed(&r.size, 8) || !rd.Fixed(&cs, 4) || !rd.Fixed(&lu, 8) || !rd.Fixed(&flags, 4) ||
      !rd.String(&r.file) || !rd.String(&r.identity) || !rd.Done() || cs == 0 || r.file.empty()) {
    return std::nullopt;
  }
  r.chunk_size = static_cast<uint32_t>(cs);
  r.last_use_us = static_cast<int64_t>(lu);
  r.flags = static_cast<uint32_t>(flags);
  return r;
}

std::string EncodeChunk(const ChunkRecord& r) {
  std::string v(1, static_cast<char>(kVersion));
  PutFixed(v, r.checksum, 8);
  PutFixed(v, r.length, 4);
  Seal(v);
  return v;
}

std::optional<ChunkRecord> DecodeChunk(std::string_view v) {
  auto body = Unseal(v);
  if (!body) return std::nullopt;
  Reader rd(*body);
  ChunkRecord r;
  uint64_t len;
  if (!rd.Fixed(&r.checksum, 8) || !rd.Fixed(&len, 4) || !rd.Done() || len == 0)
    return std::nullopt;
  r.length = static_cast<uint32_t>(len);
  return r;
}

std::string EncodeName(const NameRecord& r) {
  std::string v(1, static_cast<char>(kVersion));
  PutString(v, r.key);
  PutFixed(v, r.size, 8);
  PutString(v, r.version);
  PutFixed(v, static_cast<uint64_t>(r.mtime_ns), 8);
  PutString(v, r.digest);
  Seal(v);
  return v;
}

std::optional<NameRecord> DecodeName(std::string_view v) {
  auto body = Unseal(v);
  if (!body) return std::nullopt;
  Reader rd(*body);
  NameRecord r;
  uint64_t mtime;
  if (!rd.String(&r.key) || !rd.Fixed(&r.size, 8) || !rd.String(&r.version) ||
      !rd.Fixed(&mtime, 8) || !rd.String(&r.digest) || !rd.Done() || r.key.empty()) {
    return std::nullopt;
  }
  r.mtime_ns = static_cast<int64_t>(mtime);
  return r;
}

std::string ObjectKey(const std::string& key) { return std::string("o\0", 2) + key; }

std::string NameKey(const std::string& name) { return std::string("n\0", 2) + name; }

std::string ChunkPrefix(const std::string& key) { return std::string("c\0", 2) + key + '\0'; }

std::string ChunkKey(const std::string& key, uint32_t index) {
  std::string k = ChunkPrefix(key);
  for (int i = 3; i >= 0; --i) k.push_back(static_cast<char>((index >> (8 * i)) & 0xff));
  return k;
}

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return RocksStatus(s, absl::StrCat("cache index: ", what));
}

rocksdb::WriteOptions WriteOpts() {
  // No sync: a record that is lost with the page cache at power loss only
  // turns a present chunk into a miss; torn data is caught by checksums.
  return rocksdb::WriteOptions();
}

}  // namespace

std::string ChunkIndex::ObjectKeyForTesting(const std::string& key) { return ObjectKey(key); }
std::string ChunkIndex::ChunkKeyForTesting(const std::string& key, uint32_t index) {
  return ChunkKey(key, index);
}
std::string ChunkIndex::NameKeyForTesting(const std::string& name) { return NameKey(name); }

ChunkIndex::ChunkIndex(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
ChunkIndex::~ChunkIndex() = default;

absl::StatusOr<std::unique_ptr<ChunkIndex>> ChunkIndex::Open(const std::string& dir,
                                                             rocksdb::Env* env) {
  rocksdb::Options opts;
  if (env != nullptr) opts.env = env;
  opts.create_if_missing = true;
  opts.paranoid_checks = true;
  opts.max_open_files = 256;
  opts.keep_log_file_num = 2;
  opts.max_log_file_size = 4 << 20;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(opts, dir, &raw);
  if (s.IsCorruption()) {
    std::string aside = absl::StrCat(dir, ".corrupt-",
                                     std::chrono::duration_cast<std::chrono::seconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
    spdlog::error("cache index {} is corrupt ({}); moved to {} and starting empty", dir,
                  s.ToString(), aside);
    std::error_code ec;
    std::filesystem::rename(dir, aside, ec);
    if (ec)
      return absl::DataLossError(absl::StrCat(
          "cache index ", dir, " is corrupt and cannot be moved aside: ", ec.message()));
    s = rocksdb::DB::Open(opts, dir, &raw);
  }
  if (!s.ok()) {
    if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cache index ", dir, " is in use by another strata process: ", s.ToString()));
    }
    return FromRocks(s, absl::StrCat("open ", dir));
  }
  return std::unique_ptr<ChunkIndex>(new ChunkIndex(std::unique_ptr<rocksdb::DB>(raw)));
}

absl::StatusOr<ChunkIndex::LoadStats> ChunkIndex::Load(
    const std::function<void(const std::string&, const ObjectRecord&)>& on_object,
    const std::function<void(const std::string&, uint32_t, const ChunkRecord&)>& on_chunk) {
  LoadStats stats;
  rocksdb::WriteBatch drop;
  std::unordered_set<std::string> objects;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  const std::string oprefix("o\0", 2), cprefix("c\0", 2);
  for (it->Seek(oprefix); it->Valid() && it->key().starts_with(oprefix); it->Next()) {
    std::string key = it->key().ToString().substr(2);
    auto rec = DecodeObject(it->value().ToStringView());
    if (!rec) {
      spdlog::error("cache index: dropping corrupt object record for {}", key);
      drop.Delete(it->key());
      ++stats.corrupt_records;
      continue;
    }
    objects.insert(key);
    on_object(key, *rec);
  }
  for (it->Seek(cprefix); it->Valid() && it->key().starts_with(cprefix); it->Next()) {
    std::string_view k = it->key().ToStringView().substr(2);
    bool ok = k.size() > 5 && k[k.size() - 5] == '\0';
    std::string key = ok ? std::string(k.substr(0, k.size() - 5)) : std::string();
    uint32_t index = 0;
    if (ok) {
      for (int i = 0; i < 4; ++i) index = (index << 8) | static_cast<uint8_t>(k[k.size() - 4 + i]);
    }
    auto rec = ok ? DecodeChunk(it->value().ToStringView()) : std::nullopt;
    if (!rec || !objects.contains(key)) {
      spdlog::warn("cache index: dropping {} chunk record {} of {}", rec ? "orphaned" : "corrupt",
                   index, key);
      drop.Delete(it->key());
      ++stats.corrupt_records;
      continue;
    }
    on_chunk(key, index, *rec);
  }
  // A name whose object was evicted or dropped names nothing cached: its
  // record goes, so that records of names stay bounded by the objects.
  const std::string nprefix("n\0", 2);
  for (it->Seek(nprefix); it->Valid() && it->key().starts_with(nprefix); it->Next()) {
    auto rec = DecodeName(it->value().ToStringView());
    if (rec && objects.contains(rec->key)) continue;
    if (rec) {
      ++stats.stale_names;
    } else {
      spdlog::warn("cache index: dropping corrupt name record of {}",
                   it->key().ToStringView().substr(2));
      ++stats.corrupt_records;
    }
    drop.Delete(it->key());
  }
  if (!it->status().ok()) return FromRocks(it->status(), "scan");
  if (drop.Count() > 0) {
    if (auto st = FromRocks(db_->Write(WriteOpts(), &drop), "drop corrupt records"); !st.ok()) {
      spdlog::warn("{}", st.message());
    }
  }
  return stats;
}

absl::Status ChunkIndex::Recover() {
  rocksdb::Status s = db_->Resume();
  return FromRocks(s, "resume after error");
}

namespace {
absl::Status WriteWithRecovery(rocksdb::DB* db, rocksdb::WriteBatch* b, const std::string& what) {
  rocksdb::Status s = db->Write(WriteOpts(), b);
  if (!s.ok()) {
    // A failed write (ENOSPC, EIO) puts RocksDB in a read-only error state;
    // try to leave it so the next write can succeed once space is back.
    db->Resume();
  }
  return FromRocks(s, what);
}
}  // namespace

absl::Status ChunkIndex::PutObject(const std::string& key, const ObjectRecord& rec) {
  rocksdb::WriteBatch b;
  b.Put(ObjectKey(key), EncodeObject(rec));
  return WriteWithRecovery(db_.get(), &b, "put object");
}

absl::Status ChunkIndex::PutObjects(const std::vector<std::pair<std::string, ObjectRecord>>& recs) {
  rocksdb::WriteBatch b;
  for (const auto& [k, r] : recs) b.Put(ObjectKey(k), EncodeObject(r));
  return WriteWithRecovery(db_.get(), &b, "put objects");
}

absl::Status ChunkIndex::PutName(const std::string& name, const NameRecord& rec) {
  rocksdb::WriteBatch b;
  b.Put(NameKey(name), EncodeName(rec));
  return WriteWithRecovery(db_.get(), &b, "put name");
}

absl::StatusOr<std::optional<NameRecord>> ChunkIndex::GetName(const std::string& name) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), NameKey(name), &v);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return FromRocks(s, "get name");
  auto rec = DecodeName(v);
  if (!rec) {
    spdlog::warn("cache index: dropping corrupt name record of {}", name);
    rocksdb::WriteBatch b;
    b.Delete(NameKey(name));
    WriteWithRecovery(db_.get(), &b, "drop corrupt name").IgnoreError();
  }
  return rec;
}

absl::Status ChunkIndex::PutChunk(const std::string& key, uint32_t index, const ChunkRecord& rec) {
  rocksdb::WriteBatch b;
  b.Put(ChunkKey(key, index), EncodeChunk(rec));
  return WriteWithRecovery(db_.get(), &b, "put chunk");
}

absl::Status ChunkIndex::DeleteChunks(const std::string& key,
                                      const std::vector<uint32_t>& indexes) {
  rocksdb::WriteBatch b;
  for (uint32_t i : indexes) b.Delete(ChunkKey(key, i));
  return WriteWithRecovery(db_.get(), &b, "delete chunks");
}

absl::Status ChunkIndex::DeleteObject(const std::string& key, uint32_t chunks) {
  // Point deletes, not DeleteRange: range tombstones cost every later read
  // of the range, and an object has at most a few ten thousand chunks.
  rocksdb::WriteBatch b;
  b.Delete(ObjectKey(key));
  for (uint32_t i = 0; i < chunks; ++i) b.Delete(ChunkKey(key, i));
  return WriteWithRecovery(db_.get(), &b, "delete object");
}

}  // namespace strata::cache
