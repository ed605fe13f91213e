// Strata's snapshotter under a real containerd (Debian's 1.6, runc): a
// private containerd with Strata as its proxy snapshotter, images built by
// umoci and served by Debian's docker-registry, pulled and run with ctr as a
// user would. The images' layers stack with their whiteouts, links and
// modes; the snapshots outlive a SIGKILL of strata node.
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/mount.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "cri_image.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/mount.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::snapshotter {
namespace {

using strata::testing::ReadPath;
using strata::testing::RunCommand;
using strata::testing::TempDir;
using strata::testing::UnmountUnder;

constexpr const char* kRegistry = STRATA_SOURCE_DIR "/tests/util/registry.sh";
constexpr const char* kContainerd = STRATA_SOURCE_DIR "/tests/util/containerd.sh";
constexpr const char* kMakeImage = STRATA_SOURCE_DIR "/tests/util/make_image.sh";

std::map<std::string, std::string> Facts(const std::string& out) {
  std::map<std::string, std::string> facts;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.size() == 2) facts[kv[0]] = kv[1];
  }
  return facts;
}

// How many times `what` occurs in `text`.
int CountOf(const std::string& text, const std::string& what) {
  int n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + 1)) ++n;
  return n;
}

class ContainerdTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "containerd and mounts need root";
    port_ = strata::testing::FreePort();
    registry_ = absl::StrCat("127.0.0.1:", port_);
    std::string out;
    ASSERT_EQ(
        RunCommand({"/bin/bash", kRegistry, "start", dir_.path() + "/reg", std::to_string(port_)},
                   &out),
        0)
        << out;
    registry_started_ = true;
    StartNode();
    std::vector<std::string> args = {
        "/bin/bash",           kContainerd,          "start",      Ctd(),
        "--proxy-snapshotter", "strata=" + Socket(), "--registry", registry_};
    if (Cri()) args.push_back("--cri");
    ASSERT_EQ(RunCommand(args, &out, std::chrono::seconds(60)), 0) << out;
    containerd_started_ = true;
  }

  void TearDown() override {
    if (containerd_started_) RunCommand({"/bin/bash", kContainerd, "stop", Ctd()});
    StopNode(SIGTERM);
    // A keeper the node spawned outlives it by design.
    strata::testing::StopMatching(dir_.path() + "/node/fd-keeper.sock");
    UnmountUnder(dir_.path());
    if (registry_started_) RunCommand({"/bin/bash", kRegistry, "stop", dir_.path() + "/reg"});
  }

  // Whether containerd runs its CRI plugin, with Strata as its snapshotter.
  virtual bool Cri() const { return false; }
  // Flags strata node gets besides the fixture's own.
  virtual std::string ExtraNodeFlags() const { return ""; }
  std::string Ctd() const { return dir_.path() + "/ctd"; }
  std::string Socket() const { return dir_.path() + "/sn.sock"; }

  // strata node, its output in node.log (read by the tests; a pipe nobody
  // drains would stall it).
  void StartNode(bool keeper = false) {
    std::string log = dir_.path() + "/node.log";
    size_t before = ReadPath(log).size();
    node_ = strata::testing::Spawn(
        {"/bin/sh", "-c",
         absl::StrCat("exec ", STRATA_PATH, " node --state-dir ", dir_.path(), "/node --fd-keeper ",
                      keeper ? "spawn" : "off",
                      " --admin-socket off --metrics-port 0 --snapshotter-address ", Socket(),
                      ExtraNodeFlags(), " >> ", log, " 2>&1")});
    ASSERT_GT(node_.pid, 0);
    for (int i = 0; i < 600; ++i) {
      if (ReadPath(log).find("running", before) != std::string::npos) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL() << "strata node did not start:\n" << ReadPath(log);
  }

  std::string NodeLog() const { return ReadPath(dir_.path() + "/node.log"); }

  // How many times `what` is in the node's log, once it is there `n` times
  // or after a minute.
  int WaitForLogCount(const std::string& what, int n) {
    for (int i = 0; i < 1200 && CountOf(NodeLog(), what) < n; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return CountOf(NodeLog(), what);
  }

  // The value of metric `name` on the node's /metrics ("" if absent).
  std::string Metric(const std::string& name) {
    std::string log = NodeLog();
    const std::string tag = "metrics on http://";
    size_t at = log.rfind(tag);
    if (at == std::string::npos) return "";
    std::string url = log.substr(at + tag.size(), log.find('\n', at) - at - tag.size());
    std::string out;
    if (RunCommand({"/usr/bin/curl", "-s", "--max-time", "10", "http://" + url}, &out) != 0) {
      return "";
    }
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      if (absl::StartsWith(line, name + " ")) return std::string(line.substr(name.size() + 1));
    }
    return "";
  }

  void StopNode(int sig) {
    if (node_.pid <= 0) return;
    ::kill(node_.pid, sig);
    strata::testing::Wait(node_, std::chrono::seconds(30));
    node_ = {};
  }

  // ctr-remote images rpull: the pull that labels each layer with where it
  // is, into Strata.
  void Rpull(const std::string& ref) {
    std::string out;
    ASSERT_EQ(RunCommand({"/usr/bin/ctr-remote", "--address", Ctd() + "/containerd.sock", "images",
                          "rpull", "--plain-http", "--snapshotter", "strata", ref},
                         &out, std::chrono::seconds(180)),
              0)
        << out;
  }

  // None of `layers` is in containerd's content store (namespace `ns`):
  // served lazily, never downloaded.
  void ExpectNotDownloaded(const std::vector<std::string>& layers,
                           const std::string& ns = "default") {
    std::string out;
    ASSERT_EQ(Ctr({"-n", ns, "content", "ls", "-q"}, &out), 0) << out;
    for (const std::string& l : layers) {
      EXPECT_FALSE(absl::StrContains(out, l)) << "layer " << l << " was downloaded:\n" << out;
    }
  }

  // ctr against the test's containerd; returns its exit code, output in `out`.
  int Ctr(std::vector<std::string> args, std::string* out) {
    std::vector<std::string> argv = {"/bin/bash", kContainerd, "ctr", Ctd()};
    argv.insert(argv.end(), args.begin(), args.end());
    return RunCommand(argv, out, std::chrono::seconds(180));
  }

  // Builds image KIND (make_image.sh) and pushes it as test/KIND:1.
  std::map<std::string, std::string> Push(const std::vector<std::string>& kind) {
    std::string layout = dir_.path() + "/layout-" + kind[0];
    std::vector<std::string> make = {"/bin/bash", kMakeImage, layout};
    make.insert(make.end(), kind.begin(), kind.end());
    std::string out;
    EXPECT_EQ(RunCommand(make, &out, std::chrono::seconds(180)), 0) << out;
    auto facts = Facts(out);
    std::string pushed;
    EXPECT_EQ(
        RunCommand({"/bin/bash", kMakeImage, "push", layout, registry_, "test/" + kind[0] + ":1"},
                   &pushed, std::chrono::seconds(180)),
        0)
        << pushed;
    facts["ref"] = absl::StrCat(registry_, "/test/", kind[0], ":1");
    return facts;
  }

  // Converts the pushed image `from` to eStargz with ctr-remote (in a
  // containerd of its own, so that the test's holds none of its blobs) and
  // pushes it as test/weights:esgz; its facts (ref, layers).
  std::map<std::string, std::string> PushEstargz(const std::string& from) {
    std::string conv = dir_.path() + "/conv";
    std::string out;
    EXPECT_EQ(RunCommand({"/bin/bash", kContainerd, "start", conv}, &out, std::chrono::seconds(60)),
              0)
        << out;
    int rc =
        RunCommand({"/bin/bash", kMakeImage, "estargz", registry_, from, "test/weights:esgz", conv},
                   &out, std::chrono::seconds(300));
    std::string stop_out;
    RunCommand({"/bin/bash", kContainerd, "stop", conv}, &stop_out);
    EXPECT_EQ(rc, 0) << out;
    return Facts(out);
  }

  TempDir dir_;
  int port_ = 0;
  std::string registry_;
  bool registry_started_ = false, containerd_started_ = false;
  strata::testing::Child node_;
};

