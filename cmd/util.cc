// Small helpers shared by the subcommands.
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "cmd/commands.h"

namespace strata::cmd {
namespace {

// Marks a status as a usage error: its code stays what its source said.
constexpr absl::string_view kUsagePayload = "strata.dev/cmd/usage-error";

}  // namespace

Runner StatusRunner(std::function<absl::Status()> work) {
  return [work = std::move(work)]() -> absl::StatusOr<int> {
    absl::Status st = work();
    if (!st.ok()) return st;
    return 0;
  };
}

absl::Status UsageError(absl::string_view message) {
  return UsageError(absl::InvalidArgumentError(message));
}

absl::Status UsageError(const absl::Status& cause) {
  absl::Status st = cause;
  if (!st.ok()) st.SetPayload(kUsagePayload, absl::Cord());
  return st;
}

bool IsUsageError(const absl::Status& status) {
  return status.GetPayload(kUsagePayload).has_value();
}

sigset_t BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  return set;
}

std::string DefaultStateDir() {
  if (::geteuid() == 0) return "/var/lib/strata";
  if (const char* x = std::getenv("XDG_STATE_HOME"); x && *x) return absl::StrCat(x, "/strata");
  const char* home = std::getenv("HOME");
  return absl::StrCat(home ? home : "/tmp", "/.local/state/strata");
}

}  // namespace strata::cmd
