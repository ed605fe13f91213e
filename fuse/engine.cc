// libfuse3 low-level callbacks, each a thin translation to a Tree call. The
// kernel's inode numbers are the tree's own (stable), so lookup counts need
// no bookkeeping here and forget is a no-op.
#define FUSE_USE_VERSION 312
#include "fuse/engine.h"

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "base/logging.h"
#include "fuse/open_log.h"

namespace strata::fuse {

namespace {

// The kernel's backing-file calls on /dev/fuse (Linux 6.9, protocol 7.40),
// which this machine's headers may predate.
struct BackingMap {
  int32_t fd;
  uint32_t flags;
  uint64_t padding;
};
constexpr unsigned long kBackingOpen = _IOW(229, 1, BackingMap);
constexpr unsigned long kBackingClose = _IOW(229, 2, uint32_t);

// Whether the kernel refusing a backing file with `err` means it will refuse
// every one on this mount: no privilege (EPERM), no passthrough in this
// connection or a file system it will not stack on (EINVAL, EOPNOTSUPP,
// ENOTTY, ELOOP). Anything else (ENOMEM, EMFILE, ENFILE, ...) is this
// open's bad luck, and the next may pass.
bool RefusesEveryBackingFile(int err) {
  return err == EPERM || err == EINVAL || err == EOPNOTSUPP || err == ENOTTY || err == ELOOP;
}

// Marks a request the kernel sends again, to a server that took over from
// one that died with it unanswered (FUSE_UNIQUE_RESEND, Linux 6.9). The
// request keeps its id otherwise.
constexpr uint64_t kUniqueResend = 1ull << 63;

// The kernel's id of the request this worker thread serves (its
// fuse_in_header.unique), taken as the worker reads it: libfuse gives a
// file system no request ids, and an open that a dead daemon logged but
// never answered is known by its request's (Impl::ForgetUnanswered).
thread_local uint64_t t_request = 0;

ssize_t ReadRequest(int fd, void* buf, size_t len, void*) {
  ssize_t n = ::read(fd, buf, len);
  if (n >= static_cast<ssize_t>(sizeof(fuse_in_header))) {
    fuse_in_header h;
    std::memcpy(&h, buf, sizeof h);
    t_request = h.unique;
  }
  return n;
}
ssize_t WriteReply(int fd, iovec* iov, int count, void*) { return ::writev(fd, iov, count); }
ssize_t SpliceReply(int from, off_t* from_off, int to, off_t* to_off, size_t len, unsigned flags,
                    void*) {
  return ::splice(from, from_off, to, to_off, len, flags);
}

// Has the session read requests through ReadRequest; replies are written
// as libfuse writes them (splice included; it reads no request by splice).
// Only where the kernel resends: then every worker reads from the
// session's descriptor (FuseServer::Run), so no clone_fd is needed.
absl::Status SeeRequestIds(fuse_session* se) {
  static const fuse_custom_io io = {WriteReply, ReadRequest, nullptr, SpliceReply, nullptr};
  int rc = fuse_session_custom_io(se, &io, fuse_session_fd(se));
  if (rc != 0) {
    return absl::InternalError(absl::StrCat("libfuse refused its reads: ", std::strerror(-rc)));
  }
  return absl::OkStatus();
}

// Tells the kernel to forget names, from a thread of its own that starts
// with the first one (see KernelCache). The queue is bounded: past it a
// name is left to its entry timeout.
class EntryNotifier final : public KernelCache {
 public:
  explicit EntryNotifier(fuse_session* se) : se_(se) {}
  ~EntryNotifier() override {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    if (thread_.joinable()) thread_.join();
  }

  void ForgetEntry(uint64_t parent, const std::string& name) override {
    absl::MutexLock l(&mu_);
    if (stop_ || queue_.size() >= 4096) return;
    queue_.emplace_back(parent, name);
    if (!thread_.joinable()) thread_ = std::thread([this] { Loop(); });
  }

  void ForgetAttrs(uint64_t ino) override {
    // A negative offset: the attributes only, no pages (and so no page lock).
    int rc = fuse_lowlevel_notify_inval_inode(se_, ino, -1, 0);
    if (rc != 0 && rc != -ENOENT) {
      spdlog::debug("forget attributes of inode {}: {}", ino, std::strerror(-rc));
    }
  }

 private:
  void Loop() {
    absl::MutexLock l(&mu_);
    while (true) {
      mu_.Await(absl::Condition(
          +[](EntryNotifier* n) { return n->stop_ || !n->queue_.empty(); }, this));
      if (stop_) return;
      auto [parent, name] = std::move(queue_.front());
      queue_.pop_front();
      mu_.Unlock();
      int rc = fuse_lowlevel_notify_inval_entry(se_, parent, name.c_str(), name.size());
      if (rc != 0 && rc != -ENOENT) {
        spdlog::debug("forget entry {} in inode {}: {}", name, parent, std::strerror(-rc));
      }
      mu_.Lock();
    }
  }

  fuse_session* se_;
  absl::Mutex mu_;
  std::deque<std::pair<uint64_t, std::string>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace

int KernelOpenBacking(int fuse_fd, int backing_fd) {
  BackingMap map{backing_fd, 0, 0};
  int id = ::ioctl(fuse_fd, kBackingOpen, &map);
  return id > 0 ? id : -(id < 0 ? errno : EIO);
}

struct FuseServer::Impl {
  Tree* tree = nullptr;
  MountOptions opts;
  fuse_session* se = nullptr;
  std::atomic<bool> mounted{false};
  // The kernel's id of this FUSE connection (the mount's minor device
  // number): its control files are /sys/fs/fuse/connections/<id>/.
  int connection = -1;
  std::string init;  // the kernel's INIT request, for a successor (Handoff)
  // The kernel resends requests a dead daemon had taken (Linux 6.9+): then
  // every worker reads from the descriptor the FD keeper shares, so those
  // requests outlive this process and its successor answers them.
  bool resend = false;
  // Directory listings taken at opendir, served by offset.
  absl::Mutex dirs_mu;
  absl::flat_hash_map<uint64_t, std::vector<DirEntry>> dirs ABSL_GUARDED_BY(dirs_mu);
  // Directory handles start at a random number, so that a handle the
  // kernel kept from a replaced daemon does not name another listing.
  std::atomic<uint64_t> next_dir{(uint64_t{std::random_device{}()} << 20) + 1};
  // The tree's way to the kernel's caches, set once the session is mounted.
  std::unique_ptr<EntryNotifier> notifier;

