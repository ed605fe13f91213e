// A real nginx serving a directory on 127.0.0.1 for a test: range requests,
// ETags and keep-alive as production static servers have them.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <fstream>
#include <string>

#include "tests/util/fault_proxy.h"
#include "tests/util/subprocess.h"

namespace strata::testing {

class Nginx {
 public:
  // Serves `root` from a fresh prefix directory `work`; over TLS when a
  // certificate and key (PEM files) are given.
  // `extra` is added inside the server block (locations, redirects).
  // Requests are logged to access.log as "CONNECTION_ID REQUEST STATUS".
  Nginx(const std::string& root, const std::string& work, const std::string& cert = "",
        const std::string& key = "", const std::string& extra = "")
      : work_(work), tls_(!cert.empty()) {
    port_ = FreePort();
    std::ofstream(work + "/nginx.conf")
        << (::geteuid() == 0 ? "user root root;\n" : "")  // test dirs are 0700
        << "daemon off;\nworker_processes 2;\npid " << work << "/nginx.pid;\n"
        << "error_log " << work << "/error.log warn;\n"
        << "events { worker_connections 256; }\n"
        << "http {\n  log_format conn '$connection \"$request\" $status';\n"
        << "  access_log " << work
        << "/access.log conn;\n  sendfile on;\n  keepalive_requests 100000;\n"
        << "  client_body_temp_path " << work << "/tmp;\n  proxy_temp_path " << work << "/tmp;\n"
        << "  fastcgi_temp_path " << work << "/tmp;\n  uwsgi_temp_path " << work << "/tmp;\n"
        << "  scgi_temp_path " << work << "/tmp;\n"
        << "  server {\n    listen 127.0.0.1:" << port_ << (tls_ ? " ssl" : "") << ";\n    root "
        << root << ";\n"
        << (tls_ ? "    ssl_certificate " + cert + ";\n    ssl_certificate_key " + key + ";\n" : "")
        << extra << "  }\n}\n";
    child_ = Spawn({"/usr/sbin/nginx", "-c", work + "/nginx.conf", "-p", work});
    // Ready when it accepts a connection: bounded by a deadline generous
    // for a loaded machine, and cut short when nginx exits (a bad config).
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (child_.pid > 0 && !(ready_ = Accepts()) && std::chrono::steady_clock::now() < deadline) {
      if (::waitpid(child_.pid, nullptr, WNOHANG) == child_.pid) {
        ::close(child_.out);
        child_ = Child{};
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  ~Nginx() {
    if (child_.pid > 0) {
      ::kill(child_.pid, SIGQUIT);  // graceful: workers finish their requests
      Wait(child_, std::chrono::seconds(10));
    }
  }
  int port() const { return port_; }
  std::string url(const std::string& path = "") const {
    return (tls_ ? "https" : "http") + std::string("://127.0.0.1:") + std::to_string(port_) + "/" +
           path;
  }
  // Started and accepting connections.
  bool ok() const { return child_.pid > 0 && ready_; }
  std::string access_log() const { return work_ + "/access.log"; }

 private:
  bool Accepts() const {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port_);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
    ::close(fd);
    return ok;
  }

  std::string work_;
  bool tls_ = false;
  int port_ = 0;
  bool ready_ = false;
  Child child_;
};

}  // namespace strata::testing
