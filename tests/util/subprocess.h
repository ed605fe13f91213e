// Child processes for tests: spawn with stdout+stderr on a pipe, read with a
// deadline, and wait with a bound (killing the child when it runs over).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace strata::testing {

struct Child {
  pid_t pid = -1;
  int out = -1;  // the child's stdout (and stderr when merged)
};

// Starts `argv[0]` with `argv`. stdout goes to the pipe in Child::out; stderr
// too when `merge_stderr`, otherwise it stays the test's own. The child is
// killed if the test process dies (even by a crash that skips destructors).
inline Child Spawn(std::vector<std::string> argv, bool merge_stderr = true) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return {};
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t parent = ::getpid();
  pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the test died already
    ::dup2(p[1], 1);
    if (merge_stderr) ::dup2(p[1], 2);
    // Nothing else of the test's goes along: a descriptor of a file on a
    // FUSE mount would make a killed daemon wait, as it exits, on a flush
    // that only its successor can answer.
    ::close_range(3, ~0U, 0);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  ::close(p[1]);
  if (pid < 0) {
    ::close(p[0]);
    return {};
  }
  Child c;
  c.pid = pid;
  c.out = p[0];
  return c;
}

// Reads the child's output until `want` appears, EOF, or `limit` passes.
inline std::string ReadUntil(int fd, const std::string& want, std::chrono::milliseconds limit) {
  std::string got;
  auto deadline = std::chrono::steady_clock::now() + limit;
  char buf[4096];
  while (std::chrono::steady_clock::now() < deadline) {
    if (!want.empty() && got.find(want) != std::string::npos) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n <= 0) break;
    got.append(buf, n);
  }
  return got;
}

// Waits for the child up to `limit`, then kills it. Returns the raw wait
// status (-1 if it had to be killed) and closes its pipe.
inline int Wait(Child& c, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  int status = 0;
  bool killed = false;
  while (::waitpid(c.pid, &status, WNOHANG) == 0) {
    if (std::chrono::steady_clock::now() > deadline) {
      ::kill(c.pid, SIGKILL);
      ::waitpid(c.pid, &status, 0);
      killed = true;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (c.out >= 0) ::close(c.out);
  c.out = -1;
  return killed ? -1 : status;
}

// Runs a command to its end (bounded); returns its exit code (-1 when it
// was killed or crashed) and, in `out`, what it printed on stdout and stderr.
inline int RunCommand(const std::vector<std::string>& argv, std::string* out = nullptr,
                      std::chrono::seconds limit = std::chrono::seconds(120)) {
  Child c = Spawn(argv);
  if (c.pid < 0) {
    if (out) *out = "cannot start " + argv[0];
    return -1;
  }
  std::string o = ReadUntil(c.out, "", limit);
  if (out) *out = std::move(o);
  int st = Wait(c, limit);
  return st >= 0 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Stops every process whose command line matches `pattern` (pkill -f) and
// waits until none is left (SIGKILL after 5 s, at most 10 s in all): one
// that outlives its test would still remove files from the test's directory
// (an FD keeper its socket) while that directory is being removed.
inline void StopMatching(const std::string& pattern) {
  RunCommand({"/usr/bin/pkill", "-f", pattern});
  const auto start = std::chrono::steady_clock::now();
  bool killed = false;
  while (RunCommand({"/usr/bin/pgrep", "-f", pattern}) != 1) {  // 1: none matches
    auto waited = std::chrono::steady_clock::now() - start;
    if (waited > std::chrono::seconds(10)) return;
    if (!killed && waited > std::chrono::seconds(5)) {
      RunCommand({"/usr/bin/pkill", "-KILL", "-f", pattern});
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace strata::testing