// What a container of the base image (whatever layers follow) prints of it.
constexpr const char* kCheckBase =
    "cd /data && ls -A . sub | tr '\\n' ' ' && echo && cat a.txt link hard e.txt sub/d.txt && "
    "stat -c '%n %a %u:%g %h %F' owned.txt a.txt hard fifo && readlink link && "
    "touch /scratch && echo written";

// What kCheckBase prints in a container of the base image (whatever layers
// follow): layer 2's whiteouts hide b.txt and sub/c.txt; the links, the fifo
// and the modes survive; the container writes to its own layer.
void ExpectBaseImage(const std::string& out) {
  EXPECT_TRUE(absl::StrContains(out, "a.txt e.txt fifo hard link owned.txt sub")) << out;
  EXPECT_FALSE(absl::StrContains(out, "b.txt")) << out;
  EXPECT_FALSE(absl::StrContains(out, "c.txt")) << out;
  EXPECT_TRUE(absl::StrContains(out, "d.txt")) << out;
  EXPECT_TRUE(absl::StrContains(out, "one\none\none\nfive\nfour\n")) << out;
  EXPECT_TRUE(absl::StrContains(out, "owned.txt 640 1000:1000 1 regular file")) << out;
  EXPECT_TRUE(absl::StrContains(out, "a.txt 644 0:0 2 regular file")) << out;
  EXPECT_TRUE(absl::StrContains(out, "hard 644 0:0 2 regular file")) << out;
  EXPECT_TRUE(absl::StrContains(out, "fifo")) << out;
  EXPECT_TRUE(absl::StrContains(out, "a.txt\nwritten")) << out;
}

