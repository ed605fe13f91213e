// Peers end to end: several `strata node` daemons on one machine, each with
// its own state and cache and its own loopback address, an HTTP origin
// (nginx) behind the fault proxy that counts what it serves, volumes staged
// and published over each node's CSI socket as kubelet does, and readers
// reading the mounts at the same time. The origin must serve the file about
// once, every reader must get every byte right, and a node killed mid-read
// must cost the others time only.
#include <fstream>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/digest.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/driver.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/nginx.h"
#include "tests/util/s3_server.h"
#include "tests/util/subprocess.h"
#include "tests/util/tcp_proxy.h"
#include "tests/util/test_util.h"

namespace strata::peer {
namespace {

using strata::csi::testing::Context;
using strata::csi::testing::CsiClient;
using strata::testing::Child;
using strata::testing::TempDir;

constexpr uint64_t kChunk = 4ull << 20;

// One `strata node` as the DaemonSet runs it, minus TLS (insecure here;
// the TLS handshake is the in-process tests' subject).
class NodeProcess {
 public:
  // `members`: the flags that say who the peers are (--peers or
  // --peer-service). `wrap`: a command the daemon runs under (nsenter into
  // a network namespace, unshare for a private /etc/hosts).
  NodeProcess(const std::string& root, int index, const std::string& address,
              const std::vector<std::string>& members, const std::vector<std::string>& wrap = {})
      : state_(absl::StrCat(root, "/node", index)), address_(address) {
    std::filesystem::create_directories(state_);
    std::vector<std::string> argv = {STRATA_PATH,
                                     "node",
                                     "--state-dir",
                                     state_,
                                     "--csi-endpoint",
                                     "unix://" + socket(),
                                     "--node-id",
                                     absl::StrCat("node-", index),
                                     "--fd-keeper",
                                     "off",
                                     "--peer-address",
                                     address_,
                                     "--peer-insecure",
                                     "--peer-timeout",
                                     "10",
                                     "--metrics-port",
                                     "0"};
    argv.insert(argv.end(), members.begin(), members.end());
    argv.insert(argv.begin(), wrap.begin(), wrap.end());
    child_ = strata::testing::Spawn(argv);
    std::string out = strata::testing::ReadUntil(child_.out, "running", std::chrono::seconds(60));
    running_ = out.find("running") != std::string::npos;
    size_t at = out.find("metrics on http://127.0.0.1:");
    if (at != std::string::npos) metrics_port_ = std::atoi(out.c_str() + at + 28);
    log_ = out;
    drain_ = std::thread([this] {
      char buf[4096];
      for (;;) {
        pollfd p{child_.out, POLLIN, 0};
        if (::poll(&p, 1, 100) <= 0) {
          if (stop_) break;
          continue;
        }
        ssize_t n = ::read(child_.out, buf, sizeof buf);
        if (n <= 0) break;
        std::lock_guard<std::mutex> l(mu_);
        log_.append(buf, n);
      }
    });
  }
  ~NodeProcess() { Kill(); }

  void Kill() {
    if (child_.pid > 0) {
      ::kill(child_.pid, SIGKILL);
      ::waitpid(child_.pid, nullptr, 0);
      child_.pid = -1;
    }
    stop_ = true;
    if (drain_.joinable()) drain_.join();
    if (child_.out >= 0) ::close(child_.out);
    child_.out = -1;
  }

  bool running() const { return running_; }
  std::string socket() const { return state_ + "/csi.sock"; }
  std::string admin() const { return state_ + "/admin.sock"; }
  const std::string& address() const { return address_; }
  std::string log() {
    std::lock_guard<std::mutex> l(mu_);
    return log_;
  }
  const std::string& state() const { return state_; }