  // How the kernel holds each open file and inode (see open_log.h). Only
  // for trees with backing files: others are always cached.
  bool track_io = false;
  std::atomic<bool> passthrough{false};  // wanted, and the kernel agreed at INIT
  struct InodeIo {
    int cached = 0;
    int passthrough = 0;
    int32_t backing_id = 0;  // the kernel's, while passthrough > 0
    std::string backing;     // BackingFile::id of it
  };
  absl::Mutex io_mu;
  OpenFiles opens ABSL_GUARDED_BY(io_mu);
  absl::flat_hash_map<uint64_t, InodeIo> inodes ABSL_GUARDED_BY(io_mu);
  std::unique_ptr<OpenLog> log ABSL_GUARDED_BY(io_mu);

  void Serve() {
    notifier = std::make_unique<EntryNotifier>(se);
    tree->set_kernel_cache(notifier.get());
  }

  // Chooses how the kernel does the I/O of a new open of `ino` (handle
  // fi->fh) and records it. The kernel takes nothing but passthrough with
  // the same backing file for an inode that has one, and no passthrough
  // for an inode in its page cache's mode (the open fails with EIO). ESTALE:
  // the handle is of other bytes than the inode's backing file (the file
  // changed at the origin just now), and the open must look again.
  absl::Status Opening(uint64_t ino, fuse_file_info* fi, bool read_only) {
    if (!track_io) return absl::OkStatus();
    absl::MutexLock l(&io_mu);
    InodeIo& s = inodes[ino];
    OpenRecord r{ino, IoMode::kCached, 0, ""};
    const uint64_t request = t_request & ~kUniqueResend;
    if (s.passthrough > 0) {
      // A file changed since is another inode (VolumeTree::PassedOver); a
      // change the tree saw only after it opened this one is caught here.
      if (absl::Status st = tree->HoldBacking(fi->fh, ino, s.backing); !st.ok()) {
        if (ErrnoOf(st) == ESTALE) return st;
        spdlog::warn("{}: {} cannot be held again: {}", opts.mountpoint, s.backing, st.message());
      }
      r = OpenRecord{ino, IoMode::kPassthrough, s.backing_id, s.backing};
    } else if (read_only && passthrough && s.cached == 0 && LogKept()) {
      auto b = tree->Backing(fi->fh);
      if (b.ok()) {
        const int fd = fuse_session_fd(se);
        int id = opts.open_backing ? opts.open_backing(fd, b->fd) : KernelOpenBacking(fd, b->fd);
        if (id > 0) {
          s.backing_id = id;
          s.backing = b->id;
          r = OpenRecord{ino, IoMode::kPassthrough, id, b->id};
        } else {
          tree->BackingRefused(fi->fh);
          if (RefusesEveryBackingFile(-id)) {
            spdlog::warn(
                "{}: the kernel refuses backing files ({}): reads go through the daemon from now "
                "on",
                opts.mountpoint, std::strerror(-id));
            passthrough = false;
          } else {
            spdlog::warn(
                "{}: the kernel refused {} as a backing file ({}): this open's reads go "
                "through the daemon",
                opts.mountpoint, b->id, std::strerror(-id));
          }
        }
      }
    }
    if (r.mode == IoMode::kPassthrough) {
      ++s.passthrough;
      fi->backing_id = r.backing_id;
      fi->keep_cache = 0;  // the kernel allows no page cache flags with a backing file
      fi->direct_io = 0;
    } else {
      ++s.cached;
    }
    r.request = request;
    opens[fi->fh] = r;
    if (log) log->Opened(fi->fh, r, opens);
    return absl::OkStatus();
  }

  // Before an open or create. If the kernel sends this request again (the
  // daemon that had it died), an open that daemon logged for it never
  // reached the kernel, and the kernel will never release it. It is
  // forgotten as a release would forget it: otherwise it would fix its
  // inode's way of I/O, and hold a backing file with its cache object,
  // until the mount goes.
  void ForgetUnanswered() {
    if (!track_io || !(t_request & kUniqueResend)) return;
    const uint64_t request = t_request & ~kUniqueResend;
    std::optional<uint64_t> handle;
    {
      absl::MutexLock l(&io_mu);
      for (const auto& [h, r] : opens) {
        if (r.request == request) handle = h;
      }
    }
    if (!handle) return;
    spdlog::info(
        "{}: the kernel sent open request {} again: the open logged for it (handle {}) never "
        "reached the kernel, and is forgotten",
        opts.mountpoint, request, *handle);
    Closed(*handle);
    tree->Release(*handle);
  }

  // A successor will know of a passthrough open made now: the mount keeps
  // no log (nothing takes it over), or its log is still written. One that
  // could not be means a successor assumes nothing, and every file passed
  // through would fail its new opens there until closed: so no more.
  bool LogKept() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(io_mu) {
    return opts.open_log.empty() || (log && log->ok());
  }

