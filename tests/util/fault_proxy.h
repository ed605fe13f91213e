// An HTTP/1.1 proxy on 127.0.0.1 that sits between Strata and a real origin
// server and misbehaves on purpose: drops connections, answers 500/503/429,
// truncates or corrupts bodies, and throttles to a link rate with a round
// trip delay. One request per connection (it asks upstream to close).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace strata::testing {

struct Fault {
  enum class Kind {
    kNone,
    kReset,     // close the client connection before answering
    kStatus,    // answer `status` without asking upstream
    kTruncate,  // forward, but stop after `bytes` bytes of the body
    kCorrupt,   // forward, flipping a bit of body byte `bytes`
    kCanned,    // answer what the proxy's Canned gives, without asking upstream
  };
  Kind kind = Kind::kNone;
  int status = 503;
  uint64_t bytes = 0;
};

class FaultProxy {
 public:
  // Decides the fault for the n-th request (from 0), given its request line
  // and Range header ("" when none).
  using Plan =
      std::function<Fault(uint64_t n, const std::string& request_line, const std::string& range)>;

  // The whole answer (status line, headers, body) sent as is for kCanned:
  // what no real server would say.
  using Canned = std::function<std::string(const std::string& request_line)>;

  FaultProxy(int upstream_port, Plan plan, Canned canned = nullptr);
  ~FaultProxy();  // stops accepting and waits for open connections to end

  int port() const { return port_; }
  uint64_t requests() const { return requests_; }
  uint64_t faults() const { return faults_; }
  // Response body bytes sent to clients (what the origin served).
  uint64_t body_bytes() const { return body_bytes_; }
  int active() const { return active_; }

  // Shared link: bytes per second to clients (0: unlimited), and a delay
  // added once per request before the response starts (a round trip).
  void Throttle(uint64_t bytes_per_second, int rtt_ms);

 private:
  void AcceptLoop();
  void Serve(int client);
  void Pace(size_t bytes);

  int upstream_port_;
  Plan plan_;
  Canned canned_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> requests_{0}, faults_{0}, body_bytes_{0};
  std::atomic<uint64_t> rate_{0};
  std::atomic<int> rtt_ms_{0};
  std::atomic<int64_t> next_send_ns_{0};  // token bucket as a virtual clock
  std::thread acceptor_;
  std::atomic<int> active_{0};
};

// A free TCP port on 127.0.0.1 (bound and released; tests start a server on it).
int FreePort();

}  // namespace strata::testing
