// Small helpers shared by the subcommands.
#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "cmd/commands.h"

namespace strata::cmd {

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
