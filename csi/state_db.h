// Records that must outlive a CSI daemon (the controller's volumes, the
// node's staged and published volumes): JSON values under string keys in a
// small RocksDB in the daemon's state directory. Every write is synced,
// because a record is written before the call that made it answers.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace rocksdb {
class DB;
}

namespace strata::csi {

class StateDb {
 public:
  // Opens (creating) the database in `dir`. Another process holding it is
  // FailedPrecondition naming the directory.
  static absl::StatusOr<std::unique_ptr<StateDb>> Open(const std::string& dir);
  ~StateDb();

  absl::Status Put(const std::string& key, const nlohmann::json& value);
  absl::StatusOr<std::optional<nlohmann::json>> Get(const std::string& key);
  absl::Status Delete(const std::string& key);
  // Records whose key starts with `prefix`, in key order, after key `after`
  // (empty: from the first), at most `max` of them (0: all). A record that
  // does not parse is logged and skipped.
  absl::StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> Scan(
      const std::string& prefix, const std::string& after = "", size_t max = 0);

 private:
  explicit StateDb(std::unique_ptr<rocksdb::DB> db);
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace strata::csi