  // The kernel let go of `handle` (or never got it).
  void Closed(uint64_t handle) {
    if (!track_io) return;
    absl::MutexLock l(&io_mu);
    auto it = opens.find(handle);
    if (it == opens.end()) return;
    OpenRecord r = std::move(it->second);
    opens.erase(it);
    if (log) log->Closed(handle, opens);
    auto in = inodes.find(r.ino);
    if (in == inodes.end()) return;
    InodeIo& s = in->second;
    if (r.mode == IoMode::kCached) --s.cached;
    if (r.mode == IoMode::kPassthrough && --s.passthrough == 0) {
      // The kernel's open files hold the backing file themselves; the id
      // is only for new opens.
      uint32_t id = static_cast<uint32_t>(s.backing_id);
      if (::ioctl(fuse_session_fd(se), kBackingClose, &id) != 0) {
        spdlog::warn("{}: closing backing file {}: {}", opts.mountpoint, id, std::strerror(errno));
      }
      s.backing_id = 0;
      s.backing.clear();
    }
    if (s.cached <= 0 && s.passthrough <= 0) inodes.erase(in);
  }

  // A successor's start: what the log says the kernel holds (none: no passthrough).
  void Resume() {
    if (!track_io) return;
    absl::MutexLock l(&io_mu);
    absl::StatusOr<OpenFiles> known =
        opts.open_log.empty() ? absl::NotFoundError("no open log") : OpenLog::Read(opts.open_log);
    if (!known.ok()) {
      // Opens of files the kernel reads from a backing file would fail
      // (EIO) until those are closed: no new backing files, so at least
      // nothing else does.
      spdlog::error(
          "{}: taken over without knowing how the kernel holds its open files ({}): no "
          "passthrough until it is mounted afresh; opens of files passed through before may "
          "fail until they are closed",
          opts.mountpoint, known.status().message());
      passthrough = false;
      return;
    }
    for (auto& [handle, r] : *known) {
      InodeIo& s = inodes[r.ino];
      if (r.mode == IoMode::kCached) {
        ++s.cached;
      } else {
        ++s.passthrough;
        s.backing_id = r.backing_id;
        s.backing = r.backing;
        if (absl::Status st = tree->HoldBacking(handle, r.ino, r.backing); !st.ok()) {
          spdlog::warn("{}: the kernel reads {} itself, but it cannot be held: {}", opts.mountpoint,
                       r.backing, st.message());
        }
      }
    }
    opens = std::move(*known);
    StartLog();
  }

