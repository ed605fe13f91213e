// `strata`: one binary for the node daemon and the operator's tools.
#include <malloc.h>
#include <sys/resource.h>

#include <cstdio>

#include "CLI/CLI.hpp"
#include "base/logging.h"
#include "cmd/commands.h"
#include "spdlog/sinks/stdout_color_sinks.h"

namespace {

// The chunk store keeps a file open per object in use, and a volume of many
// small files uses many objects: take the hard limit, not the default 1024.
void RaiseFileLimit() {
  rlimit rl;
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &rl);
  }
}

// What a command came to, as the process's exit code; an error's message is
// logged here, once. Tests and scripts rely on these:
//   0        success (also `cat` whose reader went away, `fd-keeper` that
//            found another keeper serving its socket)
//   1        the work failed: any error but a usage error, whatever its code
//   2        usage: a value CLI11 cannot check is wrong (a size that is no
//            size, `cache evict` told nothing to evict, a bad inline origin)
//   3        `cache verify` found bad chunks (and dropped them)
//   100-127  CLI11's own codes, with its own message, for what it rejects
//            while parsing: a value not allowed 105, a required flag or
//            subcommand missing 106, an unknown flag 109, a flag without
//            its value 114
int ExitCode(const absl::StatusOr<int>& outcome) {
  if (outcome.ok()) return *outcome;
  spdlog::error("{}", outcome.status().message());
  return strata::cmd::IsUsageError(outcome.status()) ? 2 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  RaiseFileLimit();
  // Chunk buffers and their pieces on the peer wire are megabytes, freed by
  // other threads than allocated them; with glibc's default of eight arenas
  // per core, each arena keeps its own free megabytes. Two arenas keep the
  // peak RSS of a node serving 15 peers under 300 MiB (four: 300-317 MiB in
  // bench/peers.sh's 16-node run).
  mallopt(M_ARENA_MAX, 2);
  // glibc's default returns the free top of a heap to the kernel once it
  // passes twice the largest block freed lately (a few MiB here), so the
  // pieces and gRPC buffers of every chunk were handed back and faulted in
  // again, zeroed page by page (a third of a node's CPU in `perf` while
  // four nodes shared a file). Keeping up to 64 MiB per heap cut the CPU
  // four nodes spend sharing a 2 GiB file by about a third (bench/peers.sh,
  // phase 3 on an unthrottled origin: 24-27 CPU-s, now 16-19). The peak
  // RSS there, in the 16-node run, went from 265 to 272-288 MiB. Setting
  // it also fixes glibc's mmap threshold at 128 KiB, so a megabyte piece
  // is mapped and unmapped on its own.
  mallopt(M_TRIM_THRESHOLD, 64 << 20);
  CLI::App app{"Strata: a caching storage layer for AI workloads on Kubernetes"};
  app.set_version_flag("--version", "strata 0.1.0");
  app.require_subcommand(1);
  std::string log_level = "info";
  app.add_option("--log-level", log_level, "trace, debug, info, warn, error or off")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "off"}));
  strata::cmd::Runner run;
  strata::cmd::AddNodeCommand(app, run);
  strata::cmd::AddControllerCommand(app, run);
  strata::cmd::AddFdKeeperCommand(app, run);
  strata::cmd::AddCacheCommands(app, run);
  strata::cmd::AddBenchCommands(app, run);
  strata::cmd::AddFetchCommands(app, run);
  strata::cmd::AddMountCommands(app, run);
  CLI11_PARSE(app, argc, argv);
  spdlog::set_default_logger(spdlog::stderr_color_mt("strata"));
  spdlog::set_level(spdlog::level::from_str(log_level));
  return run ? ExitCode(run()) : 2;  // no work: CLI11 requires a subcommand
}
