// The time seam: what reads the time (TTLs, backoff, eviction ages) takes a
// Clock, so a test moves time forward instead of sleeping.
#pragma once

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace strata {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // Waits `d` of this clock's time (a fake clock just moves forward).
  virtual void SleepFor(absl::Duration d) = 0;
};

// The system's clock. It has no state, so one instance serves everyone.
Clock* RealClock();

}  // namespace strata
