// Fakes of the node's mount seams: a mount table of its own (stacked
// mounts, a source each), the calls made, and failures on demand; FUSE
// sessions that only appear in that table. No root, no /dev/fuse.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "csi/fuse_launcher.h"
#include "csi/mounter.h"

namespace strata::csi::testing {

class FakeMounter final : public Mounter {
 public:
  struct BindCall {
    std::string from, target;
    BindOptions options;
  };

  absl::Status Bind(const std::string& from, const std::string& target,
                    const BindOptions& options) override {
    binds.push_back({from, target, options});
    if (auto f = bind_failures.find(target); f != bind_failures.end()) return f->second;
    // mount(2) wants an existing directory at the target.
    if (!std::filesystem::is_directory(target))
      return absl::InternalError(absl::StrCat("bind mount at ", target, ": No such file"));
    table[target].push_back(from);
    return absl::OkStatus();
  }
  absl::Status Unmount(const std::string& path) override {
    unmounts.push_back(path);
    if (busy.contains(path))
      return absl::InternalError(absl::StrCat("unmount ", path, ": Device or resource busy"));
    return Pop(path);
  }
  absl::Status Detach(const std::string& path) override {
    detaches.push_back(path);
    if (stuck.contains(path))
      return absl::InternalError(absl::StrCat("unmount ", path, ": Invalid argument"));
    return Pop(path);
  }
  bool IsMountPoint(const std::string& path) override {
    auto it = table.find(path);
    return it != table.end() && !it->second.empty();
  }

  // What is mounted at `path`, bottom first.
  std::vector<std::string> At(const std::string& path) const {
    auto it = table.find(path);
    return it == table.end() ? std::vector<std::string>{} : it->second;
  }
  // Mounts and unmounts from elsewhere (FUSE, another process): no call logged.
  void Mount(const std::string& path, const std::string& source) { table[path].push_back(source); }
  void Remove(const std::string& path) { (void)Pop(path); }

  std::map<std::string, std::vector<std::string>> table;
  std::vector<BindCall> binds;
  std::vector<std::string> unmounts, detaches;
  std::map<std::string, absl::Status> bind_failures;  // by target
  std::set<std::string> busy;                         // Unmount fails, Detach works
  std::set<std::string> stuck;                        // Detach fails too

 private:
  absl::Status Pop(const std::string& path) {
    auto it = table.find(path);
    if (it == table.end() || it->second.empty())
      return absl::InternalError(absl::StrCat("unmount ", path, ": Invalid argument"));
    it->second.pop_back();
    return absl::OkStatus();
  }
};

// Sessions that are a line in a FakeMounter's table: "fuse:<id>".
class FakeLauncher final : public FuseLauncher {
 public:
  struct LaunchCall {
    std::string id, mountpoint;
    bool adopted = false;
    bool read_only = false;
    int64_t mount_gid = -1;
  };
  struct State {
    std::string mountpoint;
    bool running = false;
    bool unmount_on_stop = true;
  };

  explicit FakeLauncher(FakeMounter& mounter) : mounter_(mounter) {}

  absl::StatusOr<std::unique_ptr<FuseSession>> Launch(const std::string& id,
                                                      std::shared_ptr<origin::Origin>,
                                                      const fuse::VolumeOptions& volume,
                                                      const fuse::MountOptions& mount,
                                                      const fuse::Handoff* adopt) override {
    launches.push_back(
        {id, mount.mountpoint, adopt != nullptr, volume.read_only, volume.mount_gid});
    if (!failure.ok()) return failure;
    auto state = std::make_shared<State>();
    state->mountpoint = mount.mountpoint;
    // A takeover serves the mount that is there; a new one mounts.
    if (!adopt) mounter_.Mount(mount.mountpoint, "fuse:" + id);
    sessions[mount.mountpoint] = state;
    return std::make_unique<Session>(mounter_, state, "init:" + id);
  }

  // A daemon killed: its sessions end, their mounts stay (dead) in the table.
  void Crash() {
    for (auto& [path, s] : sessions) s->unmount_on_stop = false;
  }
  // The session at `mountpoint` ends from outside (an unmount, an aborted
  // connection): its mount is gone.
  void End(const std::string& mountpoint) {
    sessions.at(mountpoint)->running = false;
    mounter_.Remove(mountpoint);
  }

  std::vector<LaunchCall> launches;
  std::map<std::string, std::shared_ptr<State>> sessions;  // by mountpoint, the latest
  absl::Status failure;                                    // what Launch answers, when not OK

 private:
  class Session final : public FuseSession {
   public:
    Session(FakeMounter& mounter, std::shared_ptr<State> state, std::string init)
        : mounter_(mounter), state_(std::move(state)), init_(std::move(init)) {
      // An FD keeper holds /dev/fuse descriptors only: one that no mount
      // uses (opening it needs no mount, but root here, or /dev/null).
      fd_ = ::open("/dev/fuse", O_RDWR | O_CLOEXEC);
      if (fd_ < 0) fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    ~Session() override {
      Stop();
      if (fd_ >= 0) ::close(fd_);
    }
    fuse::Handoff handoff() const override { return {fd_, init_}; }
    void Serve() override { state_->running = true; }
    bool running() const override { return state_->running; }
    void Stop() override {
      if (state_->running && state_->unmount_on_stop) mounter_.Remove(state_->mountpoint);
      state_->running = false;
    }
    absl::StatusOr<struct statvfs> StatFs() override {
      struct statvfs sv {};
      sv.f_frsize = 4096;
      sv.f_blocks = 100;
      sv.f_bfree = sv.f_bavail = 40;
      return sv;
    }
    fuse::VolumeStats Stats() const override { return {}; }

   private:
    FakeMounter& mounter_;
    std::shared_ptr<State> state_;
    std::string init_;
    int fd_ = -1;
  };

  FakeMounter& mounter_;
};

}  // namespace strata::csi::testing
