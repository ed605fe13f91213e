// io_uring-backed StoreFs. A batch takes one ring from a small pool, submits
// all of its ops at once and reaps them; short transfers are resubmitted.
// Writes go around the page cache (O_DIRECT, through a second descriptor of
// the file) wherever their buffer and offset are aligned: the store's chunks
// are written once and read later, and copying them into fresh page-cache
// pages costs more than the disk write (the reader's own page cache holds
// what is hot). Writes marked IoOp::buffered stay buffered: an object served
// only once it is whole is read back right after its last chunk lands, and
// from disk that read is the slower part (a 1 GiB layer: 2.3 s back from
// disk, 0.6 s from the page cache; bench/lazy_image.sh). Reads are buffered
// unless marked IoOp::direct.
#include "cache/store_fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <liburing.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/logging.h"

namespace strata::cache {

namespace {

constexpr unsigned kRingDepth = 64;
constexpr int kRings = 4;

// Runs the remaining part of `op` with plain syscalls; the fallback path.
void RunSync(IoOp& op) {
  size_t done = 0;
  while (done < op.len) {
    ssize_t n = op.kind == IoOp::Kind::kRead
                    ? ::pread(op.fd, op.buf + done, op.len - done, op.offset + done)
                    : ::pwrite(op.fd, op.buf + done, op.len - done, op.offset + done);
    if (n < 0) {
      if (errno == EINTR) continue;
      op.result = -errno;
      return;
    }
    if (n == 0) break;  // end of file
    done += n;
  }
  op.result = static_cast<ssize_t>(done);
}

struct Ring {
  absl::Mutex mu;
  io_uring ring ABSL_GUARDED_BY(mu);
};

class PosixStoreFs final : public StoreFs {
 public:
  PosixStoreFs() {
    for (auto& r : rings_) {
      r = std::make_unique<Ring>();
      absl::MutexLock l(&r->mu);
      int rc = io_uring_queue_init(kRingDepth, &r->ring, 0);
      if (rc < 0) {
        spdlog::warn("io_uring unavailable ({}); the store falls back to pread/pwrite",
                     std::strerror(-rc));
        uring_ok_ = false;
        break;
      }
      ++rings_ready_;
    }
  }

  ~PosixStoreFs() override {
    for (int i = 0; i < rings_ready_; ++i) {
      absl::MutexLock l(&rings_[i]->mu);
      io_uring_queue_exit(&rings_[i]->ring);
    }
  }

  absl::StatusOr<int> Open(const std::string& path, bool create) override {
    int flags = O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0);
    int fd = ::open(path.c_str(), flags, 0600);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
    if (direct_ok_.load(std::memory_order_relaxed)) {
      int dfd = ::open(path.c_str(), O_RDWR | O_CLOEXEC | O_DIRECT);
      if (dfd >= 0) {
        absl::MutexLock l(&direct_mu_);
        direct_[fd] = dfd;
      } else if (errno == EINVAL) {
        NoDirect(path, "O_DIRECT is not supported");
      }
    }
    return fd;
  }

  void Close(int fd) override {
    if (fd < 0) return;
    int dfd = -1;
    {
      absl::MutexLock l(&direct_mu_);
      if (auto it = direct_.find(fd); it != direct_.end()) {
        dfd = it->second;
        direct_.erase(it);
      }
    }
    if (dfd >= 0) ::close(dfd);
    ::close(fd);
  }

  absl::Status Submit(absl::Span<IoOp> ops) override {
    absl::Status st = RunBatch(ops);
    // Buffered writes kept for a reader are written back now, and waited for
    // as a direct write would be. Left to the kernel, a layer's worth of dirty
    // chunks piled up: an overlay's unmount (it syncs its upper file system,
    // often the cache's own) then waited on all of them at a container's
    // exit, and their writeback queued in front of every fsync of containerd
    // and of our own records, so containers started slower (first command
    // 0.8-1.7 s with writeback started but not waited for, 0.67-0.94 s so).
    // A failed writeback fails the write, as a failed direct write does.
    for (IoOp& op : ops) {
      if (op.kind == IoOp::Kind::kWrite && op.buffered && op.result > 0 &&
          ::sync_file_range(op.fd, static_cast<off_t>(op.offset), op.result,
                            SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                SYNC_FILE_RANGE_WAIT_AFTER) != 0) {
        op.result = -errno;
      }
    }
    return st;
  }

