// `strata`: one binary for the node daemon and the operator's tools.
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

}  // namespace

int main(int argc, char** argv) {
  RaiseFileLimit();
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
  return run ? run() : 2;
}
