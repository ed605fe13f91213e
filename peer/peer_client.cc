// PeerClient: owner first, lease when granted, origin last.
#include "peer/peer_client.h"

#include <grpcpp/support/sync_stream.h>

#include <chrono>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "peer/wire.h"

namespace strata::peer {
namespace {

std::chrono::system_clock::time_point After(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoNanoseconds(d);
}

constexpr uint64_t kMinRateSample = 1u << 20;  // smaller transfers say little

}  // namespace

PeerClient::PeerClient(Membership& membership, PeerCredentials credentials,
                       PeerClientOptions options)
    : membership_(membership), creds_(std::move(credentials)), opts_(options) {}

PeerClient::~PeerClient() = default;

absl::StatusOr<cache::ChunkFrom> PeerClient::Fetch(
    const cache::ChunkId& chunk, absl::Span<char> out,
    absl::FunctionRef<absl::Status(absl::Span<char>)> from_origin) {
  auto candidates = membership_.Candidates(chunk.key, chunk.index, opts_.max_candidates + 1);
  size_t asked = 0;
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    if (c.self) {
      // This node owns the chunk (or is next after owners that failed):
      // its store's single fill is where the other nodes wait.
      ++(asked == 0 ? owned_ : fallback_);
      if (i == 0 && candidates.size() > 1) {
        absl::Status unused;
        switch (Ask(candidates[1].address, chunk, out, from_origin, &unused, /*probe=*/true)) {
          case Outcome::kGot:
            ++runner_up_;
            membership_.Succeeded(candidates[1].address);
            return cache::ChunkFrom::kPeer;
          case Outcome::kPeerFailed:
            membership_.Failed(candidates[1].address);
            break;
          default:
            break;
        }
      }
      absl::Status st = from_origin(out);
      if (!st.ok()) return st;
      return cache::ChunkFrom::kOrigin;
    }
    if (asked++ >= opts_.max_candidates) break;
    absl::Status origin_status;
    // What comes next is the owner's to read ahead, not the next candidate's.
    cache::ChunkId asked_for = chunk;
    if (i > 0) asked_for.next = {};
    switch (Ask(c.address, asked_for, out, from_origin, &origin_status)) {
      case Outcome::kGot:
        membership_.Succeeded(c.address);
        return cache::ChunkFrom::kPeer;
      case Outcome::kLeased:
        membership_.Succeeded(c.address);
        ++leased_;
        return cache::ChunkFrom::kOrigin;
      case Outcome::kOriginFailed:
        return origin_status;
      case Outcome::kPeerFailed:
      case Outcome::kAbsent:  // not asked of owners
        membership_.Failed(c.address);
        break;
    }
  }
  ++fallback_;
  absl::Status st = from_origin(out);
  if (!st.ok()) return st;
  return cache::ChunkFrom::kOrigin;
}

std::string PeerClient::Owner(const cache::ChunkId& chunk) const {
  std::vector<Candidate> c = membership_.Candidates(chunk.key, chunk.index, 1);
  return c.empty() || c[0].self ? "" : std::move(c[0].address);
}

template <typename F>
void PeerClient::Update(const std::string& address, F f) {
  absl::MutexLock l(&mu_);
  auto it = links_.find(address);
  if (it != links_.end()) f(it->second->stats);
}

void PeerClient::ForgetDeparted() {
  const uint64_t epoch = membership_.Epoch();
  {
    absl::MutexLock l(&mu_);
    if (epoch == links_epoch_) return;
    links_epoch_ = epoch;
  }
  absl::flat_hash_set<std::string> members;
  for (const MemberStats& m : membership_.Stats()) members.insert(m.address);
  std::vector<std::shared_ptr<Link>> gone;  // their channels close after the lock
  absl::MutexLock l(&mu_);
  absl::erase_if(links_, [&](const auto& link) {
    if (members.contains(link.first)) return false;
    gone.push_back(link.second);
    return true;
  });
}

