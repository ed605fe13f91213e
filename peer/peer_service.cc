// PeerService: Wants answered from the store, fills made by leases.
#include "peer/peer_service.h"

#include <grpcpp/impl/rpc_service_method.h>
#include <grpcpp/support/method_handler.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/logging.h"
#include "peer/wire.h"

namespace strata::peer {
namespace {

using Stream = PeerService::Stream;

constexpr size_t kMaxKeyBytes = 4096;
constexpr uint64_t kMaxObjectBytes = 1ull << 50;  // the store's limit

// The chunks of the object `c` is a chunk of (its sizes checked).
uint64_t ChunkCount(const v1::ChunkRef& c) {
  return c.object_size() / c.chunk_size() + (c.object_size() % c.chunk_size() != 0);
}

// What is wrong with a Want, before anything is done with it.
absl::Status CheckWant(const v1::Want& w) {
  const v1::ChunkRef& c = w.chunk();
  if (c.key().empty() || c.key().size() > kMaxKeyBytes || c.key().find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("a chunk key must be 1 to 4096 bytes without NUL");
  }
  if (c.chunk_size() == 0 || c.chunk_size() % 4096 != 0 || c.object_size() == 0 ||
      c.object_size() > kMaxObjectBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad chunk size %u or object size %u", c.chunk_size(), c.object_size()));
  }
  const uint64_t chunks = ChunkCount(c);
  if (c.index() >= chunks) {
    return absl::OutOfRangeError(
        absl::StrFormat("chunk %u of an object of %u chunks", c.index(), chunks));
  }
  return absl::OkStatus();
}

}  // namespace

PeerService::PeerService(cache::ChunkStore& store, PeerServiceOptions options)
    : store_(store), opts_(options) {
  for (int i = 0; i < opts_.read_ahead_threads; ++i) {
    ahead_threads_.emplace_back([this] { ReadAheadLoop(); });
  }
  AddMethod(new grpc::internal::RpcServiceMethod(
      kFetchMethod, grpc::internal::RpcMethod::BIDI_STREAMING,
      new grpc::internal::BidiStreamingHandler<PeerService, grpc::ByteBuffer, grpc::ByteBuffer>(
          [](PeerService* service, grpc::ServerContext* context, Stream* stream) {
            return service->Fetch(context, stream);
          },
          this)));
}

PeerService::~PeerService() { Stop(); }

void PeerService::Stop() {
  {
    absl::MutexLock l(&ahead_mu_);
    stopping_ = true;
  }
  for (std::thread& t : ahead_threads_) {
    if (t.joinable()) t.join();
  }
}

void PeerService::ReadAhead(const v1::Want& want) {
  constexpr int kMaxNext = 4;  // more would be an asker planning this node's disk
  if (want.next().empty() || ahead_threads_.empty()) return;  // no hints, or read-ahead is off
  const v1::ChunkRef& c = want.chunk();
  const uint64_t chunks = ChunkCount(c);
  absl::MutexLock l(&ahead_mu_);
  for (int i = 0; i < std::min(want.next_size(), kMaxNext); ++i) {
    const uint32_t index = want.next(i);
    if (index >= chunks || index == c.index()) continue;
    bool queued = std::any_of(ahead_.begin(), ahead_.end(), [&](const v1::ChunkRef& q) {
      return q.index() == index && q.key() == c.key();
    });
    if (queued) continue;
    if (ahead_.size() >= opts_.read_ahead_queue) {
      ++read_ahead_dropped_;
      continue;
    }
    ahead_.push_back(c);
    ahead_.back().set_index(index);
    ++read_ahead_queued_;
  }
}

void PeerService::ReadAheadLoop() {
  for (;;) {
    v1::ChunkRef c;
    {
      absl::MutexLock l(&ahead_mu_);
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(ahead_mu_) {
        return stopping_ || !ahead_.empty();
      };
      ahead_mu_.Await(absl::Condition(&ready));
      if (stopping_) return;
      c = std::move(ahead_.front());
      ahead_.pop_front();
    }
    // Into the memory tier, where the ask finds it (or, under way, waits
    // for this read rather than reading it again); a chunk this node lacks
    // is not fetched for a hint, and one in memory already costs nothing.
    auto read = ReadPresent(c.key(), c);
    if (read.ok() && read->read_from_disk) ++read_ahead_;
  }
}

grpc::Status PeerService::Fetch(grpc::ServerContext* context, Stream* stream) {
  const std::string asker = context->peer();
  grpc::ByteBuffer first;
  if (!stream->Read(&first)) return grpc::Status::OK;  // the asker left before asking
  ++wants_;
  auto refuse = [&](const absl::Status& st) {
    ++refused_;
    spdlog::warn("peers: refused a request from {}: {}", asker, st.message());
    return ToGrpc(st);
  };
  v1::FetchRequest req;
  if (!Unpack(first, &req) || !req.has_want())
    return refuse(absl::InvalidArgumentError("the first message must be a Want"));
  const v1::Want want = req.want();
  if (absl::Status st = CheckWant(want); !st.ok()) return refuse(st);
  const v1::ChunkRef& c = want.chunk();
  const std::string& key = c.key();
  // A known key of another size is not replaced on a peer's word: that
  // would let one node drop another's cached object.
  if (auto info = store_.Lookup(key)) {
    if (info->size != c.object_size() || info->chunk_size != c.chunk_size()) {
      return refuse(absl::FailedPreconditionError(
          absl::StrFormat("this node caches %s as %u bytes in chunks of %u, not %u in chunks of %u",
                          key, info->size, info->chunk_size, c.object_size(), c.chunk_size())));
    }
    ReadAhead(want);  // what comes next, of an object this node has
  }
  if (want.only_if_present()) {
    SendSlot slot(*this);
    auto present = ReadPresent(key, c);
    if (!present.ok()) return grpc::Status(grpc::StatusCode::NOT_FOUND, "not here");
    return SendStored(stream, want, *present);
  }
  absl::Status last = absl::UnavailableError("no fill was attempted");
  for (int attempt = 0; attempt < opts_.max_fill_attempts; ++attempt) {
    if (absl::Status st = store_.Register({key, c.object_size(), "via peers", c.chunk_size()});
        !st.ok()) {
      return ToGrpc(
          absl::UnavailableError(absl::StrCat("this node cannot cache it: ", st.message())));
    }
    bool leased = false;
    absl::Status lease_status;
    auto r = store_.Fill(key, c.index(), [&](absl::Span<char> out) {
      leased = true;
      lease_status = Lease(stream, want, asker, out);
      return lease_status;
    });
    if (leased) {
      if (!r.ok()) return ToGrpc(lease_status.ok() ? r.status() : lease_status);
      v1::FetchResponse done;
      done.mutable_stored();
      stream->Write(Pack(done));
      return grpc::Status::OK;
    }
    if (!r.ok()) {  // another asker's lease failed, or the object went: again
      last = r.status();
      continue;
    }
    SendSlot slot(*this);
    if (r->bytes) {  // just filled: the bytes are in hand
      return SendStored(stream, want, {r->bytes, ChunkChecksum(r->bytes->view()), false});
    }
    auto present = ReadPresent(key, c);  // it was present already
    if (!present.ok()) {
      last = absl::UnavailableError("evicted while being served");
      continue;
    }
    return SendStored(stream, want, *present);
  }
  return ToGrpc(absl::UnavailableError(
      absl::StrCat("no node could fetch chunk ", c.index(), " of ", key, ": ", last.message())));
}

PeerService::SendSlot::SendSlot(PeerService& service) : service_(service) {
  absl::MutexLock l(&service_.send_mu_);
  auto free_slot = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(service_.send_mu_) {
    return service_.sending_ < service_.opts_.max_sending;
  };
  service_.send_mu_.Await(absl::Condition(&free_slot));
  ++service_.sending_;
}

PeerService::SendSlot::~SendSlot() {
  absl::MutexLock l(&service_.send_mu_);
  --service_.sending_;
}

absl::StatusOr<cache::StoredChunk> PeerService::ReadPresent(const std::string& key,
                                                            const v1::ChunkRef& c) {
  auto info = store_.Lookup(key);
  if (!info || info->size != c.object_size() || info->chunk_size != c.chunk_size()) {
    return absl::NotFoundError("not here");
  }
  return store_.ReadChunk(key, c.index());
}

grpc::Status PeerService::SendStored(Stream* stream, const v1::Want& want,
                                     const cache::StoredChunk& chunk) {
  const std::string_view bytes = chunk.bytes->view();
  return Send(stream, want, bytes.size(), chunk.checksum,
              [&](size_t offset, absl::Span<char> out) { return CopyOut(bytes, offset, out); });
}

grpc::Status PeerService::Send(Stream* stream, const v1::Want& want, size_t length, uint64_t xxh3,
                               ChunkReader read) {
  SendOptions so;
  so.zstd =
      std::find(want.accept().begin(), want.accept().end(), v1::CODEC_ZSTD) != want.accept().end();
  so.link_bytes_per_second = want.link_bytes_per_second();
  so.compress_bytes_per_second = compress_rate_;
  SendReport rep;
  absl::Status st = SendChunk<v1::FetchResponse>(*stream, length, xxh3, read, so, *pieces_, &rep);
  if (absl::IsCancelled(st)) {
    return grpc::Status(grpc::StatusCode::CANCELLED, "the asker went away");
  }
  if (!st.ok()) {
    spdlog::error("peers: cannot send chunk {} of {}: {}", want.chunk().index(), want.chunk().key(),
                  st.message());
    return ToGrpc(st);
  }
  if (rep.compress_bytes_per_second > 0) {
    compress_rate_ = 0.8 * compress_rate_ + 0.2 * rep.compress_bytes_per_second;
  }
  ++served_;
  bytes_ += length;
  wire_ += rep.wire_bytes;
  if (rep.compressed) ++compressed_;
  return grpc::Status::OK;
}

absl::Status PeerService::Lease(Stream* stream, const v1::Want& want, const std::string& asker,
                                absl::Span<char> out) {
  if (!want.can_fetch()) {
    return absl::NotFoundError("nobody is fetching it and the asker cannot reach its origin");
  }
  v1::FetchResponse grant;
  grant.mutable_lease()->set_timeout_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(opts_.lease_timeout)));
  if (!stream->Write(Pack(grant))) return absl::UnavailableError("the asker went away");
  ++leases_;
  auto failed = [&](absl::Status st) {
    ++leases_failed_;
    spdlog::warn("peers: the fetch lease of chunk {} of {} held by {} failed: {}",
                 want.chunk().index(), want.chunk().key(), asker, st.message());
    return st;
  };
  grpc::ByteBuffer message;
  if (!stream->Read(&message)) return failed(absl::UnavailableError("the lease holder went away"));
  v1::FetchRequest up;
  if (!Unpack(message, &up)) return failed(absl::InvalidArgumentError("a malformed message"));
  if (up.has_lease_failed()) {
    return failed(absl::UnavailableError(
        absl::StrCat("the lease holder could not fetch it: ", up.lease_failed().reason())));
  }
  if (!up.has_header()) return failed(absl::InvalidArgumentError("expected the chunk's header"));
  absl::Status st = ReceiveChunk<v1::FetchRequest>(*stream, up.header(), out, nullptr);
  if (!st.ok()) return failed(st);
  ++received_;
  return absl::OkStatus();
}