  // Runs a batch: aligned writes and direct reads around the page cache
  // where they may, the rest buffered.
  absl::Status RunBatch(absl::Span<IoOp> ops) {
    for (auto& op : ops) op.result = 0;
    // They are split into a direct part and a buffered tail.
    std::vector<IoOp> run;
    std::vector<size_t> from;  // index in `ops` of each op of `run`
    bool split = SplitDirect(ops, run, from);
    absl::Span<IoOp> todo = split ? absl::MakeSpan(run) : ops;
    absl::Status st;
    if (!uring_ok_) {
      for (auto& op : todo) RunSync(op);
    } else {
      // Direct writes of one file run in parallel; buffered ones do not.
      Ring* r = !split && WritesToOneFile(ops) ? RingFor(ops[0].fd) : PickRing();
      // `r->mu` is held: the ring is ours for the whole batch.
      st = RunOnRing(r->ring, todo);
      r->mu.Unlock();
    }
    if (!split) return st;
    for (size_t i = 0; i < run.size(); ++i) {
      IoOp& part = run[i];
      if ((part.result == -EINVAL || part.result == -EOPNOTSUPP) && part.fd != ops[from[i]].fd) {
        // The file system refused this direct transfer: run it buffered.
        NoDirect("the cache directory", part.result == -EINVAL
                                            ? "a direct transfer failed with EINVAL"
                                            : "a direct transfer failed with EOPNOTSUPP");
        part.fd = ops[from[i]].fd;
        part.result = 0;
        RunSync(part);
      }
    }
    for (size_t i = 0; i < run.size(); ++i) {
      IoOp& op = ops[from[i]];
      if (op.result < 0) continue;
      op.result = run[i].result < 0 ? run[i].result : op.result + run[i].result;
    }
    return st;
  }

  absl::Status PunchHole(int fd, uint64_t offset, uint64_t len) override {
    if (::fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len) != 0) {
      return ErrnoStatus(errno, "punch hole");
    }
    return absl::OkStatus();
  }

  absl::Status Allocate(int fd, uint64_t offset, uint64_t len) override {
    if (::fallocate(fd, FALLOC_FL_KEEP_SIZE, static_cast<off_t>(offset), static_cast<off_t>(len)) !=
        0) {
      return ErrnoStatus(errno, "allocate");
    }
    return absl::OkStatus();
  }

  void WillNeed(int fd, uint64_t offset, uint64_t len) override {
    ::posix_fadvise(fd, static_cast<off_t>(offset), static_cast<off_t>(len), POSIX_FADV_WILLNEED);
  }

  absl::Status Unlink(const std::string& path) override {
    if (::unlink(path.c_str()) != 0 && errno != ENOENT) {
      return ErrnoStatus(errno, absl::StrCat("unlink ", path));
    }
    return absl::OkStatus();
  }

  absl::Status MakeDirs(const std::string& path) override {
    std::error_code ec;
    std::filesystem::create_directories(path, ec);
    if (ec) return ErrnoStatus(ec.value(), absl::StrCat("create directory ", path));
    if (::access(path.c_str(), W_OK | X_OK) != 0) {
      return ErrnoStatus(errno, absl::StrCat("directory ", path, " is not writable"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> ListFiles(const std::string& dir) override {
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return ErrnoStatus(errno, absl::StrCat("list ", dir));
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      if (e->d_type == DT_REG || e->d_type == DT_UNKNOWN) {
        std::string n = e->d_name;
        if (n != "." && n != "..") names.push_back(std::move(n));
      }
    }
    ::closedir(d);
    return names;
  }

  absl::Status FileState(int fd, uint64_t* size, uint64_t* links) override {
    struct stat st;
    if (::fstat(fd, &st) != 0) return ErrnoStatus(errno, "fstat");
    *size = st.st_size;
    *links = st.st_nlink;
    return absl::OkStatus();
  }

  absl::StatusOr<FsSpace> Space(const std::string& path) override {
    struct statvfs sv;
    if (::statvfs(path.c_str(), &sv) != 0)
      return ErrnoStatus(errno, absl::StrCat("statvfs ", path));
    return FsSpace{static_cast<uint64_t>(sv.f_blocks) * sv.f_frsize,
                   static_cast<uint64_t>(sv.f_bavail) * sv.f_frsize};
  }

 private:
  // Expands `ops` into `run` when some op can go direct; false when none.
  bool SplitDirect(absl::Span<IoOp> ops, std::vector<IoOp>& run, std::vector<size_t>& from) {
    if (!direct_ok_.load(std::memory_order_relaxed)) return false;
    auto goes_direct = [](const IoOp& op) {
      return op.kind == IoOp::Kind::kWrite ? !op.buffered : op.direct;
    };
    if (std::none_of(ops.begin(), ops.end(), goes_direct)) return false;
    absl::MutexLock l(&direct_mu_);
    bool any = false;
    for (size_t i = 0; i < ops.size(); ++i) {
      IoOp op = ops[i];
      auto it = goes_direct(op) ? direct_.find(op.fd) : direct_.end();
      // Split at a page boundary: the direct part and the buffered tail must
      // not share a page of the page cache.
      size_t head = op.len / page_ * page_;
      if (it == direct_.end() || head == 0 || op.offset % page_ != 0 ||
          reinterpret_cast<uintptr_t>(op.buf) % kBufferAlign != 0) {
        run.push_back(op);
        from.push_back(i);
        continue;
      }
      any = true;
      IoOp direct = op;
      direct.fd = it->second;
      direct.len = head;
      run.push_back(direct);
      from.push_back(i);
      if (head < op.len) {
        IoOp tail = op;
        tail.offset += head;
        tail.buf += head;
        tail.len -= head;
        run.push_back(tail);
        from.push_back(i);
      }
    }
    return any;
  }

  void NoDirect(const std::string& where, const char* why) {
    if (direct_ok_.exchange(false)) {
      spdlog::info("{} in {}: chunks are written through the page cache", why, where);
    }
  }

  // Buffered writes are run by io_uring's worker threads; concurrent writers
  // of one file there contend on its inode lock (spinning). Writes to one
  // file therefore all go through one ring, which serialises them.
  static bool WritesToOneFile(absl::Span<const IoOp> ops) {
    if (ops.empty()) return false;
    for (const IoOp& op : ops) {
      if (op.kind != IoOp::Kind::kWrite || op.fd != ops[0].fd) return false;
    }
    return true;
  }

  // The ring for `fd`'s writes, with its mutex held.
  Ring* RingFor(int fd) ABSL_NO_THREAD_SAFETY_ANALYSIS {
    Ring* r = rings_[static_cast<unsigned>(fd) % rings_ready_].get();
    r->mu.Lock();
    return r;
  }

  // Returns a ring with its mutex held: a free one if there is one.
  Ring* PickRing() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    unsigned start = next_.fetch_add(1, std::memory_order_relaxed);
    for (int i = 0; i < rings_ready_; ++i) {
      Ring* r = rings_[(start + i) % rings_ready_].get();
      if (r->mu.TryLock()) return r;
    }
    Ring* r = rings_[start % rings_ready_].get();
    r->mu.Lock();
    return r;
  }

  static void Prep(io_uring& ring, IoOp& op, size_t idx) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring);
    size_t done = static_cast<size_t>(op.result);
    if (op.kind == IoOp::Kind::kRead) {
      io_uring_prep_read(sqe, op.fd, op.buf + done, op.len - done, op.offset + done);
    } else {
      io_uring_prep_write(sqe, op.fd, op.buf + done, op.len - done, op.offset + done);
    }
    io_uring_sqe_set_data64(sqe, idx);
  }

