#include "base/rocksdb_status.h"

#include "absl/strings/str_cat.h"
#include "rocksdb/db.h"
#include "rocksdb/status.h"

namespace strata {

absl::Status RocksStatus(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat(absl::string_view(what.data(), what.size()), ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() || s.IsBusy() || s.IsTimedOut() || s.IsTryAgain() || s.IsIncomplete()) {
    return absl::UnavailableError(msg);
  }
  return absl::InternalError(msg);
}

absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenRecordDb(const std::string& dir,
                                                          std::string_view what) {
  rocksdb::Options opts;
  opts.create_if_missing = true;
  opts.max_open_files = 64;
  opts.keep_log_file_num = 2;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(opts, dir, &raw);
  std::string name(what.data(), what.size());
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return absl::FailedPreconditionError(
        absl::StrCat(name, " ", dir, " is in use by another process: ", s.ToString()));
  }
  if (!s.ok()) return RocksStatus(s, absl::StrCat("cannot open ", name, " in ", dir));
  return std::unique_ptr<rocksdb::DB>(raw);
}

}  // namespace strata