absl::StatusOr<std::shared_ptr<PeerClient::Link>> PeerClient::Connect(const std::string& address) {
  ForgetDeparted();
  std::shared_ptr<Link> link;
  {
    absl::MutexLock l(&mu_);
    auto& slot = links_[address];
    if (!slot) {
      slot = std::make_shared<Link>();
      grpc::ChannelArguments args;
      if (!creds_.server_name.empty()) args.SetSslTargetNameOverride(creds_.server_name);
      args.SetMaxReceiveMessageSize(8 << 20);
      args.SetResourceQuota(PeerQuota());
      // A peer cut off by the network (not refusing, just silent) is found
      // by pings, and its calls fail then, rather than each waiting out its
      // deadline on a connection that looks alive. Only while calls are in
      // flight: idle channels to a thousand peers should not ping. A ping
      // unanswered drops the connection and every chunk on it (a lease
      // holder's upload included, which the next waiter then fetches from
      // the origin again), so a busy peer gets ten seconds to answer: with
      // two, sixteen nodes on two cores (bench/peers.sh) lost connections
      // to peers that were only slow, and the origin served 7-12% twice.
      args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 3000);
      args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
      args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
      args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
      // Our own set-aside decides when a failed peer is tried again; the
      // channel should then really try, not answer from its own backoff.
      args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
      args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
      slot->channel = grpc::CreateCustomChannel(address, creds_.channel, args);
      slot->fetch = std::make_unique<grpc::internal::RpcMethod>(
          kFetchMethod, grpc::internal::RpcMethod::BIDI_STREAMING, slot->channel);
      slot->stats.address = address;
    }
    link = slot;
  }
  // Up to connect_timeout for a peer that does not answer, but none for
  // one that refuses (a node whose daemon is gone, still listed): that
  // fails the attempt at once, rather than each of its chunks waiting out
  // the timeout.
  const auto deadline = After(opts_.connect_timeout);
  for (grpc_connectivity_state st = link->channel->GetState(/*try_to_connect=*/true);
       st != GRPC_CHANNEL_READY; st = link->channel->GetState(/*try_to_connect=*/true)) {
    if (st == GRPC_CHANNEL_TRANSIENT_FAILURE || st == GRPC_CHANNEL_SHUTDOWN) {
      return absl::UnavailableError("cannot connect: refused or unreachable");
    }
    if (!link->channel->WaitForStateChange(st, deadline)) {
      return absl::UnavailableError(absl::StrCat("cannot connect: no answer within ",
                                                 absl::FormatDuration(opts_.connect_timeout)));
    }
  }
  return link;
}

