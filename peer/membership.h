// Who the node's peers are and which of them owns a chunk. Members come
// from a static list and from a headless Service's DNS name (re-resolved
// periodically); the node itself is one of them. A chunk's owner is the
// live member with the highest rendezvous score for the chunk's key, so
// every node agrees on it without talking, and a member joining or leaving
// moves only its own share of chunks. A member that fails is set aside for a
// backoff period (doubling while it keeps failing) and tried again after.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/clock.h"

namespace strata::peer {

// Resolves a DNS name to its addresses (IPv4 dotted, IPv6 without brackets).
using Resolver = std::function<absl::StatusOr<std::vector<std::string>>(const std::string& name)>;
absl::StatusOr<std::vector<std::string>> ResolveDns(const std::string& name);

struct MembershipOptions {
  std::string self;                // host:port this node listens on and is known by
  std::vector<std::string> peers;  // host:port of the static members
  std::string service;             // DNS name whose addresses are members, at self's port
  absl::Duration resolve_interval = absl::Seconds(30);
  absl::Duration backoff_initial = absl::Seconds(1);
  absl::Duration backoff_max = absl::Minutes(1);
  Resolver resolve = ResolveDns;
  Clock* clock = RealClock();  // set-aside periods; not owned
};

struct Candidate {
  std::string address;
  bool self = false;
};

struct MemberStats {
  std::string address;
  bool set_aside = false;
  uint32_t failures = 0;  // in a row
};

// host:port with the host checked (a DNS name or an IP address; IPv6 in
// brackets) and the port in 1..65535. InvalidArgument names what is wrong.
absl::Status CheckPeerAddress(std::string_view address);

class Membership {
 public:
  // Resolves the service once (a failure is logged, not fatal: the DNS
  // name may list nobody yet) and starts re-resolving it in the background.
  static absl::StatusOr<std::unique_ptr<Membership>> Start(MembershipOptions options);
  ~Membership();
  Membership(const Membership&) = delete;
  Membership& operator=(const Membership&) = delete;

  const std::string& self() const { return opts_.self; }

  // The live members in rendezvous order for chunk `index` of `key`, at
  // most `max`, the owner first. This node is always live, so the list ends
  // with it at the latest.
  std::vector<Candidate> Candidates(std::string_view key, uint32_t index, size_t max) const;

  // A value that changes whenever the set of live members does, and with
  // it the owners of chunks.
  uint64_t Epoch() const;

  // Whether any member but this node is known (live or not).
  bool HasPeers() const;

  void Failed(const std::string& address);
  void Succeeded(const std::string& address);

  // Asks DNS again now (the background loop does it every interval).
  void Refresh();

  std::vector<MemberStats> Stats() const;

 private:
  explicit Membership(MembershipOptions options);
  void ResolveLoop();

  struct Member {
    uint64_t seed = 0;  // rendezvous seed: a hash of the address
    uint32_t failures = 0;
    absl::Time set_aside_until = absl::InfinitePast();
    bool from_service = false;
  };

  const MembershipOptions opts_;
  std::string port_;  // self's port: the service's members listen there too
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Member> members_ ABSL_GUARDED_BY(mu_);  // not self
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread resolver_;
};

}  // namespace strata::peer