PeerServiceStats PeerService::Stats() const {
  PeerServiceStats s;
  s.wants = wants_;
  s.refused = refused_;
  s.chunks_served = served_;
  s.bytes_served = bytes_;
  s.wire_bytes_served = wire_;
  s.compressed_chunks = compressed_;
  s.leases_granted = leases_;
  s.leases_failed = leases_failed_;
  s.chunks_received = received_;
  s.read_ahead_queued = read_ahead_queued_;
  s.read_ahead = read_ahead_;
  s.read_ahead_dropped = read_ahead_dropped_;
  return s;
}

absl::StatusOr<std::unique_ptr<grpc::Server>> StartPeerServer(const std::string& address,
                                                              const PeerCredentials& credentials,
                                                              PeerService& service) {
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort(address, credentials.server, &port);
  b.SetMaxReceiveMessageSize(8 << 20);
  // Peers ping every two seconds to notice a silent partition; a server
  // that took that for abuse would cut them off.
  b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 1000);
  b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  b.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  b.SetResourceQuota(PeerQuota());  // bounds its handler threads too
  b.RegisterService(&service);
  auto server = b.BuildAndStart();
  if (!server || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve peers on ", address,
                                               " (in use, or not an address of this host?)"));
  }
  return server;
}

}  // namespace strata::peer
