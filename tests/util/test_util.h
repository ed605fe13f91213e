// Helpers for the cache tests: scratch directories and deterministic chunks.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/types/span.h"
#include "gtest/gtest.h"
#include "origin/origin.h"

namespace strata::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "strata-test-XXXXXX").string();
    path_ = ::mkdtemp(tmpl.data());
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Bytes that depend on (seed, index, position): any misplaced or stale byte shows.
inline std::string Pattern(uint64_t seed, uint32_t index, size_t len) {
  std::string s(len, '\0');
  uint64_t x = (seed + 1) * 0x9e3779b97f4a7c15ull ^ (uint64_t{index} + 1) * 0xbf58476d1ce4e5b9ull;
  for (size_t i = 0; i < len; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    s[i] = static_cast<char>(x);
  }
  return s;
}

// Writes `data` as the whole file `path`, making the directories above it.
inline void WriteFile(const std::string& path, const std::string& data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

// The whole content of a file ("" when it cannot be read).
inline std::string ReadPath(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// Every byte of the open file `fd`, by pread (so the kernel's reads are
// whole requests, not whatever a stream library makes of them). The
// kernel's cached pages of it are dropped first: on a FUSE file, reads that
// the daemon serves reach it.
inline std::string ReadFdUncached(int fd) {
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  std::string out, buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = ::pread(fd, buf.data(), buf.size(), static_cast<off_t>(out.size()));
    if (n <= 0) break;
    out.append(buf.data(), static_cast<size_t>(n));
  }
  return out;
}

// The whole object `path` as the origin at `url` itself has it (not through
// a cache or a mount): "<missing>" when it is not there, "<...>" on errors.
inline std::string ReadAtOrigin(const std::string& url, const origin::OriginOptions& options,
                                const std::string& path) {
  auto origin = origin::OpenOrigin(url, options);
  if (!origin.ok()) return "<" + std::string(origin.status().message()) + ">";
  auto st = (*origin)->Stat(path);
  if (!st.ok()) return "<missing>";
  std::string out(st->size, '\0');
  if (!(*origin)->ReadRange(path, *st, 0, absl::MakeSpan(out)).ok()) return "<unreadable>";
  return out;
}

// Whether `got` is `want`, said in a line: a failure gives the sizes and the
// first offset that differs, not megabytes of both.
inline ::testing::AssertionResult SameBytes(const std::string& got, const std::string& want) {
  if (got == want) return ::testing::AssertionSuccess();
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto near = [i](const std::string& s) { return ::testing::PrintToString(s.substr(i, 16)); };
  return ::testing::AssertionFailure() << got.size() << " bytes where " << want.size()
                                       << " were wanted; the first difference is at " << i << ": "
                                       << near(got) << " where " << near(want);
}

// Closes this process's descriptors of files under `dir` (a mount a test
// serves itself, before it stops serving it).
inline void CloseFdsUnder(const std::string& dir) {
  std::error_code ec;
  std::vector<int> fds;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
    std::error_code lec;
    std::string target = std::filesystem::read_symlink(e.path(), lec).string();
    if (!lec && target.rfind(dir + "/", 0) == 0) fds.push_back(std::stoi(e.path().filename()));
  }
  for (int fd : fds) ::close(fd);
}

// Waits for `done`, asking every 5 ms for at most 10 s (something the
// kernel or a daemon does soon, such as a FUSE release, but with no signal
// to wait on); whether it came.
inline bool Eventually(absl::FunctionRef<bool()> done) {
  for (int i = 0; i < 2000; ++i) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

}  // namespace strata::testing
