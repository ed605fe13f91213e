// Memory for direct I/O: page-aligned, and laid on huge pages where it is
// large enough that the block layer would otherwise split its requests.
#pragma once

#include <cstddef>

namespace strata {

// A buffer for O_DIRECT reads and writes. A block device takes at most
// max_segments physically contiguous pieces per request (254 on virtio-blk),
// so a 4 MiB direct read into 4 KiB pages reached the disk as five ~900 KiB
// requests, each waiting its turn behind the others' (an owner serving a
// peer from disk read at about half the rate the page cache's readahead
// did). A buffer of 2 MiB or more starts on a 2 MiB boundary and is advised
// to transparent huge pages, so a 4 MiB chunk is two pieces, and one request
// where the device takes 4 MiB at once (max_sectors_kb; 4096 here, 1280 by
// default on Debian 12's own kernel, where it is four requests). Where huge
// pages are off it is an ordinary aligned buffer.
class IoBuffer {
 public:
  static constexpr size_t kAlign = 4096;
  static constexpr size_t kHugePage = size_t{2} << 20;

  IoBuffer() = default;
  // An empty buffer when the memory cannot be had.
  static IoBuffer Allocate(size_t size);
  // False where this kernel gives no process transparent huge pages (its
  // setting is "never"): large buffers are then 4 KiB pages.
  static bool HugePagesOn();
  IoBuffer(IoBuffer&& o) noexcept { *this = static_cast<IoBuffer&&>(o); }
  IoBuffer& operator=(IoBuffer&& o) noexcept;
  IoBuffer(const IoBuffer&) = delete;
  IoBuffer& operator=(const IoBuffer&) = delete;
  ~IoBuffer();

  char* data() const { return data_; }
  size_t size() const { return size_; }  // rounded up to kAlign
  explicit operator bool() const { return data_ != nullptr; }

 private:
  IoBuffer(char* data, size_t size) : data_(data), size_(data == nullptr ? 0 : size) {}
  void Free();

  char* data_ = nullptr;
  size_t size_ = 0;
};

}  // namespace strata
