// A chunk on the peer wire, either way (owner to asker, lease holder to
// owner): a ChunkHeader with the chunk's length and XXH3-64 checksum, then
// pieces of at most kPieceBytes, each raw or one zstd frame. The sender
// decides per chunk whether zstd pays: only where a sample compresses well
// and the link, as the receiver last measured it, is slower than
// compressing. The receiver checks the checksum before anyone uses the
// bytes.
//
// Both sides move messages as gRPC byte buffers, not as parsed protobuf
// messages, so that a piece's bytes are copied once on either side: the
// sender hands its piece buffer to the transport as a slice of the message
// (a protobuf message would be serialized into a fresh buffer), and the
// receiver reads the piece's bytes from the transport's slices straight into
// the chunk (a parsed message would first copy them into a fresh string of
// its own). Everything else (Want, headers, leases) is ordinary protobuf,
// and a peer that encodes pieces another valid way (field order, unknown
// fields) is parsed the ordinary way: the fast path is only an
// optimization of the encoding this file writes.
#pragma once

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "base/digest.h"
#include "peer.pb.h"

namespace strata::peer {

namespace v1 = ::strata::peer::v1;

inline constexpr size_t kPieceBytes = 1u << 20;

// The one method of proto/peer.proto's Peer service, as both sides name it
// on the wire (the generated stub and service use the same name).
inline constexpr char kFetchMethod[] = "/strata.peer.v1.Peer/Fetch";

// The quota of every peer connection of this process, either way.
// Memory: 32 MiB, which they read into; gRPC sizes its socket reads and
// flow-control windows to what is left of it. Unbounded, each connection
// read ahead into buffers of up to 4 MiB, and a node talking to fifteen
// peers held 140 MiB of them (bench/peers.sh's 16-node run, by heaptrack).
// Threads: 512, for the server's handlers; waiters hold one each while a
// chunk's fetch is under way, so a flood of asks costs the askers a
// fallback (the call is refused) rather than this node its memory.
grpc::ResourceQuota& PeerQuota();

// Whether to compress a chunk whose sample compressed to `sample_ratio` of
// its size, over a link of `link_bytes_per_second` (0: not measured yet),
// with zstd compressing at `compress_bytes_per_second`. Compressing pays
// when the wire time saved exceeds the time spent compressing:
// len/link > len/compress + ratio*len/link. An unmeasured link is taken to
// be fast: compressing must never make a fast link slower.
bool ShouldCompress(double sample_ratio, double link_bytes_per_second,
                    double compress_bytes_per_second);

// Buffers for pieces on their way out, reused. A fresh 1 MiB buffer per
// piece costs a page fault every 4 KiB: in a profile of a node reading
// from its peers, zeroing fresh pages took more CPU than the copies. A
// buffer goes to the transport as it is and comes back here once the
// transport has sent it; the pool keeps up to `keep` idle ones.
class PiecePool : public std::enable_shared_from_this<PiecePool> {
 public:
  class Buffer;
  // A raw piece, or the zstd frame of one.
  static constexpr size_t kCapacity = kPieceBytes + (kPieceBytes >> 7) + 4096;

  static std::shared_ptr<PiecePool> Create(size_t keep = 16);
  ~PiecePool();
  Buffer Take();
  size_t idle() const;

 private:
  explicit PiecePool(size_t keep) : keep_(keep) {}
  void Give(char* buffer);

  const size_t keep_;
  mutable absl::Mutex mu_;
  std::vector<char*> idle_ ABSL_GUARDED_BY(mu_);
};

// One buffer of a PiecePool, back to its pool when dropped.
class PiecePool::Buffer {
 public:
  Buffer(Buffer&& other) noexcept
      : pool_(std::move(other.pool_)), data_(std::exchange(other.data_, nullptr)) {}
  Buffer& operator=(Buffer&&) = delete;
  ~Buffer();
  char* data() const { return data_; }
  // The first `size` bytes as a slice that owns the buffer.
  grpc::Slice ToSlice(size_t size) &&;

