// The oci:// origin against Debian's docker-registry on 127.0.0.1, with
// images pushed by tests/util/push_image.sh: anonymous, Basic (htpasswd) and
// Bearer-token auth, index -> manifest resolution, ranged blob reads, and a
// blob corrupted in the registry's own storage.
#include <filesystem>
#include <fstream>
#include <map>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "cache/fetcher.h"
#include "cache/origin.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/subprocess.h"

namespace strata::cache {
namespace {

using ::testing::HasSubstr;
using testing::Pattern;
using testing::TempDir;

constexpr const char* kRegistry = STRATA_SOURCE_DIR "/tests/util/registry.sh";
constexpr const char* kPush = STRATA_SOURCE_DIR "/tests/util/push_image.sh";

using strata::testing::RunCommand;

class OciOriginTest : public ::testing::Test {
 protected:
  void TearDown() override {
    if (started_) RunCommand({"/bin/bash", kRegistry, "stop", reg_.path()});
  }

  void StartRegistry(std::vector<std::string> extra = {}) {
    port_ = strata::testing::FreePort();
    std::vector<std::string> args = {"/bin/bash", kRegistry, "start", reg_.path(),
                                     std::to_string(port_)};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string out;
    ASSERT_EQ(RunCommand(args, &out), 0) << out;
    started_ = true;
  }

  // Pushes an image of a directory holding `content`; returns push_image.sh's facts.
  std::map<std::string, std::string> Push(const std::string& ref, const std::string& content,
                                          std::vector<std::string> extra = {}) {
    std::filesystem::create_directories(src_.path() + "/model");
    std::ofstream(src_.path() + "/model/weights.bin", std::ios::binary) << content;
    std::vector<std::string> args = {"/bin/bash",
                                     kPush,
                                     "127.0.0.1:" + std::to_string(port_),
                                     ref,
                                     src_.path(),
                                     "--layout",
                                     layout_.path() + "/l"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::string out;
    EXPECT_EQ(RunCommand(args, &out), 0) << out;
    std::map<std::string, std::string> facts;
    for (absl::string_view line : absl::StrSplit(out, '\n')) {
      std::vector<std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
      if (kv.size() == 2) facts[kv[0]] = kv[1];
    }
    return facts;
  }

  std::string Blob(const std::string& digest) {
    std::ifstream f(layout_.path() + "/l/blobs/sha256/" + digest.substr(7), std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }

  std::string Url(const std::string& name) {
    return "oci://127.0.0.1:" + std::to_string(port_) + "/" + name;
  }

  void WriteDockerConfig(const std::string& user_pass) {
    std::ofstream(conf_.path() + "/config.json")
        << R"({"auths": {"127.0.0.1:)" << port_ << R"(": {"auth": ")"
        << absl::Base64Escape(user_pass) << R"("}}})";
  }

  std::string ReadAllThroughFetcher(std::shared_ptr<Origin> o, const std::string& path,
                                    absl::Status* err) {
    StoreOptions so;
    so.dir = cache_.path();
    so.chunk_size = 1 << 20;
    auto store = ChunkStore::Open(so);
    Fetcher f(**store);
    FetchTarget t{o, path, *o->Stat(path), 0, {}};
    std::string out(t.stat.size, '\0');
    auto n = f.Read(t, 0, absl::MakeSpan(out));
    if (!n.ok()) {
      *err = n.status();
      return "";
    }
    return out;
  }

  TempDir reg_, src_, layout_, conf_, cache_;
  int port_ = 0;
  bool started_ = false;
};