TEST_F(ContainerdTest, PullsAndRunsAnImageOnStrataSnapshots) {
  auto image = Push({"base"});
  std::string out;
  ASSERT_EQ(Ctr({"images", "pull", "--snapshotter", "strata", "--hosts-dir", Ctd() + "/certs.d",
                 image["ref"]},
                &out),
            0)
      << out;
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "c1", "/bin/sh", "-c",
                 kCheckBase},
                &out),
            0)
      << out;
  ExpectBaseImage(out);

  // The layers are Strata's committed snapshots; the container's is gone
  // with it (ctr run --rm).
  ASSERT_EQ(Ctr({"snapshots", "--snapshotter", "strata", "ls"}, &out), 0) << out;
  int committed = 0, active = 0;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::StrContains(line, "Committed")) ++committed;
    if (absl::StrContains(line, "Active")) ++active;
  }
  EXPECT_EQ(committed, 2) << out;
  EXPECT_EQ(active, 0) << out;

  // strata node killed and started again: the snapshots are as they were,
  // and the image runs again from them.
  StopNode(SIGKILL);
  StartNode();
  // containerd's client of the proxy plugin saw the socket refuse while the
  // node was down and backs off (gRPC: 1 s, growing) before it dials again.
  int rc = -1;
  for (int i = 0; i < 60 && rc != 0; ++i) {
    rc = Ctr({"snapshots", "--snapshotter", "strata", "ls"}, &out);
    if (rc != 0) std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  ASSERT_EQ(rc, 0) << out;
  committed = 0;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    if (absl::StrContains(line, "Committed")) ++committed;
  }
  EXPECT_EQ(committed, 2) << out;
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "c2", "/bin/sh", "-c",
                 "cat /data/e.txt; ls /scratch 2>&1 || true"},
                &out),
            0)
      << out;
  EXPECT_TRUE(absl::StrContains(out, "five")) << out;
  EXPECT_TRUE(absl::StrContains(out, "No such file")) << "a new container starts clean: " << out;

  // Removing the image lets containerd's garbage collector remove the
  // layers from Strata, parents after children.
  ASSERT_EQ(Ctr({"images", "rm", "--sync", image["ref"]}, &out), 0) << out;
  ASSERT_EQ(Ctr({"snapshots", "--snapshotter", "strata", "ls"}, &out), 0) << out;
  EXPECT_FALSE(absl::StrContains(out, "Committed")) << out;
  std::error_code ec;
  size_t dirs = 0;
  for (auto it =
           std::filesystem::directory_iterator(dir_.path() + "/node/snapshotter/snapshots", ec);
       !ec && it != std::filesystem::directory_iterator(); ++it) {
    ++dirs;
  }
  EXPECT_EQ(dirs, 0u) << "every snapshot directory went with its snapshot";
}

