// StateDb over RocksDB: synced writes, prefix scans.
#include "csi/state_db.h"

#include <rocksdb/db.h>

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cache/logging.h"

namespace strata::csi {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, const std::string& what) {
  if (s.ok()) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", s.ToString()));
}

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

}  // namespace

StateDb::StateDb(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}
StateDb::~StateDb() = default;

absl::StatusOr<std::unique_ptr<StateDb>> StateDb::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  // Records may hold credentials (a volume's secrets): root's alone.
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  rocksdb::Options opts;
  opts.create_if_missing = true;
  opts.max_open_files = 64;
  opts.keep_log_file_num = 2;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(opts, dir, &raw);
  if (s.IsIOError() && absl::StrContains(s.ToString(), "lock")) {
    return absl::FailedPreconditionError(
        absl::StrCat("state directory ", dir, " is in use by another process: ", s.ToString()));
  }
  if (!s.ok()) return FromRocks(s, absl::StrCat("cannot open the state database in ", dir));
  return std::unique_ptr<StateDb>(new StateDb(std::unique_ptr<rocksdb::DB>(raw)));
}

absl::Status StateDb::Put(const std::string& key, const nlohmann::json& value) {
  return FromRocks(db_->Put(Synced(), key, value.dump()), absl::StrCat("record ", key));
}

absl::StatusOr<std::optional<nlohmann::json>> StateDb::Get(const std::string& key) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &v);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return FromRocks(s, absl::StrCat("record ", key));
  auto j = nlohmann::json::parse(v, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    spdlog::error("state record {} is not JSON; ignoring it", key);
    return std::nullopt;
  }
  return j;
}

absl::Status StateDb::Delete(const std::string& key) {
  return FromRocks(db_->Delete(Synced(), key), absl::StrCat("record ", key));
}

absl::StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> StateDb::Scan(
    const std::string& prefix, const std::string& after, size_t max) {
  std::vector<std::pair<std::string, nlohmann::json>> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  std::string start = after.empty() ? prefix : after;
  for (it->Seek(start); it->Valid(); it->Next()) {
    std::string key = it->key().ToString();
    if (!absl::StartsWith(key, prefix)) break;
    if (!after.empty() && key == after) continue;
    auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (j.is_discarded()) {
      spdlog::error("state record {} is not JSON; skipping it", key);
      continue;
    }
    out.emplace_back(std::move(key), std::move(j));
    if (max != 0 && out.size() == max) break;
  }
  if (!it->status().ok()) return FromRocks(it->status(), absl::StrCat("scan of ", prefix));
  return out;
}

}  // namespace strata::csi