  // The value of one sample of /metrics ("name" or "name{labels}"); -1 if
  // absent.
  double Metric(const std::string& sample) {
    std::string out;
    strata::testing::RunCommand(
        {"/usr/bin/curl", "-sf", absl::StrCat("http://127.0.0.1:", metrics_port_, "/metrics")},
        &out, std::chrono::seconds(10));
    size_t at = out.find("\n" + sample + " ");
    return at == std::string::npos ? -1 : std::atof(out.c_str() + at + sample.size() + 2);
  }
  // /healthz's HTTP status.
  std::string Health() {
    std::string out;
    strata::testing::RunCommand({"/usr/bin/curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                                 absl::StrCat("http://127.0.0.1:", metrics_port_, "/healthz")},
                                &out, std::chrono::seconds(10));
    return out;
  }

  // NodeStageVolume then NodePublishVolume of the volume at `origin`;
  // returns the pod's path of the volume.
  std::string Mount(const std::string& origin, const Context& secrets = {}) {
    grpc::ChannelArguments args;
    auto ch =
        grpc::CreateCustomChannel("unix://" + socket(), grpc::InsecureChannelCredentials(), args);
    EXPECT_TRUE(ch->WaitForConnected(std::chrono::system_clock::now() + std::chrono::seconds(30)));
    CsiClient client(ch);
    std::string stage = state_ + "/kubelet/plugins/kubernetes.io/csi/csi.strata.io/v/globalmount";
    std::string pod = state_ + "/kubelet/pods/uid/volumes/kubernetes.io~csi/pv/mount";
    Context ctx{{"origin", origin}};
    grpc::Status st =
        client.Stage("pv-model", stage, ctx, strata::csi::testing::MountCap(), secrets);
    EXPECT_TRUE(st.ok()) << st.error_message();
    st = client.Publish("pv-model", stage, pod, true, strata::csi::testing::MountCap(), ctx);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return pod;
  }

 private:
  std::string state_, address_;
  Child child_;
  bool running_ = false;
  int metrics_port_ = 0;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::string log_;
  std::thread drain_;
};

class PeersE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    std::filesystem::create_directories(dir_.path() + "/www/models");
    std::filesystem::create_directories(dir_.path() + "/nginx");
    std::mt19937_64 rng(42);
    data_.resize(kSize);
    for (size_t i = 0; i + 8 <= data_.size(); i += 8) {
      uint64_t v = rng();
      std::memcpy(&data_[i], &v, 8);
    }
    std::ofstream(dir_.path() + "/www/models/weights.bin", std::ios::binary) << data_;
    sha_ = Sha256Hex(data_);
    // The volume's root is a prefix (it ends in "/"): nginx's 403 for it
    // is no reason not to stage it.
    nginx_ = std::make_unique<strata::testing::Nginx>(dir_.path() + "/www", dir_.path() + "/nginx");
    ASSERT_TRUE(nginx_->ok());
    proxy_ = std::make_unique<strata::testing::FaultProxy>(nginx_->port(), nullptr);
  }
  void TearDown() override {
    for (auto& n : nodes_) n->Kill();
    strata::csi::testing::UnmountUnder(dir_.path());
  }

  void StartNodes(int n) {
    int port = strata::testing::FreePort();
    std::vector<std::string> all;
    for (int i = 0; i < n; ++i) all.push_back(absl::StrCat("127.0.0.", i + 1, ":", port));
    for (int i = 0; i < n; ++i) {
      nodes_.push_back(std::make_unique<NodeProcess>(
          dir_.path(), i, all[i], std::vector<std::string>{"--peers", absl::StrJoin(all, ",")}));
      ASSERT_TRUE(nodes_.back()->running()) << nodes_.back()->log();
    }
  }
  std::string Origin() const {
    return absl::StrCat("http://127.0.0.1:", proxy_->port(), "/models/");
  }

  // `sha256sum` of each path, all at once, as pods on the nodes would.
  std::vector<std::string> ReadAll(const std::vector<std::string>& paths) {
    std::vector<Child> readers;
    for (const auto& p : paths) {
      readers.push_back(
          strata::testing::Spawn({"/usr/bin/timeout", "120", "/usr/bin/sha256sum", p}));
    }
    std::vector<std::string> sums;
    for (Child& r : readers) {
      std::string out = strata::testing::ReadUntil(r.out, "\n", std::chrono::seconds(150));
      strata::testing::Wait(r, std::chrono::seconds(10));
      sums.push_back(out.substr(0, out.find(' ')));
    }
    return sums;
  }