// ctr-remote (Debian's stargz-snapshotter package) pulls with the labels
// that name each layer in its registry: Strata serves the uncompressed tar
// layers lazily, containerd downloads none of them, and the container reads
// every file right.
TEST_F(ContainerdTest, RpullServesTarLayersLazily) {
  auto image = Push({"weights", "48"});
  ASSERT_FALSE(image["weights_sha256"].empty());
  std::vector<std::string> layers = absl::StrSplit(image["layers"], ',');
  ASSERT_EQ(layers.size(), 3u) << image["layers"];
  std::string out;
  ASSERT_NO_FATAL_FAILURE(Rpull(image["ref"]));
  // containerd's content store holds the manifest and config, no layer.
  ExpectNotDownloaded(layers);
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "lazy1", "/bin/sh", "-c",
                 std::string(kCheckBase) + " && sha256sum /models/weights.bin"},
                &out),
            0)
      << out;
  ExpectBaseImage(out);
  EXPECT_TRUE(absl::StrContains(out, image["weights_sha256"] + "  /models/weights.bin")) << out;
  EXPECT_EQ(Metric("strata_lazy_layers"), "3");
  int64_t read = 0;
  EXPECT_TRUE(absl::SimpleAtoi(Metric("strata_lazy_layer_read_bytes_total"), &read));
  EXPECT_GE(read, 48 << 20) << "at least the weights were read";
  // Each layer is a committed Strata snapshot mounted as a layer tree.
  std::ifstream mounts("/proc/self/mounts");
  std::string line;
  int trees = 0;
  while (std::getline(mounts, line)) {
    if (absl::StrContains(line, "strata-layer") && absl::StrContains(line, dir_.path())) ++trees;
  }
  EXPECT_EQ(trees, 3);
  // After the start's grace period, the rest of every layer was fetched in
  // the background and checked.
  EXPECT_EQ(WaitForLogCount("fetched whole and checked", 3), 3) << NodeLog();
}

// A layer's bulk fetch waits for the container's start (--layer-fetch-delay)
// unless a container reads from the layer; a node stopped during the wait
// stops at once.
class ContainerdSlowBulkTest : public ContainerdTest {
 protected:
  std::string ExtraNodeFlags() const override { return " --layer-fetch-delay 3600"; }
};

TEST_F(ContainerdSlowBulkTest, TheBulkFetchWaitsForTheContainersStartOrItsFirstRead) {
  auto image = Push({"weights", "48"});
  ASSERT_NO_FATAL_FAILURE(Rpull(image["ref"]));
  std::string out;
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "slow1", "/bin/sh", "-c",
                 kCheckBase},
                &out),
            0)
      << out;
  ExpectBaseImage(out);
  // The base's files the container read (and so the base layers, which it
  // read from), and the layers' indexes: not the weights, which nobody read.
  int64_t origin = 0;
  ASSERT_TRUE(absl::SimpleAtoi(Metric("strata_bytes_total{source=\"origin\"}"), &origin));
  EXPECT_LT(origin, 16 << 20);
  EXPECT_LE(CountOf(NodeLog(), "fetched whole"), 2) << NodeLog();
  // A container that reads the weights: the rest of their layer follows in
  // the background at once, not in an hour.
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "slow2", "/bin/sh", "-c",
                 "head -c 4096 /models/weights.bin | wc -c"},
                &out),
            0)
      << out;
  EXPECT_EQ(WaitForLogCount("fetched whole and checked", 3), 3) << NodeLog();
  // Stopped during the wait: at once, not in an hour.
  RunCommand({"/bin/bash", kContainerd, "stop", Ctd()});
  containerd_started_ = false;
  auto t0 = std::chrono::steady_clock::now();
  StopNode(SIGTERM);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(20));
}

// kubelet's way: the CRI plugin pulls through its image service, with
// Strata as its snapshotter and the snapshot labels on, as deploy/
// configures a node. Its labels name each layer in the registry.
class ContainerdCriTest : public ContainerdTest {
 protected:
  bool Cri() const override { return true; }
};

TEST_F(ContainerdCriTest, KubeletsPullServesLayersLazily) {
  auto image = Push({"weights", "16"});
  std::vector<std::string> layers = absl::StrSplit(image["layers"], ',');
  ASSERT_EQ(layers.size(), 3u) << image["layers"];
  auto channel = grpc::CreateChannel("unix://" + Ctd() + "/containerd.sock",
                                     grpc::InsecureChannelCredentials());
  auto cri = runtime::v1::ImageService::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  runtime::v1::PullImageRequest req;
  req.mutable_image()->set_image(image["ref"]);
  runtime::v1::PullImageResponse resp;
  grpc::Status st = cri->PullImage(&ctx, req, &resp);
  ASSERT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message();
  EXPECT_TRUE(absl::StartsWith(resp.image_ref(), "sha256:")) << resp.image_ref();
  std::string out;
  ExpectNotDownloaded(layers, "k8s.io");
  ASSERT_EQ(Ctr({"-n", "k8s.io", "run", "--rm", "--snapshotter", "strata", image["ref"], "cri1",
                 "/bin/sh", "-c", std::string(kCheckBase) + " && sha256sum /models/weights.bin"},
                &out),
            0)
      << out;
  ExpectBaseImage(out);
  EXPECT_TRUE(absl::StrContains(out, image["weights_sha256"] + "  /models/weights.bin")) << out;
}

