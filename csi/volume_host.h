// The volumes a node hosts, and their lifecycle: a staged volume is one
// FUSE filesystem at its staging path (a volume tree over its origin,
// through the node's chunk cache); a publication bind-mounts it into a
// pod's target path, read-only where asked; an inline volume is mounted at
// its target directly. What is staged and published is recorded in the
// state database, so a restarted node serves it all again. Errors carry
// the canonical code of what went wrong; the CSI service answers with it.
#pragma once

#include <sys/statvfs.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "csi/fuse_launcher.h"
#include "csi/inline_origins.h"
#include "csi/mounter.h"
#include "csi/state_db.h"
#include "csi/volume_spec.h"
#include "fuse/fd_keeper.h"
#include "fuse/volume_tree.h"

namespace strata::csi {

struct VolumeHostOptions {
  std::string staging_dir;   // where object-store volumes stage their writes
  StateDb* state = nullptr;  // records of staged and published volumes; null: none kept
  // Holds each mount's /dev/fuse descriptor while this daemon restarts, so
  // the next one takes the mounts over (pods never see them go). Null: a
  // restarted daemon mounts everything again instead.
  fuse::FdKeeperClient* keeper = nullptr;
  std::string inode_dir;  // volumes' inode and open logs, for a takeover
  // FUSE passthrough for files whole in the cache (fuse::MountOptions).
  bool passthrough = true;
  // Where a volume published with another fsGroup than it was staged with
  // gets a mount of its own for that group (pods bind to it). Empty: such
  // publications see the staged group.
  std::string group_mount_dir;
  // The origins that inline volumes (named in a pod spec, not by an
  // administrator) may use; none by default.
  InlineOrigins inline_origins;
};

// How a pod wants a volume at its target.
struct PublishOptions {
  bool read_only = false;
  unsigned long flags = 0;  // MS_NOSUID and friends, from the capability's mount flags
  // The pod's fsGroup (-1: none), or why it could not be read. Answered
  // only where the checks reach it: a publication already made is
  // answered first, whatever else the repeated call holds.
  absl::StatusOr<int64_t> mount_gid = -1;
};

// A volume's usage and condition, as NodeGetVolumeStats reports them.
struct VolumeHealth {
  absl::StatusOr<struct statvfs> usage = absl::UnknownError("");
  bool abnormal = false;
  std::string message;
};

class VolumeHost {
 public:
  // `mounter` and `launcher` outlive the host. With a state database,
  // serves again what the records say was staged and published: takes over
  // the mounts the keeper kept alive, mounts the rest again and binds their
  // publications again.
  VolumeHost(Mounter& mounter, FuseLauncher& launcher, VolumeHostOptions options);
  // Stops serving every volume. The mounts go with the process, but the
  // records stay: a node that stops is expected to come back.
  ~VolumeHost();

  // Every call below is idempotent: repeated, it answers OK, or what a
  // different volume in the same place is (AlreadyExists,
  // FailedPrecondition).
  //
  // Serves volume `id` (origin and options in `spec`, as parsed from
  // `context`) at `path`, with fsGroup `mount_gid` (-1: none). A volume
  // staged there before whose FUSE session ended is mounted again.
  absl::Status Stage(const std::string& id, const std::string& path, StringMap context,
                     StringMap secrets, const VolumeSpec& spec, int64_t mount_gid);
  // Stops serving volume `id` at `path` (FailedPrecondition while it is
  // published) and detaches whatever is left mounted there.
  absl::Status Unstage(const std::string& id, const std::string& path);
  // Binds staged volume `id` (staged at `staging_path`) at `target`; with a
  // fsGroup other than the staged one, binds a mount for that group.
  absl::Status Publish(const std::string& id, const std::string& staging_path,
                       const std::string& target, const PublishOptions& options);
  // Mounts an inline volume at `target`: `spec` (or why the volume context
  // is no inline volume) must name an origin the node allows.
  absl::Status PublishInline(const std::string& id, const std::string& target,
                             const absl::StatusOr<VolumeSpec>& spec, StringMap context,
                             StringMap secrets, const PublishOptions& options);
  // Unmounts `target` and removes it if this driver made it (an empty
  // directory); stops an inline volume.
  absl::Status Unpublish(const std::string& id, const std::string& target);
  // Usage and condition of volume `id` at `path` (its staging path or a
  // target); NotFound where it is not.
  absl::StatusOr<VolumeHealth> Health(const std::string& id, const std::string& path);

  // Volumes whose FUSE session ended (for /healthz), volumes served, and
  // their counters summed (for /metrics).
  int DeadVolumes();
  int Volumes();
  fuse::VolumeStats VolumeTotals();

 private:
  // One FUSE filesystem: a staged volume, a group mount, or an inline
  // volume at its target.
  struct Volume {
    std::string id;
    std::string mountpoint;
    StringMap context;  // as the CO gave it; `spec` is parsed from it
    StringMap secrets;
    VolumeSpec spec;
    int64_t mount_gid = -1;
    bool named_by_pod = false;  // an inline volume: its origin must be allowed
    std::shared_ptr<origin::Origin> origin;
    std::unique_ptr<FuseSession> session;
    std::string init;  // the kernel's INIT request (fuse::Handoff), for a takeover
    bool running() const { return session && session->running(); }
  };
  struct Publication {
    std::string volume_id;
    bool read_only = false;
    bool inline_volume = false;
    unsigned long flags = 0;
    // The mount the target is bound to: the staged volume (its id), or a
    // group mount ("<id>#gid=<gid>") when the pod's fsGroup differs.
    std::string mount_key;
  };

  // Opens the origin and serves a FUSE filesystem at v.mountpoint: a new
  // mount, or with `adopt_fd` the live one whose descriptor the keeper kept.
  absl::Status Start(Volume& v, int adopt_fd = -1);
  void Stop(Volume& v);
  // Detaches everything mounted at `path` (stacked mounts too).
  absl::Status UnmountAll(const std::string& path);
  absl::Status Bind(const std::string& from, const std::string& target, const Publication& p);
  absl::Status Record(const Volume& v, bool inline_volume);
  absl::Status Record(const std::string& target, const Publication& p);
  void Forget(const std::string& key);
  void Recover() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Starts serving a new volume, records it and keeps it in volumes_; on
  // failure nothing of it is left.
  absl::StatusOr<Volume*> Serve(std::unique_ptr<Volume> v, bool inline_volume)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The mount a publication of staged volume `v` with fsGroup `gid` binds
  // from: `v` itself, or a group mount made (and recorded) on first use.
  absl::StatusOr<Volume*> MountFor(Volume& v, int64_t gid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Stops the group mount `key` once no publication uses it.
  void DropGroupMountIfUnused(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // OK when `target` already holds this publication, AlreadyExists when it
  // holds another; nullopt when it holds none.
  std::optional<absl::Status> Published(const std::string& target, const Publication& p)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Mounter& mounter_;
  FuseLauncher& launcher_;
  VolumeHostOptions opts_;
  absl::Mutex mu_;  // one volume operation at a time: they are rare and mount-heavy
  std::map<std::string, std::unique_ptr<Volume>> volumes_ ABSL_GUARDED_BY(mu_);  // by id
  std::map<std::string, Publication> published_ ABSL_GUARDED_BY(mu_);            // by target
};

}  // namespace strata::csi
