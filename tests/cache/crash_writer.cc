// Child process of the crash test: writes chunks of known content into a
// store in a loop until it is killed. Each chunk it knows to be cached is
// appended to a journal (one unbuffered write per chunk), so the parent can
// check that what was complete survived.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "cache/chunk_store.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "tests/util/test_util.h"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: crash_writer DIR JOURNAL SEED CAPACITY\n");
    return 2;
  }
  using namespace strata::cache;
  // stdout is the pipe the parent stops reading after "ready": log to stderr.
  spdlog::set_default_logger(spdlog::stderr_color_mt("crash_writer"));
  StoreOptions o;
  o.dir = argv[1];
  o.chunk_size = 64 << 10;
  o.capacity_bytes = std::strtoull(argv[4], nullptr, 10);
  auto store = ChunkStore::Open(o);
  if (!store.ok()) {
    std::fprintf(stderr, "open: %s\n", store.status().ToString().c_str());
    return 1;
  }
  int journal = ::open(argv[2], O_WRONLY | O_APPEND | O_CREAT, 0600);
  std::printf("ready\n");
  std::fflush(stdout);
  unsigned seed = std::strtoul(argv[3], nullptr, 10);
  // Two writer threads, so a kill lands in the middle of concurrent fills.
  std::vector<std::thread> ts;
  for (int t = 0; t < 2; ++t) {
    ts.emplace_back([&, t] {
      std::mt19937 rng(seed * 2 + t);
      for (;;) {
        // Thread t owns objects t, t+2 and t+4, so its journal lines are in
        // the order its operations happened.
        int obj = t + 2 * (rng() % 3);
        std::string key = "obj" + std::to_string(obj);
        if (rng() % 200 == 0) {
          // Journaled before it happens: a kill between the two must not
          // leave the parent expecting chunks that are gone.
          std::string line = key + " -1\n";
          if (::write(journal, line.data(), line.size()) < 0) std::abort();
          (*store)->Remove(key).IgnoreError();
          continue;
        }
        if (!(*store)->Register({key, 40 * o.chunk_size - 1000, "crash", 0}).ok()) continue;
        uint32_t idx = rng() % 40;
        uint32_t len = idx == 39 ? o.chunk_size - 1000 : o.chunk_size;
        auto r = (*store)->WriteChunk(key, idx, strata::testing::Pattern(obj, idx, len));
        if (r.ok() && r->cached && r->bytes) {
          std::string line = key + " " + std::to_string(idx) + "\n";
          if (::write(journal, line.data(), line.size()) < 0) std::abort();
        }
      }
    });
  }
  for (auto& t : ts) t.join();
}
