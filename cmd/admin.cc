// AdminServer: an accept loop on one thread, one detached thread per request
// (bounded), newline-delimited JSON both ways.
#include "cmd/admin.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "cache/logging.h"
#include "nlohmann/json.hpp"

namespace strata::cmd {
namespace {

using nlohmann::json;

constexpr size_t kMaxRequest = 64 << 10;
constexpr uint64_t kSlice = 64ull << 20;  // a prefetch stops between slices
constexpr int kRequestTimeoutMs = 10'000;
constexpr int kIdleTimeoutMs = 300'000;  // the client's wait for the next line

absl::Status Errno(int err, const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Sends one line; false when the peer is gone.
bool SendLine(int fd, const json& j) {
  std::string line = j.dump() + "\n";
  size_t done = 0;
  while (done < line.size()) {
    ssize_t n = ::send(fd, line.data() + done, line.size() - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads up to a newline (not included) within `timeout_ms` of silence.
absl::StatusOr<std::string> ReadLine(int fd, std::string& buffer, int timeout_ms) {
  for (;;) {
    if (size_t nl = buffer.find('\n'); nl != std::string::npos) {
      std::string line = buffer.substr(0, nl);
      buffer.erase(0, nl + 1);
      return line;
    }
    if (buffer.size() > kMaxRequest) return absl::InvalidArgumentError("line too long");
    pollfd p{fd, POLLIN, 0};
    int rc = ::poll(&p, 1, timeout_ms);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0) return Errno(errno, "poll");
    if (rc == 0) return absl::DeadlineExceededError("no answer in time");
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno(errno, "read");
    if (n == 0) return absl::UnavailableError("the other side closed the connection");
    buffer.append(buf, static_cast<size_t>(n));
  }
}

json ErrorLine(const absl::Status& st) {
  return json{{"error", std::string(st.message())}, {"code", static_cast<int>(st.code())}};
}

}  // namespace

absl::StatusOr<cache::FetchTarget> ResolveTarget(const ObjectRef& ref) {
  cache::OriginOptions oo;
  oo.ca_file = ref.ca_file;
  oo.verify_tls = !ref.insecure;
  auto origin = cache::OpenOrigin(ref.url, oo);
  if (!origin.ok()) return origin.status();
  cache::FetchTarget t;
  t.origin = std::move(*origin);
  auto st = t.origin->Stat("");
  if (!st.ok()) return st.status();
  if (st->is_dir) return absl::InvalidArgumentError(absl::StrCat(ref.url, " is a directory"));
  t.stat = *st;
  if (!ref.digest.empty()) {
    if (!ref.digest.starts_with("sha256:") || ref.digest.size() != 71) {
      return absl::InvalidArgumentError("the digest must be sha256:<64 hex digits>");
    }
    t.stat.digest = ref.digest;
  }
  return t;
}

AdminServer::AdminServer(std::string path, int fd, cache::Fetcher& fetcher, int max_requests)
    : path_(std::move(path)), fd_(fd), fetcher_(fetcher), max_requests_(max_requests) {}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& path,
                                                                cache::Fetcher& fetcher,
                                                                int max_requests) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("admin socket path too long: ", path));
  }
  std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  ::unlink(path.c_str());  // a socket left by a killed daemon
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno(errno, "admin socket");
  // Only root (the daemon's user) may connect: the socket makes it fetch.
  mode_t old = ::umask(0077);
  int rc = ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
  int err = errno;
  ::umask(old);
  if (rc != 0 || ::listen(fd, 16) != 0) {
    if (rc == 0) err = errno;
    ::close(fd);
    return Errno(err, absl::StrCat("listen on ", path));
  }
  std::unique_ptr<AdminServer> s(new AdminServer(path, fd, fetcher, max_requests));
  if (::pipe2(s->wake_, O_CLOEXEC) != 0) return Errno(errno, "pipe");
  s->acceptor_ = std::thread([p = s.get()] { p->AcceptLoop(); });
  return s;
}

AdminServer::~AdminServer() {
  stopping_ = true;
  if (wake_[1] >= 0) {
    char c = 0;
    (void)!::write(wake_[1], &c, 1);
  }
  if (acceptor_.joinable()) acceptor_.join();
  {
    absl::MutexLock l(&mu_);
    mu_.Await(absl::Condition(
        +[](int* active) { return *active == 0; }, &active_));
  }
  if (fd_ >= 0) ::close(fd_);
  for (int f : wake_) {
    if (f >= 0) ::close(f);
  }
  ::unlink(path_.c_str());
}

