// Membership: the member table, rendezvous ordering and the DNS loop.
#include "peer/membership.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <xxhash.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"

namespace strata::peer {
namespace {

uint64_t SeedOf(std::string_view address) { return XXH3_64bits(address.data(), address.size()); }

uint64_t Score(uint64_t seed, std::string_view key, uint32_t index) {
  std::string buf(key);
  buf.append(reinterpret_cast<const char*>(&index), sizeof index);
  return XXH3_64bits_withSeed(buf.data(), buf.size(), seed);
}

// "host:port" split at the last colon outside brackets.
bool SplitHostPort(std::string_view address, std::string_view* host, std::string_view* port) {
  size_t colon = address.rfind(':');
  if (colon == std::string_view::npos) return false;
  *host = address.substr(0, colon);
  *port = address.substr(colon + 1);
  if (host->starts_with('[')) {
    if (!host->ends_with(']')) return false;
    *host = host->substr(1, host->size() - 2);
    in6_addr a6;
    return ::inet_pton(AF_INET6, std::string(*host).c_str(), &a6) == 1;
  }
  return host->find(':') == std::string_view::npos;
}

std::string JoinHostPort(const std::string& ip, const std::string& port) {
  if (ip.find(':') != std::string::npos) return absl::StrCat("[", ip, "]:", port);
  return absl::StrCat(ip, ":", port);
}

}  // namespace

absl::Status CheckPeerAddress(std::string_view address_view) {
  const std::string address(address_view);
  std::string_view host, port;
  uint32_t p = 0;
  if (!SplitHostPort(address, &host, &port) || host.empty() ||
      !absl::SimpleAtoi(std::string(port), &p) || p == 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("peer address '", address, "' is not HOST:PORT (IPv6 as [ADDR]:PORT)"));
  }
  for (char c : host) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '-' && c != ':') {
      return absl::InvalidArgumentError(
          absl::StrCat("peer address '", address, "' has a bad host name"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::string>> ResolveDns(const std::string& name) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(name.c_str(), nullptr, &hints, &res);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("resolve ", name, ": ", ::gai_strerror(rc)));
  }
  std::vector<std::string> out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    const void* src =
        a->ai_family == AF_INET
            ? static_cast<const void*>(&reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr)
            : static_cast<const void*>(&reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr);
    if (::inet_ntop(a->ai_family, src, buf, sizeof buf) != nullptr) out.emplace_back(buf);
  }
  ::freeaddrinfo(res);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Membership::Membership(MembershipOptions options) : opts_(std::move(options)) {
  std::string_view host, port;
  if (SplitHostPort(opts_.self, &host, &port)) port_ = std::string(port);
}

absl::StatusOr<std::unique_ptr<Membership>> Membership::Start(MembershipOptions options) {
  if (absl::Status st = CheckPeerAddress(options.self); !st.ok()) return st;
  for (const std::string& p : options.peers) {
    if (absl::Status st = CheckPeerAddress(p); !st.ok()) return st;
  }
  if (!options.resolve) options.resolve = ResolveDns;
  if (options.clock == nullptr) options.clock = RealClock();
  std::unique_ptr<Membership> m(new Membership(std::move(options)));
  {
    absl::MutexLock l(&m->mu_);
    for (const std::string& p : m->opts_.peers) {
      if (p != m->opts_.self) m->members_[p].seed = SeedOf(p);
    }
  }
  if (!m->opts_.service.empty()) {
    m->Refresh();
    m->resolver_ = std::thread([p = m.get()] { p->ResolveLoop(); });
  }
  return m;
}

Membership::~Membership() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  if (resolver_.joinable()) resolver_.join();
}

void Membership::ResolveLoop() {
  for (;;) {
    {
      absl::MutexLock l(&mu_);
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), opts_.resolve_interval);
      if (stopping_) return;
    }
    Refresh();
  }
}

void Membership::Refresh() {
  if (opts_.service.empty()) return;
  auto ips = opts_.resolve(opts_.service);
  if (!ips.ok()) {
    // Keep the members we know: a DNS hiccup is not every peer leaving.
    spdlog::warn("peers: {}; keeping the {} members known", ips.status().message(), Stats().size());
    return;
  }
  absl::flat_hash_map<std::string, bool> now;
  for (const std::string& ip : *ips) {
    std::string address = JoinHostPort(ip, port_);
    if (address != opts_.self && CheckPeerAddress(address).ok()) now[address] = true;
  }
  absl::MutexLock l(&mu_);
  size_t before = members_.size();
  for (auto it = members_.begin(); it != members_.end();) {
    auto next = std::next(it);
    if (it->second.from_service && !now.contains(it->first)) members_.erase(it);
    it = next;
  }
  for (const auto& [address, unused] : now) {
    auto [it, added] = members_.try_emplace(address);
    if (added) it->second.seed = SeedOf(address);
    it->second.from_service = true;
  }
  if (members_.size() != before) {
    spdlog::info("peers: {} resolves to {} members besides this node", opts_.service,
                 members_.size());
  }
}

std::vector<Candidate> Membership::Candidates(std::string_view key, uint32_t index,
                                              size_t max) const {
  std::vector<std::pair<uint64_t, Candidate>> scored;
  scored.push_back({Score(SeedOf(opts_.self), key, index), {opts_.self, true}});
  absl::Time now = opts_.clock->Now();
  {
    absl::MutexLock l(&mu_);
    for (const auto& [address, m] : members_) {
      if (m.set_aside_until > now) continue;
      scored.push_back({Score(m.seed, key, index), {address, false}});
    }
  }
  std::sort(scored.begin(), scored.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second.address < b.second.address;
  });
  std::vector<Candidate> out;
  for (auto& [score, c] : scored) {
    if (out.size() >= max) break;
    out.push_back(std::move(c));
  }
  return out;
}

uint64_t Membership::Epoch() const {
  // The live members' seeds (hashes of their addresses), summed.
  uint64_t sum = 0;
  absl::Time now = opts_.clock->Now();
  absl::MutexLock l(&mu_);
  for (const auto& [address, m] : members_) {
    if (m.set_aside_until <= now) sum += m.seed;
  }
  return sum;
}

bool Membership::HasPeers() const {
  absl::MutexLock l(&mu_);
  return !members_.empty();
}

void Membership::Failed(const std::string& address) {
  absl::MutexLock l(&mu_);
  auto it = members_.find(address);
  if (it == members_.end()) return;
  Member& m = it->second;
  absl::Duration backoff = opts_.backoff_initial;
  for (uint32_t i = 0; i < m.failures && backoff < opts_.backoff_max; ++i) backoff *= 2;
  backoff = std::min(backoff, opts_.backoff_max);
  ++m.failures;
  m.set_aside_until = opts_.clock->Now() + backoff;
  spdlog::warn("peers: {} set aside for {} ({} failures in a row)", address,
               absl::FormatDuration(backoff), m.failures);
}

void Membership::Succeeded(const std::string& address) {
  absl::MutexLock l(&mu_);
  auto it = members_.find(address);
  if (it == members_.end() || it->second.failures == 0) return;
  it->second.failures = 0;
  it->second.set_aside_until = absl::InfinitePast();
}

std::vector<MemberStats> Membership::Stats() const {
  absl::Time now = opts_.clock->Now();
  absl::MutexLock l(&mu_);
  std::vector<MemberStats> out;
  for (const auto& [address, m] : members_) {
    out.push_back({address, m.set_aside_until > now, m.failures});
  }
  std::sort(out.begin(), out.end(),
            [](const MemberStats& a, const MemberStats& b) { return a.address < b.address; });
  return out;
}

}  // namespace strata::peer