  // Keeps up to kRingDepth ops in flight until every op is complete, failed
  // or (reads) at end of file. op.result accumulates bytes until done.
  static absl::Status RunOnRing(io_uring& ring, absl::Span<IoOp> ops) {
    std::vector<size_t> pending;
    pending.reserve(ops.size());
    for (size_t i = 0; i < ops.size(); ++i) {
      if (ops[i].len > 0) pending.push_back(i);
    }
    size_t next = 0, inflight = 0;
    std::vector<size_t> retry;
    while (next < pending.size() || inflight > 0 || !retry.empty()) {
      unsigned queued = 0;
      while (!retry.empty() && inflight + queued < kRingDepth) {
        Prep(ring, ops[retry.back()], retry.back());
        retry.pop_back();
        ++queued;
      }
      while (next < pending.size() && inflight + queued < kRingDepth) {
        Prep(ring, ops[pending[next]], pending[next]);
        ++next;
        ++queued;
      }
      int rc = io_uring_submit_and_wait(&ring, 1);
      if (rc < 0 && rc != -EINTR) {
        return ErrnoStatus(rc, "io_uring submit");
      }
      inflight += queued;
      io_uring_cqe* cqe;
      unsigned head, seen = 0;
      io_uring_for_each_cqe(&ring, head, cqe) {
        ++seen;
        IoOp& op = ops[io_uring_cqe_get_data64(cqe)];
        int res = cqe->res;
        if (res == -EINTR || res == -EAGAIN) {
          retry.push_back(io_uring_cqe_get_data64(cqe));
        } else if (res < 0) {
          op.result = res;
        } else if (res == 0) {
          // End of file for a read; a zero-byte write would loop forever.
          if (op.kind == IoOp::Kind::kWrite) op.result = -EIO;
        } else {
          op.result += res;
          if (static_cast<size_t>(op.result) < op.len)
            retry.push_back(io_uring_cqe_get_data64(cqe));
        }
      }
      io_uring_cq_advance(&ring, seen);
      inflight -= seen;
    }
    return absl::OkStatus();
  }

  static constexpr size_t kBufferAlign = 4096;  // of a direct transfer's memory
  const size_t page_ = std::max<size_t>(4096, static_cast<size_t>(::sysconf(_SC_PAGESIZE)));
  std::array<std::unique_ptr<Ring>, kRings> rings_;
  std::atomic<bool> direct_ok_{true};
  absl::Mutex direct_mu_;
  // The O_DIRECT descriptor of each open file that has one.
  absl::flat_hash_map<int, int> direct_ ABSL_GUARDED_BY(direct_mu_);
  int rings_ready_ = 0;
  bool uring_ok_ = true;
  std::atomic<unsigned> next_{0};
};

}  // namespace

std::unique_ptr<StoreFs> NewPosixStoreFs() { return std::make_unique<PosixStoreFs>(); }

}  // namespace strata::cache