void AdminServer::AcceptLoop() {
  while (!stopping_) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    int rc = ::poll(p, 2, -1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 || (p[1].revents & POLLIN)) return;
    int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) continue;
    {
      absl::MutexLock l(&mu_);
      if (active_ >= max_requests_) {
        SendLine(conn, ErrorLine(absl::ResourceExhaustedError(absl::StrCat(
                           "the node is already running ", active_, " requests; try later"))));
        ::close(conn);
        continue;
      }
      ++active_;
    }
    std::thread([this, conn] {
      Serve(conn);
      ::close(conn);
      absl::MutexLock l(&mu_);
      --active_;
    }).detach();
  }
}

void AdminServer::Serve(int conn) {
  std::string buffer;
  auto line = ReadLine(conn, buffer, kRequestTimeoutMs);
  if (!line.ok()) {
    SendLine(conn, ErrorLine(line.status()));
    return;
  }
  json req = json::parse(*line, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded() || !req.is_object() || req.value("op", "") != "prefetch" ||
      !req.contains("url") || !req["url"].is_string()) {
    SendLine(conn, ErrorLine(absl::InvalidArgumentError(
                       R"(expected {"op": "prefetch", "url": URL, ...} on one line)")));
    return;
  }
  ObjectRef ref{req["url"], req.value("digest", ""), req.value("ca_file", ""),
                req.value("insecure", false)};
  auto target = ResolveTarget(ref);
  if (!target.ok()) {
    SendLine(conn, ErrorLine(target.status()));
    return;
  }
  spdlog::info("admin: prefetching {} ({} bytes)", ref.url, target->stat.size);
  const uint64_t size = target->stat.size;
  bool connected = true;
  // A whole-object digest is checked over the whole object: one piece.
  const bool whole = !target->stat.digest.empty() && target->chunk_sha256.empty();
  const uint64_t slice = whole ? std::max<uint64_t>(size, 1) : kSlice;
  absl::Status st;
  for (uint64_t off = 0; off < size && st.ok(); off += slice) {
    if (stopping_ || !connected) {
      st = absl::CancelledError(stopping_ ? "the node is stopping" : "the client went away");
      break;
    }
    uint64_t len = std::min(slice, size - off);
    st = fetcher_.Prefetch(*target, {{off, len}}, [&](uint64_t done, uint64_t total) {
      uint64_t got = total == 0 ? len : std::min(len, len * done / total);
      connected = connected && SendLine(conn, json{{"done", off + got}, {"total", size}});
    });
  }
  if (!st.ok()) {
    spdlog::warn("admin: prefetch of {} ended: {}", ref.url, st.message());
    SendLine(conn, ErrorLine(st));
    return;
  }
  SendLine(conn, json{{"ok", true}, {"bytes", size}});
}

absl::StatusOr<uint64_t> PrefetchThroughNode(
    const std::string& socket, const ObjectRef& ref,
    const std::function<void(uint64_t done, uint64_t total)>& progress) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket.size() >= sizeof addr.sun_path) {
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", socket));
  }
  std::memcpy(addr.sun_path, socket.c_str(), socket.size() + 1);
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno(errno, "socket");
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    int err = errno;
    ::close(fd);
    return Errno(err, absl::StrCat("connect to the node daemon at ", socket));
  }
  json req{{"op", "prefetch"},
           {"url", ref.url},
           {"digest", ref.digest},
           {"ca_file", ref.ca_file},
           {"insecure", ref.insecure}};
  absl::StatusOr<uint64_t> result = absl::UnavailableError("no answer");
  std::string buffer;
  if (!SendLine(fd, req)) {
    result = Errno(errno, "send to the node daemon");
  } else {
    for (;;) {
      auto line = ReadLine(fd, buffer, kIdleTimeoutMs);
      if (!line.ok()) {
        result = absl::Status(line.status().code(),
                              absl::StrCat("the node daemon: ", line.status().message()));
        break;
      }
      json j = json::parse(*line, nullptr, /*allow_exceptions=*/false);
      if (j.is_discarded() || !j.is_object()) {
        result = absl::InternalError("the node daemon answered something else than JSON");
        break;
      }
      if (j.contains("error")) {
        int code = j.value("code", static_cast<int>(absl::StatusCode::kUnknown));
        result = absl::Status(static_cast<absl::StatusCode>(code), j.value("error", ""));
        break;
      }
      if (j.value("ok", false)) {
        result = j.value("bytes", uint64_t{0});
        break;
      }
      if (progress) progress(j.value("done", uint64_t{0}), j.value("total", uint64_t{0}));
    }
  }
  ::close(fd);
  return result;
}

}  // namespace strata::cmd
