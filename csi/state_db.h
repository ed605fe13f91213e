// Records that must outlive a CSI daemon (the controller's volumes, the
// node's staged and published volumes): JSON values under string keys.
// Every write is durable before it returns, because a record is written
// before the call that made it answers.
//
// Two homes: a small RocksDB in a state directory (the node's records,
// which belong to its node), or an origin (file:///shared/dir,
// s3://bucket/prefix) holding one object per record, for the controller,
// whose records must follow it wherever its pod is scheduled.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "origin/origin.h"

namespace strata::csi {

class StateDb {
 public:
  // Opens (creating) the database in `dir`. Another process holding it is
  // FailedPrecondition naming the directory.
  static absl::StatusOr<std::unique_ptr<StateDb>> Open(const std::string& dir);
  // Keeps the records as objects under `url` (made if missing). The origin
  // must take writes: a POSIX directory or an S3 prefix.
  static absl::StatusOr<std::unique_ptr<StateDb>> OpenAt(const std::string& url,
                                                         const origin::OriginOptions& options = {});
  virtual ~StateDb() = default;

  virtual absl::Status Put(const std::string& key, const nlohmann::json& value) = 0;
  virtual absl::StatusOr<std::optional<nlohmann::json>> Get(const std::string& key) = 0;
  virtual absl::Status Delete(const std::string& key) = 0;
  // Records whose key starts with `prefix`, in key order, after key `after`
  // (empty: from the first), at most `max` of them (0: all). A record that
  // does not parse is logged and skipped.
  virtual absl::StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> Scan(
      const std::string& prefix, const std::string& after = "", size_t max = 0) = 0;
};

}  // namespace strata::csi