  static constexpr uint64_t kSize = 96ull << 20;
  TempDir dir_;
  std::string data_, sha_;
  std::unique_ptr<strata::testing::Nginx> nginx_;
  std::unique_ptr<strata::testing::FaultProxy> proxy_;
  std::vector<std::unique_ptr<NodeProcess>> nodes_;
};

TEST_F(PeersE2eTest, FourNodesReadingOneFileAtOnceCostTheOriginItsSizeOnce) {
  StartNodes(4);
  std::vector<std::string> files;
  for (auto& n : nodes_) files.push_back(n->Mount(Origin()) + "/weights.bin");
  proxy_->Throttle(200ull << 20, 0);  // a shared filer under load
  auto sums = ReadAll(files);
  for (size_t i = 0; i < sums.size(); ++i) EXPECT_EQ(sums[i], sha_) << "node " << i;
  // Once, within one chunk per node (a chunk fetched twice when an answer
  // came late is allowed, a file per node is not).
  EXPECT_GE(proxy_->body_bytes(), kSize);
  EXPECT_LE(proxy_->body_bytes(), kSize + 4 * kChunk) << proxy_->body_bytes();
  double from_peers = 0, served = 0, uploads = 0, chunk_answers = 0;
  for (auto& n : nodes_) {
    EXPECT_THAT(n->log(), ::testing::Not(::testing::HasSubstr("set aside"))) << n->log();
    from_peers += n->Metric("strata_bytes_total{source=\"peer\"}");
    served += n->Metric("strata_peer_served_bytes_total");
    uploads += n->Metric("strata_peer_lease_uploads_total");
    // Every answer, a chunk or a lease, is in the histogram of answer times.
    chunk_answers += n->Metric("strata_peer_answer_seconds_count{answer=\"chunk\"}");
    EXPECT_EQ(n->Metric("strata_peer_answer_seconds_count{answer=\"lease\"}"),
              n->Metric("strata_peer_chunks_total{how=\"lease\"}"));
    EXPECT_EQ(n->Metric("strata_peer_answer_seconds_bucket{answer=\"lease\",le=\"+Inf\"}"),
              n->Metric("strata_peer_chunks_total{how=\"lease\"}"));
  }
  EXPECT_EQ(chunk_answers * kChunk, from_peers);
  // Of each chunk's four copies, one came from the origin, and the other
  // three from a peer, or (the owner's, when a lease holder fetched it)
  // with the lease holder's upload.
  EXPECT_EQ(from_peers, served);
  EXPECT_EQ(from_peers + uploads * kChunk, 3.0 * kSize);
}

TEST_F(PeersE2eTest, AnOwnerKilledMidReadCostsTheOthersTimeNotBytes) {
  StartNodes(3);
  std::vector<std::string> files;
  for (int i = 0; i < 2; ++i) files.push_back(nodes_[i]->Mount(Origin()) + "/weights.bin");
  // Slow enough that the kill lands mid-read.
  proxy_->Throttle(40ull << 20, 0);
  std::thread killer([&] {
    for (int i = 0; i < 3000 && proxy_->body_bytes() < kSize / 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    nodes_[2]->Kill();  // it owns a third of the chunks, and holds leases
  });
  auto sums = ReadAll(files);
  killer.join();
  EXPECT_EQ(sums[0], sha_);
  EXPECT_EQ(sums[1], sha_);
  EXPECT_LT(proxy_->body_bytes(), 2 * kSize);
  EXPECT_THAT(nodes_[0]->log() + nodes_[1]->log(), ::testing::HasSubstr("set aside"));
  // A peer down is no reason to call a node unhealthy.
  EXPECT_EQ(nodes_[0]->Health(), "200");
  EXPECT_GE(nodes_[0]->Metric("strata_peer_failures_total{peer=\"" + nodes_[2]->address() + "\"}"),
            1);
}

TEST_F(PeersE2eTest, StrataPrefetchWarmsANodeThroughItsPeers) {
  StartNodes(2);
  std::string url = Origin() + "/weights.bin";
  std::string out;
  ASSERT_EQ(strata::testing::RunCommand(
                {STRATA_PATH, "prefetch", url, "--node-socket", nodes_[0]->admin()}, &out),
            0)
      << out;
  uint64_t once = proxy_->body_bytes();
  EXPECT_GE(once, kSize);
  EXPECT_LE(once, kSize + kChunk);
  ASSERT_EQ(strata::testing::RunCommand(
                {STRATA_PATH, "prefetch", url, "--node-socket", nodes_[1]->admin()}, &out),
            0)
      << out;
  EXPECT_LE(proxy_->body_bytes() - once, 4096u);  // a stat at most, no chunk
  // The second node told the first which of the first's chunks it would
  // ask for next. (Whether the first read them before they were asked for
  // depends on the race between its read-ahead and the second's many asks
  // in flight; PeersTest checks the reading itself.)
  EXPECT_GT(nodes_[0]->Metric("strata_peer_read_ahead_queued_total"), 0);
  // And the second node serves it from its own cache now.
  std::string file = nodes_[1]->Mount(Origin()) + "/weights.bin";
  EXPECT_EQ(ReadAll({file})[0], sha_);
  EXPECT_LE(proxy_->body_bytes() - once, 8192u);
}

// Kubernetes discovery: the nodes know each other only by a headless
// Service's name (--peer-service), which each looks up with the system's
// resolver (getaddrinfo), as in a pod, every second. Each daemon has a
// private /etc/hosts (a mount namespace of its own) in which the name has
// the nodes' addresses, as cluster DNS gives a headless Service's ready
// endpoints. A node taken out of the name is asked for nothing more and
// forgotten (its channel and its metrics); one put back is a member again.
TEST_F(PeersE2eTest, NodesFindEachOtherByTheServiceNameAndFollowItsChanges) {
  const std::string name = "strata-peers.strata-system.svc.cluster.local";
  const std::string hosts = dir_.path() + "/hosts";
  auto publish = [&](int nodes) {
    // Rewritten in place: the daemons' /etc/hosts is this file, bind-mounted.
    std::ofstream f(hosts, std::ios::trunc);
    f << "127.0.0.1 localhost\n";
    for (int i = 0; i < nodes; ++i) f << "127.0.0." << i + 1 << " " << name << "\n";
  };
  publish(3);
  const int port = strata::testing::FreePort();
  for (int i = 0; i < 3; ++i) {
    nodes_.push_back(std::make_unique<NodeProcess>(
        dir_.path(), i, absl::StrCat("127.0.0.", i + 1, ":", port),
        std::vector<std::string>{"--peer-service", name, "--peer-resolve-interval", "1"},
        std::vector<std::string>{"/usr/bin/unshare", "--mount", "--propagation", "private", "--",
                                 "/bin/sh", "-c", "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
                                 hosts}));
    ASSERT_TRUE(nodes_.back()->running()) << nodes_.back()->log();
  }
  // The name is resolved before a node says it is running; itself left out.
  for (int i = 0; i < 3; ++i) EXPECT_EQ(nodes_[i]->Metric("strata_peer_members"), 2) << i;

  auto prefetch = [&](const std::string& file, std::vector<int> on) {
    std::vector<Child> runs;
    for (int i : on) {
      runs.push_back(strata::testing::Spawn(
          {STRATA_PATH, "prefetch", Origin() + file, "--node-socket", nodes_[i]->admin()}));
    }
    for (Child& c : runs) {
      std::string out = strata::testing::ReadUntil(c.out, "", std::chrono::seconds(120));
      int st = strata::testing::Wait(c, std::chrono::seconds(10));
      EXPECT_TRUE(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0) << out;
    }
  };
  proxy_->Throttle(200ull << 20, 0);
  prefetch("weights.bin", {0, 1, 2});
  EXPECT_GE(proxy_->body_bytes(), kSize);
  EXPECT_LE(proxy_->body_bytes(), kSize + 3 * kChunk) << proxy_->body_bytes();
  double from_peers = 0;
  for (auto& n : nodes_) from_peers += n->Metric("strata_bytes_total{source=\"peer\"}");
  // At least a copy of the file went between them (each chunk: one node
  // fetched it, the owner got it from that node or fetched it, the third
  // got it from the owner), less what the origin's allowance above permits.
  EXPECT_GE(from_peers, static_cast<double>(kSize - 3 * kChunk)) << "the nodes did not share";

  // Bounded: the daemons look again every second.
  auto members_become = [&](int node, double want) {
    for (int i = 0; i < 150; ++i) {
      if (nodes_[node]->Metric("strata_peer_members") == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    return false;
  };
  const std::string asked_of_2 =
      absl::StrCat("strata_peer_requests_total{peer=\"", nodes_[2]->address(), "\"}");
  EXPECT_GE(nodes_[0]->Metric(asked_of_2), 1);
  EXPECT_GE(nodes_[1]->Metric(asked_of_2), 1);
  publish(2);  // node 2 leaves the Service (its pod is no longer ready)
  ASSERT_TRUE(members_become(0, 1)) << nodes_[0]->log();
  ASSERT_TRUE(members_become(1, 1)) << nodes_[1]->log();
  const double served_by_2 = nodes_[2]->Metric("strata_peer_served_chunks_total");
  std::ofstream(dir_.path() + "/www/models/other.bin", std::ios::binary)
      << data_.substr(0, 8 * kChunk);
  const uint64_t origin_before = proxy_->body_bytes();
  prefetch("other.bin", {0, 1});
  // Nothing was asked of it, and the others dropped their link to it and
  // its series in their metrics (-1: absent).
  EXPECT_EQ(nodes_[2]->Metric("strata_peer_served_chunks_total"), served_by_2);
  EXPECT_EQ(nodes_[0]->Metric(asked_of_2), -1);
  EXPECT_EQ(nodes_[1]->Metric(asked_of_2), -1);
  EXPECT_LE(proxy_->body_bytes() - origin_before, 8 * kChunk + 2 * kChunk);

  publish(3);  // and comes back
  EXPECT_TRUE(members_become(0, 2)) << nodes_[0]->log();
}

// Nodes in network namespaces of their own on a bridge the test makes; one
// is cut off mid-read by taking its link down (packets dropped, not
// refused: only deadlines notice). The others finish with the right bytes.
class PeersNetnsTest : public PeersE2eTest {
 protected:
  void SetUp() override {
    PeersE2eTest::SetUp();
    if (IsSkipped()) return;
    tag_ = std::to_string(::getpid() % 100000);
    bridge_ = "sbr" + tag_;
    ASSERT_TRUE(Ip({"link", "add", bridge_, "type", "bridge"}));
    ASSERT_TRUE(Ip({"addr", "add", Subnet(1) + "/24", "dev", bridge_}));
    ASSERT_TRUE(Ip({"link", "set", bridge_, "up"}));
    for (int i = 0; i < 3; ++i) {
      std::string ns = Ns(i), veth = Veth(i);
      ASSERT_TRUE(Ip({"netns", "add", ns}));
      namespaces_.push_back(ns);
      ASSERT_TRUE(Ip({"link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns}));
      ASSERT_TRUE(Ip({"link", "set", veth, "master", bridge_, "up"}));
      ASSERT_TRUE(Ip({"-n", ns, "addr", "add", Subnet(10 + i) + "/24", "dev", "eth0"}));
      ASSERT_TRUE(Ip({"-n", ns, "link", "set", "eth0", "up"}));
      ASSERT_TRUE(Ip({"-n", ns, "link", "set", "lo", "up"}));
    }
    // The origin, reached from the namespaces at the bridge's address.
    origin_link_ =
        std::make_unique<strata::testing::TcpProxy>(Subnet(1), "127.0.0.1", proxy_->port());
    ASSERT_TRUE(origin_link_->ok());
  }
  void TearDown() override {
    PeersE2eTest::TearDown();
    origin_link_.reset();
    for (const auto& ns : namespaces_) Ip({"netns", "del", ns});
    if (!bridge_.empty()) Ip({"link", "del", bridge_});
  }
  bool Ip(std::vector<std::string> args) {
    args.insert(args.begin(), "/usr/sbin/ip");
    std::string out;
    int rc = strata::testing::RunCommand(args, &out, std::chrono::seconds(30));
    if (rc != 0) ADD_FAILURE() << absl::StrJoin(args, " ") << ": " << out;
    return rc == 0;
  }
  // 10.213.N.host: a subnet per test process, of addresses this test made.
  std::string Subnet(int host) const {
    return absl::StrCat("10.213.", ::getpid() % 250, ".", host);
  }
  std::string Ns(int i) const { return absl::StrCat("strata-", tag_, "-", i); }
  std::string Veth(int i) const { return absl::StrCat("sv", tag_, "n", i); }
  std::string NsOrigin() const {
    return absl::StrCat("http://", Subnet(1), ":", origin_link_->port(), "/models/");
  }

  std::string tag_, bridge_;
  std::vector<std::string> namespaces_;
  std::unique_ptr<strata::testing::TcpProxy> origin_link_;
};

TEST_F(PeersNetnsTest, ANodeCutOffMidReadCostsTheOthersTimeNotBytes) {
  int port = strata::testing::FreePort();
  std::vector<std::string> all;
  for (int i = 0; i < 3; ++i) all.push_back(absl::StrCat(Subnet(10 + i), ":", port));
  for (int i = 0; i < 3; ++i) {
    nodes_.push_back(std::make_unique<NodeProcess>(
        dir_.path(), i, all[i], std::vector<std::string>{"--peers", absl::StrJoin(all, ",")},
        std::vector<std::string>{"/usr/bin/nsenter", "--net=/run/netns/" + Ns(i), "--"}));
    ASSERT_TRUE(nodes_.back()->running()) << nodes_.back()->log();
  }
  std::vector<std::string> files;
  for (int i = 0; i < 2; ++i) files.push_back(nodes_[i]->Mount(NsOrigin()) + "/weights.bin");
  proxy_->Throttle(40ull << 20, 0);
  std::thread cutter([&] {
    for (int i = 0; i < 3000 && proxy_->body_bytes() < kSize / 4; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    Ip({"link", "set", Veth(2), "down"});  // node 2 is still running, unreachable
  });
  auto sums = ReadAll(files);
  cutter.join();
  EXPECT_EQ(sums[0], sha_) << nodes_[0]->log();
  EXPECT_EQ(sums[1], sha_) << nodes_[1]->log();
  EXPECT_THAT(nodes_[0]->log() + nodes_[1]->log(), ::testing::HasSubstr("set aside"));
  EXPECT_LT(proxy_->body_bytes(), 2 * kSize);
}

// An S3 volume whose secrets two nodes of three were given: the third
// never sees a credential, yet owns a third of the chunks; it grants their
// fetch leases to the nodes that can reach the bucket, and the bucket
// still serves each chunk about once.
TEST_F(PeersE2eTest, CredentialsNeverTravelYetTheBucketServesEachChunkOnce) {
  strata::testing::S3Server s3(dir_.path() + "/s3", "models");
  ASSERT_TRUE(s3.ok()) << s3.error();
  std::string out;
  ASSERT_EQ(
      strata::testing::RunCommand(
          {"/usr/bin/curl", "-sf", "-X", "PUT", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user",
           std::string(strata::testing::S3Server::kKey) + ":" + strata::testing::S3Server::kSecret,
           "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--data-binary",
           "@" + dir_.path() + "/www/models/weights.bin",
           s3.endpoint() + "/models/llm/weights.bin"},
          &out),
      0)
      << out;
  // The nodes get nothing from the environment: only two get the secrets.
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  strata::testing::FaultProxy bucket(s3.port(), nullptr);
  StartNodes(3);
  std::string origin =
      absl::StrCat("s3://models/llm?endpoint=http://127.0.0.1:", bucket.port(), "&addressing=path");
  Context secrets{{"access_key_id", strata::testing::S3Server::kKey},
                  {"secret_access_key", strata::testing::S3Server::kSecret}};
  std::vector<std::string> files;
  for (int i = 0; i < 2; ++i) files.push_back(nodes_[i]->Mount(origin, secrets) + "/weights.bin");
  bucket.Throttle(200ull << 20, 0);
  auto sums = ReadAll(files);
  EXPECT_EQ(sums[0], sha_);
  EXPECT_EQ(sums[1], sha_);
  EXPECT_LE(bucket.body_bytes(), kSize + 2 * kChunk) << bucket.body_bytes();
  // The third node coordinated its share without reaching the bucket.
  EXPECT_GE(nodes_[2]->Metric("strata_peer_leases_granted_total"), 1);
  EXPECT_GE(nodes_[2]->Metric("strata_peer_served_chunks_total"), 1);
  // Nothing it wrote or logged holds the secret.
  std::string grep;
  EXPECT_EQ(
      strata::testing::RunCommand(
          {"/bin/grep", "-rlaF", strata::testing::S3Server::kSecret, nodes_[2]->state()}, &grep),
      1)
      << grep;
  EXPECT_THAT(nodes_[2]->log(),
              ::testing::Not(::testing::HasSubstr(strata::testing::S3Server::kSecret)));
}

}  // namespace
}  // namespace strata::peer
