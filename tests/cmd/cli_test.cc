// Runs the real `strata` binary the way an operator does: help on every
// subcommand, the cache tools on a populated store, and the node daemon's
// start, report and clean stop.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/util/subprocess.h"

namespace strata {
namespace {

using cache::testing::TempDir;
using ::testing::HasSubstr;

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

Result RunStrata(std::vector<std::string> args) {
  args.insert(args.begin(), STRATA_PATH);
  Result r;
  r.code = testing::RunCommand(args, &r.out, std::chrono::seconds(60));
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
  std::string out = ReadUntil(node.out, "running", std::chrono::seconds(30));
  EXPECT_THAT(out, HasSubstr("state in " + dir.path()));
  EXPECT_THAT(out, HasSubstr("chunk cache in " + dir.path() + "/cache"));
  ASSERT_THAT(out, HasSubstr("running"));

  // The tools refuse a store that a running node holds, and say why.
  Result r = RunStrata({"cache", "stats", "--cache-dir", dir.path() + "/cache"});
  EXPECT_EQ(r.code, 1);
  EXPECT_THAT(r.out, HasSubstr("in use by another strata process"));

  ASSERT_EQ(::kill(node.pid, SIGTERM), 0);
  out += ReadUntil(node.out, "stopped", std::chrono::seconds(30));
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
  std::string out = ReadUntil(node.out, "running", std::chrono::seconds(30));
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
  out += ReadUntil(node.out, "stopped", std::chrono::seconds(30));
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
  std::string out = ReadUntil(node.out, "running", std::chrono::seconds(30));
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
  out += ReadUntil(node.out, "stopped", std::chrono::seconds(30));
  EXPECT_EQ(ExitCode(Wait(node)), 0) << out;
  EXPECT_FALSE(std::filesystem::exists(sock)) << "the socket outlived its daemon";
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
  std::string out = ReadUntil(node.out, "running", std::chrono::seconds(30));
  ASSERT_THAT(out, HasSubstr("running"));
  EXPECT_THAT(RawRequest(sock, "{}\n"), HasSubstr("\"error\""));
  ASSERT_EQ(::kill(node.pid, SIGTERM), 0);
  out += ReadUntil(node.out, "stopped", std::chrono::seconds(30));
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
