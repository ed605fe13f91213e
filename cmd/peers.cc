// Peers: flags, wiring and metrics of the peer library in the node daemon.
#include "cmd/peers.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "cmd/commands.h"
#include "cmd/metrics_server.h"

namespace strata::cmd {

void AddPeerFlags(CLI::App& c, PeerFlags& f) {
  c.add_option("--peer-address", f.address,
               "Serve this node's cache to its peers on HOST:PORT, the address the others know it "
               "by (the pod IP in Kubernetes); empty: no peers")
      ->group("Peers");
  c.add_option("--peers", f.peers, "Static peer list, HOST:PORT,... (this node's own is skipped)")
      ->delimiter(',')
      ->group("Peers");
  c.add_option("--peer-service", f.service,
               "DNS name of a headless Service whose addresses are the peers, at the port of "
               "--peer-address; re-resolved every --peer-resolve-interval")
      ->group("Peers");
  c.add_option("--peer-resolve-interval", f.resolve_interval, "Seconds between DNS lookups")
      ->capture_default_str()
      ->group("Peers");
  c.add_option("--peer-tls-dir", f.tls_dir,
               "Mutual TLS: a directory with ca.crt, tls.crt and tls.key (a cert-manager Secret)")
      ->group("Peers");
  c.add_option("--peer-tls-name", f.tls_name, "The name (DNS SAN) every peer's certificate carries")
      ->capture_default_str()
      ->group("Peers");
  c.add_flag("--peer-insecure", f.insecure,
             "Plain TCP between peers, without TLS: only on a network nobody else reaches")
      ->group("Peers");
  c.add_option("--peer-timeout", f.timeout,
               "Seconds one peer has to answer for a chunk before the next is asked")
      ->capture_default_str()
      ->group("Peers");
}

absl::StatusOr<Peers> OpenPeers(const PeerFlags& f) {
  Peers p;
  if (f.address.empty()) {
    if (!f.peers.empty() || !f.service.empty() || !f.tls_dir.empty() || f.insecure) {
      return UsageError("the --peer* flags need --peer-address (this node's HOST:PORT)");
    }
    return p;
  }
  if (f.resolve_interval <= 0 || f.timeout <= 0) {
    return UsageError("--peer-resolve-interval and --peer-timeout must be positive");
  }
  auto creds = peer::LoadPeerCredentials({f.tls_dir, f.tls_name, f.insecure});
  if (!creds.ok()) return UsageError(creds.status());
  p.credentials = std::move(*creds);
  peer::MembershipOptions mo;
  mo.self = f.address;
  mo.peers = f.peers;
  mo.service = f.service;
  mo.resolve_interval = absl::Seconds(f.resolve_interval);
  auto m = peer::Membership::Start(std::move(mo));
  if (!m.ok()) return UsageError(m.status());
  p.membership = std::move(*m);
  peer::PeerClientOptions co;
  co.timeout = absl::Seconds(f.timeout);
  p.client = std::make_unique<peer::PeerClient>(*p.membership, p.credentials, co);
  return p;
}

absl::Status Peers::Serve(cache::ChunkStore& store, uint64_t memory_bytes) {
  if (!enabled()) return absl::OkStatus();
  // Chunks read ahead wait in the memory tier for their asks: no more are
  // queued than half of it holds (of the default chunk size), and none
  // without one, where they would only be read twice.
  peer::PeerServiceOptions so;
  so.read_ahead_queue = std::min<size_t>(so.read_ahead_queue,
                                         memory_bytes / (2 * uint64_t{cache::kDefaultChunkSize}));
  if (so.read_ahead_queue == 0) so.read_ahead_threads = 0;
  service = std::make_unique<peer::PeerService>(store, so);
  auto s = peer::StartPeerServer(membership->self(), credentials, *service);
  if (!s.ok()) return s.status();
  server = std::move(*s);
  return absl::OkStatus();
}

void Peers::Stop() {
  if (server) {
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    server.reset();
  }
  if (service) service->Stop();
}

std::string Peers::MetricsText() const {
  std::string o;
  if (!enabled()) return o;
  auto members = membership->Stats();
  size_t aside = 0;
  for (const auto& m : members) aside += m.set_aside;
  Metric(o, "strata_peer_members", "gauge", "Peers known besides this node.", members.size());
  Metric(o, "strata_peer_set_aside", "gauge", "Peers set aside after failures.", aside);
  peer::PeerClientStats c = client->Stats();
  for (const peer::PeerLinkStats& l : c.peers) {
    std::string label = absl::StrCat("peer=\"", l.address, "\"");
    Metric(o, "strata_peer_requests_total", "counter", "Chunks asked of each peer.", l.requests,
           label);
    Metric(o, "strata_peer_failures_total", "counter",
           "Asks of each peer that failed (down, deadline, refused, corrupt).", l.failures, label);
    Metric(o, "strata_peer_corrupt_total", "counter",
           "Chunks from each peer whose checksum did not match.", l.corrupt, label);
    Metric(o, "strata_peer_received_bytes_total", "counter",
           "Chunk bytes received from each peer (uncompressed).", l.bytes, label);
    Metric(o, "strata_peer_wire_bytes_total", "counter", "Bytes on the wire from each peer.",
           l.wire_bytes, label);
    Metric(o, "strata_peer_leases_held_total", "counter",
           "Fetch leases each peer granted this node.", l.leases, label);
  }
  Metric(o, "strata_peer_chunks_total", "counter", "Missed chunks by who fetched them.",
         c.owned_chunks, "how=\"owner\"");
  Metric(o, "strata_peer_chunks_total", "counter", "Missed chunks by who fetched them.",
         c.runner_up_chunks, "how=\"runner_up\"");
  Metric(o, "strata_peer_chunks_total", "counter", "Missed chunks by who fetched them.",
         c.leased_chunks, "how=\"lease\"");
  Metric(o, "strata_peer_chunks_total", "counter", "Missed chunks by who fetched them.",
         c.fallback_chunks, "how=\"fallback\"");
  const char* answers =
      "Time from asking a peer for a chunk to its answer: the chunk's last byte, or a fetch "
      "lease (waiting out another node's lease included).";
  Histogram(o, "strata_peer_answer_seconds", answers, c.chunk_answers, "answer=\"chunk\"");
  Histogram(o, "strata_peer_answer_seconds", answers, c.lease_answers, "answer=\"lease\"");
  if (service) {
    peer::PeerServiceStats s = service->Stats();
    Metric(o, "strata_peer_served_chunks_total", "counter", "Chunks served to peers.",
           s.chunks_served);
    Metric(o, "strata_peer_served_bytes_total", "counter",
           "Chunk bytes served to peers (uncompressed).", s.bytes_served);
    Metric(o, "strata_peer_served_wire_bytes_total", "counter", "Bytes on the wire to peers.",
           s.wire_bytes_served);
    Metric(o, "strata_peer_served_compressed_chunks_total", "counter",
           "Chunks served to peers with zstd.", s.compressed_chunks);
    Metric(o, "strata_peer_leases_granted_total", "counter", "Fetch leases granted to peers.",
           s.leases_granted);
    Metric(o, "strata_peer_leases_failed_total", "counter",
           "Fetch leases whose holder failed, vanished or sent bad bytes.", s.leases_failed);
    Metric(o, "strata_peer_lease_uploads_total", "counter",
           "Chunks lease holders fetched for this node and sent it.", s.chunks_received);
    Metric(o, "strata_peer_refused_total", "counter", "Malformed or conflicting requests refused.",
           s.refused);
    Metric(o, "strata_peer_read_ahead_queued_total", "counter",
           "Chunks peers said they would ask for next, queued to be read ahead.",
           s.read_ahead_queued);
    Metric(o, "strata_peer_read_ahead_chunks_total", "counter",
           "Of those, chunks read from disk into memory before they were asked for (the rest "
           "were in memory already, absent, or asked for first).",
           s.read_ahead);
    Metric(o, "strata_peer_read_ahead_dropped_total", "counter",
           "Such hints dropped, too many being read already.", s.read_ahead_dropped);
  }
  return o;
}

}  // namespace strata::cmd
