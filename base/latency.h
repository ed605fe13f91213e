// Durations counted into fixed buckets: what a Prometheus histogram shows
// (origin request latency, how long peers take to answer).
#pragma once

#include <cstdint>
#include <iterator>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace strata {

struct LatencyCounts {
  static constexpr double kBoundsMs[] = {1, 5, 10, 25, 50, 100, 250, 500, 1000, 5000};
  // How many took at most each bound and more than the one before; the
  // last, more than every bound.
  uint64_t buckets[std::size(kBoundsMs) + 1] = {};
  double sum_ms = 0;

  uint64_t count() const {
    uint64_t n = 0;
    for (uint64_t b : buckets) n += b;
    return n;
  }
};

class LatencyHistogram {
 public:
  void Record(absl::Duration d) {
    const double ms = absl::ToDoubleMilliseconds(d);
    size_t b = 0;
    while (b < std::size(LatencyCounts::kBoundsMs) && ms > LatencyCounts::kBoundsMs[b]) ++b;
    absl::MutexLock l(&mu_);
    ++counts_.buckets[b];
    counts_.sum_ms += ms;
  }
  LatencyCounts Counts() const {
    absl::MutexLock l(&mu_);
    return counts_;
  }

 private:
  mutable absl::Mutex mu_;
  LatencyCounts counts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata
