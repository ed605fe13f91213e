// Chunk encoding on the peer wire: pieces, zstd where it pays, checksums.
#include "peer/wire.h"

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

bool ShouldCompress(double sample_ratio, double link_bytes_per_second,
                    double compress_bytes_per_second) {
  if (sample_ratio >= kMaxRatio || link_bytes_per_second <= 0 || compress_bytes_per_second <= 0) {
    return false;
  }
  // 1/link > 1/compress + ratio/link  <=>  link < compress * (1 - ratio)
  return link_bytes_per_second < compress_bytes_per_second * (1 - sample_ratio);
}

absl::Status EncodeChunk(size_t length, uint64_t xxh3, ChunkReader read, const SendOptions& options,
                         absl::FunctionRef<bool(const v1::ChunkHeader&)> send_header,
                         v1::Piece& piece, absl::FunctionRef<bool()> send_piece,
                         SendReport* report) {
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
    piece.set_raw_length(static_cast<uint32_t>(n));
    std::string* data = piece.mutable_data();
    if (zstd) {
      raw.resize(n);
      if (absl::Status st = read(off, absl::MakeSpan(raw)); !st.ok()) return st;
      data->resize(ZSTD_compressBound(n));
      size_t z = ZSTD_compressCCtx(Cctx(), data->data(), data->size(), raw.data(), n, kZstdLevel);
      if (ZSTD_isError(z)) {
        return absl::InternalError(absl::StrCat("zstd: ", ZSTD_getErrorName(z)));
      }
      data->resize(z);
    } else {
      data->resize(n);
      if (absl::Status st = read(off, absl::MakeSpan(data->data(), n)); !st.ok()) return st;
    }
    r.wire_bytes += data->size();
    if (!send_piece()) return gone;
  }
  if (report != nullptr) *report = r;
  return absl::OkStatus();
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
  size_t raw = piece.raw_length();
  if (raw == 0 || raw > kPieceBytes || raw > out_.size() - filled_) {
    return absl::DataLossError(absl::StrFormat("a piece of %u bytes at %u overruns the chunk (%u)",
                                               raw, filled_, out_.size()));
  }
  char* dst = out_.data() + filled_;
  if (header_.codec() == v1::CODEC_ZSTD) {
    size_t n = ZSTD_decompressDCtx(Dctx(), dst, raw, piece.data().data(), piece.data().size());
    if (ZSTD_isError(n) || n != raw) {
      return absl::DataLossError(
          absl::StrCat("a zstd piece does not decode to its ", raw,
                       " bytes: ", ZSTD_isError(n) ? ZSTD_getErrorName(n) : "short"));
    }
  } else {
    if (piece.data().size() != raw) {
      return absl::DataLossError(
          absl::StrFormat("a raw piece holds %u bytes, not %u", piece.data().size(), raw));
    }
    std::memcpy(dst, piece.data().data(), raw);
  }
  filled_ += raw;
  wire_bytes_ += piece.data().size();
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