TEST_F(OciOriginTest, AnonymousImageLayersAndRangedReads) {
  StartRegistry();
  auto facts = Push("test/model:v1", Pattern(31, 0, (2 << 20) + 99));
  ASSERT_TRUE(facts.count("layer"));
  auto o = OpenOrigin(Url("test/model:v1"), {});
  ASSERT_TRUE(o.ok()) << o.status();
  auto root = (*o)->Stat("");
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->is_dir);
  EXPECT_EQ(root->version, facts["manifest"]);  // resolved through the index
  auto list = (*o)->List("");
  ASSERT_TRUE(list.ok());
  ASSERT_EQ(list->size(), 2u);  // config and the one layer
  EXPECT_EQ((*list)[1].name, facts["layer"]);
  EXPECT_EQ((*list)[1].stat.size, std::stoull(facts["layer_size"]));
  EXPECT_EQ((*list)[1].stat.digest, facts["layer"]);

  std::string blob = Blob(facts["layer"]);
  auto st = (*o)->Stat(facts["layer"]);
  ASSERT_TRUE(st.ok());
  std::string out(1000, '\0');
  ASSERT_TRUE((*o)->ReadRange(facts["layer"], *st, 123456, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, blob.substr(123456, 1000));
  absl::Status err;
  EXPECT_EQ(ReadAllThroughFetcher(std::move(*o), facts["layer"], &err), blob) << err;

  // A digest reference to the blob itself is one object.
  auto by_digest = OpenOrigin(Url("test/model@" + facts["layer"]), {});
  ASSERT_TRUE(by_digest.ok());
  auto bst = (*by_digest)->Stat("");
  ASSERT_TRUE(bst.ok()) << bst.status();
  EXPECT_FALSE(bst->is_dir);
  EXPECT_EQ(bst->digest, facts["layer"]);

  auto missing = OpenOrigin(Url("test/model:nope"), {});
  EXPECT_EQ((*missing)->Stat("").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(OpenOrigin(Url("Bad Repo:x"), {}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(OciOriginTest, BasicAuthWithDockerConfig) {
  StartRegistry({"--htpasswd", "ci:hunter2"});
  auto facts = Push("private/model:v1", Pattern(32, 0, 100000), {"--creds", "ci:hunter2"});
  OriginOptions none;
  none.docker_config = conf_.path() + "/absent.json";
  auto anon = OpenOrigin(Url("private/model:v1"), none);
  auto st = (*anon)->Stat("");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kPermissionDenied) << st.status();
  WriteDockerConfig("ci:hunter2");
  OriginOptions with;
  with.docker_config = conf_.path() + "/config.json";
  auto o = OpenOrigin(Url("private/model:v1"), with);
  ASSERT_TRUE((*o)->Stat("").ok());
  absl::Status err;
  EXPECT_EQ(ReadAllThroughFetcher(std::move(*o), facts["layer"], &err), Blob(facts["layer"]))
      << err;
}

TEST_F(OciOriginTest, BearerTokenFlow) {
  StartRegistry(
      {"--htpasswd", "ci:hunter2", "--token", std::to_string(strata::testing::FreePort())});
  auto facts = Push("tok/model:v1", Pattern(33, 0, 300000), {"--creds", "ci:hunter2"});
  WriteDockerConfig("ci:hunter2");
  OriginOptions with;
  with.docker_config = conf_.path() + "/config.json";
  auto o = OpenOrigin(Url("tok/model:v1"), with);
  auto root = (*o)->Stat("");
  ASSERT_TRUE(root.ok()) << root.status();
  absl::Status err;
  EXPECT_EQ(ReadAllThroughFetcher(std::move(*o), facts["layer"], &err), Blob(facts["layer"]))
      << err;
  WriteDockerConfig("ci:wrong");
  auto bad = OpenOrigin(Url("tok/model:v1"), with);
  EXPECT_EQ((*bad)->Stat("").status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(OciOriginTest, ABlobCorruptedInTheRegistryIsNeverServed) {
  StartRegistry();
  auto facts = Push("test/corrupt:v1", Pattern(34, 0, 500000));
  std::string hex = facts["layer"].substr(7);
  std::string data = reg_.path() + "/data/docker/registry/v2/blobs/sha256/" + hex.substr(0, 2) +
                     "/" + hex + "/data";
  ASSERT_TRUE(std::filesystem::exists(data)) << data;
  {
    std::fstream f(data, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(4000);
    f.put('\x42');
  }
  auto o = OpenOrigin(Url("test/corrupt:v1"), {});
  absl::Status err;
  EXPECT_EQ(ReadAllThroughFetcher(std::move(*o), facts["layer"], &err), "");
  EXPECT_EQ(err.code(), absl::StatusCode::kDataLoss) << err;
  EXPECT_THAT(std::string(err.message()), HasSubstr(facts["layer"]));
}

}  // namespace
}  // namespace strata::cache
