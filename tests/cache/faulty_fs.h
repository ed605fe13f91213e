// File systems that tests put between the chunk store and the disk.
// FaultyFs fails or damages I/O on request, or at a seeded rate (one in N);
// PowerLossFs remembers every write since the last power cut and, when the
// power goes, refuses all I/O and then undoes a seeded share of those writes,
// as a disk that loses its volatile cache does. The store never syncs chunk
// data (a lost chunk is only a miss), so every write is "unsynced" here.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "cache/store_fs.h"

namespace strata::cache::testing {

// A fair coin with odds 1/N that tests seed, so a failing run repeats.
class SeededOdds {
 public:
  explicit SeededOdds(uint64_t seed) : rng_(seed) {}
  bool OneIn(uint32_t n) {
    if (n == 0) return false;
    absl::MutexLock lock(&mu_);
    return rng_() % n == 0;
  }

 private:
  absl::Mutex mu_;
  std::mt19937_64 rng_ ABSL_GUARDED_BY(mu_);
};

class FaultyFs final : public StoreFsWrapper {
 public:
  explicit FaultyFs(std::shared_ptr<StoreFs> base, uint64_t seed = 1)
      : StoreFsWrapper(std::move(base)), odds_(seed) {}

  std::atomic<int> write_errno{0};  // every write fails with this errno
  std::atomic<int> read_errno{0};   // every read fails with this errno
  std::atomic<bool> short_reads{false};
  std::atomic<bool> flip_read_bits{false};
  std::atomic<int> makedirs_errno{0};
  // Seeded faults: one write (read) in N fails with EIO; one read in N comes
  // back with a flipped bit. 0: never.
  std::atomic<uint32_t> write_fail_one_in{0}, read_fail_one_in{0}, read_flip_one_in{0};
  std::atomic<uint64_t> writes{0}, reads{0}, injected{0};

  // While held, a batch with a read waits in Submit (counted in
  // reads_waiting) until the hold is let go: a test can so keep a read
  // under way for as long as it needs.
  void HoldReads(bool hold) {
    absl::MutexLock l(&hold_mu_);
    hold_ = hold;
  }
  std::atomic<int> reads_waiting{0};

  absl::Status Submit(absl::Span<IoOp> ops) override {
    bool any_read = false;
    for (auto& op : ops) {
      (op.kind == IoOp::Kind::kWrite ? writes : reads)++;
      any_read |= op.kind == IoOp::Kind::kRead;
    }
    if (any_read) {
      absl::MutexLock l(&hold_mu_);
      ++reads_waiting;
      hold_mu_.Await(absl::Condition(
          +[](bool* hold) { return !*hold; }, &hold_));
      --reads_waiting;
    }
    if (int e = write_errno.load(); e != 0) {
      bool any_write = false;
      for (auto& op : ops) any_write |= op.kind == IoOp::Kind::kWrite;
      if (any_write) {
        for (auto& op : ops) op.result = -e;
        return absl::OkStatus();
      }
    }
    // A seeded write failure leaves the batch's other ops to run, as a
    // device error on one request does.
    std::vector<IoOp> run;
    std::vector<size_t> where;
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].kind == IoOp::Kind::kWrite && odds_.OneIn(write_fail_one_in)) {
        ops[i].result = -EIO;
        ++injected;
        continue;
      }
      run.push_back(ops[i]);
      where.push_back(i);
    }
    absl::Status st = target()->Submit(absl::MakeSpan(run));
    for (size_t k = 0; k < run.size(); ++k) ops[where[k]].result = run[k].result;
    for (auto& op : ops) {
      if (op.kind != IoOp::Kind::kRead) continue;
      if (int e = read_errno.load(); e != 0) op.result = -e;
      if (op.result > 0 && odds_.OneIn(read_fail_one_in)) {
        op.result = -EIO;
        ++injected;
      }
      if (op.result <= 0) continue;
      if (short_reads) op.result /= 2;
      if (flip_read_bits) op.buf[op.result / 2] ^= 0x40;
      if (odds_.OneIn(read_flip_one_in)) {
        op.buf[op.result / 3] ^= 0x08;
        ++injected;
      }
    }
    return st;
  }
  absl::Status MakeDirs(const std::string& path) override {
    if (int e = makedirs_errno.load(); e != 0) return ErrnoStatus(e, "create directory " + path);
    return target()->MakeDirs(path);
  }

 private:
  SeededOdds odds_;
  absl::Mutex hold_mu_;
  bool hold_ ABSL_GUARDED_BY(hold_mu_) = false;
};

