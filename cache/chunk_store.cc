// The chunk store's public value types (ReadLease, ChunkBytes) and the
// non-virtual part of ChunkStore. The store itself is ChunkStoreImpl
// (cache/chunk_store_impl.h), opened in chunk_store_open.cc.
#include "cache/chunk_store.h"

#include <algorithm>
#include <cassert>
#include <cstdlib>
#include <new>

#include "absl/strings/str_format.h"

namespace strata::cache {

ReadLease::ReadLease(ReadLease&& o) noexcept { *this = std::move(o); }
ReadLease& ReadLease::operator=(ReadLease&& o) noexcept {
  if (this != &o) {
    if (release_) release_();
    release_ = std::move(o.release_);
    o.release_ = nullptr;
    chunk_ = std::move(o.chunk_);
    next_ = std::move(o.next_);
    fd_ = o.fd_;
    offset_ = o.offset_;
    length_ = o.length_;
    chunk_offset_ = o.chunk_offset_;
  }
  return *this;
}
ReadLease::~ReadLease() {
  if (release_) release_();
}

ChunkBytes::ChunkBytes(size_t capacity) : buf_(IoBuffer::Allocate(capacity)), capacity_(capacity) {
  if (!buf_) throw std::bad_alloc();
}
ChunkBytes::~ChunkBytes() = default;
void ChunkBytes::resize(size_t n) {
  assert(n <= capacity_);
  size_ = n;
}

absl::StatusOr<FillResult> ChunkStore::WriteChunk(const std::string& key, uint32_t index,
                                                  absl::Span<const char> data) {
  return Fill(key, index, [&](absl::Span<char> out) -> absl::Status {
    if (out.size() != data.size()) {
      return absl::InvalidArgumentError(absl::StrFormat("chunk %u of %s is %u bytes, got %u", index,
                                                        key, out.size(), data.size()));
    }
    std::copy(data.begin(), data.end(), out.begin());
    return absl::OkStatus();
  });
}

}  // namespace strata::cache