  void StartLog() ABSL_EXCLUSIVE_LOCKS_REQUIRED(io_mu) {
    if (opts.open_log.empty()) return;
    auto started = OpenLog::Start(opts.open_log, opens);
    if (!started.ok()) {
      spdlog::error("{}: {}; a daemon taking this mount over will make no passthrough opens",
                    opts.mountpoint, started.status().message());
      return;
    }
    log = std::move(*started);
  }
};

namespace {

using Impl = FuseServer::Impl;

Impl* Self(fuse_req_t req) { return static_cast<Impl*>(fuse_req_userdata(req)); }

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

Caller Who(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  return Caller{c->uid, c->gid};
}

struct stat ToStat(const Attr& a) {
  struct stat st {};
  st.st_ino = a.ino;
  st.st_mode = a.mode;
  st.st_size = static_cast<off_t>(a.size);
  st.st_nlink = a.nlink;
  st.st_uid = a.uid;
  st.st_gid = a.gid;
  st.st_rdev = static_cast<dev_t>(a.rdev);
  st.st_blksize = 1 << 20;
  st.st_blocks = static_cast<blkcnt_t>(a.blocks >= 0 ? a.blocks : (a.size + 511) / 512);
  auto time = [](int64_t ns) {
    return timespec{static_cast<time_t>(ns / 1'000'000'000), static_cast<long>(ns % 1'000'000'000)};
  };
  st.st_mtim = time(a.mtime_ns);
  st.st_atim = time(a.atime_ns != 0 ? a.atime_ns : a.mtime_ns);
  st.st_ctim = time(a.ctime_ns != 0 ? a.ctime_ns : a.mtime_ns);
  return st;
}

const absl::Status& StatusOf(const absl::Status& st) { return st; }
template <typename T>
absl::Status StatusOf(const absl::StatusOr<T>& r) {
  return r.status();
}

// Replies with an errno, logging what is not routine.
void Fail(fuse_req_t req, const char* op, uint64_t ino, const absl::Status& st) {
  int err = ErrnoOf(st);
  if (err != ENOENT && err != EEXIST && err != ENOTEMPTY && err != EROFS && err != ENAMETOOLONG &&
      err != ENODATA && err != ERANGE) {
    spdlog::warn("{} (inode {}): {} -> {}", op, ino, st.message(), std::strerror(err));
  }
  fuse_reply_err(req, err);
}

void ReplyEntry(fuse_req_t req, const Attr& a) {
  Tree* t = Self(req)->tree;
  fuse_entry_param e{};
  e.ino = a.ino;
  e.generation = 1;
  e.attr = ToStat(a);
  e.attr_timeout = Seconds(t->attr_timeout());
  e.entry_timeout = Seconds(t->entry_timeout());
  fuse_reply_entry(req, &e);
}

// The largest read the kernel asks for. A spliced reply (header and data)
// must fit one pipe, and a pipe grows past /proc/sys/fs/pipe-max-size (1 MiB)
// only with CAP_SYS_RESOURCE, which containers and this machine's root lack.
// A full 1 MiB read did not fit: libfuse then copied every reply through a
// 1 MiB buffer of its own (slower, and heap that stayed: a reader with a
// 4 MiB readahead window left the daemon's heap 150 MiB larger).
constexpr uint32_t kMaxRead = (1u << 20) - (16u << 10);

void OnInit(void* userdata, fuse_conn_info* conn) {
  auto* self = static_cast<Impl*>(userdata);
  // Cached bytes go from the store's files to /dev/fuse by splice.
  if (conn->capable & FUSE_CAP_SPLICE_WRITE) conn->want |= FUSE_CAP_SPLICE_WRITE;
  if (conn->capable & FUSE_CAP_SPLICE_MOVE) conn->want |= FUSE_CAP_SPLICE_MOVE;
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  if (conn->capable & FUSE_CAP_ASYNC_READ) conn->want |= FUSE_CAP_ASYNC_READ;
  // Content is revalidated at open (keep_cache decides), not on each getattr.
  conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
  conn->max_write = 1 << 20;
  conn->max_read = kMaxRead;      // must match the max_read mount option
  conn->max_readahead = 1 << 20;  // INIT only lowers the kernel's 128 KiB: see SetReadAhead
  if (!self->tree->read_only() && (conn->capable & FUSE_CAP_ATOMIC_O_TRUNC)) {
    conn->want |= FUSE_CAP_ATOMIC_O_TRUNC;
  }
  if (self->track_io && self->opts.passthrough) {
    if (conn->capable_ext & FUSE_CAP_PASSTHROUGH) {
      conn->want |= FUSE_CAP_PASSTHROUGH;
      // Backing files are the store's, on a plain file system, and the
      // mount may itself be a lower layer of overlayfs (stack depth 1).
      conn->max_backing_stack_depth = FUSE_BACKING_STACKED_UNDER;
      self->passthrough = true;
    } else {
      spdlog::warn(
          "{}: this kernel offers no FUSE passthrough (Linux 6.9+, CAP_SYS_ADMIN): "
          "every read goes through the daemon",
          self->opts.mountpoint);
    }
  }
}

void OnLookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  auto a = Self(req)->tree->Lookup(parent, name);
  if (!a.ok()) return Fail(req, "lookup", parent, a.status());
  ReplyEntry(req, *a);
}

void OnForget(fuse_req_t req, fuse_ino_t, uint64_t) { fuse_reply_none(req); }

void OnGetattr(fuse_req_t req, fuse_ino_t ino, fuse_file_info*) {
  auto a = Self(req)->tree->GetAttr(ino);
  if (!a.ok()) return Fail(req, "getattr", ino, a.status());
  struct stat st = ToStat(*a);
  fuse_reply_attr(req, &st, Seconds(Self(req)->tree->attr_timeout()));
}

void OnSetattr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info*) {
  auto a = Self(req)->tree->SetAttr(ino, *attr, to_set);
  if (!a.ok()) return Fail(req, "setattr", ino, a.status());
  struct stat st = ToStat(*a);
  fuse_reply_attr(req, &st, Seconds(Self(req)->tree->attr_timeout()));
}

void OnReadlink(fuse_req_t req, fuse_ino_t ino) {
  auto t = Self(req)->tree->Readlink(ino);
  if (!t.ok()) return Fail(req, "readlink", ino, t.status());
  fuse_reply_readlink(req, t->c_str());
}

void OnMkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  auto a = Self(req)->tree->Mkdir(parent, name, mode, Who(req));
  if (!a.ok()) return Fail(req, "mkdir", parent, a.status());
  ReplyEntry(req, *a);
}

void OnUnlink(fuse_req_t req, fuse_ino_t parent, const char* name) {
  absl::Status st = Self(req)->tree->Unlink(parent, name);
  if (!st.ok()) return Fail(req, "unlink", parent, st);
  fuse_reply_err(req, 0);
}

void OnRmdir(fuse_req_t req, fuse_ino_t parent, const char* name) {
  absl::Status st = Self(req)->tree->Rmdir(parent, name);
  if (!st.ok()) return Fail(req, "rmdir", parent, st);
  fuse_reply_err(req, 0);
}

void OnSymlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  auto a = Self(req)->tree->Symlink(link, parent, name, Who(req));
  if (!a.ok()) return Fail(req, "symlink", parent, a.status());
  ReplyEntry(req, *a);
}

void OnRename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
              const char* newname, unsigned int flags) {
  absl::Status st = Self(req)->tree->Rename(parent, name, newparent, newname, flags);
  if (!st.ok()) return Fail(req, "rename", parent, st);
  fuse_reply_err(req, 0);
}

void OnLink(fuse_req_t req, fuse_ino_t ino, fuse_ino_t newparent, const char* newname) {
  auto a = Self(req)->tree->Link(ino, newparent, newname);
  if (!a.ok()) return Fail(req, "link", ino, a.status());
  ReplyEntry(req, *a);
}

void OnMknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  auto a = Self(req)->tree->Mknod(parent, name, mode, rdev, Who(req));
  if (!a.ok()) return Fail(req, "mknod", parent, a.status());
  ReplyEntry(req, *a);
}

// getxattr and listxattr: a size of 0 asks how long the answer is.
void ReplySized(fuse_req_t req, size_t size, const std::string& value) {
  if (size == 0) return (void)fuse_reply_xattr(req, value.size());
  if (value.size() > size) return (void)fuse_reply_err(req, ERANGE);
  fuse_reply_buf(req, value.data(), value.size());
}

void OnGetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size) {
  auto v = Self(req)->tree->GetXattr(ino, name);
  if (!v.ok()) return Fail(req, "getxattr", ino, v.status());
  ReplySized(req, size, *v);
}

void OnListxattr(fuse_req_t req, fuse_ino_t ino, size_t size) {
  auto v = Self(req)->tree->ListXattr(ino);
  if (!v.ok()) return Fail(req, "listxattr", ino, v.status());
  ReplySized(req, size, *v);
}

void OnSetxattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size,
                int flags) {
  absl::Status st = Self(req)->tree->SetXattr(ino, name, std::string(value, size), flags);
  if (!st.ok()) return Fail(req, "setxattr", ino, st);
  fuse_reply_err(req, 0);
}

