// An inline volume naming an OCI artifact (an image pushed to Debian's
// docker-registry on 127.0.0.1): the image's config and layer blobs appear
// as read-only files named by digest, read lazily through the cache.
#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "absl/strings/str_split.h"
#include "fuse/open_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/csi/driver.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

using strata::testing::RunCommand;

constexpr const char* kRegistry = STRATA_SOURCE_DIR "/tests/util/registry.sh";
constexpr const char* kPush = STRATA_SOURCE_DIR "/tests/util/push_image.sh";

class CsiOciTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    port_ = strata::testing::FreePort();
    std::string out;
    ASSERT_EQ(
        RunCommand({"/bin/bash", kRegistry, "start", dir_.path() + "/reg", std::to_string(port_)},
                   &out),
        0)
        << out;
    started_ = true;
    // Pods may name the registry's models/ repositories in inline volumes.
    driver_ = std::make_unique<TestDriver>(
        dir_.path() + "/d", "node-a", false, "",
        std::vector<std::string>{"oci://127.0.0.1:" + std::to_string(port_) + "/models/"});
  }
  void TearDown() override {
    driver_.reset();
    UnmountUnder(dir_.path());
    if (started_) RunCommand({"/bin/bash", kRegistry, "stop", dir_.path() + "/reg"});
  }

  TempDir dir_;
  int port_ = 0;
  bool started_ = false;
  std::unique_ptr<TestDriver> driver_;
};

TEST_F(CsiOciTest, InlineArtifactVolumeServesItsBlobsReadOnly) {
  std::string weights(3 << 20, '\0');
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<char>(i * 13 + i / 977);
  std::filesystem::create_directories(dir_.path() + "/src/model");
  std::ofstream(dir_.path() + "/src/model/weights.bin", std::ios::binary) << weights;
  std::string out;
  ASSERT_EQ(RunCommand({"/bin/bash", kPush, "127.0.0.1:" + std::to_string(port_), "models/llama:v1",
                        dir_.path() + "/src", "--layout", dir_.path() + "/layout"},
                       &out),
            0)
      << out;
  std::map<std::string, std::string> facts;
  for (absl::string_view line : absl::StrSplit(out, '\n')) {
    std::vector<std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.size() == 2) facts[kv[0]] = kv[1];
  }
  ASSERT_TRUE(facts.count("layer") && facts.count("config")) << out;
  auto blob = [&](const std::string& digest) {
    return ReadPath(dir_.path() + "/layout/blobs/sha256/" + digest.substr(7));
  };

  std::string target = dir_.path() + "/kubelet/pods/p/volumes/model";
  Context ctx{{"origin", "oci://127.0.0.1:" + std::to_string(port_) + "/models/llama:v1"},
              {"view", "blobs"},
              {"csi.storage.k8s.io/ephemeral", "true"}};
  grpc::Status st = driver_->Publish("csi-oci-1", "", target, false, MountCap(), ctx);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(target))
    names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{facts["config"], facts["layer"]}));
  std::string layer = ReadPath(target + "/" + facts["layer"]);
  EXPECT_TRUE(layer == blob(facts["layer"])) << "layer blob differs (" << layer.size() << " bytes)";
  EXPECT_NE(layer.find(weights.substr(0, 4096)), std::string::npos) << "the tar holds the weights";
  EXPECT_EQ(ReadPath(target + "/" + facts["config"]), blob(facts["config"]));
  EXPECT_FALSE(std::ofstream(target + "/new").good()) << "an artifact is read-only";

  ASSERT_TRUE(driver_->Unpublish("csi-oci-1", target).ok());
  EXPECT_FALSE(strata::testing::IsMounted(target));
  EXPECT_FALSE(std::filesystem::exists(target));
}

