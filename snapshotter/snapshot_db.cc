// SnapshotDb over RocksDB. Keys:
//   s/NAME            a snapshot's record (JSON)
//   c/PARENT\0CHILD   PARENT has CHILD (names hold no NUL: checked above)
//   next_id           the last id handed out
//   i/DIGEST          a layer's index (layer_index.h's encoding)
#include "snapshotter/snapshot_db.h"

#include <rocksdb/db.h>
#include <rocksdb/write_batch.h>

#include <filesystem>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/rocksdb_status.h"
#include "nlohmann/json.hpp"

namespace strata::snapshotter {
namespace {

constexpr char kNextId[] = "next_id";

std::string RecordKey(const std::string& name) { return "s/" + name; }
std::string ChildKey(const std::string& parent, const std::string& child) {
  return absl::StrCat("c/", parent, std::string(1, '\0'), child);
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

std::string Encode(const SnapshotInfo& s) {
  nlohmann::json j = {{"parent", s.parent},
                      {"kind", static_cast<int>(s.kind)},
                      {"id", s.id},
                      {"created", absl::ToUnixNanos(s.created)},
                      {"updated", absl::ToUnixNanos(s.updated)},
                      {"labels", s.labels},
                      {"size", s.size},
                      {"inodes", s.inodes}};
  if (!s.remote_digest.empty()) {
    j["remote_origin"] = s.remote_origin;
    j["remote_digest"] = s.remote_digest;
    j["remote_size"] = s.remote_size;
    if (!s.remote_toc.empty()) j["remote_toc"] = s.remote_toc;
    j["fuse_init"] = absl::Base64Escape(s.fuse_init);
  }
  return j.dump();
}

absl::StatusOr<SnapshotInfo> Decode(const std::string& name, const std::string& value) {
  nlohmann::json j = nlohmann::json::parse(value, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object() || !j.contains("kind") || !j.contains("id")) {
    return absl::DataLossError(absl::StrCat("the record of snapshot ", name, " does not parse"));
  }
  SnapshotInfo s;
  s.name = name;
  s.parent = j.value("parent", "");
  int kind = j.value("kind", 0);
  if (kind < 1 || kind > 3) {
    return absl::DataLossError(absl::StrCat("snapshot ", name, " has unknown kind ", kind));
  }
  s.kind = static_cast<Kind>(kind);
  s.id = j.value("id", uint64_t{0});
  s.created = absl::FromUnixNanos(j.value("created", int64_t{0}));
  s.updated = absl::FromUnixNanos(j.value("updated", int64_t{0}));
  if (j.contains("labels") && j["labels"].is_object()) {
    for (const auto& [k, v] : j["labels"].items()) {
      if (v.is_string()) s.labels[k] = v.get<std::string>();
    }
  }
  s.size = j.value("size", int64_t{-1});
  s.inodes = j.value("inodes", int64_t{-1});
  s.remote_origin = j.value("remote_origin", "");
  s.remote_digest = j.value("remote_digest", "");
  s.remote_size = j.value("remote_size", uint64_t{0});
  s.remote_toc = j.value("remote_toc", "");
  absl::Base64Unescape(j.value("fuse_init", ""), &s.fuse_init);
  return s;
}

}  // namespace

SnapshotDb::SnapshotDb(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
SnapshotDb::~SnapshotDb() = default;

absl::StatusOr<std::unique_ptr<SnapshotDb>> SnapshotDb::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  auto db = OpenRecordDb(dir, "the snapshot database");
  if (!db.ok()) return db.status();
  return std::unique_ptr<SnapshotDb>(new SnapshotDb(std::move(*db)));
}

absl::StatusOr<std::optional<SnapshotInfo>> SnapshotDb::Get(const std::string& name) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), RecordKey(name), &v);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return RocksStatus(s, "reading a snapshot record");
  auto info = Decode(name, v);
  if (!info.ok()) return info.status();
  return std::optional<SnapshotInfo>(std::move(*info));
}

absl::StatusOr<uint64_t> SnapshotDb::NextId() {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), kNextId, &v);
  uint64_t last = 0;
  if (s.ok()) {
    if (!absl::SimpleAtoi(v, &last)) return absl::DataLossError("the snapshot id counter is bad");
  } else if (!s.IsNotFound()) {
    return RocksStatus(s, "reading the snapshot id counter");
  }
  s = db_->Put(Synced(), kNextId, std::to_string(last + 1));
  if (!s.ok()) return RocksStatus(s, "writing the snapshot id counter");
  return last + 1;
}

absl::Status SnapshotDb::Create(const SnapshotInfo& info) {
  rocksdb::WriteBatch b;
  b.Put(RecordKey(info.name), Encode(info));
  if (!info.parent.empty()) b.Put(ChildKey(info.parent, info.name), "");
  return RocksStatus(db_->Write(Synced(), &b), "recording a snapshot");
}

absl::Status SnapshotDb::Update(const SnapshotInfo& info) {
  return RocksStatus(db_->Put(Synced(), RecordKey(info.name), Encode(info)),
                     "updating a snapshot record");
}

absl::Status SnapshotDb::Commit(const std::string& key, const SnapshotInfo& info) {
  rocksdb::WriteBatch b;
  b.Delete(RecordKey(key));
  b.Put(RecordKey(info.name), Encode(info));
  if (!info.parent.empty()) {
    b.Delete(ChildKey(info.parent, key));
    b.Put(ChildKey(info.parent, info.name), "");
  }
  return RocksStatus(db_->Write(Synced(), &b), "committing a snapshot");
}

absl::Status SnapshotDb::Remove(const SnapshotInfo& info) {
  rocksdb::WriteBatch b;
  b.Delete(RecordKey(info.name));
  if (!info.parent.empty()) b.Delete(ChildKey(info.parent, info.name));
  return RocksStatus(db_->Write(Synced(), &b), "removing a snapshot record");
}

absl::StatusOr<bool> SnapshotDb::HasChildren(const std::string& name) {
  std::string prefix = absl::StrCat("c/", name, std::string(1, '\0'));
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  it->Seek(prefix);
  if (it->Valid() && it->key().starts_with(prefix)) return true;
  if (!it->status().ok()) return RocksStatus(it->status(), "reading the snapshot index");
  return false;
}

absl::StatusOr<std::optional<std::string>> SnapshotDb::GetIndex(const std::string& digest) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), "i/" + digest, &v);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return RocksStatus(s, "reading a layer index");
  return std::optional<std::string>(std::move(v));
}

absl::Status SnapshotDb::PutIndex(const std::string& digest, const std::string& bytes) {
  return RocksStatus(db_->Put(Synced(), "i/" + digest, bytes), "keeping a layer index");
}

absl::Status SnapshotDb::DeleteIndex(const std::string& digest) {
  return RocksStatus(db_->Delete(Synced(), "i/" + digest), "removing a layer index");
}

absl::StatusOr<std::vector<SnapshotInfo>> SnapshotDb::List() {
  std::vector<SnapshotInfo> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  for (it->Seek("s/"); it->Valid() && it->key().starts_with("s/"); it->Next()) {
    auto info = Decode(it->key().ToString().substr(2), it->value().ToString());
    if (!info.ok()) {  // one bad record must not hide the others
      spdlog::error("{}; left out of the list", info.status().message());
      continue;
    }
    out.push_back(std::move(*info));
  }
  if (!it->status().ok()) return RocksStatus(it->status(), "listing snapshots");
  return out;
}

}  // namespace strata::snapshotter
