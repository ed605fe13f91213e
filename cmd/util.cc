// Small helpers shared by the subcommands.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "cmd/commands.h"

namespace strata::cmd {

std::optional<DaemonStore> OpenDaemonStore(cache::StoreOptions options) {
  options.degrade_on_error = true;
  auto store = cache::ChunkStore::Open(options);
  if (!store.ok()) {
    spdlog::error("cannot open the chunk store: {}", store.status().message());
    return std::nullopt;
  }
  DaemonStore d{std::move(*store), options.dir + "/staging"};
  if (std::error_code ec; !std::filesystem::create_directories(d.staging_dir, ec) && ec) {
    spdlog::error("cannot create the staging directory {}: {}", d.staging_dir, ec.message());
    return std::nullopt;
  }
  return d;
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