void OnRemovexattr(fuse_req_t req, fuse_ino_t ino, const char* name) {
  absl::Status st = Self(req)->tree->RemoveXattr(ino, name);
  if (!st.ok()) return Fail(req, "removexattr", ino, st);
  fuse_reply_err(req, 0);
}

void OnOpen(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Impl* self = Self(req);
  self->ForgetUnanswered();
  auto o = self->tree->Open(ino, fi->flags);
  if (!o.ok()) return Fail(req, "open", ino, o.status());
  fi->fh = o->handle;
  fi->keep_cache = o->keep_cache;
  const bool read_only = (fi->flags & O_ACCMODE) == O_RDONLY && !(fi->flags & O_TRUNC);
  if (absl::Status st = self->Opening(ino, fi, read_only); !st.ok()) {
    self->tree->Release(fi->fh);
    return Fail(req, "open", ino, st);
  }
  if (fuse_reply_open(req, fi) != 0) {  // interrupted: the kernel never opened it
    self->Closed(fi->fh);
    self->tree->Release(fi->fh);
  }
}

void OnCreate(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode,
              fuse_file_info* fi) {
  Self(req)->ForgetUnanswered();
  auto r = Self(req)->tree->Create(parent, name, mode, fi->flags, Who(req));
  if (!r.ok()) return Fail(req, "create", parent, r.status());
  fi->fh = r->second.handle;
  fi->keep_cache = r->second.keep_cache;
  fuse_entry_param e{};
  e.ino = r->first.ino;
  e.generation = 1;
  e.attr = ToStat(r->first);
  e.attr_timeout = Seconds(Self(req)->tree->attr_timeout());
  e.entry_timeout = Seconds(Self(req)->tree->entry_timeout());
  if (absl::Status st = Self(req)->Opening(e.ino, fi, /*read_only=*/false); !st.ok()) {
    Self(req)->tree->Release(fi->fh);
    return Fail(req, "create", parent, st);
  }
  if (fuse_reply_create(req, &e, fi) != 0) {
    Self(req)->Closed(fi->fh);
    Self(req)->tree->Release(fi->fh);
  }
}

// Runs `op` on a file handle; a handle the tree does not know (it was
// opened under a daemon that has since been replaced) is reopened once.
template <typename Op>
auto OnHandle(fuse_req_t req, fuse_ino_t ino, const fuse_file_info* fi, Op op) {
  auto r = op();
  if (!r.ok() && ErrnoOf(StatusOf(r)) == EBADF &&
      Self(req)->tree->Reopen(ino, fi->fh, fi->flags).ok()) {
    r = op();
  }
  return r;
}

void OnRead(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Tree* t = Self(req)->tree;
  auto r =
      OnHandle(req, ino, fi, [&] { return t->Read(fi->fh, static_cast<uint64_t>(off), size); });
  if (!r.ok()) return Fail(req, "read", ino, r.status());
  if (cache::MemoryParts m = r->lease.memory(); !m.empty()) {
    // Still in the store's memory: one copy into the kernel, no disk read.
    iovec parts[2] = {{const_cast<char*>(m.head.data()), m.head.size()},
                      {const_cast<char*>(m.tail.data()), m.tail.size()}};
    fuse_reply_iov(req, parts, m.tail.empty() ? 1 : 2);
    return;
  }
  if (r->lease.fd() >= 0) {
    // Splice straight from the cache file; the lease holds it until replied.
    fuse_bufvec bv = FUSE_BUFVEC_INIT(r->lease.length());
    bv.buf[0].flags = static_cast<fuse_buf_flags>(FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK);
    bv.buf[0].fd = r->lease.fd();
    bv.buf[0].pos = static_cast<off_t>(r->lease.offset());
    fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
    return;
  }
  fuse_reply_buf(req, r->bytes.data(), r->bytes.size());
}

void OnWrite(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off,
             fuse_file_info* fi) {
  Tree* t = Self(req)->tree;
  auto n = OnHandle(req, ino, fi, [&] {
    return t->Write(fi->fh, static_cast<uint64_t>(off), absl::MakeConstSpan(buf, size));
  });
  if (!n.ok()) return Fail(req, "write", ino, n.status());
  fuse_reply_write(req, *n);
}

void OnFlush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Tree* t = Self(req)->tree;
  absl::Status st = OnHandle(req, ino, fi, [&] { return t->Flush(fi->fh); });
  if (!st.ok()) return Fail(req, "flush", ino, st);
  fuse_reply_err(req, 0);
}

void OnFsync(fuse_req_t req, fuse_ino_t ino, int, fuse_file_info* fi) {
  Tree* t = Self(req)->tree;
  absl::Status st = OnHandle(req, ino, fi, [&] { return t->Fsync(fi->fh); });
  if (!st.ok()) return Fail(req, "fsync", ino, st);
  fuse_reply_err(req, 0);
}

void OnFallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset, off_t length,
                 fuse_file_info* fi) {
  Tree* t = Self(req)->tree;
  absl::Status st = OnHandle(req, ino, fi, [&] {
    return t->Fallocate(fi->fh, mode, static_cast<uint64_t>(offset), static_cast<uint64_t>(length));
  });
  if (!st.ok()) return Fail(req, "fallocate", ino, st);
  fuse_reply_err(req, 0);
}

void OnRelease(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Self(req)->Closed(fi->fh);
  Self(req)->tree->Release(fi->fh);
  fuse_reply_err(req, 0);
}

void OnOpendir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Impl* self = Self(req);
  auto list = self->tree->ReadDir(ino);
  if (!list.ok()) return Fail(req, "opendir", ino, list.status());
  uint64_t id = self->next_dir++;  // from a random start: see Impl
  {
    absl::MutexLock l(&self->dirs_mu);
    self->dirs[id] = std::move(*list);
  }
  fi->fh = id;
  fuse_reply_open(req, fi);
}

