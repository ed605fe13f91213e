// A TCP proxy for tests of what crosses the network between two daemons
// (gRPC, TLS): listens on a loopback address of the test's choosing and
// forwards to an upstream port, and on demand flips a bit of what upstream
// sends (the last byte of the next occurrences of a marker, so the fault
// lands in payload, not in framing) or cuts every connection and refuses
// new ones (a partition). A thread per direction of each connection.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace strata::testing {

class TcpProxy {
 public:
  TcpProxy(const std::string& listen_ip, const std::string& upstream_ip, int upstream_port)
      : upstream_ip_(upstream_ip), upstream_port_(upstream_port) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    ::inet_pton(AF_INET, listen_ip.c_str(), &a.sin_addr);
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
        ::listen(listen_fd_, 64) != 0) {
      ::close(listen_fd_);
      listen_fd_ = -1;
      return;
    }
    socklen_t len = sizeof a;
    ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    acceptor_ = std::thread([this] { AcceptLoop(); });
  }
  ~TcpProxy() {
    stop_ = true;
    if (acceptor_.joinable()) acceptor_.join();
    if (listen_fd_ >= 0) ::close(listen_fd_);
    CutAll();
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> l(mu_);
      threads.swap(threads_);
    }
    for (auto& t : threads) t.join();
    for (int fd : fds_) ::close(fd);
  }
  bool ok() const { return listen_fd_ >= 0; }
  int port() const { return port_; }

  // Flips a bit of the last byte of each of the next `times` occurrences of
  // `marker` in the upstream-to-client stream.
  void FlipMarker(const std::string& marker, int times) {
    std::lock_guard<std::mutex> l(mu_);
    marker_ = marker;
    flips_left_ = times;
  }
  int flips() const { return flips_; }

  // While cut, open connections are closed and new ones closed at accept.
  void Cut(bool cut) {
    cut_ = cut;
    if (cut) CutAll();
  }
  // While blackholed, nothing is forwarded either way and nothing is
  // closed: what a silent partition looks like (only deadlines end it).
  void Blackhole(bool on) { blackhole_ = on; }

 private:
  void AcceptLoop() {
    while (!stop_) {
      pollfd p{listen_fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      int c = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (c < 0) continue;
      if (cut_) {
        ::close(c);
        continue;
      }
      if (blackhole_) {  // accepted, never answered
        std::lock_guard<std::mutex> l(mu_);
        fds_.push_back(c);
        continue;
      }
      int u = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(upstream_port_);
      ::inet_pton(AF_INET, upstream_ip_.c_str(), &a.sin_addr);
      if (::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
        ::close(u);
        ::close(c);
        continue;
      }
      std::lock_guard<std::mutex> l(mu_);
      fds_.push_back(c);
      fds_.push_back(u);
      threads_.emplace_back([this, c, u] { Pump(c, u, false); });
      threads_.emplace_back([this, c, u] { Pump(u, c, true); });
    }
  }

  // Copies from -> to until either end closes; then shuts both down.
  void Pump(int from, int to, bool downstream) {
    std::string carry;  // the marker's length - 1 last bytes seen
    char buf[65536];
    for (;;) {
      pollfd p{from, POLLIN, 0};
      int pr = ::poll(&p, 1, 50);
      if (stop_) break;
      if (blackhole_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      if (pr <= 0) continue;
      ssize_t n = ::recv(from, buf, sizeof buf, 0);
      if (n <= 0) break;
      if (downstream) MaybeFlip(carry, buf, static_cast<size_t>(n));
      size_t off = 0;
      while (off < static_cast<size_t>(n)) {
        ssize_t w = ::send(to, buf + off, n - off, MSG_NOSIGNAL);
        if (w <= 0) break;
        off += w;
      }
      if (off < static_cast<size_t>(n)) break;
    }
    ::shutdown(from, SHUT_RDWR);
    ::shutdown(to, SHUT_RDWR);
  }

  void MaybeFlip(std::string& carry, char* buf, size_t n) {
    std::string marker;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (flips_left_ <= 0 || marker_.empty()) return;
      marker = marker_;
    }
    std::string hay = carry + std::string(buf, n);
    size_t from = 0;
    for (;;) {
      size_t at = hay.find(marker, from);
      if (at == std::string::npos) break;
      size_t last = at + marker.size() - 1;  // always in buf: carry is shorter
      {
        std::lock_guard<std::mutex> l(mu_);
        if (flips_left_ <= 0) break;
        --flips_left_;
      }
      buf[last - carry.size()] ^= 0x01;
      ++flips_;
      from = at + marker.size();
    }
    size_t keep = marker.size() - 1;
    carry = hay.size() > keep ? hay.substr(hay.size() - keep) : hay;
  }

  void CutAll() {
    std::lock_guard<std::mutex> l(mu_);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }

  std::string upstream_ip_;
  int upstream_port_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false}, cut_{false}, blackhole_{false};
  std::atomic<int> flips_{0};
  std::mutex mu_;
  std::string marker_;
  int flips_left_ = 0;
  std::vector<int> fds_;  // closed by the pumps' shutdown; never reused while we live
  std::vector<std::thread> threads_;
  std::thread acceptor_;
};

}  // namespace strata::testing
