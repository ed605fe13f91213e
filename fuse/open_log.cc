#include "fuse/open_log.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "base/unique_fd.h"

namespace strata::fuse {

namespace {

// A record: u32 length of the whole record, u32 XXH32 of what follows it,
// then u8 kind, u64 handle, u64 inode, i32 backing id, with kWithRequest in
// the kind a u64 request id, and the backing's id to the end.
// Little-endian, as the machine that wrote it. (Daemons before request ids
// stop reading a log at the first record that has one.)
constexpr uint8_t kClose = 4;
constexpr uint8_t kWithRequest = 0x10;
constexpr size_t kHeader = 8;
constexpr size_t kFixed = 1 + 8 + 8 + 4;
constexpr size_t kMaxBacking = 4096;  // store keys are at most 4096 bytes
// Far past what compaction lets a log grow to (1,024 records or 4x the open
// files, of at most 4 KiB each).
constexpr off_t kMaxLogBytes = 64 << 20;

template <typename T>
void Put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

template <typename T>
T Get(const char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

std::string Encode(uint8_t kind, uint64_t handle, const OpenRecord& r) {
  const bool request = kind != kClose && r.request != 0;
  std::string body;
  Put(body, static_cast<uint8_t>(kind | (request ? kWithRequest : 0)));
  Put(body, handle);
  Put(body, r.ino);
  Put(body, r.backing_id);
  if (request) Put(body, r.request);
  body += r.backing;
  std::string out;
  Put(out, static_cast<uint32_t>(kHeader + body.size()));
  Put(out, static_cast<uint32_t>(XXH32(body.data(), body.size(), 0)));
  return out + body;
}

bool WriteAll(int fd, const std::string& data) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// What the kernel allows (open_log.h): an inode's opens are all cached, or
// all passed through one backing file. A log that says otherwise was not
// written by a daemon of this mount and is not believed.
absl::Status CheckOpens(const OpenFiles& open) {
  absl::flat_hash_map<uint64_t, const OpenRecord*> first;
  for (const auto& [handle, r] : open) {
    if (r.mode == IoMode::kPassthrough && (r.backing_id <= 0 || r.backing.empty())) {
      return absl::DataLossError(absl::StrCat("handle ", handle, " is passed through nothing"));
    }
    auto [it, fresh] = first.emplace(r.ino, &r);
    const OpenRecord& o = *it->second;
    if (!fresh && (o.mode != r.mode || o.backing_id != r.backing_id || o.backing != r.backing)) {
      return absl::DataLossError(
          absl::StrCat("inode ", r.ino, " is held two ways (handle ", handle, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<OpenLog>> OpenLog::Start(const std::string& path,
                                                        const OpenFiles& open) {
  std::string all;
  for (const auto& [handle, r] : open) all += Encode(static_cast<uint8_t>(r.mode), handle, r);
  // Written whole beside it, then renamed over it: a kill leaves one or the other.
  std::string tmp = path + ".new";
  strata::UniqueFd fd(
      ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (fd.get() < 0 || !WriteAll(fd.get(), all) || ::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    // An older log left in place would speak for opens of another
    // connection (backing ids are per connection): none at all is the truth.
    ::unlink(path.c_str());
    return absl::InternalError(absl::StrCat("open log ", path, ": ", std::strerror(err)));
  }
  auto log = std::unique_ptr<OpenLog>(new OpenLog(path, fd.release()));
  log->records_ = open.size();
  return log;
}

absl::StatusOr<OpenFiles> OpenLog::Read(const std::string& path) {
  strata::UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0) {
    int err = errno;
    std::string msg = absl::StrCat("open log ", path, ": ", std::strerror(err));
    return err == ENOENT ? absl::NotFoundError(msg) : absl::InternalError(msg);
  }
  // A log is compacted long before this (open_log.h); a larger file is
  // not one this daemon wrote.
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return absl::InternalError(absl::StrCat("stat ", path, ": ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode) || st.st_size > kMaxLogBytes) {
    return absl::DataLossError(absl::StrCat("open log ", path, ": not a log of this size (",
                                            static_cast<int64_t>(st.st_size), " bytes)"));
  }
  std::string data;
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return absl::InternalError(absl::StrCat("read ", path, ": ", std::strerror(errno)));
    if (n == 0) break;
    data.append(buf, static_cast<size_t>(n));
  }
  OpenFiles open;
  size_t at = 0;
  while (data.size() - at >= kHeader + kFixed) {
    const char* p = data.data() + at;
    uint32_t len = Get<uint32_t>(p);
    if (len < kHeader + kFixed || len > kHeader + kFixed + 8 + kMaxBacking ||
        len > data.size() - at || Get<uint32_t>(p + 4) != XXH32(p + kHeader, len - kHeader, 0)) {
      break;  // torn by a kill mid-write: it and anything after never happened
    }
    const char* b = p + kHeader;
    uint8_t kind = Get<uint8_t>(b);
    const size_t fixed = kFixed + ((kind & kWithRequest) ? 8 : 0);
    if (len < kHeader + fixed) break;
    uint64_t handle = Get<uint64_t>(b + 1);
    OpenRecord r;
    r.ino = Get<uint64_t>(b + 9);
    r.backing_id = Get<int32_t>(b + 17);
    if (kind & kWithRequest) r.request = Get<uint64_t>(b + kFixed);
    kind &= ~kWithRequest;
    r.backing.assign(b + fixed, len - kHeader - fixed);
    if (kind == kClose) {
      open.erase(handle);
    } else if (kind == static_cast<uint8_t>(IoMode::kCached) ||
               kind == static_cast<uint8_t>(IoMode::kPassthrough)) {
      r.mode = static_cast<IoMode>(kind);
      open[handle] = std::move(r);
    } else {
      break;
    }
    at += len;
  }
  if (at != data.size()) {
    spdlog::warn("open log {}: ignored {} bytes after the last whole record", path,
                 data.size() - at);
  }
  if (absl::Status bad = CheckOpens(open); !bad.ok()) {
    return absl::DataLossError(absl::StrCat("open log ", path, ": ", bad.message()));
  }
  return open;
}

std::vector<std::string> OpenLog::BackingsIn(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
    if (e.path().extension() != ".opens") continue;
    auto open = Read(e.path().string());
    if (!open.ok()) continue;  // its successor says why, and makes nothing of it
    for (const auto& [handle, r] : *open) {
      if (r.mode == IoMode::kPassthrough) out.push_back(r.backing);
    }
  }
  return out;
}

OpenLog::~OpenLog() {
  if (fd_ >= 0) ::close(fd_);
}

void OpenLog::Opened(uint64_t handle, const OpenRecord& record, const OpenFiles& open) {
  Append(Encode(static_cast<uint8_t>(record.mode), handle, record), open);
}

void OpenLog::Closed(uint64_t handle, const OpenFiles& open) {
  Append(Encode(kClose, handle, OpenRecord{}), open);
}

void OpenLog::Append(const std::string& record, const OpenFiles& open) {
  if (fd_ < 0) return;
  if (!WriteAll(fd_, record)) return Broken(std::strerror(errno));
  ++records_;
  if (records_ < 1024 || records_ < 4 * open.size()) return;
  auto fresh = Start(path_, open);
  if (!fresh.ok()) return Broken(std::string(fresh.status().message()));
  std::swap(fd_, (*fresh)->fd_);
  records_ = (*fresh)->records_;
}

void OpenLog::Broken(const std::string& what) {
  // A log that misses a record would mislead a successor; none at all
  // tells it to assume nothing (see FuseServer::Adopt).
  spdlog::error(
      "open log {} cannot be written ({}): removed; a daemon taking this mount over "
      "will make no passthrough opens",
      path_, what);
  ::unlink(path_.c_str());
  ::close(fd_);
  fd_ = -1;
}

void OpenLog::Remove() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  ::unlink(path_.c_str());
}

}  // namespace strata::fuse
