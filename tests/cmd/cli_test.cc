// Runs the real `strata` binary the way an operator does: help on every
// subcommand, the cache tools on a populated store, `strata cat` of an HTTP
// origin that goes down, and the node daemon's start, report and clean stop.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/nginx.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata {
namespace {

using strata::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

using testing::Child;
using testing::ReadUntil;
using testing::Spawn;
using testing::Wait;

Child SpawnStrata(std::vector<std::string> args) {
  args.insert(args.begin(), STRATA_PATH);
  return Spawn(std::move(args));
}

// Exit code of a child that exited, -1 otherwise.
int ExitCode(int status) { return status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1; }

struct Result {
  int code;
  std::string out;
};

// Runs to the command's exit (bounded): everything it printed is in `out`
// when the test looks.
Result RunStrata(std::vector<std::string> args) {
  args.insert(args.begin(), STRATA_PATH);
  Result r;
  r.code = testing::RunCommand(args, &r.out, std::chrono::seconds(60));
  return r;
}

// Kills a daemon that its test did not stop (an ASSERT returned early), so
// that it does not outlive the test.
class Reaper {
 public:
  explicit Reaper(Child& c) : c_(c) {}
  ~Reaper() {
    if (c_.out < 0) return;  // waited for already
    ::kill(c_.pid, SIGKILL);
    Wait(c_);
  }

 private:
  Child& c_;
};

// A daemon's start or stop, awaited on its output: generous, since a
// sanitizer build on a loaded machine starts slowly; a test fails only when
// the daemon never gets there.
constexpr auto kDaemonLimit = std::chrono::seconds(60);

// A run with stdout and stderr apart: stdout carries an object's bytes.
struct SplitResult {
  int code;
  std::string out, err;
};

SplitResult RunStrataSplit(const std::vector<std::string>& args, const std::string& err_file) {
  std::vector<std::string> argv = {"/bin/sh", "-c",     "err=$1; shift; exec \"$@\" 2>\"$err\"",
                                   "sh",      err_file, STRATA_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  SplitResult r;
  // To its exit: everything it wrote is there when the output is checked.
  r.code = testing::RunCommand(argv, &r.out, std::chrono::seconds(60));
  std::ifstream f(err_file);
  r.err.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  return r;
}

TEST(CliTest, EverySubcommandHasHelp) {
  for (auto args : std::vector<std::vector<std::string>>{{"--help"},
                                                         {"node", "--help"},
                                                         {"cache", "--help"},
                                                         {"cache", "stats", "--help"},
                                                         {"cache", "ls", "--help"},
                                                         {"cache", "verify", "--help"},
                                                         {"cache", "evict", "--help"},
                                                         {"bench", "--help"},
                                                         {"bench", "store-read", "--help"},
                                                         {"bench", "index-lookups", "--help"}}) {
    Result r = RunStrata(args);
    EXPECT_EQ(r.code, 0) << args[0];
    EXPECT_THAT(r.out, HasSubstr("Usage")) << args[0];
  }
  Result bad = RunStrata({"no-such-command"});
  EXPECT_NE(bad.code, 0);
}

TEST(CliTest, CacheToolsInspectVerifyAndEvict) {
  TempDir dir;
  std::string cache = dir.path() + "/cache";
  Result r = RunStrata({"bench", "store-read", "--cache-dir", cache, "--size", "9MiB", "--populate",
                        "--key", "model/a"});
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("mibps="));

  r = RunStrata({"cache", "stats", "--cache-dir", cache});
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("objects:              1"));
  EXPECT_THAT(r.out, HasSubstr("chunks present:       3"));
  r = RunStrata({"cache", "ls", "--cache-dir", cache});
  EXPECT_THAT(r.out, HasSubstr("model/a"));
  EXPECT_THAT(r.out, HasSubstr("3/3"));
  r = RunStrata({"cache", "verify", "--cache-dir", cache});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("checked 3 chunks in 1 objects: 0 bad"));

  // Damage a byte of the data file: verify reports and drops that chunk.
  std::string file;
  for (auto& e : std::filesystem::directory_iterator(cache + "/objects")) file = e.path();
  int fd = ::open(file.c_str(), O_RDWR);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, "\xff\xfe", 2, (4 << 20) + 12345), 2);
  ::close(fd);
  r = RunStrata({"cache", "verify", "--cache-dir", cache});
  EXPECT_EQ(r.code, 3) << r.out;
  EXPECT_THAT(r.out, HasSubstr("1 bad"));
  r = RunStrata({"cache", "verify", "--cache-dir", cache});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("checked 2 chunks"));

  r = RunStrata({"cache", "evict", "--cache-dir", cache});
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_THAT(r.out, HasSubstr("say what to evict"));
  r = RunStrata({"cache", "evict", "--cache-dir", cache, "--key", "nope"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("no object nope"));
  r = RunStrata({"cache", "evict", "--cache-dir", cache, "--all"});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_THAT(r.out, HasSubstr("evicted 1 objects"));
  r = RunStrata({"cache", "stats", "--cache-dir", cache});
  EXPECT_THAT(r.out, HasSubstr("objects:              0"));
}