 private:
  friend class PiecePool;
  Buffer(std::shared_ptr<PiecePool> pool, char* data) : pool_(std::move(pool)), data_(data) {}
  std::shared_ptr<PiecePool> pool_;
  char* data_;
};

// A piece ready to go: `size` bytes of `buffer` stand for `raw_length`
// bytes of the chunk (the same, or one zstd frame of them).
struct OutPiece {
  PiecePool::Buffer buffer;
  size_t size;
  uint32_t raw_length;
};

struct SendOptions {
  bool zstd = false;  // the receiver accepts it
  uint64_t link_bytes_per_second = 0;
  double compress_bytes_per_second = 300e6;  // the sender's estimate
};

struct SendReport {
  uint64_t wire_bytes = 0;
  bool compressed = false;
  double compress_bytes_per_second = 0;  // measured on this chunk; 0: none
};

// Copies [offset, offset + out.size()) of the chunk being sent into `out`.
using ChunkReader = absl::FunctionRef<absl::Status(size_t offset, absl::Span<char> out)>;

// A ChunkReader's work for a chunk in memory.
inline absl::Status CopyOut(std::string_view chunk, size_t offset, absl::Span<char> out) {
  std::memcpy(out.data(), chunk.data() + offset, out.size());
  return absl::OkStatus();
}

// Sends a chunk of `length` bytes whose ChunkChecksum is `xxh3` as a header
// and pieces, each read through `read` into a buffer of `pool` (a chunk in
// flight costs the pieces the transport holds, not its whole size) and sent
// by `send_piece`. Cancelled as soon as a send fails; a failed read's own
// status.
absl::Status EncodeChunk(size_t length, uint64_t xxh3, ChunkReader read, const SendOptions& options,
                         PiecePool& pool,
                         absl::FunctionRef<bool(const v1::ChunkHeader&)> send_header,
                         absl::FunctionRef<bool(OutPiece)> send_piece, SendReport* report);

// A protobuf message as a byte buffer, and back (false: malformed).
grpc::ByteBuffer Pack(const google::protobuf::MessageLite& message);
bool Unpack(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message);

// The message whose only field `piece_field` is a Piece of `piece`'s bytes,
// which it holds without a copy.
grpc::ByteBuffer PieceMessage(int piece_field, OutPiece piece);

// Assembles one chunk into `out` (exactly its length) from its header and
// pieces. Every check failure is DataLoss (a corrupt or lying sender) or
// InvalidArgument (a malformed message), with what was wrong.
class ChunkReceiver {
 public:
  explicit ChunkReceiver(absl::Span<char> out) : out_(out) {}
  absl::Status Begin(const v1::ChunkHeader& header);
  absl::Status Add(const v1::Piece& piece);
  // The piece a message of type `Message` (FetchRequest or FetchResponse)
  // carries, read from its buffer straight into the chunk when it is
  // encoded as PieceMessage does, parsed as a message otherwise.
  template <typename Message>
  absl::Status AddFrom(const grpc::ByteBuffer& message) {
    if (std::optional<absl::Status> st = AddEncoded(message, Message::kPieceFieldNumber)) {
      return *st;
    }
    Message m;
    if (!Unpack(message, &m)) return absl::InvalidArgumentError("a malformed message");
    if (!m.has_piece()) return absl::InvalidArgumentError("expected a piece of the chunk");
    return Add(m.piece());
  }
  bool complete() const { return filled_ == out_.size(); }
  // The checksum, once every byte arrived.
  absl::Status Finish() const;
  uint64_t wire_bytes() const { return wire_bytes_; }

 private:
  // Checks a piece of `raw` bytes whose `size` bytes on the wire are at
  // `data` (which is the chunk's next bytes themselves when it is raw) and
  // takes it into the chunk.
  absl::Status Take(uint32_t raw, const char* data, size_t size);
  // The fast path of AddFrom: nullopt when `message` is not a lone piece
  // encoded the plain way.
  std::optional<absl::Status> AddEncoded(const grpc::ByteBuffer& message, int piece_field);

  absl::Span<char> out_;
  v1::ChunkHeader header_;
  size_t filled_ = 0;
  uint64_t wire_bytes_ = 0;
  bool begun_ = false;
  std::string frame_;  // a zstd piece, gathered from the transport's slices
};

// The helpers below work on either side's stream of byte buffers;
// `Message` is the type the stream carries in that direction (FetchRequest
// or FetchResponse), both of which hold a `header` and a `piece`.
template <typename Message, typename Writer>
absl::Status SendChunk(Writer& stream, size_t length, uint64_t xxh3, ChunkReader read,
                       const SendOptions& options, PiecePool& pool, SendReport* report) {
  return EncodeChunk(
      length, xxh3, read, options, pool,
      [&](const v1::ChunkHeader& h) {
        Message m;
        *m.mutable_header() = h;
        return stream.Write(Pack(m));
      },
      [&](OutPiece p) {
        return stream.Write(PieceMessage(Message::kPieceFieldNumber, std::move(p)));
      },
      report);
}

// A chunk in memory.
template <typename Message, typename Writer>
absl::Status SendChunk(Writer& stream, std::string_view chunk, const SendOptions& options,
                       PiecePool& pool, SendReport* report) {
  return SendChunk<Message>(
      stream, chunk.size(), ChunkChecksum(chunk),
      [chunk](size_t offset, absl::Span<char> out) { return CopyOut(chunk, offset, out); }, options,
      pool, report);
}

// Reads the pieces that follow `header` (already read) into `out`.
template <typename Message, typename Reader>
absl::Status ReceiveChunk(Reader& stream, const v1::ChunkHeader& header, absl::Span<char> out,
                          uint64_t* wire_bytes) {
  ChunkReceiver rx(out);
  absl::Status st = rx.Begin(header);
  grpc::ByteBuffer m;
  while (st.ok() && !rx.complete()) {
    if (!stream.Read(&m))
      return absl::UnavailableError("the stream ended in the middle of a chunk");
    st = rx.AddFrom<Message>(m);
  }
  if (st.ok()) st = rx.Finish();
  if (wire_bytes != nullptr) *wire_bytes = rx.wire_bytes();
  return st;
}

}  // namespace strata::peer