// Entries from offset `off` (0 and 1 are "." and "..") into a reply buffer.
void ServeDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi,
              bool plus) {
  Impl* self = Self(req);
  std::vector<DirEntry> entries;
  bool known;
  {
    absl::MutexLock l(&self->dirs_mu);
    auto it = self->dirs.find(fi->fh);
    known = it != self->dirs.end();
    if (known) entries = it->second;  // a copy: other readers of the handle may continue
  }
  if (!known) {
    // Opened under the daemon this one took over from: list it again.
    auto list = self->tree->ReadDir(ino);
    if (!list.ok()) return Fail(req, "readdir", ino, list.status());
    entries = *list;
    absl::MutexLock l(&self->dirs_mu);
    self->dirs[fi->fh] = std::move(*list);
  }
  std::string buf(size, '\0');
  size_t used = 0;
  double attr_to = Seconds(self->tree->attr_timeout()),
         entry_to = Seconds(self->tree->entry_timeout());
  for (off_t i = off; i < static_cast<off_t>(entries.size()) + 2; ++i) {
    DirEntry d;
    if (i == 0) {
      d = {".", {ino, S_IFDIR | 0755}};
    } else if (i == 1) {
      d = {"..", {kRootIno, S_IFDIR | 0755}};
    } else {
      d = entries[i - 2];
    }
    struct stat st = ToStat(d.attr);
    size_t n;
    if (plus && i >= 2) {
      fuse_entry_param e{};
      e.ino = d.attr.ino;
      e.generation = 1;
      e.attr = st;
      e.attr_timeout = attr_to;
      e.entry_timeout = entry_to;
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, d.name.c_str(), &e, i + 1);
    } else if (plus) {
      fuse_entry_param e{};  // "." and "..": no lookup count taken
      e.attr = st;
      n = fuse_add_direntry_plus(req, buf.data() + used, size - used, d.name.c_str(), &e, i + 1);
    } else {
      n = fuse_add_direntry(req, buf.data() + used, size - used, d.name.c_str(), &st, i + 1);
    }
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void OnReaddir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ServeDir(req, ino, size, off, fi, false);
}

void OnReaddirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  ServeDir(req, ino, size, off, fi, true);
}

void OnReleasedir(fuse_req_t req, fuse_ino_t, fuse_file_info* fi) {
  Impl* self = Self(req);
  {
    absl::MutexLock l(&self->dirs_mu);
    self->dirs.erase(fi->fh);
  }
  fuse_reply_err(req, 0);
}

void OnStatfs(fuse_req_t req, fuse_ino_t) {
  auto sv = Self(req)->tree->StatFs();
  if (!sv.ok()) return Fail(req, "statfs", kRootIno, sv.status());
  fuse_reply_statfs(req, &*sv);
}

// mountinfo writes ' ', '\t', '\n' and '\\' in paths as octal escapes.
std::string UnescapeMountInfo(const std::string& field) {
  std::string out;
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() &&
        std::isdigit(static_cast<unsigned char>(field[i + 1]))) {
      out += static_cast<char>(std::stoi(field.substr(i + 1, 3), nullptr, 8));
      i += 3;
    } else {
      out += field[i];
    }
  }
  return out;
}

// The minor device number of the FUSE mount at `mountpoint`, from
// /proc/self/mountinfo (a stat would ask the not yet serving daemon).
int ConnectionOf(const std::string& mountpoint) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  int found = -1;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    if (!(f >> id >> parent >> dev >> root >> point)) continue;
    if (UnescapeMountInfo(point) != mountpoint) continue;
    size_t colon = dev.find(':');
    if (colon != std::string::npos) found = std::atoi(dev.c_str() + colon + 1);  // the last wins
  }
  return found;
}

// Sets the readahead window of FUSE connection `connection` through its
// backing device (/sys/class/bdi/0:N; root only). A failure costs only speed.
void SetReadAhead(const std::string& mountpoint, int connection, uint32_t kib) {
  if (kib == 0 || connection < 0) return;
  std::string path = absl::StrCat("/sys/class/bdi/0:", connection, "/read_ahead_kb");
  std::ofstream out(path);
  out << kib << '\n';
  out.flush();
  if (!out) {
    spdlog::warn("{}: cannot set the readahead window to {} KiB ({}); sequential reads are slower",
                 mountpoint, kib, path);
  }
}

fuse_lowlevel_ops Ops(bool xattrs) {
  fuse_lowlevel_ops ops{};
  ops.init = OnInit;
  ops.lookup = OnLookup;
  ops.forget = OnForget;
  ops.getattr = OnGetattr;
  ops.setattr = OnSetattr;
  ops.readlink = OnReadlink;
  ops.mkdir = OnMkdir;
  ops.unlink = OnUnlink;
  ops.rmdir = OnRmdir;
  ops.symlink = OnSymlink;
  ops.rename = OnRename;
  ops.link = OnLink;
  ops.mknod = OnMknod;
  ops.fallocate = OnFallocate;
  if (xattrs) {
    ops.getxattr = OnGetxattr;
    ops.listxattr = OnListxattr;
    ops.setxattr = OnSetxattr;
    ops.removexattr = OnRemovexattr;
  }
  ops.open = OnOpen;
  ops.read = OnRead;
  ops.write = OnWrite;
  ops.flush = OnFlush;
  ops.release = OnRelease;
  ops.fsync = OnFsync;
  ops.opendir = OnOpendir;
  ops.readdir = OnReaddir;
  ops.readdirplus = OnReaddirplus;
  ops.releasedir = OnReleasedir;
  ops.statfs = OnStatfs;
  ops.create = OnCreate;
  return ops;
}

}  // namespace

FuseServer::FuseServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

