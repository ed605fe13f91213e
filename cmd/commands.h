// Subcommands of the `strata` binary. Each Add* registers its subcommand on
// the app and arranges for it to run; main.cc turns what the run returns
// into the process's exit code, in one place.
#pragma once

#include <signal.h>

#include <functional>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata::cmd {

// A subcommand's work once CLI11 has parsed its options: an error, or the
// exit code of a success (0, but for a command whose result is a code of
// its own, as `cache verify`'s 3). See main.cc for the mapping.
using Runner = std::function<absl::StatusOr<int>()>;
// The Runner of work whose success is exit code 0.
Runner StatusRunner(std::function<absl::Status()> work);

// A command line that cannot work (a size that is no size, a flag missing
// or contradicting another) as opposed to work that failed: exit code 2.
// The message is `message`, or `cause`'s (its code kept).
absl::Status UsageError(absl::string_view message);
absl::Status UsageError(const absl::Status& cause);
bool IsUsageError(const absl::Status& status);

void AddNodeCommand(CLI::App& app, Runner& run);
void AddControllerCommand(CLI::App& app, Runner& run);
void AddFdKeeperCommand(CLI::App& app, Runner& run);
void AddCacheCommands(CLI::App& app, Runner& run);
void AddBenchCommands(CLI::App& app, Runner& run);
void AddFetchCommands(CLI::App& app, Runner& run);
void AddMountCommands(CLI::App& app, Runner& run);

// Blocks SIGINT and SIGTERM in this thread and every thread started after it
// (call it first), so that one thread can sigwait() for them.
sigset_t BlockStopSignals();
// The node's state directory when none is given: /var/lib/strata as root,
// $XDG_STATE_HOME/strata (or ~/.local/state/strata) otherwise.
std::string DefaultStateDir();

}  // namespace strata::cmd
