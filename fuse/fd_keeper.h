// The FD keeper holds the /dev/fuse descriptors of live mounts while the
// daemon serving them restarts. As long as one descriptor of a FUSE
// connection is open, the kernel keeps the mount alive (requests wait), so
// pods that hold files open or see the mount through a private mount
// namespace carry on once the new daemon takes the mount over
// (FuseServer::Adopt). It is a separate small process: a unix socket
// (SOCK_SEQPACKET) where a daemon puts a descriptor under a key, gets a copy
// back after a restart, and deletes it when the volume is unmounted.
//
// If no daemon comes back within a grace period, the keeper lets the
// descriptors go: the mounts then fail with ENOTCONN instead of hanging.
#pragma once

#include <sys/un.h>

#include <atomic>
#include <memory>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata::fuse {

// The address of the unix socket at `path` (InvalidArgument when the path
// is too long for one). The FD keeper's, and the node's admin socket's.
absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path);

// Sends `msg` on a SOCK_SEQPACKET socket, with `fd` as SCM_RIGHTS when >= 0
// (the keeper's wire format); false unless all of it went.
bool SendWithFd(int sock, const std::string& msg, int fd);

class FdKeeperClient {
 public:
  // Connects to a keeper at `socket`; Unavailable if none answers.
  static absl::StatusOr<std::unique_ptr<FdKeeperClient>> Connect(const std::string& socket);
  ~FdKeeperClient();

  absl::Status Put(const std::string& key, int fd);
  // A duplicate of the descriptor kept under `key` (the caller owns it);
  // NotFound when there is none.
  absl::StatusOr<int> Get(const std::string& key);
  absl::Status Delete(const std::string& key);

 private:
  explicit FdKeeperClient(int sock) : sock_(sock) {}
  // One request, one answer; `fd_in` travels with the request, a descriptor
  // that comes back lands in `fd_out`.
  absl::StatusOr<std::string> Call(const std::string& request, int fd_in, int* fd_out);

  absl::Mutex mu_;
  int sock_;
};

struct FdKeeperOptions {
  std::string socket;
  // How long descriptors are kept while no daemon is connected.
  absl::Duration grace = absl::Minutes(2);
  // Exit once no daemon is connected and nothing is held (after the grace
  // period, if something was): for a keeper a daemon started itself.
  bool exit_when_idle = false;
};

// Serves until `stop` is set (checked every 100 ms), or until idle when
// options.exit_when_idle. Another keeper already answering on the socket
// is AlreadyExists.
absl::Status ServeFdKeeper(const FdKeeperOptions& options, const std::atomic<bool>& stop);

// Starts `exe fd-keeper --socket S --grace G --exit-when-idle` as a process
// of its own (its own session, not a child of the caller), logging to
// `log_file`, and waits for it to answer.
absl::StatusOr<std::unique_ptr<FdKeeperClient>> SpawnFdKeeper(const std::string& exe,
                                                              const FdKeeperOptions& options,
                                                              const std::string& log_file);

}  // namespace strata::fuse