// strata node killed while a container runs over its lazy layers: the FD
// keeper holds the layer mounts, the restarted node takes them over, and
// the container reads on (here, the weights it had not read yet).
TEST_F(ContainerdTest, ARunningContainerReadsOnAcrossASigkillOfTheNode) {
  StopNode(SIGTERM);
  StartNode(/*keeper=*/true);
  auto image = Push({"weights", "24"});
  std::string out;
  ASSERT_NO_FATAL_FAILURE(Rpull(image["ref"]));
  ASSERT_EQ(
      Ctr({"run", "-d", "--snapshotter", "strata", image["ref"], "long1", "/bin/sleep", "600"},
          &out),
      0)
      << out;
  StopNode(SIGKILL);
  std::ofstream("/proc/sys/vm/drop_caches") << "3";
  StartNode(/*keeper=*/true);
  EXPECT_TRUE(absl::StrContains(NodeLog(), "taken over")) << NodeLog();
  ASSERT_EQ(Ctr({"tasks", "exec", "--exec-id", "e1", "long1", "/bin/sh", "-c",
                 "cat /data/a.txt /data/sub/d.txt && sha256sum /models/weights.bin"},
                &out),
            0)
      << out;
  EXPECT_TRUE(absl::StrContains(out, "one\nfour\n")) << out;
  EXPECT_TRUE(absl::StrContains(out, image["weights_sha256"] + "  /models/weights.bin")) << out;
  Ctr({"tasks", "kill", "-s", "KILL", "long1"}, &out);
}

// An eStargz image converted by ctr-remote (in a containerd of its own, so
// that this one holds none of its blobs): served lazily, each file chunk by
// chunk checked against the TOC that the manifest's annotation vouches for.
TEST_F(ContainerdTest, RpullServesEstargzLayersLazily) {
  auto image = Push({"weights", "12"});
  auto esgz = PushEstargz("test/weights:1");
  std::vector<std::string> layers = absl::StrSplit(esgz["layers"], ',');
  ASSERT_EQ(layers.size(), 3u) << esgz["layers"];
  ASSERT_NO_FATAL_FAILURE(Rpull(esgz["ref"]));
  ExpectNotDownloaded(layers);
  std::string out;
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", esgz["ref"], "esgz1", "/bin/sh", "-c",
                 std::string(kCheckBase) + " && sha256sum /models/weights.bin"},
                &out),
            0)
      << out << NodeLog();
  ExpectBaseImage(out);
  EXPECT_TRUE(absl::StrContains(out, image["weights_sha256"] + "  /models/weights.bin")) << out;
}

// An eStargz layer's files are whole objects of the cache (each cached by
// its content). Once one is cached and checked, a container's opens of it,
// through overlayfs, are FUSE passthrough opens: the kernel reads the
// cache's file itself, which is held against eviction meanwhile. A
// container holding it open reads on across a SIGKILL of strata node,
// whose successor learns from the layer's open log that the kernel still
// reads that file, and holds it again.
TEST_F(ContainerdTest, CachedEstargzFilesArePassedThroughAcrossASigkill) {
  StopNode(SIGTERM);
  StartNode(/*keeper=*/true);
  auto image = Push({"weights", "12"});
  auto esgz = PushEstargz("test/weights:1");
  ASSERT_NO_FATAL_FAILURE(Rpull(esgz["ref"]));
  const std::string sum = image["weights_sha256"];
  std::string out;
  // Not cached yet: read through the daemon, which caches and checks it.
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", esgz["ref"], "cold1", "/bin/sh", "-c",
                 "sha256sum /models/weights.bin"},
                &out),
            0)
      << out << NodeLog();
  EXPECT_TRUE(absl::StrContains(out, sum)) << out;
  EXPECT_EQ(Metric("strata_cache_kernel_held_objects"), "0");
  // Every file whole and checked once the layers' background fetches end.
  ASSERT_EQ(WaitForLogCount("fetched whole", 3), 3) << NodeLog();
  // Cached: this container's opens are passed through, and held: the
  // shell's binary (busybox, run as sh and sleep) and the weights.
  ASSERT_EQ(Ctr({"run", "-d", "--snapshotter", "strata", esgz["ref"], "hold1", "/bin/sh", "-c",
                 "exec 3</models/weights.bin && sleep 600"},
                &out),
            0)
      << out;
  auto held_becomes = [&](const std::string& want) {
    for (int i = 0; i < 600 && Metric("strata_cache_kernel_held_objects") != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return Metric("strata_cache_kernel_held_objects");
  };
  EXPECT_EQ(held_becomes("2"), "2") << NodeLog();
  StopNode(SIGKILL);
  std::ofstream("/proc/sys/vm/drop_caches") << "3";
  StartNode(/*keeper=*/true);
  EXPECT_TRUE(absl::StrContains(NodeLog(), "taken over")) << NodeLog();
  EXPECT_EQ(Metric("strata_cache_kernel_held_objects"), "2") << NodeLog();
  // Read through the open file itself, and opened anew (the same backing
  // file, as the kernel requires while it holds one for the inode).
  ASSERT_EQ(Ctr({"tasks", "exec", "--exec-id", "e1", "hold1", "/bin/sh", "-c",
                 "sha256sum /proc/1/fd/3 /models/weights.bin"},
                &out),
            0)
      << out << NodeLog();
  EXPECT_EQ(CountOf(out, sum), 2) << out;
  Ctr({"tasks", "kill", "-s", "KILL", "hold1"}, &out);
  EXPECT_EQ(held_becomes("0"), "0") << NodeLog();
}

