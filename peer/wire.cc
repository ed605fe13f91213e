// Chunk encoding on the peer wire: pieces, zstd where it pays, checksums.
#include "peer/wire.h"

#include <google/protobuf/io/coded_stream.h>
#include <grpcpp/support/proto_buffer_reader.h>
#include <zstd.h>

#include <algorithm>
#include <chrono>
#include <memory>
#include <string>

#include "absl/strings/str_format.h"

namespace strata::peer {
namespace {

constexpr size_t kSampleBytes = 64u << 10;
constexpr int kZstdLevel = 1;      // the fast end: this is about wire time
constexpr double kMaxRatio = 0.9;  // below 10% saved it never pays
static_assert(PiecePool::kCapacity >= ZSTD_COMPRESSBOUND(kPieceBytes));

// Protobuf's wire format, for the one message this file encodes by hand.
constexpr uint32_t kVarint = 0, kLengthDelimited = 2;
constexpr uint32_t Tag(int field, uint32_t wire_type) {
  return (static_cast<uint32_t>(field) << 3) | wire_type;
}

struct CctxDeleter {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct DctxDeleter {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};

// One context per thread: making one costs more than a small frame.
ZSTD_CCtx* Cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, CctxDeleter> c(ZSTD_createCCtx());
  return c.get();
}
ZSTD_DCtx* Dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, DctxDeleter> c(ZSTD_createDCtx());
  return c.get();
}

}  // namespace

grpc::ResourceQuota& PeerQuota() {
  static grpc::ResourceQuota* quota = [] {
    auto* q = new grpc::ResourceQuota("strata-peer");
    q->Resize(32u << 20);
    q->SetMaxThreads(512);
    return q;
  }();
  return *quota;
}

bool ShouldCompress(double sample_ratio, double link_bytes_per_second,
                    double compress_bytes_per_second) {
  if (sample_ratio >= kMaxRatio || link_bytes_per_second <= 0 || compress_bytes_per_second <= 0) {
    return false;
  }
  // 1/link > 1/compress + ratio/link  <=>  link < compress * (1 - ratio)
  return link_bytes_per_second < compress_bytes_per_second * (1 - sample_ratio);
}

PiecePool::~PiecePool() {
  for (char* b : idle_) delete[] b;
}

std::shared_ptr<PiecePool> PiecePool::Create(size_t keep) {
  return std::shared_ptr<PiecePool>(new PiecePool(keep));
}

PiecePool::Buffer PiecePool::Take() {
  char* b = nullptr;
  {
    absl::MutexLock l(&mu_);
    if (!idle_.empty()) {
      b = idle_.back();
      idle_.pop_back();
    }
  }
  return Buffer(shared_from_this(), b != nullptr ? b : new char[kCapacity]);
}

size_t PiecePool::idle() const {
  absl::MutexLock l(&mu_);
  return idle_.size();
}

void PiecePool::Give(char* buffer) {
  {
    absl::MutexLock l(&mu_);
    if (idle_.size() < keep_) {
      idle_.push_back(buffer);
      return;
    }
  }
  delete[] buffer;
}

PiecePool::Buffer::~Buffer() {
  if (data_ != nullptr) pool_->Give(data_);
}

grpc::Slice PiecePool::Buffer::ToSlice(size_t size) && {
  // The slice's user data is the buffer itself, dropped (back to its pool)
  // when the transport lets go of the slice.
  auto* owned = new Buffer(std::move(*this));
  return grpc::Slice(
      owned->data(), size, [](void* b) { delete static_cast<Buffer*>(b); }, owned);
}

