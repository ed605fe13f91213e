// IoBuffer: small ones from the heap, large ones anonymous mappings trimmed
// to a huge-page boundary.
#include "base/io_buffer.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

namespace strata {

IoBuffer IoBuffer::Allocate(size_t size) {
  size_t len = (std::max<size_t>(size, 1) + kAlign - 1) / kAlign * kAlign;
  // A buffer smaller than a huge page could not sit on one: it comes from
  // the heap, as every buffer did before.
  if (len < kHugePage) {
    return IoBuffer(static_cast<char*>(std::aligned_alloc(kAlign, len)), len);
  }
  size_t span = len + kHugePage - kAlign;
  void* p = ::mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return {};
  auto base = reinterpret_cast<uintptr_t>(p);
  uintptr_t start = (base + kHugePage - 1) / kHugePage * kHugePage;
  // What lies before the boundary and after the buffer goes back.
  if (start > base) ::munmap(p, start - base);
  if (base + span > start + len) {
    ::munmap(reinterpret_cast<void*>(start + len), base + span - (start + len));
  }
  // Advice only: where transparent huge pages are off or none is free, the
  // buffer is 4 KiB pages and works as before.
  ::madvise(reinterpret_cast<void*>(start), len, MADV_HUGEPAGE);
  return IoBuffer(reinterpret_cast<char*>(start), len);
}

bool IoBuffer::HugePagesOn() {
  std::ifstream f("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  // No such file: a kernel without them.
  return std::getline(f, modes) && modes.find("[never]") == std::string::npos;
}

IoBuffer& IoBuffer::operator=(IoBuffer&& o) noexcept {
  if (this != &o) {
    Free();
    data_ = o.data_;
    size_ = o.size_;
    o.data_ = nullptr;
    o.size_ = 0;
  }
  return *this;
}

IoBuffer::~IoBuffer() { Free(); }

void IoBuffer::Free() {
  if (data_ == nullptr) return;
  if (size_ < kHugePage) {
    std::free(data_);
  } else {
    ::munmap(data_, size_);
  }
}

}  // namespace strata