// Shared by PowerLossFs and the index's PowerLossFileSystem: one switch cuts
// the power to both at the same moment.
struct PowerSwitch {
  std::atomic<bool> off{false};
  // Cut the power once this many more writes have been issued (-1: never).
  std::atomic<int64_t> writes_left{-1};
  // Counts a write; true if the power is (now) off.
  bool CountWriteAndCheck() {
    if (off) return true;
    int64_t left = writes_left.load();
    if (left >= 0 && writes_left.fetch_sub(1) <= 0) off = true;
    return off;
  }
};

class PowerLossFs final : public StoreFsWrapper {
 public:
  PowerLossFs(std::shared_ptr<StoreFs> base, std::shared_ptr<PowerSwitch> power)
      : StoreFsWrapper(std::move(base)), power_(std::move(power)) {}

  absl::StatusOr<int> Open(const std::string& path, bool create) override {
    if (power_->off) return ErrnoStatus(EIO, "open " + path + " (power is off)");
    auto fd = target()->Open(path, create);
    if (fd.ok()) {
      absl::MutexLock lock(&mu_);
      paths_[*fd] = path;
    }
    return fd;
  }
  absl::Status Submit(absl::Span<IoOp> ops) override {
    for (auto& op : ops) {
      if (op.kind == IoOp::Kind::kWrite && power_->CountWriteAndCheck()) {
        for (auto& o : ops) o.result = -EIO;
        return absl::OkStatus();
      }
    }
    if (power_->off) {
      for (auto& o : ops) o.result = -EIO;
      return absl::OkStatus();
    }
    for (auto& op : ops) {
      if (op.kind == IoOp::Kind::kWrite) Remember(op);
    }
    return target()->Submit(ops);
  }
  absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) override {
    if (power_->off) return ErrnoStatus(EIO, "punch hole (power is off)");
    return target()->PunchHole(fd, offset, len);
  }
  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override {
    if (power_->off) return ErrnoStatus(EIO, "allocate (power is off)");
    return target()->Allocate(fd, offset, len);
  }
  absl::Status Unlink(const std::string& path) override {
    if (power_->off) return ErrnoStatus(EIO, "unlink " + path + " (power is off)");
    return target()->Unlink(path);
  }
  absl::Status MakeDirs(const std::string& path) override {
    if (power_->off) return ErrnoStatus(EIO, "create directory " + path + " (power is off)");
    return target()->MakeDirs(path);
  }

  // After the store is gone: undoes each remembered write with odds 1 in
  // `undo_one_in` (1: all of them), newest first, by putting back the bytes
  // it overwrote. Metadata (creates, unlinks, holes) is kept: the store must
  // cope with data that vanished under records that survived, which is the
  // dangerous direction. Returns how many writes were undone.
  int UndoUnsyncedWrites(uint64_t seed, uint32_t undo_one_in) {
    absl::MutexLock lock(&mu_);
    std::mt19937_64 rng(seed);
    int undone = 0;
    for (auto it = log_.rbegin(); it != log_.rend(); ++it) {
      if (rng() % undo_one_in != 0) continue;
      int fd = ::open(it->path.c_str(), O_WRONLY);
      if (fd < 0) continue;  // unlinked since: nothing to undo
      if (::pwrite(fd, it->before.data(), it->before.size(), static_cast<off_t>(it->offset)) ==
          static_cast<ssize_t>(it->before.size())) {
        ++undone;
      }
      ::close(fd);
    }
    log_.clear();
    return undone;
  }

 private:
  struct Write {
    std::string path;
    uint64_t offset = 0;
    std::string before;  // what the range held; bytes past the end read as zeros
  };

  void Remember(const IoOp& op) {
    absl::MutexLock lock(&mu_);
    auto p = paths_.find(op.fd);
    if (p == paths_.end()) return;
    Write w{p->second, op.offset, std::string(op.len, '\0')};
    // A buffered descriptor of its own: the store's may be O_DIRECT.
    int fd = ::open(w.path.c_str(), O_RDONLY);
    if (fd >= 0) {
      ssize_t n = ::pread(fd, w.before.data(), w.before.size(), static_cast<off_t>(op.offset));
      (void)n;  // short at the end of the file: the rest stays zeros
      ::close(fd);
    }
    log_.push_back(std::move(w));
  }

  std::shared_ptr<PowerSwitch> power_;
  absl::Mutex mu_;
  absl::flat_hash_map<int, std::string> paths_ ABSL_GUARDED_BY(mu_);
  std::vector<Write> log_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::cache::testing