absl::Status EncodeChunk(size_t length, uint64_t xxh3, ChunkReader read, const SendOptions& options,
                         PiecePool& pool,
                         absl::FunctionRef<bool(const v1::ChunkHeader&)> send_header,
                         absl::FunctionRef<bool(OutPiece)> send_piece, SendReport* report) {
  const absl::Status gone = absl::CancelledError("the receiver went away");
  SendReport r;
  bool zstd = false;
  std::string raw;  // the bytes to compress, when they are compressed
  if (options.zstd && length >= kSampleBytes && options.link_bytes_per_second > 0) {
    raw.resize(kSampleBytes);
    if (absl::Status st = read(0, absl::MakeSpan(raw)); !st.ok()) return st;
    std::string sample(ZSTD_compressBound(kSampleBytes), '\0');
    auto start = std::chrono::steady_clock::now();
    size_t n = ZSTD_compressCCtx(Cctx(), sample.data(), sample.size(), raw.data(), kSampleBytes,
                                 kZstdLevel);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!ZSTD_isError(n)) {
      double ratio = static_cast<double>(n) / kSampleBytes;
      if (secs > 0) r.compress_bytes_per_second = kSampleBytes / secs;
      zstd = ShouldCompress(ratio, static_cast<double>(options.link_bytes_per_second),
                            options.compress_bytes_per_second);
    }
  }
  v1::ChunkHeader h;
  h.set_length(static_cast<uint32_t>(length));
  h.set_xxh3_64(xxh3);
  h.set_codec(zstd ? v1::CODEC_ZSTD : v1::CODEC_NONE);
  if (!send_header(h)) return gone;
  r.compressed = zstd;
  for (size_t off = 0; off < length; off += kPieceBytes) {
    const size_t n = std::min(kPieceBytes, length - off);
    PiecePool::Buffer buf = pool.Take();
    size_t size = n;
    if (zstd) {
      raw.resize(n);
      if (absl::Status st = read(off, absl::MakeSpan(raw)); !st.ok()) return st;
      size = ZSTD_compressCCtx(Cctx(), buf.data(), PiecePool::kCapacity, raw.data(), n, kZstdLevel);
      if (ZSTD_isError(size)) {
        return absl::InternalError(absl::StrCat("zstd: ", ZSTD_getErrorName(size)));
      }
    } else if (absl::Status st = read(off, absl::MakeSpan(buf.data(), n)); !st.ok()) {
      return st;
    }
    r.wire_bytes += size;
    if (!send_piece(OutPiece{std::move(buf), size, static_cast<uint32_t>(n)})) return gone;
  }
  if (report != nullptr) *report = r;
  return absl::OkStatus();
}

grpc::ByteBuffer Pack(const google::protobuf::MessageLite& message) {
  grpc::Slice s(message.SerializeAsString());
  return grpc::ByteBuffer(&s, 1);
}

bool Unpack(const grpc::ByteBuffer& buffer, google::protobuf::MessageLite* message) {
  grpc::ByteBuffer b(buffer);  // a reference to the same slices
  grpc::ProtoBufferReader reader(&b);
  return reader.status().ok() && message->ParseFromZeroCopyStream(&reader);
}

grpc::ByteBuffer PieceMessage(int piece_field, OutPiece piece) {
  using google::protobuf::io::CodedOutputStream;
  const uint32_t data_tag = Tag(v1::Piece::kDataFieldNumber, kLengthDelimited);
  const uint32_t raw_tag = Tag(v1::Piece::kRawLengthFieldNumber, kVarint);
  const size_t size = piece.size;
  const size_t inner =
      CodedOutputStream::VarintSize32(data_tag) + CodedOutputStream::VarintSize64(size) + size +
      CodedOutputStream::VarintSize32(raw_tag) + CodedOutputStream::VarintSize32(piece.raw_length);
  uint8_t head[32];
  uint8_t* p = head;
  p = CodedOutputStream::WriteVarint32ToArray(Tag(piece_field, kLengthDelimited), p);
  p = CodedOutputStream::WriteVarint64ToArray(inner, p);
  p = CodedOutputStream::WriteVarint32ToArray(data_tag, p);
  p = CodedOutputStream::WriteVarint64ToArray(size, p);
  uint8_t tail[16];
  uint8_t* q = tail;
  q = CodedOutputStream::WriteVarint32ToArray(raw_tag, q);
  q = CodedOutputStream::WriteVarint32ToArray(piece.raw_length, q);
  grpc::Slice slices[3] = {grpc::Slice(head, static_cast<size_t>(p - head)),
                           std::move(piece.buffer).ToSlice(size),
                           grpc::Slice(tail, static_cast<size_t>(q - tail))};
  return grpc::ByteBuffer(slices, 3);
}

