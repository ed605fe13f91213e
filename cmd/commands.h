// Subcommands of the `strata` binary. Each Add* registers its subcommand on
// the app and arranges for it to run; the returned code is the exit status.
#pragma once

#include <signal.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/statusor.h"
#include "base/size.h"
#include "cache/chunk_store.h"

namespace strata::cmd {

// Where the subcommand's work goes once CLI11 has parsed its options.
using Runner = std::function<int()>;

void AddNodeCommand(CLI::App& app, Runner& run);
void AddControllerCommand(CLI::App& app, Runner& run);
void AddFdKeeperCommand(CLI::App& app, Runner& run);
void AddCacheCommands(CLI::App& app, Runner& run);
void AddBenchCommands(CLI::App& app, Runner& run);
void AddFetchCommands(CLI::App& app, Runner& run);
void AddMountCommands(CLI::App& app, Runner& run);

using strata::ParseSize;
// The chunk store of a daemon (node, mount): it degrades to serving
// uncached rather than failing, and its staging directory (where writes to
// object stores wait for their upload) exists. Null, logged, on failure.
struct DaemonStore {
  std::unique_ptr<cache::ChunkStore> store;
  std::string staging_dir;
};
std::optional<DaemonStore> OpenDaemonStore(cache::StoreOptions options);
// Blocks SIGINT and SIGTERM in this thread and every thread started after it
// (call it first), so that one thread can sigwait() for them.
sigset_t BlockStopSignals();
// The node's state directory when none is given: /var/lib/strata as root,
// $XDG_STATE_HOME/strata (or ~/.local/state/strata) otherwise.
std::string DefaultStateDir();

}  // namespace strata::cmd
