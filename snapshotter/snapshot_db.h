// The snapshotter's metadata: every snapshot's name, parent, kind, times,
// labels and (once committed) usage, in a RocksDB under the node's state
// directory. Each change is one synced write batch, so a daemon killed at
// any moment restarts with every snapshot as containerd last saw it
// answered. Directories on disk are named by the snapshot's id, never by
// its name: names come from containerd and go nowhere near a path.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "fuse/layer_index.h"

namespace rocksdb {
class DB;
}

namespace strata::snapshotter {

enum class Kind { kView = 1, kActive = 2, kCommitted = 3 };

struct SnapshotInfo {
  std::string name;
  std::string parent;  // empty: none
  Kind kind = Kind::kActive;
  uint64_t id = 0;  // its directory under the snapshotter's root
  absl::Time created;
  absl::Time updated;
  std::map<std::string, std::string> labels;
  // Bytes on disk and inodes of its own directory, measured at commit;
  // -1 while active.
  int64_t size = -1;
  int64_t inodes = -1;
  // A layer served lazily (lazy_layers.h): its tree is mounted at its
  // directory's fs from this blob. Empty for ordinary snapshots.
  std::string remote_origin;  // oci://registry/repository
  std::string remote_digest;
  uint64_t remote_size = 0;
  std::string remote_toc;  // eStargz: its TOC's digest
  // The layer mount's INIT request, for a successor to take it over.
  std::string fuse_init;
};

class SnapshotDb final : public fuse::LayerIndexStore {
 public:
  // Opens (creating) the database in `dir`; another process holding it is
  // FailedPrecondition.
  static absl::StatusOr<std::unique_ptr<SnapshotDb>> Open(const std::string& dir);
  ~SnapshotDb();

  absl::StatusOr<std::optional<SnapshotInfo>> Get(const std::string& name);
  // A new id, never handed out before (kept across restarts).
  absl::StatusOr<uint64_t> NextId();
  // Adds `info` (its name must be new) and indexes it under its parent.
  absl::Status Create(const SnapshotInfo& info);
  // Replaces the record of `info.name` (labels, times, usage).
  absl::Status Update(const SnapshotInfo& info);
  // Renames active `key` to committed `info.name` in one batch: the
  // children index follows.
  absl::Status Commit(const std::string& key, const SnapshotInfo& info);
  absl::Status Remove(const SnapshotInfo& info);
  absl::StatusOr<bool> HasChildren(const std::string& name);
  // Every snapshot, in name order.
  absl::StatusOr<std::vector<SnapshotInfo>> List();

  // Layer indexes by digest, shared by every snapshot of that layer.
  absl::StatusOr<std::optional<std::string>> GetIndex(const std::string& digest) override;
  absl::Status PutIndex(const std::string& digest, const std::string& bytes) override;
  absl::Status DeleteIndex(const std::string& digest);

 private:
  explicit SnapshotDb(std::unique_ptr<rocksdb::DB> db);
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace strata::snapshotter