// A layer no honest tool writes (a name climbing out, a hard link to a file
// outside it): Strata refuses to serve it, naming the entry, and containerd
// pulls it with its own unpacker, which keeps everything inside the layer.
// Nothing appears outside the snapshot directories either way.
TEST_F(ContainerdTest, AHostileLayerIsRefusedAndNothingEscapes) {
  auto image = Push({"hostile"});
  std::vector<std::string> layers = absl::StrSplit(image["layers"], ',');
  ASSERT_EQ(layers.size(), 3u) << image["layers"];
  std::string out;
  ASSERT_NO_FATAL_FAILURE(Rpull(image["ref"]));
  EXPECT_TRUE(absl::StrContains(NodeLog(), "climbs out with \"..\"")) << NodeLog();
  ASSERT_EQ(Ctr({"content", "ls", "-q"}, &out), 0) << out;
  EXPECT_TRUE(absl::StrContains(out, layers[2])) << "containerd pulled the hostile layer itself";
  EXPECT_FALSE(absl::StrContains(out, layers[0])) << "the honest layers were still served lazily";
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "h1", "/bin/sh", "-c",
                 "cat /hostile/ok.txt /hostile/linkout /escape.txt"},
                &out),
            0)
      << out;
  // containerd's unpacker clamps both names inside the layer.
  EXPECT_TRUE(absl::StrContains(out, "fine\nfine\nescaped\n")) << out;
  for (const std::string& p :
       {dir_.path() + "/escape.txt", dir_.path() + "/node/escape.txt",
        dir_.path() + "/node/snapshotter/escape.txt", dir_.path() + "/ctd/escape.txt",
        std::string("/escape.txt"), std::string("/tmp/escape.txt")}) {
    EXPECT_FALSE(std::filesystem::exists(p)) << p;
  }
}

// A layer Strata cannot read lazily (gzip without an eStargz TOC) is
// answered as an ordinary snapshot: containerd pulls and unpacks it as
// usual, and the node's log says why.
TEST_F(ContainerdTest, GzipLayersArePulledAsUsual) {
  auto image = Push({"base-gzip"});
  ASSERT_EQ(image["layer_media_type"], "application/vnd.oci.image.layer.v1.tar+gzip");
  std::vector<std::string> layers = absl::StrSplit(image["layers"], ',');
  std::string out;
  ASSERT_NO_FATAL_FAILURE(Rpull(image["ref"]));
  ASSERT_EQ(Ctr({"content", "ls", "-q"}, &out), 0) << out;
  for (const std::string& l : layers) {
    EXPECT_TRUE(absl::StrContains(out, l)) << "layer " << l << " was not pulled:\n" << out;
  }
  ASSERT_EQ(Ctr({"run", "--rm", "--snapshotter", "strata", image["ref"], "gz1", "/bin/sh", "-c",
                 kCheckBase},
                &out),
            0)
      << out;
  ExpectBaseImage(out);
  EXPECT_TRUE(absl::StrContains(NodeLog(), "is gzip-compressed, not eStargz (no eStargz footer)"))
      << NodeLog();
}

}  // namespace
}  // namespace strata::snapshotter
