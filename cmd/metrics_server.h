// A tiny HTTP endpoint for Prometheus scrapes (/metrics) and
// liveness probes (/healthz). One request per connection; nothing else.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "base/latency.h"
#include "cache/chunk_store.h"
#include "cache/fetcher.h"
#include "fuse/volume_tree.h"

namespace strata::cmd {

// Prometheus text exposition of a node's cache, fetcher and volume counters.
// Appends one sample of `name` (with its HELP and TYPE lines the first
// time) in the Prometheus text format; `labels` as in a{b="c"}, or "".
void Metric(std::string& out, const char* name, const char* type, const char* help, double value,
            const std::string& labels = "");
// Appends `counts` as the histogram `name` (in seconds): its cumulative
// _bucket samples, _sum and _count, with `labels` on each.
void Histogram(std::string& out, const char* name, const char* help, const LatencyCounts& counts,
               const std::string& labels = "");

std::string PrometheusText(const cache::StoreStats& store, const cache::FetcherStats& fetch,
                           std::optional<fuse::VolumeStats> volume);

class MetricsServer {
 public:
  // Listens on `address` (IPv4; 127.0.0.1 unless something must scrape it
  // from outside) and `port` (0: any). `metrics` renders the exposition
  // text; `health` says OK or why not (503).
  static absl::StatusOr<std::unique_ptr<MetricsServer>> Start(const std::string& address, int port,
                                                              std::function<std::string()> metrics,
                                                              std::function<absl::Status()> health);
  ~MetricsServer();
  int port() const { return port_; }

 private:
  MetricsServer() = default;
  void Loop();

  int fd_ = -1;
  int port_ = 0;
  std::function<std::string()> metrics_;
  std::function<absl::Status()> health_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace strata::cmd
