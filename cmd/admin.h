// The node daemon's admin socket: a unix stream socket in its state
// directory (root's alone). A connection carries one JSON request line and
// gets JSON lines back. `strata prefetch` warms a running node's cache
// through it: the daemon holds the chunk store, so a second process cannot
// open it.
//
//   request:  {"op": "prefetch", "url": URL, "digest": "sha256:..." (optional),
//              "ca_file": PATH (optional), "insecure": false}
//   answers:  {"done": BYTES, "total": BYTES} ... as chunks land, then
//             {"ok": true, "bytes": SIZE} or {"error": MESSAGE}
// Closing the connection stops the prefetch at its next slice.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "cache/fetcher.h"

namespace strata::cmd {

struct ObjectRef {
  std::string url;
  std::string digest;  // sha256:<hex> the whole object must match; empty: none
  std::string ca_file;
  bool insecure = false;
};

// The object's target before its origin is asked anything: the origin
// opened and the digest checked, no stat yet (but the digest's).
absl::StatusOr<cache::FetchTarget> UnresolvedTarget(const ObjectRef& ref);
// UnresolvedTarget with the origin's stat taken: the target a fetch reads.
absl::StatusOr<cache::FetchTarget> ResolveTarget(const ObjectRef& ref);

class AdminServer {
 public:
  // Listens on `path`. A socket there that nobody answers (left by a killed
  // daemon) is replaced; a live one, or anything that is not a socket, is an
  // error. At most `max_requests` run at once; more are refused.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(const std::string& path,
                                                            cache::Fetcher& fetcher,
                                                            int max_requests = 4);
  // Stops accepting, cuts the connections in flight (their prefetches stop
  // at their next slice) and waits for them; removes its socket.
  ~AdminServer();

 private:
  AdminServer(std::string path, int fd, cache::Fetcher& fetcher, int max_requests);
  void AcceptLoop();
  void Serve(int conn);

  std::string path_;
  int fd_ = -1;
  int wake_[2] = {-1, -1};  // a pipe that ends the accept loop
  cache::Fetcher& fetcher_;
  const int max_requests_;
  ino_t ino_ = 0;  // the socket's inode: the destructor removes only its own
  std::atomic<bool> stopping_{false};
  std::thread acceptor_;
  absl::Mutex mu_;
  std::vector<int> conns_ ABSL_GUARDED_BY(mu_);  // connections being served
};

// Whether a daemon answers at `socket` (a socket file can outlive its
// daemon).
bool NodeAnswers(const std::string& socket);

// Asks the daemon behind `socket` to prefetch `ref`; `progress(done, total)`
// is called as it reports. Returns the object's size. Nobody answering at
// `socket` is Unavailable and says so.
absl::StatusOr<uint64_t> PrefetchThroughNode(
    const std::string& socket, const ObjectRef& ref,
    const std::function<void(uint64_t done, uint64_t total)>& progress);

}  // namespace strata::cmd