namespace {

// A libfuse session for `tree` with the engine's options, not mounted yet.
absl::StatusOr<std::unique_ptr<Impl>> NewSession(Tree& tree, const MountOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->tree = &tree;
  impl->opts = options;
  // Also with passthrough off: a successor must know the backing files its
  // predecessor gave the kernel (the flag only stops new ones), and the
  // next daemon how this one held its opens.
  impl->track_io = tree.has_backing_files();
  // The name comes from outside (a CSI volume id): a ',' in it would add
  // mount options (suid, dev), so ',' and '\\' are escaped as libfuse reads them.
  std::string fsname;
  for (char c : options.fsname) {
    if (c == ',' || c == '\\') fsname += '\\';
    fsname += c;
  }
  std::string o =
      absl::StrCat("fsname=", fsname, ",subtype=strata,default_permissions,max_read=", kMaxRead);
  if (options.allow_other) o += ",allow_other";
  if (tree.read_only()) o += ",ro";
  std::vector<std::string> argv_s = {"strata", "-o", o};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(argv.size()), argv.data());
  // Without xattr calls, libfuse answers ENOSYS and the kernel stops
  // asking (see VolumeOptions::xattrs).
  static const fuse_lowlevel_ops with_xattrs = Ops(true), without_xattrs = Ops(false);
  const fuse_lowlevel_ops* ops = tree.keeps_xattrs() ? &with_xattrs : &without_xattrs;
  impl->se = fuse_session_new(&args, ops, sizeof(*ops), impl.get());
  fuse_opt_free_args(&args);  // libfuse may have copied and extended them
  if (impl->se == nullptr)
    return absl::InternalError("fuse_session_new failed (bad mount options?)");
  return impl;
}

// Feeds the kernel's INIT request to the session, as its loop would.
void ProcessInit(fuse_session* se, std::string& init) {
  fuse_buf buf{};
  buf.mem = init.data();
  buf.size = init.size();
  fuse_session_process_buf(se, &buf);
}

// FUSE_NOTIFY_RESEND and the INIT flag that announces it (Linux 6.9,
// protocol 7.40), which this machine's headers may predate.
constexpr int32_t kNotifyResend = 7;
constexpr uint64_t kHasResend = 1ull << 39;
constexpr uint32_t kInitExt = 1u << 30;

// Whether the kernel that sent this INIT resends requests on demand.
bool KernelResends(const std::string& init) {
  struct InitIn {
    uint32_t major, minor, max_readahead, flags, flags2;
  } in{};
  if (init.size() < sizeof(fuse_in_header) + sizeof in) return false;
  std::memcpy(&in, init.data() + sizeof(fuse_in_header), sizeof in);
  if (in.major != 7 || in.minor < 40 || !(in.flags & kInitExt)) return false;
  return (uint64_t{in.flags2} << 32) & kHasResend;
}

void WarnNoResendOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    spdlog::warn(
        "this kernel cannot resend FUSE requests (Linux 6.9+): a read that a killed daemon "
        "had taken fails once with ECONNABORTED when its successor takes the mount over");
  });
}

std::string Canonical(const std::string& path) {
  std::error_code ec;
  std::string c = std::filesystem::weakly_canonical(path, ec).string();
  return ec ? path : c;
}

}  // namespace

absl::StatusOr<std::unique_ptr<FuseServer>> FuseServer::Mount(Tree& tree,
                                                              const MountOptions& options) {
  auto impl = NewSession(tree, options);
  if (!impl.ok()) return impl.status();
  fuse_session* se = (*impl)->se;
  // Resolved now: once mounted, resolving it would ask this daemon, which
  // is not serving yet.
  std::string canonical = Canonical(options.mountpoint);
  if (fuse_session_mount(se, options.mountpoint.c_str()) != 0) {
    fuse_session_destroy(se);
    return absl::FailedPreconditionError(
        absl::StrCat("cannot mount on ", options.mountpoint,
                     " (does it exist? is /dev/fuse usable? see the log above)"));
  }
  (*impl)->mounted = true;
  (*impl)->connection = ConnectionOf(canonical);
  // The handshake is done here rather than in the loop, so that its request
  // can be kept for a successor (Handoff). The kernel queued it at mount.
  std::string init(fuse_session_fd(se) >= 0 ? (1 << 20) + 4096 : 0, '\0');
  ssize_t n;
  do {
    n = ::read(fuse_session_fd(se), init.data(), init.size());
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    int err = errno;
    auto server = std::unique_ptr<FuseServer>(new FuseServer(std::move(*impl)));
    server->Stop();
    return absl::InternalError(
        absl::StrCat("no INIT from the kernel on ", options.mountpoint, ": ", std::strerror(err)));
  }
  init.resize(static_cast<size_t>(n));
  (*impl)->init = init;
  (*impl)->resend = KernelResends(init);
  if ((*impl)->resend) {
    if (absl::Status st = SeeRequestIds(se); !st.ok()) {
      auto server = std::unique_ptr<FuseServer>(new FuseServer(std::move(*impl)));
      server->Stop();
      return st;
    }
  }
  ProcessInit(se, init);
  // After INIT: its reply sets the window, and can only narrow it.
  SetReadAhead(options.mountpoint, (*impl)->connection, options.read_ahead_kib);
  if ((*impl)->track_io) {
    absl::MutexLock l(&(*impl)->io_mu);
    (*impl)->StartLog();  // nothing is open yet
  }
  (*impl)->Serve();
  return std::unique_ptr<FuseServer>(new FuseServer(std::move(*impl)));
}

