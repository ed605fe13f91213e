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
#include <chrono>
#include <cstring>
#include <optional>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "fuse/fd_keeper.h"
#include "nlohmann/json.hpp"

namespace strata::cmd {
namespace {

using nlohmann::json;

constexpr size_t kMaxRequest = 64 << 10;
constexpr int kRequestTimeoutMs = 10'000;
constexpr int kIdleTimeoutMs = 300'000;  // the client's wait for the next line
constexpr int kSendTimeoutS = 30;        // a client that stops reading is dropped

absl::Status Errno(int err, const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Sends one line; false when the peer is gone.
bool SendLine(int fd, const json& j) {
  // Messages quote origins' answers, which need not be UTF-8.
  std::string line = j.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
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

// A connected socket to `path`, or why not.
absl::StatusOr<int> Connect(const std::string& path) {
  auto addr = fuse::UnixAddress(path);
  if (!addr.ok()) return addr.status();
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno(errno, "socket");
  if (::connect(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    int err = errno;
    ::close(fd);
    return Errno(err, absl::StrCat("connect to the node daemon at ", path));
  }
  return fd;
}

// A string field of a request: empty when absent or null, nullopt when of
// another type.
std::optional<std::string> StringField(const json& req, const char* key) {
  if (!req.contains(key) || req[key].is_null()) return std::string();
  if (!req[key].is_string()) return std::nullopt;
  return req[key].get<std::string>();
}

}  // namespace

absl::StatusOr<cache::FetchTarget> UnresolvedTarget(const ObjectRef& ref) {
  if (!ref.digest.empty() &&
      (!ref.digest.starts_with("sha256:") || ref.digest.size() != 71 ||
       ref.digest.find_first_not_of("0123456789abcdef", 7) != std::string::npos)) {
    return absl::InvalidArgumentError("the digest must be sha256:<64 hex digits>");
  }
  origin::OriginOptions oo;
  oo.ca_file = ref.ca_file;
  oo.verify_tls = !ref.insecure;
  auto origin = origin::OpenOrigin(ref.url, oo);
  if (!origin.ok()) return origin.status();
  cache::FetchTarget t;
  t.origin = std::move(*origin);
  t.stat.digest = ref.digest;
  return t;
}

absl::StatusOr<cache::FetchTarget> ResolveTarget(const ObjectRef& ref) {
  auto t = UnresolvedTarget(ref);
  if (!t.ok()) return t.status();
  auto st = t->origin->Stat("");
  if (!st.ok()) return st.status();
  if (st->is_dir) return absl::InvalidArgumentError(absl::StrCat(ref.url, " is a directory"));
  t->stat = *st;
  if (!ref.digest.empty()) t->stat.digest = ref.digest;
  return t;
}

AdminServer::AdminServer(std::string path, int fd, cache::Fetcher& fetcher, int max_requests)
    : path_(std::move(path)), fd_(fd), fetcher_(fetcher), max_requests_(max_requests) {}

absl::StatusOr<std::unique_ptr<AdminServer>> AdminServer::Start(const std::string& path,
                                                                cache::Fetcher& fetcher,
                                                                int max_requests) {
  auto addr = fuse::UnixAddress(path);
  if (!addr.ok()) return addr.status();
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return absl::FailedPreconditionError(absl::StrCat(path, " exists and is not a socket"));
    }
    if (auto live = Connect(path); live.ok()) {
      ::close(*live);
      return absl::AlreadyExistsError(absl::StrCat("another strata daemon answers on ", path));
    }
    ::unlink(path.c_str());  // left by a daemon that was killed
  }
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno(errno, "admin socket");
  // Only root (the daemon's user) may connect: the socket makes it fetch.
  // Nobody can connect before listen(), so chmod in between is not a race.
  if (::bind(fd, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0 ||
      ::chmod(path.c_str(), 0600) != 0 || ::listen(fd, 16) != 0 || ::stat(path.c_str(), &st) != 0) {
    absl::Status err = Errno(errno, absl::StrCat("listen on ", path));
    ::close(fd);
    return err;
  }
  std::unique_ptr<AdminServer> s(new AdminServer(path, fd, fetcher, max_requests));
  s->ino_ = st.st_ino;
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
    // Cut the connections: their handlers stop at the next read, send or
    // slice.
    for (int conn : conns_) ::shutdown(conn, SHUT_RDWR);
    mu_.Await(absl::Condition(
        +[](std::vector<int>* conns) { return conns->empty(); }, &conns_));
  }
  if (fd_ >= 0) ::close(fd_);
  for (int f : wake_) {
    if (f >= 0) ::close(f);
  }
  struct stat st;
  if (ino_ != 0 && ::lstat(path_.c_str(), &st) == 0 && st.st_ino == ino_) ::unlink(path_.c_str());
}

void AdminServer::AcceptLoop() {
  while (!stopping_) {
    pollfd p[2] = {{fd_, POLLIN, 0}, {wake_[0], POLLIN, 0}};
    int rc = ::poll(p, 2, -1);
    if (rc < 0 && errno == EINTR) continue;
    if (rc < 0 || (p[1].revents & POLLIN)) return;
    int conn = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (conn < 0) {
      if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED) {
        // Out of descriptors or memory: do not spin on a readable listener.
        spdlog::warn("admin socket: accept: {}", std::strerror(errno));
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      continue;
    }
    timeval tv{kSendTimeoutS, 0};
    ::setsockopt(conn, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    absl::MutexLock l(&mu_);
    if (static_cast<int>(conns_.size()) >= max_requests_) {
      SendLine(conn, ErrorLine(absl::ResourceExhaustedError(absl::StrCat(
                         "the node is already running ", conns_.size(), " requests; try later"))));
      ::close(conn);
      continue;
    }
    conns_.push_back(conn);
    auto done = [this, conn] {
      absl::MutexLock l(&mu_);
      std::erase(conns_, conn);
      ::close(conn);
    };
    try {
      std::thread([this, conn, done] {
        try {
          Serve(conn);
        } catch (const std::exception& e) {
          // A request must never take the daemon (and its mounts) down.
          spdlog::error("admin: request failed: {}", e.what());
          SendLine(conn, ErrorLine(absl::InternalError(e.what())));
        }
        done();
      }).detach();
    } catch (const std::system_error& e) {
      SendLine(conn, ErrorLine(absl::ResourceExhaustedError(e.what())));
      mu_.Unlock();
      done();
      mu_.Lock();
    }
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
  std::optional<std::string> op, url, digest, ca_file;
  if (!req.is_discarded() && req.is_object()) {
    op = StringField(req, "op");
    url = StringField(req, "url");
    digest = StringField(req, "digest");
    ca_file = StringField(req, "ca_file");
  }
  bool bad_insecure = req.is_object() && req.contains("insecure") && !req["insecure"].is_boolean();
  if (!op || *op != "prefetch" || !url || url->empty() || !digest || !ca_file || bad_insecure) {
    SendLine(conn, ErrorLine(absl::InvalidArgumentError(
                       R"(expected {"op": "prefetch", "url": URL, "digest": "sha256:...", )"
                       R"("ca_file": PATH, "insecure": false} on one line)")));
    return;
  }
  ObjectRef ref{*url, *digest, *ca_file, req.is_object() && req.value("insecure", false)};
  auto target = ResolveTarget(ref);
  if (!target.ok()) {
    SendLine(conn, ErrorLine(target.status()));
    return;
  }
  spdlog::info("admin: prefetching {} ({} bytes)", ref.url, target->stat.size);
  const uint64_t size = target->stat.size;
  bool connected = true;
  // One prefetch of the whole object, so that its chunks stay in flight
  // from the first to the last (slices made every slice wait on its
  // slowest chunk), which a client that goes away or a node that stops
  // ends between two chunks. An object checked by its whole digest is
  // checked at the end, over what is then cached (a mismatch drops it and
  // is the answer).
  absl::Status st = fetcher_.Prefetch(
      *target, {},
      [&](uint64_t done, uint64_t total) {
        connected = connected && SendLine(conn, json{{"done", done}, {"total", total}});
      },
      [&] { return stopping_ || !connected; });
  if (absl::IsCancelled(st)) {
    st = absl::CancelledError(stopping_ ? "the node is stopping" : "the client went away");
  }
  if (!st.ok()) {
    spdlog::warn("admin: prefetch of {} ended: {}", ref.url, st.message());
    SendLine(conn, ErrorLine(st));
    return;
  }
  SendLine(conn, json{{"ok", true}, {"bytes", size}});
}

bool NodeAnswers(const std::string& socket) {
  auto fd = Connect(socket);
  if (!fd.ok()) return false;
  ::close(*fd);
  return true;
}

absl::StatusOr<uint64_t> PrefetchThroughNode(
    const std::string& socket, const ObjectRef& ref,
    const std::function<void(uint64_t done, uint64_t total)>& progress) {
  auto connected = Connect(socket);
  if (!connected.ok()) return connected.status();
  int fd = *connected;
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
      auto number = [&](const char* key) {
        return j.contains(key) && j[key].is_number_unsigned() ? j[key].get<uint64_t>() : 0;
      };
      if (j.contains("error")) {
        int code = j.contains("code") && j["code"].is_number_integer() ? j["code"].get<int>() : 2;
        if (code <= 0 || code > 16) code = static_cast<int>(absl::StatusCode::kUnknown);
        result = absl::Status(static_cast<absl::StatusCode>(code),
                              j["error"].is_string() ? j["error"].get<std::string>() : "failed");
        break;
      }
      if (j.contains("ok") && j["ok"] == true) {
        result = number("bytes");
        break;
      }
      if (progress) progress(number("done"), number("total"));
    }
  }
  ::close(fd);
  return result;
}

}  // namespace strata::cmd
