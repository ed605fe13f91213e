// A chunk on the peer wire, either way (owner to asker, lease holder to
// owner): a ChunkHeader with the chunk's length and XXH3-64 checksum, then
// pieces of at most kPieceBytes, each raw or one zstd frame. The sender
// decides per chunk whether zstd pays: only where a sample compresses well
// and the link, as the receiver last measured it, is slower than
// compressing. The receiver writes pieces straight into the chunk's one
// buffer and checks the checksum before anyone uses the bytes.
#pragma once

#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "base/digest.h"
#include "peer.pb.h"

namespace strata::peer {

namespace v1 = ::strata::peer::v1;

inline constexpr size_t kPieceBytes = 1u << 20;

// Whether to compress a chunk whose sample compressed to `sample_ratio` of
// its size, over a link of `link_bytes_per_second` (0: not measured yet),
// with zstd compressing at `compress_bytes_per_second`. Compressing pays
// when the wire time saved exceeds the time spent compressing:
// len/link > len/compress + ratio*len/link. An unmeasured link is taken to
// be fast: compressing must never make a fast link slower.
bool ShouldCompress(double sample_ratio, double link_bytes_per_second,
                    double compress_bytes_per_second);

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

// Sends a chunk of `length` bytes whose ChunkChecksum is `xxh3` as a header and
// pieces, each read through `read` into `piece` (reused: a chunk in flight
// costs one piece of memory, not its whole size) and sent by `send_piece`.
// Cancelled as soon as a send fails; a failed read's own status.
absl::Status EncodeChunk(size_t length, uint64_t xxh3, ChunkReader read, const SendOptions& options,
                         absl::FunctionRef<bool(const v1::ChunkHeader&)> send_header,
                         v1::Piece& piece, absl::FunctionRef<bool()> send_piece,
                         SendReport* report);

// Assembles one chunk into `out` (exactly its length) from its header and
// pieces. Every check failure is DataLoss (a corrupt or lying sender) or
// InvalidArgument (a malformed message), with what was wrong.
class ChunkReceiver {
 public:
  explicit ChunkReceiver(absl::Span<char> out) : out_(out) {}
  absl::Status Begin(const v1::ChunkHeader& header);
  absl::Status Add(const v1::Piece& piece);
  bool complete() const { return filled_ == out_.size(); }
  // The checksum, once every byte arrived.
  absl::Status Finish() const;
  uint64_t wire_bytes() const { return wire_bytes_; }

 private:
  absl::Span<char> out_;
  v1::ChunkHeader header_;
  size_t filled_ = 0;
  uint64_t wire_bytes_ = 0;
  bool begun_ = false;
};

// The helpers below work on either side's stream; `Message` is the type
// the stream carries in that direction (FetchRequest or FetchResponse),
// both of which hold a `header` and a `piece`.
template <typename Message, typename Writer>
absl::Status SendChunk(Writer& stream, size_t length, uint64_t xxh3, ChunkReader read,
                       const SendOptions& options, SendReport* report) {
  Message m;  // every piece goes out in this one message
  return EncodeChunk(
      length, xxh3, read, options,
      [&](const v1::ChunkHeader& h) {
        Message hm;
        *hm.mutable_header() = h;
        return stream.Write(hm);
      },
      *m.mutable_piece(), [&] { return stream.Write(m); }, report);
}

// A chunk in memory.
template <typename Message, typename Writer>
absl::Status SendChunk(Writer& stream, std::string_view chunk, const SendOptions& options,
                       SendReport* report) {
  return SendChunk<Message>(
      stream, chunk.size(), ChunkChecksum(chunk),
      [chunk](size_t offset, absl::Span<char> out) { return CopyOut(chunk, offset, out); }, options,
      report);
}

// Reads the pieces that follow `header` (already read) into `out`.
template <typename Message, typename Reader>
absl::Status ReceiveChunk(Reader& stream, const v1::ChunkHeader& header, absl::Span<char> out,
                          uint64_t* wire_bytes) {
  ChunkReceiver rx(out);
  absl::Status st = rx.Begin(header);
  Message m;  // reused: its piece's buffer is allocated once
  while (st.ok() && !rx.complete()) {
    if (!stream.Read(&m))
      return absl::UnavailableError("the stream ended in the middle of a chunk");
    if (!m.has_piece()) return absl::InvalidArgumentError("expected a piece of the chunk");
    st = rx.Add(m.piece());
  }
  if (st.ok()) st = rx.Finish();
  if (wire_bytes != nullptr) *wire_bytes = rx.wire_bytes();
  return st;
}

}  // namespace strata::peer
