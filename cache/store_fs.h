// The chunk store's one seam to the operating system: object files, batched
// reads and writes (io_uring), hole punching and directory housekeeping.
// Tests wrap it to inject faults (ENOSPC, EIO, short reads, corruption).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/errno_status.h"

namespace strata::cache {

// One read or write of a batch. `result` is the number of bytes transferred
// (short only at end of file for reads) or -errno.
struct IoOp {
  enum class Kind : uint8_t { kRead, kWrite };
  Kind kind = Kind::kRead;
  int fd = -1;
  uint64_t offset = 0;
  char* buf = nullptr;
  size_t len = 0;
  ssize_t result = 0;
  // A write that goes through the page cache even where it could go direct:
  // its bytes are read back soon.
  bool buffered = false;
  // A read that goes around the page cache where it can (aligned): the
  // caller keeps the bytes it reads, so pages cached for them would only be
  // a second copy, and filling fresh page-cache pages costs more than the
  // disk read.
  bool direct = false;
};

struct FsSpace {
  uint64_t total_bytes = 0;
  uint64_t free_bytes = 0;
};

class StoreFs {
 public:
  virtual ~StoreFs() = default;

  virtual absl::StatusOr<int> Open(const std::string& path, bool create) = 0;
  virtual void Close(int fd) = 0;
  // Runs every op of the batch (several in flight); the status is not OK only
  // when the batch could not be run at all. Per-op errors land in op.result.
  virtual absl::Status Submit(absl::Span<IoOp> ops) = 0;
  virtual absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) = 0;
  // Reserves disk blocks for a range (the file's size is kept), so that
  // chunks written out of order still lie on disk in file order.
  virtual absl::Status Allocate(int fd, uint64_t offset, uint64_t len) = 0;
  // Tells the kernel these bytes will be read soon (starts readahead).
  virtual void WillNeed(int fd, uint64_t offset, uint64_t len) = 0;
  virtual absl::Status Unlink(const std::string& path) = 0;
  virtual absl::Status MakeDirs(const std::string& path) = 0;
  // Names (not paths) of the regular files in `dir`.
  virtual absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir) = 0;
  // Size and link count of an open file: a count of 0 means it was deleted
  // behind the store's back.
  virtual absl::Status FileState(int fd, uint64_t* size, uint64_t* links) = 0;
  virtual absl::StatusOr<FsSpace> Space(const std::string& path) = 0;
};

// Forwards every call to another StoreFs: the base of the file systems that
// tests put between the store and the disk (fault injection, power loss), so
// each overrides only what it changes.
class StoreFsWrapper : public StoreFs {
 public:
  explicit StoreFsWrapper(std::shared_ptr<StoreFs> target) : target_(std::move(target)) {}

  StoreFs* target() const { return target_.get(); }

  absl::StatusOr<int> Open(const std::string& path, bool create) override {
    return target_->Open(path, create);
  }
  void Close(int fd) override { target_->Close(fd); }
  absl::Status Submit(absl::Span<IoOp> ops) override { return target_->Submit(ops); }
  absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) override {
    return target_->PunchHole(fd, offset, len);
  }
  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override {
    return target_->Allocate(fd, offset, len);
  }
  void WillNeed(int fd, uint64_t offset, uint64_t len) override {
    target_->WillNeed(fd, offset, len);
  }
  absl::Status Unlink(const std::string& path) override { return target_->Unlink(path); }
  absl::Status MakeDirs(const std::string& path) override { return target_->MakeDirs(path); }
  absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir) override {
    return target_->ListFiles(dir);
  }
  absl::Status FileState(int fd, uint64_t* size, uint64_t* links) override {
    return target_->FileState(fd, size, links);
  }
  absl::StatusOr<FsSpace> Space(const std::string& path) override { return target_->Space(path); }

 private:
  std::shared_ptr<StoreFs> target_;
};

// The real file system. Uses a small pool of io_uring rings, or pread/pwrite
// where io_uring is unavailable (old kernel, seccomp), which it logs once.
std::unique_ptr<StoreFs> NewPosixStoreFs();

}  // namespace strata::cache
