// A StoreFs that forwards to the real one and injects faults on request:
// failing writes with an errno, failing or shortening reads, flipping bits.
#pragma once

#include <atomic>
#include <memory>

#include "cache/store_fs.h"

namespace strata::cache::testing {

class FaultyFs final : public StoreFs {
 public:
  explicit FaultyFs(std::unique_ptr<StoreFs> base) : base_(std::move(base)) {}

  std::atomic<int> write_errno{0};  // every write fails with this errno
  std::atomic<int> read_errno{0};   // every read fails with this errno
  std::atomic<bool> short_reads{false};
  std::atomic<bool> flip_read_bits{false};
  std::atomic<int> makedirs_errno{0};
  std::atomic<uint64_t> writes{0}, reads{0};

  absl::StatusOr<int> Open(const std::string& path, bool create) override {
    return base_->Open(path, create);
  }
  void Close(int fd) override { base_->Close(fd); }
  absl::Status Submit(absl::Span<IoOp> ops) override {
    for (auto& op : ops) {
      (op.kind == IoOp::Kind::kWrite ? writes : reads)++;
    }
    if (int e = write_errno.load(); e != 0) {
      bool any_write = false;
      for (auto& op : ops) any_write |= op.kind == IoOp::Kind::kWrite;
      if (any_write) {
        for (auto& op : ops) op.result = -e;
        return absl::OkStatus();
      }
    }
    absl::Status st = base_->Submit(ops);
    for (auto& op : ops) {
      if (op.kind != IoOp::Kind::kRead) continue;
      if (int e = read_errno.load(); e != 0) op.result = -e;
      if (op.result <= 0) continue;
      if (short_reads) op.result /= 2;
      if (flip_read_bits) op.buf[op.result / 2] ^= 0x40;
    }
    return st;
  }
  absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) override {
    return base_->PunchHole(fd, offset, len);
  }
  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override {
    return base_->Allocate(fd, offset, len);
  }
  void WillNeed(int fd, uint64_t offset, uint64_t len) override {
    base_->WillNeed(fd, offset, len);
  }
  absl::Status Unlink(const std::string& path) override { return base_->Unlink(path); }
  absl::Status MakeDirs(const std::string& path) override {
    if (int e = makedirs_errno.load(); e != 0) return ErrnoStatus(e, "create directory " + path);
    return base_->MakeDirs(path);
  }
  absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir) override {
    return base_->ListFiles(dir);
  }
  absl::Status FileState(int fd, uint64_t* size, uint64_t* links) override {
    return base_->FileState(fd, size, links);
  }
  absl::StatusOr<FsSpace> Space(const std::string& path) override { return base_->Space(path); }

 private:
  std::unique_ptr<StoreFs> base_;
};

}  // namespace strata::cache::testing
