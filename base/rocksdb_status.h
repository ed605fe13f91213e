// One mapping of RocksDB's statuses to abseil's, for every RocksDB that
// Strata keeps (the chunk index, the CSI state), so callers decide the same
// way whichever database failed.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace rocksdb {
class DB;
class Status;
}  // namespace rocksdb

namespace strata {

// OK stays OK. NotFound -> NotFound; NoSpace -> ResourceExhausted;
// Corruption -> DataLoss; I/O errors, Busy, TimedOut, TryAgain and
// Incomplete -> Unavailable (the disk or a lock may recover); anything else
// (a bad argument, an unsupported option) -> Internal. The message names
// `what` and carries RocksDB's own text.
absl::Status RocksStatus(const rocksdb::Status& s, std::string_view what);

// Opens (creating) a small RocksDB of records in `dir`, which must exist: few
// open files, few info logs. Another process holding it is
// FailedPrecondition, naming `what` and the directory.
absl::StatusOr<std::unique_ptr<rocksdb::DB>> OpenRecordDb(const std::string& dir,
                                                          std::string_view what);

}  // namespace strata
