// FaultProxy: blocking sockets, a thread per connection.
#include "tests/util/fault_proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>

namespace strata::testing {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

bool SendAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= w;
  }
  return true;
}

// Reads until the end of the HTTP header block; the rest stays in `buf`.
bool ReadHead(int fd, std::string& buf, size_t& head_end) {
  char tmp[16384];
  for (;;) {
    size_t p = buf.find("\r\n\r\n");
    if (p != std::string::npos) {
      head_end = p + 4;
      return true;
    }
    if (buf.size() > (1 << 20)) return false;
    pollfd pf{fd, POLLIN, 0};
    if (::poll(&pf, 1, 30000) <= 0) return false;
    ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
    if (n <= 0) return false;
    buf.append(tmp, n);
  }
}

int ConnectLocal(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

// Content-Length of a response head, or -1.
int64_t ContentLength(const std::string& head) {
  std::string lower = head;
  for (char& c : lower) c = std::tolower(static_cast<unsigned char>(c));
  size_t p = lower.find("\r\ncontent-length:");
  if (p == std::string::npos) return -1;
  return std::strtoll(lower.c_str() + p + 17, nullptr, 10);
}

}  // namespace

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0) {
    ::close(fd);
    return -1;
  }
  ::close(fd);
  return ntohs(a.sin_port);
}

FaultProxy::FaultProxy(int upstream_port, Plan plan, Canned canned)
    : upstream_port_(upstream_port), plan_(std::move(plan)), canned_(std::move(canned)) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
  ::listen(listen_fd_, 128);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

FaultProxy::~FaultProxy() {
  stop_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  acceptor_.join();
  // Connection threads are detached; wait (bounded) for them to finish.
  for (int i = 0; i < 3000 && active_ > 0; ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ::close(listen_fd_);
}

void FaultProxy::Throttle(uint64_t bytes_per_second, int rtt_ms) {
  rate_ = bytes_per_second;
  rtt_ms_ = rtt_ms;
}

void FaultProxy::AcceptLoop() {
  while (!stop_) {
    pollfd pf{listen_fd_, POLLIN, 0};
    if (::poll(&pf, 1, 100) <= 0) continue;
    int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    ++active_;
    std::thread([this, c] {
      Serve(c);
      --active_;
    }).detach();
  }
}

// Waits until the shared link may carry `bytes` more.
void FaultProxy::Pace(size_t bytes) {
  uint64_t rate = rate_;
  if (rate == 0) return;
  int64_t cost = static_cast<int64_t>(bytes * 1e9 / rate);
  int64_t now = NowNs();
  int64_t start = next_send_ns_.load();
  int64_t mine;
  do {
    mine = std::max(start, now);
  } while (!next_send_ns_.compare_exchange_weak(start, mine + cost));
  int64_t wait = mine + cost - now;
  if (wait > 0) std::this_thread::sleep_for(std::chrono::nanoseconds(wait));
}

void FaultProxy::Serve(int client) {
  std::string req;
  size_t head_end = 0;
  if (!ReadHead(client, req, head_end)) {
    ::close(client);
    return;
  }
  uint64_t n = requests_++;
  std::string line = req.substr(0, req.find("\r\n"));
  std::string range;
  {
    std::string lower = req.substr(0, head_end);
    for (char& ch : lower) ch = std::tolower(static_cast<unsigned char>(ch));
    size_t p = lower.find("\r\nrange:");
    if (p != std::string::npos) {
      size_t e = lower.find("\r\n", p + 2);
      range = req.substr(p + 8, e - p - 8);
      while (!range.empty() && range.front() == ' ') range.erase(0, 1);
    }
  }
  Fault f = plan_ ? plan_(n, line, range) : Fault{};
  if (f.kind != Fault::Kind::kNone) ++faults_;
  if (rtt_ms_ > 0) std::this_thread::sleep_for(std::chrono::milliseconds(rtt_ms_.load()));
  if (f.kind == Fault::Kind::kReset) {
    linger l{1, 0};  // RST, not FIN
    ::setsockopt(client, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    ::close(client);
    return;
  }
  if (f.kind == Fault::Kind::kCanned) {
    std::string resp = canned_ ? canned_(line) : "";
    SendAll(client, resp.data(), resp.size());
    ::close(client);
    return;
  }
  if (f.kind == Fault::Kind::kStatus) {
    std::string body = "injected fault\n";
    std::string resp = "HTTP/1.1 " + std::to_string(f.status) +
                       " Injected\r\nContent-Length: " + std::to_string(body.size()) +
                       "\r\nConnection: close\r\n";
    if (f.status == 429) resp += "Retry-After: 0\r\n";
    resp += "\r\n" + body;
    SendAll(client, resp.data(), resp.size());
    ::close(client);
    return;
  }
  // Forward with "Connection: close" so upstream ends the body with EOF too.
  std::string head = req.substr(0, head_end - 2);
  std::string out;
  size_t pos = 0;
  while (pos < head.size()) {
    size_t e = head.find("\r\n", pos);
    std::string h = head.substr(pos, e - pos);
    pos = e + 2;
    std::string lower = h;
    for (char& c : lower) c = std::tolower(static_cast<unsigned char>(c));
    if (lower.rfind("connection:", 0) == 0) continue;
    out += h + "\r\n";
  }
  out += "Connection: close\r\n\r\n" + req.substr(head_end);
  int up = ConnectLocal(upstream_port_);
  if (up < 0 || !SendAll(up, out.data(), out.size())) {
    std::string resp = "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    SendAll(client, resp.data(), resp.size());
    if (up >= 0) ::close(up);
    ::close(client);
    return;
  }
  std::string rbuf;
  size_t rhead = 0;
  if (!ReadHead(up, rbuf, rhead)) {
    ::close(up);
    ::close(client);
    return;
  }
  // Response head: make the client close after it, like upstream.
  std::string rh = rbuf.substr(0, rhead);
  int64_t clen = ContentLength(rh);
  std::string body = rbuf.substr(rhead);
  bool ok = SendAll(client, rh.data(), rh.size());
  uint64_t sent = 0;
  uint64_t limit = f.kind == Fault::Kind::kTruncate ? f.bytes : UINT64_MAX;
  // Paced in slices of about a millisecond of the link (16 to 128 KiB), so
  // that many connections share it fairly without a wakeup per few bytes:
  // the proxy stands for a remote origin, and should take little of this
  // machine's CPU from the nodes it serves.
  const uint64_t rate = rate_;
  const size_t slice = std::clamp<size_t>(rate / 1000, 16384, 131072);
  std::vector<char> tmp(131072);
  while (ok) {
    if (body.empty()) {
      if (clen >= 0 && sent >= static_cast<uint64_t>(clen)) break;
      ssize_t r = ::recv(up, tmp.data(), tmp.size(), 0);
      if (r <= 0) break;
      body.assign(tmp.data(), r);
    }
    size_t take = std::min<uint64_t>(body.size(), limit - sent);
    if (take == 0) break;
    if (f.kind == Fault::Kind::kCorrupt && f.bytes >= sent && f.bytes < sent + take) {
      body[f.bytes - sent] ^= 0x20;
    }
    for (size_t off = 0; off < take && ok; off += slice) {
      size_t m = std::min<size_t>(slice, take - off);
      Pace(m);
      ok = SendAll(client, body.data() + off, m);
      if (ok) body_bytes_ += m;
    }
    sent += take;
    body.erase(0, take);
    if (sent >= limit) break;
  }
  ::close(up);
  ::shutdown(client, SHUT_RDWR);
  ::close(client);
}

}  // namespace strata::testing
