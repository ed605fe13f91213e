// A `strata mount` daemon for a test, with teardown that cannot hang: the
// daemon is stopped (SIGTERM, then SIGKILL), the FUSE connection aborted if
// it is still there, and the mountpoint lazily unmounted.
#pragma once

#include <poll.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <atomic>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/util/subprocess.h"

namespace strata::testing {

// Aborts the FUSE connection behind `mountpoint`, so nothing waits on it.
// The connection is found in /proc/self/mountinfo (its minor device
// number): a stat of the mountpoint would itself wait on a dead server.
inline void AbortFuse(const std::string& mountpoint) {
  struct stat st;
  if (::stat("/sys/fs/fuse/connections", &st) != 0) return;
  ::mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, nullptr);  // if not mounted yet
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    if (!(f >> id >> parent >> dev >> root >> point) || point != mountpoint) continue;
    size_t colon = dev.find(':');
    if (colon == std::string::npos) continue;
    std::ofstream("/sys/fs/fuse/connections/" + dev.substr(colon + 1) + "/abort") << "1";
  }
}

// Lazily detaches whatever a test left mounted under `dir`, deepest first.
inline void UnmountUnder(const std::string& dir) {
  std::ifstream m("/proc/self/mounts");
  std::vector<std::string> found;
  std::string dev, path, rest;
  while (m >> dev >> path && std::getline(m, rest)) {
    if (path.rfind(dir, 0) == 0) found.push_back(path);
  }
  for (auto it = found.rbegin(); it != found.rend(); ++it) ::umount2(it->c_str(), MNT_DETACH);
}

inline bool IsMounted(const std::string& mountpoint) {
  std::ifstream m("/proc/mounts");
  std::string dev, dir, rest;
  while (m >> dev >> dir && std::getline(m, rest)) {
    if (dir == mountpoint) return true;
  }
  return false;
}

class StrataMount {
 public:
  // Runs `strata mount ORIGIN MOUNTPOINT ARGS...` and waits until it serves.
  StrataMount(const std::string& strata, const std::string& origin, const std::string& mountpoint,
              std::vector<std::string> args = {})
      : mountpoint_(mountpoint) {
    std::vector<std::string> argv = {strata, "mount", origin, mountpoint};
    argv.insert(argv.end(), args.begin(), args.end());
    child_ = Spawn(argv);
    output_ = ReadUntil(child_.out, "mounted ", std::chrono::seconds(20));
    // From now on its output is drained as it comes, so that a daemon that
    // logs a lot never blocks on a full pipe.
    drain_ = std::thread([this] {
      char buf[4096];
      while (!stop_draining_.load()) {
        pollfd p{child_.out, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) continue;
        ssize_t n = ::read(child_.out, buf, sizeof buf);
        if (n <= 0) break;
        std::lock_guard<std::mutex> l(mu_);
        output_.append(buf, n);
      }
    });
  }
  ~StrataMount() { Stop(); }

  bool ok() const {
    return output().find("mounted ") != std::string::npos && IsMounted(mountpoint_);
  }
  std::string output() const {
    std::lock_guard<std::mutex> l(mu_);
    return output_;
  }
  pid_t pid() const { return child_.pid; }

  // Stops the daemon; returns its wait status (-1 if it had to be killed).
  int Stop(int sig = SIGTERM) {
    if (child_.pid <= 0) return 0;
    ::kill(child_.pid, sig);
    // Drain its output while waiting, so it never blocks on a full pipe.
    stop_draining_ = true;
    if (drain_.joinable()) drain_.join();
    std::string rest =
        ReadUntil(child_.out, "unmounted", std::chrono::seconds(sig == SIGKILL ? 1 : 10));
    {
      std::lock_guard<std::mutex> l(mu_);
      output_ += rest;
    }
    int st = Wait(child_, std::chrono::seconds(10));
    child_.pid = -1;
    if (::testing::Test::HasFailure()) {
      // What the daemon said is what explains a failure; its last lines.
      std::string out = output();
      constexpr size_t kTail = 8192;
      std::cerr << "--- strata mount " << mountpoint_ << ", the end of its log:\n"
                << (out.size() > kTail ? out.substr(out.size() - kTail) : out) << "---\n";
    }
    if (IsMounted(mountpoint_)) {
      AbortFuse(mountpoint_);
      ::umount2(mountpoint_.c_str(), MNT_DETACH);
    }
    return st;
  }

 private:
  std::string mountpoint_;
  Child child_;
  mutable std::mutex mu_;
  std::string output_;
  std::atomic<bool> stop_draining_{false};
  std::thread drain_;
};

}  // namespace strata::testing