PeerClient::Outcome PeerClient::Ask(const std::string& address, const cache::ChunkId& chunk,
                                    absl::Span<char> out,
                                    absl::FunctionRef<absl::Status(absl::Span<char>)> from_origin,
                                    absl::Status* origin_status, bool probe) {
  auto fail = [&](const std::string& why) {
    spdlog::warn("peers: {} for chunk {} of {}: {}", address, chunk.index, chunk.key, why);
    Update(address, [](PeerLinkStats& s) { ++s.failures; });
    return Outcome::kPeerFailed;
  };
  const auto asked = std::chrono::steady_clock::now();
  auto since_asked = [&] { return absl::FromChrono(std::chrono::steady_clock::now() - asked); };
  absl::StatusOr<std::shared_ptr<Link>> connected = Connect(address);
  Update(address, [](PeerLinkStats& s) { ++s.requests; });
  if (!connected.ok()) return fail(std::string(connected.status().message()));
  Link* link = connected->get();
  uint64_t link_rate;
  {
    absl::MutexLock l(&mu_);
    link_rate = link->stats.link_bytes_per_second;
  }
  grpc::ClientContext ctx;
  // A probe is answered at once, or never: it is worth little time.
  ctx.set_deadline(After(probe ? std::min(opts_.timeout, absl::Seconds(2)) : opts_.timeout));
  std::unique_ptr<grpc::ClientReaderWriter<grpc::ByteBuffer, grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderWriterFactory<grpc::ByteBuffer, grpc::ByteBuffer>::Create(
          link->channel.get(), *link->fetch, &ctx));
  v1::FetchRequest req;
  v1::Want* w = req.mutable_want();
  w->mutable_chunk()->set_key(std::string(chunk.key));
  w->mutable_chunk()->set_index(chunk.index);
  w->mutable_chunk()->set_object_size(chunk.object_size);
  w->mutable_chunk()->set_chunk_size(chunk.chunk_size);
  w->set_can_fetch(!probe);
  w->set_only_if_present(probe);
  if (opts_.zstd) w->add_accept(v1::CODEC_ZSTD);
  w->set_link_bytes_per_second(link_rate);
  if (!probe) {
    for (uint32_t next : chunk.next) w->add_next(next);
  }
  grpc::ByteBuffer answer;
  if (!stream->Write(Pack(req)) || !stream->Read(&answer)) {
    grpc::Status st = stream->Finish();
    if (probe && st.error_code() == grpc::StatusCode::NOT_FOUND) return Outcome::kAbsent;
    return fail(absl::StrCat("no answer (", st.error_message(), ")"));
  }
  v1::FetchResponse resp;
  if (!Unpack(answer, &resp)) {
    ctx.TryCancel();
    stream->Finish().ok();
    return fail("a malformed answer");
  }
  if (resp.has_header()) {
    auto start = std::chrono::steady_clock::now();
    uint64_t wire = 0;
    absl::Status st = ReceiveChunk<v1::FetchResponse>(*stream, resp.header(), out, &wire);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!st.ok()) {
      ctx.TryCancel();
      stream->Finish().ok();
      if (absl::IsDataLoss(st)) Update(address, [](PeerLinkStats& s) { ++s.corrupt; });
      return fail(std::string(st.message()));
    }
    stream->WritesDone();
    stream->Finish().ok();  // the bytes are in and checked: that is what counts
    chunk_answers_.Record(since_asked());
    Update(address, [&](PeerLinkStats& s) {
      ++s.chunks;
      s.bytes += out.size();
      s.wire_bytes += wire;
      if (wire >= kMinRateSample && secs > 0) {
        double rate = wire / secs;
        s.link_bytes_per_second =
            s.link_bytes_per_second == 0
                ? static_cast<uint64_t>(rate)
                : static_cast<uint64_t>(0.7 * s.link_bytes_per_second + 0.3 * rate);
      }
    });
    return Outcome::kGot;
  }
  if (!resp.has_lease()) {
    ctx.TryCancel();
    stream->Finish().ok();
    return fail("answered neither a chunk nor a lease");
  }
  lease_answers_.Record(since_asked());
  Update(address, [](PeerLinkStats& s) { ++s.leases; });
  *origin_status = from_origin(out);
  if (!origin_status->ok()) {
    v1::FetchRequest f;
    f.mutable_lease_failed()->set_reason(std::string(origin_status->message()));
    stream->Write(Pack(f));
    stream->WritesDone();
    stream->Finish().ok();
    return Outcome::kOriginFailed;
  }
  SendOptions so;
  so.link_bytes_per_second = link_rate;
  bool sent = SendChunk<v1::FetchRequest>(*stream, std::string_view(out.data(), out.size()), so,
                                          *pieces_, nullptr)
                  .ok();
  stream->WritesDone();
  grpc::ByteBuffer reply;
  v1::FetchResponse stored;
  bool ok = sent && stream->Read(&reply) && Unpack(reply, &stored) && stored.has_stored();
  grpc::Status st = stream->Finish();
  if (!ok) {
    // This node has the bytes; only the owner's copy is lost, and the next
    // asker there will be granted the lease again.
    spdlog::warn("peers: {} did not store chunk {} of {} fetched under its lease: {}", address,
                 chunk.index, chunk.key, st.error_message());
  }
  return Outcome::kLeased;
}

PeerClientStats PeerClient::Stats() const {
  PeerClientStats s;
  s.owned_chunks = owned_;
  s.runner_up_chunks = runner_up_;
  s.leased_chunks = leased_;
  s.fallback_chunks = fallback_;
  s.chunk_answers = chunk_answers_.Counts();
  s.lease_answers = lease_answers_.Counts();
  absl::MutexLock l(&mu_);
  for (const auto& [address, link] : links_) s.peers.push_back(link->stats);
  std::sort(s.peers.begin(), s.peers.end(),
            [](const PeerLinkStats& a, const PeerLinkStats& b) { return a.address < b.address; });
  return s;
}

}  // namespace strata::peer