absl::StatusOr<std::unique_ptr<FuseServer>> FuseServer::Adopt(Tree& tree,
                                                              const MountOptions& options,
                                                              const Handoff& handoff) {
  if (handoff.init.size() < sizeof(fuse_in_header)) {
    return absl::InvalidArgumentError("the handoff has no INIT request to replay");
  }
  auto impl = NewSession(tree, options);
  if (!impl.ok()) return impl.status();
  int fd = ::fcntl(handoff.fd, F_DUPFD_CLOEXEC, 3);
  if (fd < 0) {
    fuse_session_destroy((*impl)->se);
    return absl::InternalError(
        absl::StrCat("dup of the handed-over descriptor: ", std::strerror(errno)));
  }
  // libfuse takes a descriptor as the mountpoint "/dev/fd/N" and mounts
  // nothing: the mount exists already.
  std::string dev = absl::StrCat("/dev/fd/", fd);
  if (fuse_session_mount((*impl)->se, dev.c_str()) != 0) {
    ::close(fd);
    fuse_session_destroy((*impl)->se);
    return absl::InternalError(absl::StrCat("libfuse refused descriptor ", dev));
  }
  (*impl)->mounted = true;
  // Never a stat of the mountpoint here: the mount's server is this very
  // thread until Run(), so the kernel would wait on it for good.
  (*impl)->connection =
      ConnectionOf(std::filesystem::path(options.mountpoint).lexically_normal().string());
  (*impl)->init = handoff.init;
  // The kernel did its handshake with the first daemon. The new session
  // replays that INIT to set itself up the same way; its reply carries a
  // request id the kernel never issued, so the kernel drops it (ENOENT,
  // which libfuse ignores), and the connection keeps what it negotiated.
  std::string replay = handoff.init;
  fuse_in_header h;
  std::memcpy(&h, replay.data(), sizeof h);
  if (h.opcode != FUSE_INIT) {
    auto server = std::unique_ptr<FuseServer>(new FuseServer(std::move(*impl)));
    return absl::InvalidArgumentError("the handoff's request is not an INIT");
  }
  h.unique = ~uint64_t{0} - 1;
  std::memcpy(replay.data(), &h, sizeof h);
  (*impl)->resend = KernelResends(handoff.init);
  if ((*impl)->resend) {
    if (absl::Status st = SeeRequestIds((*impl)->se); !st.ok()) {
      auto server = std::unique_ptr<FuseServer>(new FuseServer(std::move(*impl)));
      return st;
    }
  }
  ProcessInit((*impl)->se, replay);
  (*impl)->Resume();
  if ((*impl)->resend) {
    // Requests the dead daemon had read but not answered go back to the
    // queue, to be read and answered by this one: the caller sees a pause.
    fuse_out_header notify{};
    notify.len = sizeof notify;
    notify.error = kNotifyResend;
    if (::write(fd, &notify, sizeof notify) != static_cast<ssize_t>(sizeof notify)) {
      spdlog::warn("{}: asking the kernel to resend pending requests failed: {}",
                   options.mountpoint, std::strerror(errno));
    }
  } else {
    WarnNoResendOnce();
  }
  (*impl)->Serve();
  spdlog::info("took over the FUSE mount at {} (connection {})", options.mountpoint,
               (*impl)->connection);
  return std::unique_ptr<FuseServer>(new FuseServer(std::move(*impl)));
}

Handoff FuseServer::handoff() const { return Handoff{fuse_session_fd(impl_->se), impl_->init}; }

absl::Status FuseServer::Run() {
  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, impl_->opts.max_threads);
  // Where the kernel resends, workers read from the session's descriptor,
  // which the FD keeper shares: what a killed daemon had read stays queued
  // on it for the successor. Elsewhere, a descriptor per worker: requests
  // a worker has read die with it (ECONNABORTED to the caller) instead of
  // waiting forever on a connection that a successor takes over.
  fuse_loop_cfg_set_clone_fd(cfg, impl_->resend ? 0 : 1);
  int rc = fuse_session_loop_mt(impl_->se, cfg);
  fuse_loop_cfg_destroy(cfg);
  if (rc != 0 && !fuse_session_exited(impl_->se)) {
    return absl::InternalError(absl::StrCat("FUSE session ended with error ", rc));
  }
  return absl::OkStatus();
}

void FuseServer::Stop() {
  fuse_session_exit(impl_->se);
  {
    absl::MutexLock l(&impl_->io_mu);
    if (impl_->log) impl_->log->Remove();  // no successor will take this mount over
  }
  // The loop blocks reading /dev/fuse. Detaching the mount wakes it, unless
  // bind mounts of it (CSI publications) keep the file system alive; so the
  // connection is aborted as well, and whatever still refers to it sees
  // ENOTCONN rather than a hang.
  if (impl_->mounted.exchange(false)) ::umount2(impl_->opts.mountpoint.c_str(), MNT_DETACH);
  if (impl_->connection >= 0) {
    std::string abort = absl::StrCat("/sys/fs/fuse/connections/", impl_->connection, "/abort");
    int fd = ::open(abort.c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
      // The fusectl file system is not mounted here (it usually is).
      ::mount("fusectl", "/sys/fs/fuse/connections", "fusectl", 0, nullptr);
      fd = ::open(abort.c_str(), O_WRONLY | O_CLOEXEC);
    }
    if (fd >= 0) {
      (void)!::write(fd, "1", 1);
      ::close(fd);
    }
  }
}

FuseServer::~FuseServer() {
  // Also after Stop() or an external unmount: this is where libfuse lets go
  // of the mountpoint it keeps (it sees the dead connection and skips umount).
  impl_->mounted = false;
  impl_->tree->set_kernel_cache(nullptr);
  impl_->notifier.reset();
  fuse_session_unmount(impl_->se);
  fuse_session_destroy(impl_->se);
}

bool IsMountPoint(const std::string& path) {
  std::ifstream in("/proc/self/mountinfo");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    if ((f >> id >> parent >> dev >> root >> point) && UnescapeMountInfo(point) == path) {
      return true;
    }
  }
  return false;
}

absl::Status Unmount(const std::string& mountpoint) {
  if (::umount2(mountpoint.c_str(), MNT_DETACH) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot unmount ", mountpoint, ": ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

}  // namespace strata::fuse