absl::Status ChunkReceiver::Begin(const v1::ChunkHeader& header) {
  if (header.length() != out_.size()) {
    return absl::DataLossError(absl::StrFormat("the chunk is %u bytes, not the %u expected",
                                               header.length(), out_.size()));
  }
  if (header.codec() != v1::CODEC_NONE && header.codec() != v1::CODEC_ZSTD) {
    return absl::InvalidArgumentError(absl::StrCat("unknown codec ", header.codec()));
  }
  header_ = header;
  begun_ = true;
  return absl::OkStatus();
}

absl::Status ChunkReceiver::Add(const v1::Piece& piece) {
  if (!begun_) return absl::InvalidArgumentError("a piece before the chunk's header");
  return Take(piece.raw_length(), piece.data().data(), piece.data().size());
}

std::optional<absl::Status> ChunkReceiver::AddEncoded(const grpc::ByteBuffer& message,
                                                      int piece_field) {
  if (!begun_) return absl::InvalidArgumentError("a piece before the chunk's header");
  grpc::ByteBuffer b(message);
  grpc::ProtoBufferReader reader(&b);
  if (!reader.status().ok()) return std::nullopt;
  google::protobuf::io::CodedInputStream in(&reader);
  // Exactly PieceMessage's encoding: the piece field, and in it the data
  // then the raw length. Anything else is left to the parser.
  uint32_t piece_size, size, raw = 0;
  if (in.ReadTag() != Tag(piece_field, kLengthDelimited) || !in.ReadVarint32(&piece_size)) {
    return std::nullopt;
  }
  const auto limit = in.PushLimit(static_cast<int>(piece_size));
  if (in.ReadTag() != Tag(v1::Piece::kDataFieldNumber, kLengthDelimited) ||
      !in.ReadVarint32(&size)) {
    return std::nullopt;
  }
  // A raw piece's bytes go where they belong in the chunk; they count only
  // once Take has checked them, so a fallback to the parser loses nothing.
  const bool zstd = header_.codec() == v1::CODEC_ZSTD;
  if (size > (zstd ? PiecePool::kCapacity : out_.size() - filled_)) return std::nullopt;
  if (zstd) frame_.resize(size);
  char* data = zstd ? frame_.data() : out_.data() + filled_;
  if (!in.ReadRaw(data, static_cast<int>(size))) return std::nullopt;
  uint32_t tag = in.ReadTag();
  if (tag == Tag(v1::Piece::kRawLengthFieldNumber, kVarint)) {
    if (!in.ReadVarint32(&raw)) return std::nullopt;
    tag = in.ReadTag();
  }
  if (tag != 0 || !in.ConsumedEntireMessage() || in.BytesUntilLimit() != 0) return std::nullopt;
  in.PopLimit(limit);
  if (in.ReadTag() != 0 || !in.ConsumedEntireMessage()) return std::nullopt;
  return Take(raw, data, size);
}

absl::Status ChunkReceiver::Take(uint32_t raw, const char* data, size_t size) {
  if (raw == 0 || raw > kPieceBytes || raw > out_.size() - filled_) {
    return absl::DataLossError(absl::StrFormat("a piece of %u bytes at %u overruns the chunk (%u)",
                                               raw, filled_, out_.size()));
  }
  char* dst = out_.data() + filled_;
  if (header_.codec() == v1::CODEC_ZSTD) {
    size_t n = ZSTD_decompressDCtx(Dctx(), dst, raw, data, size);
    if (ZSTD_isError(n) || n != raw) {
      return absl::DataLossError(
          absl::StrCat("a zstd piece does not decode to its ", raw,
                       " bytes: ", ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short"));
    }
  } else {
    if (size != raw) {
      return absl::DataLossError(absl::StrFormat("a raw piece holds %u bytes, not %u", size, raw));
    }
    if (data != dst) std::memcpy(dst, data, raw);
  }
  filled_ += raw;
  wire_bytes_ += size;
  return absl::OkStatus();
}

absl::Status ChunkReceiver::Finish() const {
  if (!complete()) {
    return absl::DataLossError(absl::StrFormat("%u of %u bytes arrived", filled_, out_.size()));
  }
  uint64_t got = ChunkChecksum(std::string_view(out_.data(), out_.size()));
  if (got != header_.xxh3_64()) {
    return absl::DataLossError(absl::StrFormat(
        "the chunk's checksum is %016x, the sender said %016x: corrupted on the way", got,
        header_.xxh3_64()));
  }
  return absl::OkStatus();
}

}  // namespace strata::peer