// By default an inline volume naming an image shows its files: the layers
// indexed in place and merged, read lazily through the cache.
TEST_F(CsiOciTest, InlineImageVolumeShowsItsUnpackedFiles) {
  std::string weights(5 << 20, '\0');
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<char>(i * 7 + i / 4093);
  std::filesystem::create_directories(dir_.path() + "/src/model/sub");
  std::ofstream(dir_.path() + "/src/model/weights.bin", std::ios::binary) << weights;
  std::ofstream(dir_.path() + "/src/model/sub/config.json") << "{\"layers\": 32}\n";
  std::string out;
  ASSERT_EQ(RunCommand({"/bin/bash", kPush, "127.0.0.1:" + std::to_string(port_), "models/img:v1",
                        dir_.path() + "/src"},
                       &out),
            0)
      << out;
  std::string target = dir_.path() + "/kubelet/pods/p/volumes/img";
  Context ctx{{"origin", "oci://127.0.0.1:" + std::to_string(port_) + "/models/img:v1"},
              {"csi.storage.k8s.io/ephemeral", "true"}};
  grpc::Status st = driver_->Publish("csi-oci-img", "", target, false, MountCap(), ctx);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::set<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(target))
    names.insert(e.path().filename().string());
  EXPECT_EQ(names, (std::set<std::string>{"model"}));
  EXPECT_TRUE(ReadPath(target + "/model/weights.bin") == weights) << "weights differ";
  EXPECT_EQ(ReadPath(target + "/model/sub/config.json"), "{\"layers\": 32}\n");
  EXPECT_FALSE(std::ofstream(target + "/model/new").good()) << "an image is read-only";
  ASSERT_TRUE(driver_->Unpublish("csi-oci-img", target).ok());
  EXPECT_FALSE(strata::testing::IsMounted(target));
}

// A ModelPack-style model artifact (each file a raw layer named by its
// org.cncf.model.filepath annotation), pushed by skopeo from its OCI
// layout: the pod sees the weights by their file names.
TEST_F(CsiOciTest, ModelArtifactVolumeShowsTheWeightsByName) {
  std::string part0(3 << 20, 'a'), part1 = "tail of the model\n";
  for (size_t i = 0; i < part0.size(); ++i) part0[i] = static_cast<char>(i * 31 + i / 511);
  std::filesystem::create_directories(dir_.path() + "/mp/weights");
  std::ofstream(dir_.path() + "/mp/weights/part-0.safetensors", std::ios::binary) << part0;
  std::ofstream(dir_.path() + "/mp/weights/part-1.safetensors", std::ios::binary) << part1;
  std::ofstream(dir_.path() + "/mp/tokenizer.json") << "{}\n";
  std::string out;
  ASSERT_EQ(RunCommand({"/bin/bash", kPush, "127.0.0.1:" + std::to_string(port_), "models/mp:v1",
                        dir_.path() + "/mp", "--modelpack", "--skopeo"},
                       &out),
            0)
      << out;
  std::string target = dir_.path() + "/kubelet/pods/p/volumes/mp";
  Context ctx{{"origin", "oci://127.0.0.1:" + std::to_string(port_) + "/models/mp:v1"},
              {"csi.storage.k8s.io/ephemeral", "true"}};
  grpc::Status st = driver_->Publish("csi-oci-mp", "", target, false, MountCap(), ctx);
  ASSERT_TRUE(st.ok()) << st.error_message();
  std::set<std::string> names;
  for (const auto& e : std::filesystem::recursive_directory_iterator(target))
    names.insert(std::filesystem::relative(e.path(), target).string());
  EXPECT_EQ(names, (std::set<std::string>{"tokenizer.json", "weights", "weights/part-0.safetensors",
                                          "weights/part-1.safetensors"}));
  EXPECT_TRUE(ReadPath(target + "/weights/part-0.safetensors") == part0);
  EXPECT_TRUE(SameBytes(ReadPath(target + "/weights/part-1.safetensors"), part1));
  EXPECT_EQ(ReadPath(target + "/tokenizer.json"), "{}\n");

  // Read whole and checked against its digest, a weights file (its raw
  // layer's blob) is read by the kernel from the cache's file at its next
  // open (FUSE passthrough), held against eviction meanwhile.
  const std::string log = driver_->open_log("csi-oci-mp");
  auto passed_through = [&] {
    auto open = fuse::OpenLog::Read(log);
    size_t n = 0;
    if (open.ok()) {
      for (const auto& [h, r] : *open) n += r.mode == fuse::IoMode::kPassthrough;
    }
    return n;
  };
  ASSERT_TRUE(strata::testing::Eventually([&] {
    auto open = fuse::OpenLog::Read(log);
    return open.ok() && open->empty();
  })) << "the releases never arrived";
  int fd = ::open((target + "/weights/part-0.safetensors").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(passed_through(), 1u);
  EXPECT_EQ(driver_->store().Stats().kernel_held_objects, 1u);
  EXPECT_TRUE(SameBytes(strata::testing::ReadFdUncached(fd), part0));
  ::close(fd);
  ASSERT_TRUE(strata::testing::Eventually(
      [&] { return driver_->store().Stats().kernel_held_objects == 0; }));
  ASSERT_TRUE(driver_->Unpublish("csi-oci-mp", target).ok());
}

}  // namespace
}  // namespace strata::csi::testing