TEST(CliTest, NodeReportsItsStateAndStopsOnSigterm) {
  TempDir dir;
  Child node = SpawnStrata({"node", "--state-dir", dir.path(), "--cache-capacity", "1GiB"});
  ASSERT_GT(node.pid, 0);
  Reaper reaper(node);
  std::string out = ReadUntil(node.out, "running", kDaemonLimit);
  EXPECT_THAT(out, HasSubstr("state in " + dir.path()));
  EXPECT_THAT(out, HasSubstr("chunk cache in " + dir.path() + "/cache"));
  ASSERT_THAT(out, HasSubstr("running"));

  // The tools refuse a store that a running node holds, and say why.
  Result r = RunStrata({"cache", "stats", "--cache-dir", dir.path() + "/cache"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("in use by another strata process"));

  ASSERT_EQ(::kill(node.pid, SIGTERM), 0);
  out += ReadUntil(node.out, "stopped", kDaemonLimit);
  EXPECT_THAT(out, HasSubstr("stopped"));
  EXPECT_EQ(ExitCode(Wait(node)), 0);
}

TEST(CliTest, NodeServesCsiOnAUnixSocket) {
  TempDir dir;
  std::string sock = dir.path() + "/csi.sock";
  Child node =
      SpawnStrata({"node", "--state-dir", dir.path(), "--cache-capacity", "1GiB", "--csi-endpoint",
                   "unix://" + sock, "--node-id", "node-7", "--metrics-port", "0"});
  ASSERT_GT(node.pid, 0);
  Reaper reaper(node);
  std::string out = ReadUntil(node.out, "running", kDaemonLimit);
  EXPECT_THAT(out, HasSubstr("CSI Identity and Node on unix://" + sock + " (node id node-7)"));
  EXPECT_TRUE(std::filesystem::exists(sock));
  // /metrics and /healthz, on the port it printed.
  size_t at = out.find("http://127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << out;
  std::string base = out.substr(at, out.find("/metrics", at) - at);
  std::string page;
  ASSERT_EQ(testing::RunCommand({"/usr/bin/curl", "-sf", base + "/metrics"}, &page), 0) << page;
  EXPECT_THAT(page, HasSubstr("strata_volumes 0"));
  EXPECT_THAT(page, HasSubstr("strata_volumes_dead 0"));
  ASSERT_EQ(testing::RunCommand({"/usr/bin/curl", "-sf", base + "/healthz"}, &page), 0) << page;
  ASSERT_EQ(::kill(node.pid, SIGTERM), 0);
  out += ReadUntil(node.out, "stopped", kDaemonLimit);
  EXPECT_EQ(ExitCode(Wait(node)), 0) << out;
}

// Sends `request` on a unix socket and returns everything answered.
std::string RawRequest(const std::string& path, const std::string& request) {
  int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", path.c_str());
  if (fd < 0 || ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    if (fd >= 0) ::close(fd);
    return "<cannot connect>";
  }
  if (::send(fd, request.data(), request.size(), MSG_NOSIGNAL) < 0) {
    ::close(fd);
    return "<cannot send>";
  }
  timeval tv{30, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  std::string out;
  char buf[4096];
  for (ssize_t n; (n = ::recv(fd, buf, sizeof buf, 0)) > 0;) out.append(buf, n);
  ::close(fd);
  return out;
}

// `strata prefetch` cannot open a running node's store: it asks the node,
// through its admin socket, and shows the node's progress.
TEST(CliTest, PrefetchWarmsARunningNodesCacheThroughItsAdminSocket) {
  TempDir dir;
  std::string obj = dir.path() + "/obj.bin";
  {
    std::string data(20 << 20, '\0');
    for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7 + i / 4096);
    std::ofstream(obj, std::ios::binary) << data;
  }
  std::string state = dir.path() + "/state";
  Child node = SpawnStrata({"node", "--state-dir", state, "--cache-capacity", "1GiB", "--fd-keeper",
                            "off", "--metrics-port", "0"});
  ASSERT_GT(node.pid, 0);
  Reaper reaper(node);
  std::string out = ReadUntil(node.out, "running", kDaemonLimit);
  ASSERT_THAT(out, HasSubstr("running"));
  size_t at = out.find("http://127.0.0.1:");
  ASSERT_NE(at, std::string::npos) << out;
  std::string metrics = out.substr(at, out.find("/metrics", at) - at) + "/metrics";
  std::string sock = state + "/admin.sock";
  auto origin_bytes = [&] {
    std::string page;
    EXPECT_EQ(testing::RunCommand({"/usr/bin/curl", "-sf", metrics}, &page), 0) << page;
    const std::string name = "strata_bytes_total{source=\"origin\"} ";
    size_t p = page.find(name);
    if (p == std::string::npos) return std::string("?");
    p += name.size();
    return page.substr(p, page.find('\n', p) - p);
  };

  Result r = RunStrata({"prefetch", "file://" + obj, "--node-socket", sock});
  EXPECT_EQ(r.code, 0) << r.out;
  // Progress lines are rate-limited, never the last one, however the
  // chunks land (run to the command's exit: its whole output is here).
  EXPECT_THAT(r.out, HasSubstr("100.0%"));
  EXPECT_THAT(r.out, HasSubstr("into the cache of the node daemon at " + sock));
  EXPECT_EQ(origin_bytes(), std::to_string(20 << 20));
  // Warm already: the origin is not read again.
  r = RunStrata({"prefetch", "file://" + obj, "--node-socket", sock});
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(origin_bytes(), std::to_string(20 << 20));
  // What the node cannot fetch is the command's error, with the cause.
  r = RunStrata({"prefetch", "file://" + dir.path() + "/missing", "--node-socket", sock});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("No such file"));
  // A digest the object does not have: the node checks it and says so.
  r = RunStrata({"prefetch", "file://" + obj, "--node-socket", sock, "--digest",
                 "sha256:" + std::string(64, '0')});
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_THAT(r.out, HasSubstr("does not match its digest"));
  // Requests that are not what the socket takes get an error line, and the
  // node goes on serving.
  for (std::string bad : {std::string("not json"), std::string(R"({"op":"prefetch"})"),
                          std::string(R"({"op":"prefetch","url":"file:///x","insecure":"yes"})"),
                          std::string(R"({"op":1,"url":"file:///x"})"),
                          // Names the socket must not act on: a digest that
                          // is no digest, schemes curl would otherwise speak.
                          R"({"op":"prefetch","url":"file://)" + obj + R"(","digest":"sha256:)" +
                              std::string(64, 'G') + R"("})",
                          std::string(R"({"op":"prefetch","url":"gopher://127.0.0.1:1/x"})"),
                          std::string(R"({"op":"prefetch","url":"dict://127.0.0.1:1/x"})")}) {
    EXPECT_THAT(RawRequest(sock, bad + "\n"), HasSubstr("\"error\"")) << bad;
  }
  EXPECT_THAT(
      RawRequest(sock, R"({"op":"prefetch","url":"file://)" + obj + R"(","digest":null})" + "\n"),
      HasSubstr("\"ok\":true"));
  // The store is the node's: a second process cannot warm it, and says how.
  r = RunStrata({"prefetch", "file://" + obj, "--cache-dir", state + "/cache"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("--node-socket"));
  // A second node on the same socket is refused; the first keeps it.
  Result second = RunStrata({"node", "--state-dir", dir.path() + "/state2", "--fd-keeper", "off",
                             "--admin-socket", sock});
  EXPECT_EQ(second.code, 1);
  EXPECT_THAT(second.out, HasSubstr("another strata daemon answers"));
  EXPECT_EQ(RunStrata({"prefetch", "file://" + obj, "--node-socket", sock}).code, 0);
  // A socket nobody serves is a clear error too.
  r = RunStrata({"prefetch", "file://" + obj, "--node-socket", dir.path() + "/none.sock"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("connect to the node daemon"));

  ASSERT_EQ(::kill(node.pid, SIGTERM), 0);
  out += ReadUntil(node.out, "stopped", kDaemonLimit);
  EXPECT_EQ(ExitCode(Wait(node)), 0) << out;
  EXPECT_FALSE(std::filesystem::exists(sock)) << "the socket outlived its daemon";
}

// `strata cat` through a cache whose HTTP origin stops answering: what the
// cache holds of the version the origin reported last is served, with a
// warning; what it does not hold fully is a clear error; and an origin that
// answers "no" (not found, forbidden) is never overruled by the cache.
TEST(CliTest, CatServesTheCachedCopyWhenTheOriginIsUnreachable) {
  TempDir dir;
  const std::string www = dir.path() + "/www", cache = dir.path() + "/cache";
  std::filesystem::create_directories(www);
  std::filesystem::create_directories(dir.path() + "/nginx");
  // Three 4 MiB chunks, the last one short.
  const std::string model = strata::testing::Pattern(7, 0, (9 << 20) + 4321);
  const std::string partial = strata::testing::Pattern(8, 0, 9 << 20);
  std::ofstream(www + "/model.bin", std::ios::binary) << model;
  std::ofstream(www + "/partial.bin", std::ios::binary) << partial;
  std::ofstream(www + "/never.bin", std::ios::binary) << "never read";
  auto nginx = std::make_unique<testing::Nginx>(www, dir.path() + "/nginx");
  ASSERT_TRUE(nginx->ok());
  // The origin as Strata sees it: nginx, or what the proxy answers instead.
  std::atomic<int> answer{0};  // 0: forward; else an HTTP status
  auto proxy = std::make_unique<testing::FaultProxy>(nginx->port(), [&](uint64_t,
                                                                        const std::string&,
                                                                        const std::string&) {
    int status = answer.load();
    return status == 0 ? testing::Fault{} : testing::Fault{testing::Fault::Kind::kStatus, status};
  });
  const std::string origin = "http://127.0.0.1:" + std::to_string(proxy->port()) + "/";
  const std::string err = dir.path() + "/stderr";
  auto cat = [&](const std::string& name, std::vector<std::string> more = {}) {
    std::vector<std::string> args = {"cat", origin + name, "--cache-dir", cache};
    args.insert(args.end(), more.begin(), more.end());
    return RunStrataSplit(args, err);
  };

  // Cached while the origin answers: all of model.bin, the first chunk of
  // partial.bin.
  SplitResult r = cat("model.bin");
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(r.out == model) << r.out.size() << " bytes; " << r.err;
  r = cat("partial.bin", {"--length", "1000"});
  ASSERT_EQ(r.code, 0) << r.err;
  ASSERT_TRUE(r.out == partial.substr(0, 1000)) << r.err;

  // An origin that says no is believed, cache or not.
  for (int status : {403, 404}) {
    answer = status;
    r = cat("model.bin");
    EXPECT_EQ(r.code, 1) << status;
    EXPECT_TRUE(r.out.empty()) << status;
    EXPECT_THAT(r.err, HasSubstr("HTTP " + std::to_string(status)));
    EXPECT_THAT(r.err, Not(HasSubstr("serving the cached copy")));
  }

  // An origin that fails (503): the cached copy, and one line saying so.
  answer = 503;
  r = cat("model.bin");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out == model) << r.out.size() << " bytes; " << r.err;
  EXPECT_THAT(r.err, HasSubstr("the origin of " + origin + "model.bin is unreachable"));
  EXPECT_THAT(r.err, HasSubstr("HTTP 503"));
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;

  // The origin goes away altogether (nothing listens): the same.
  proxy.reset();
  nginx.reset();
  r = cat("model.bin");
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out == model) << r.out.size() << " bytes; " << r.err;
  EXPECT_THAT(r.err, HasSubstr("the origin of " + origin + "model.bin is unreachable"));
  EXPECT_THAT(r.err, HasSubstr("serving the cached copy"));
  r = cat("model.bin", {"--offset", "4194000", "--length", "5000"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out == model.substr(4194000, 5000)) << r.err;

  // What is not wholly cached is not served, and the error says why.
  r = cat("partial.bin");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(r.out.empty());
  EXPECT_THAT(r.err, HasSubstr("is unreachable"));
  EXPECT_THAT(r.err, HasSubstr("not fully cached (2 of the 3 chunks it has are missing)"));
  r = cat("partial.bin", {"--length", "1000"});  // what is cached of it still is
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(r.out == partial.substr(0, 1000)) << r.err;
  r = cat("never.bin");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(r.out.empty());
  EXPECT_THAT(r.err, HasSubstr("the origin of " + origin + "never.bin is unreachable"));
  EXPECT_THAT(r.err, HasSubstr("is not in the cache"));

  // Once evicted, the object is an error too.
  Result evict = RunStrata({"cache", "evict", "--cache-dir", cache, "--all"});
  ASSERT_EQ(evict.code, 0) << evict.out;
  r = cat("model.bin");
  EXPECT_EQ(r.code, 1);
  EXPECT_TRUE(r.out.empty());
  EXPECT_THAT(r.err, HasSubstr("is unreachable"));
}

// A socket left by a killed daemon does not keep the next one from serving.
TEST(CliTest, NodeReplacesAStaleAdminSocket) {
  TempDir dir;
  std::string sock = dir.path() + "/admin.sock";
  {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", sock.c_str());
    ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr), 0);
    ::close(fd);  // bound, never listened: what a killed daemon leaves
  }
  Child node = SpawnStrata(
      {"node", "--state-dir", dir.path() + "/state", "--fd-keeper", "off", "--admin-socket", sock});
  ASSERT_GT(node.pid, 0);
  Reaper reaper(node);
  std::string out = ReadUntil(node.out, "running", kDaemonLimit);
  ASSERT_THAT(out, HasSubstr("running"));
  EXPECT_THAT(RawRequest(sock, "{}\n"), HasSubstr("\"error\""));
  ASSERT_EQ(::kill(node.pid, SIGTERM), 0);
  out += ReadUntil(node.out, "stopped", kDaemonLimit);
  EXPECT_EQ(ExitCode(Wait(node)), 0) << out;
  // Something that is not a socket is never removed to make room.
  std::ofstream(sock) << "keep";
  Result r = RunStrata(
      {"node", "--state-dir", dir.path() + "/state", "--fd-keeper", "off", "--admin-socket", sock});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("is not a socket"));
  EXPECT_TRUE(std::filesystem::is_regular_file(sock));
}

TEST(CliTest, BadMetricsAddressIsRejected) {
  TempDir dir;
  Result r = RunStrata({"node", "--state-dir", dir.path(), "--cache-capacity", "1GiB",
                        "--metrics-port", "0", "--metrics-address", "metrics.local"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("not an IPv4 address"));
}

TEST(CliTest, BadSizesAreRejected) {
  TempDir dir;
  Result r = RunStrata({"node", "--state-dir", dir.path(), "--cache-capacity", "lots"});
  EXPECT_EQ(r.code, 2);
  EXPECT_THAT(r.out, HasSubstr("not a size"));
}

}  // namespace
}  // namespace strata
