// MetricsServer: poll-based accept loop on one thread.
#include "cmd/metrics_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace strata::cmd {
namespace {

// The HELP and TYPE lines of `name`, before its first sample.
void Describe(std::string& out, const char* name, const char* type, const char* help) {
  if (out.find(absl::StrCat("# TYPE ", name, " ")) == std::string::npos) {
    absl::StrAppend(&out, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
}

}  // namespace

void Metric(std::string& out, const char* name, const char* type, const char* help, double value,
            const std::string& labels) {
  Describe(out, name, type, help);
  absl::StrAppend(&out, name, labels.empty() ? "" : "{", labels, labels.empty() ? "" : "}", " ",
                  absl::StrFormat("%.15g", value), "\n");
}

void Histogram(std::string& out, const char* name, const char* help, const LatencyCounts& counts,
               const std::string& labels) {
  Describe(out, name, "histogram", help);
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i < std::size(counts.buckets); ++i) {
    cumulative += counts.buckets[i];
    std::string le = i < std::size(LatencyCounts::kBoundsMs)
                         ? absl::StrFormat("%g", LatencyCounts::kBoundsMs[i] / 1000.0)
                         : "+Inf";
    absl::StrAppend(&out, name, "_bucket{", labels, sep, "le=\"", le, "\"} ", cumulative, "\n");
  }
  const std::string braces = labels.empty() ? "" : absl::StrCat("{", labels, "}");
  absl::StrAppend(&out, name, "_sum", braces, " ", absl::StrFormat("%.6f", counts.sum_ms / 1000.0),
                  "\n", name, "_count", braces, " ", cumulative, "\n");
}

std::string PrometheusText(const cache::StoreStats& s, const cache::FetcherStats& f,
                           std::optional<fuse::VolumeStats> v) {
  std::string o;
  if (v) {
    Metric(o, "strata_reads_total", "counter", "Read requests from the filesystem.", v->reads);
    Metric(o, "strata_read_hits_total", "counter", "Reads answered from the chunk cache by splice.",
           v->cached_reads);
    Metric(o, "strata_read_misses_total", "counter", "Reads that needed a fetch.",
           v->fetched_reads);
    Metric(o, "strata_written_bytes_total", "counter", "Bytes written through the filesystem.",
           v->bytes_written);
    Metric(o, "strata_errors_total", "counter", "Errors by kind.", v->errors, "kind=\"io\"");
  }
  Metric(o, "strata_bytes_total", "counter", "Bytes served, by source.",
         s.bytes_read + (v ? v->cached_bytes : 0), "source=\"cache\"");
  Metric(o, "strata_bytes_total", "counter", "Bytes served, by source.", f.origin_bytes,
         "source=\"origin\"");
  Metric(o, "strata_bytes_total", "counter", "Bytes served, by source.", f.peer_bytes,
         "source=\"peer\"");
  Metric(o, "strata_errors_total", "counter", "Errors by kind.", f.peer_corrupt_chunks,
         "kind=\"peer_digest\"");
  Metric(o, "strata_errors_total", "counter", "Errors by kind.", s.write_errors,
         "kind=\"cache_write\"");
  Metric(o, "strata_errors_total", "counter", "Errors by kind.", s.checksum_failures,
         "kind=\"checksum\"");
  Metric(o, "strata_errors_total", "counter", "Errors by kind.", f.failures, "kind=\"fetch\"");
  Metric(o, "strata_origin_requests_total", "counter", "Requests sent to origins.",
         f.origin_requests);
  Metric(o, "strata_origin_retries_total", "counter", "Origin requests retried.", f.retries);
  Histogram(o, "strata_fetch_latency_seconds", "Origin request latency.", f.latency);
  Metric(o, "strata_cache_used_bytes", "gauge", "Bytes in the chunk cache.", s.used_bytes);
  Metric(o, "strata_cache_capacity_bytes", "gauge", "Byte budget of the chunk cache.",
         s.capacity_bytes);
  Metric(o, "strata_cache_fill_ratio", "gauge", "Used over capacity.",
         s.capacity_bytes ? static_cast<double>(s.used_bytes) / s.capacity_bytes : 0);
  Metric(o, "strata_cache_objects", "gauge", "Objects in the chunk cache.", s.objects);
  Metric(o, "strata_cache_memory_bytes", "gauge",
         "Bytes of recent chunks the cache keeps in memory.", s.memory_bytes);
  Metric(o, "strata_cache_memory_hits_total", "counter",
         "Reads answered from chunks in memory, without the cache file.", s.memory_hits);
  Metric(o, "strata_cache_shared_disk_reads_total", "counter",
         "Chunks passed on to peers that were being read from the cache file for another "
         "asker already, and shared that read.",
         s.read_waits);
  Metric(o, "strata_cache_kernel_held_objects", "gauge",
         "Objects the kernel reads from the cache file itself (FUSE passthrough opens): "
         "never evicted while held.",
         s.kernel_held_objects);
  Metric(o, "strata_cache_evicted_bytes_total", "counter", "Bytes evicted.", s.evicted_bytes);
  Metric(o, "strata_cache_degraded", "gauge", "1 when the cache cannot store (serving uncached).",
         s.degraded);
  return o;
}

absl::StatusOr<std::unique_ptr<MetricsServer>> MetricsServer::Start(
    const std::string& address, int port, std::function<std::string()> metrics,
    std::function<absl::Status()> health) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  if (::inet_pton(AF_INET, address.c_str(), &a.sin_addr) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics address '", address, "' is not an IPv4 address"));
  }
  std::unique_ptr<MetricsServer> s(new MetricsServer());
  s->metrics_ = std::move(metrics);
  s->health_ = std::move(health);
  s->fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(s->fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(s->fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(s->fd_, 16) != 0) {
    int err = errno;
    ::close(s->fd_);
    return absl::UnavailableError(
        absl::StrCat("metrics endpoint on ", address, ":", port, ": ", std::strerror(err)));
  }
  socklen_t len = sizeof a;
  ::getsockname(s->fd_, reinterpret_cast<sockaddr*>(&a), &len);
  s->port_ = ntohs(a.sin_port);
  s->thread_ = std::thread([p = s.get()] { p->Loop(); });
  return s;
}

MetricsServer::~MetricsServer() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
  ::close(fd_);
}

void MetricsServer::Loop() {
  while (!stop_) {
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    timeval tv{2, 0};
    ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char buf[2048];
    ssize_t n = ::recv(c, buf, sizeof buf - 1, 0);
    std::string req(buf, n > 0 ? n : 0);
    std::string path = req.substr(0, req.find("\r\n"));
    int code = 404;
    std::string body = "not found\n", type = "text/plain";
    if (path.rfind("GET /metrics", 0) == 0) {
      code = 200;
      body = metrics_();
      type = "text/plain; version=0.0.4";
    } else if (path.rfind("GET /healthz", 0) == 0) {
      absl::Status h = health_();
      code = h.ok() ? 200 : 503;
      body = h.ok() ? "ok\n" : absl::StrCat(h.message(), "\n");
    }
    std::string resp = absl::StrCat("HTTP/1.1 ", code,
                                    code == 200   ? " OK"
                                    : code == 503 ? " Service Unavailable"
                                                  : " Not Found",
                                    "\r\nContent-Type: ", type, "\r\nContent-Length: ", body.size(),
                                    "\r\nConnection: close\r\n\r\n", body);
    ::send(c, resp.data(), resp.size(), MSG_NOSIGNAL);
    ::close(c);
  }
}

}  // namespace strata::cmd
