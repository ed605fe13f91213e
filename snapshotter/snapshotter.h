// Strata's containerd snapshotter: snapshots that behave exactly like
// containerd's own overlayfs snapshotter (an active snapshot is an upper
// and a work directory over its parents' directories; a view is
// read-only; only leaves are removed), keyed and recorded in a SnapshotDb.
// containerd itself mounts what Prepare, View and Mounts answer.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "snapshotter/filter.h"
#include "snapshotter/lazy_layers.h"
#include "snapshotter/snapshot_db.h"

namespace strata::snapshotter {

// A mount(2) for containerd to make, in its own terms.
struct Mount {
  std::string type;
  std::string source;
  std::vector<std::string> options;
};

struct Usage {
  int64_t size = 0;  // bytes on disk
  int64_t inodes = 0;
};

using Labels = std::map<std::string, std::string>;

struct SnapshotterOptions {
  // Snapshot directories live in ROOT/snapshots/ID/{fs,work}; the metadata
  // in ROOT/metadata.
  std::string root;
  // Serves layers lazily where a Prepare's labels name one in a registry;
  // null: containerd pulls every layer. Not owned.
  LazyLayers* lazy = nullptr;
};

class Snapshotter {
 public:
  static absl::StatusOr<std::unique_ptr<Snapshotter>> Open(SnapshotterOptions options);

  // A new active snapshot `key` over committed `parent` (empty: none).
  // AlreadyExists if `key` exists; NotFound if `parent` does not;
  // InvalidArgument if it is not committed.
  //
  // A remote layer: when `labels` name the snapshot the layer becomes
  // (containerd.io/snapshot.ref) and the layer in a registry, and the layer
  // can be served lazily, it is mounted and committed under that name at
  // once, and the answer is AlreadyExists: containerd then skips its
  // download. Otherwise an ordinary snapshot, which containerd fills.
  absl::StatusOr<std::vector<Mount>> Prepare(const std::string& key, const std::string& parent,
                                             const Labels& labels);
  // The same, read-only.
  absl::StatusOr<std::vector<Mount>> View(const std::string& key, const std::string& parent,
                                          const Labels& labels);
  // FailedPrecondition for a committed snapshot (it is not mountable).
  absl::StatusOr<std::vector<Mount>> Mounts(const std::string& key);
  // Active `key` becomes committed `name`, with `labels`; its usage is
  // measured now.
  absl::Status Commit(const std::string& name, const std::string& key, const Labels& labels);
  // FailedPrecondition while it has children.
  absl::Status Remove(const std::string& key);
  absl::StatusOr<SnapshotInfo> Stat(const std::string& key);
  // Updates the labels of `info.name` per `paths` ("labels", "labels.KEY";
  // none: all labels); InvalidArgument for any other path.
  absl::StatusOr<SnapshotInfo> Update(const SnapshotInfo& info,
                                      const std::vector<std::string>& paths);
  absl::StatusOr<Usage> GetUsage(const std::string& key);
  // Calls `fn` for every snapshot matching any of `filters` (all when
  // none), in name order.
  absl::Status List(const std::vector<SnapshotFilter>& filters,
                    const std::function<void(const SnapshotInfo&)>& fn);
  // Removes directories that no snapshot owns (left by a removal a crash
  // cut short, or a Prepare that never got recorded).
  absl::Status Cleanup();

 private:
  Snapshotter(SnapshotterOptions options, std::unique_ptr<SnapshotDb> db, bool overlay_index);
  absl::StatusOr<std::vector<Mount>> Create(Kind kind, const std::string& key,
                                            const std::string& parent, const Labels& labels);
  absl::StatusOr<std::vector<Mount>> MountsOf(const SnapshotInfo& s)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // AlreadyExists when `target` is (now) a lazily served layer; NotFound
  // when the labels name no remote layer; why not, otherwise.
  absl::Status PrepareRemote(const std::string& target, const std::string& parent,
                             const Labels& labels);
  // Mounts again the lazily served layers a previous run had mounted.
  void MountRemoteLayers();
  // Detaches whatever is mounted at `dir`/fs (a layer tree); false if that
  // failed, and the directory must not be removed.
  bool DetachLayer(const std::string& dir);
  std::string Dir(uint64_t id) const;

  const SnapshotterOptions opts_;
  const bool overlay_index_;  // the kernel's overlay takes index=off
  absl::Mutex mu_;
  std::unique_ptr<SnapshotDb> db_ ABSL_PT_GUARDED_BY(mu_);
};

// InvalidArgument unless `name` can name a snapshot: 1 to 4096 bytes, no NUL.
absl::Status CheckSnapshotName(const std::string& name, const char* what);
// InvalidArgument for a label whose key and value exceed 4096 bytes
// together, as containerd's own limit.
absl::Status CheckLabels(const Labels& labels);

}  // namespace strata::snapshotter
