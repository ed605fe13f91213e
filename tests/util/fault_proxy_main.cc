// `fault_proxy`: the test proxy as a program, for benchmarks that need a
// slow link: fault_proxy UPSTREAM_PORT [--rate BYTES_PER_S] [--rtt-ms N].
// Prints "port=N" once listening; runs until SIGINT/SIGTERM, then prints
// "requests=N body_bytes=M" (what it served; also on SIGUSR1, going on).
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "tests/util/fault_proxy.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: fault_proxy UPSTREAM_PORT [--rate BYTES_PER_S] [--rtt-ms N]\n");
    return 2;
  }
  uint64_t rate = 0;
  int rtt = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--rate") == 0) rate = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--rtt-ms") == 0) rtt = std::atoi(argv[i + 1]);
  }
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  strata::testing::FaultProxy proxy(std::atoi(argv[1]), nullptr);
  proxy.Throttle(rate, rtt);
  std::printf("port=%d\n", proxy.port());
  std::fflush(stdout);
  int sig;
  // SIGUSR1 prints what it served so far and goes on; SIGINT/SIGTERM print
  // it and end. For benchmarks that count what the origin served.
  while (sigwait(&set, &sig) == 0 && sig == SIGUSR1) {
    std::printf("active=%d requests=%llu body_bytes=%llu\n", proxy.active(),
                static_cast<unsigned long long>(proxy.requests()),
                static_cast<unsigned long long>(proxy.body_bytes()));
    std::fflush(stdout);
  }
  std::printf("requests=%llu body_bytes=%llu\n", static_cast<unsigned long long>(proxy.requests()),
              static_cast<unsigned long long>(proxy.body_bytes()));
  std::fflush(stdout);
  return 0;
}
