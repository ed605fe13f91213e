// The oci:// origin against Debian's docker-registry on 127.0.0.1, with
// images pushed by tests/util/push_image.sh: anonymous, Basic (htpasswd) and
// Bearer-token auth, index -> manifest resolution, ranged blob reads, and a
// blob corrupted in the registry's own storage.
#include <filesystem>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_split.h"
#include "cache/fetcher.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "origin/origin.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/nginx.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::origin {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;
using ::testing::HasSubstr;

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
    cache::StoreOptions so;
    so.dir = cache_.path();
    so.chunk_size = 1 << 20;
    auto store = cache::ChunkStore::Open(so);
    cache::Fetcher f(**store);
    cache::FetchTarget t{o, path, *o->Stat(path), 0, {}};
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

TEST(OciUrlTest, NamesOutsideTheDistributionGrammarAreRefused) {
  for (const std::string& url : std::vector<std::string>{
           "oci://localhost:1@evil/x",
           "oci://user:pass@registry.example/x",
           "oci://evil#/x",
           "oci://evil\\x/y",
           "oci://exa mple/x",
           "oci://registry%2Eexample/x",
           "oci://127.0.0.1:0/x",
           "oci://127.0.0.1:65536/x",
           "oci://[::1/x",
           "oci://-bad.example/x",
           "oci://127.0.0.1:5000/../x",
           "oci://127.0.0.1:5000/a//b",
           "oci://127.0.0.1:5000/A/b",
           "oci://127.0.0.1:5000/a-/b",
           "oci://127.0.0.1:5000/a___b",
           "oci://127.0.0.1:5000/a..b",
           "oci://127.0.0.1:5000/a/b:../../x",
           "oci://127.0.0.1:5000/a:b#c",
           "oci://127.0.0.1:5000/a:.hidden",
           "oci://127.0.0.1:5000/a:-x",
           "oci://127.0.0.1:5000/a:",
           "oci://127.0.0.1:5000/a:" + std::string(129, 't'),
           "oci://127.0.0.1:5000/" + std::string(256, 'r'),
           "oci://127.0.0.1:5000/a@sha256:../x",
       }) {
    SCOPED_TRACE(url);
    EXPECT_EQ(OpenOrigin(url, {}).status().code(), absl::StatusCode::kInvalidArgument);
  }
  for (const std::string& url : std::vector<std::string>{
           "oci://127.0.0.1:5000/a--b_c__d.e/f-g:v1.0_rc-2",
           "oci://[::1]:5000/a",
           "oci://registry.example/library/ubuntu",
           "oci://127.0.0.1:5000/" + std::string(255, 'r') + ":" + std::string(128, 't'),
       }) {
    SCOPED_TRACE(url);
    EXPECT_TRUE(OpenOrigin(url, {}).ok());
  }
}

// A "registry" that is nginx serving files: manifests and token answers of
// the wrong types, and auth challenges naming hostile token realms.
class OciHostileRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::ofstream(root_.path() + "/secret") << "TOPSECRET";
    auto challenge = [](const std::string& repo, const std::string& realm) {
      return "    location /v2/" + repo + "/ { add_header WWW-Authenticate 'Bearer realm=\"" +
             realm + "\",service=\"t\"' always; return 401; }\n";
    };
    std::string extra = "    location /v2/ { default_type application/json; }\n";
    extra += challenge("file", "file://" + root_.path() + "/secret");
    extra += challenge("gopher", "gopher://127.0.0.1:$server_port/x");
    extra += challenge("userinfo", "http://127.0.0.1:$server_port@evil.example/token");
    extra += challenge("relative", "/token");
    for (const char* t : {"typed", "crlf", "none"}) {
      extra += challenge(std::string("tok") + t,
                         std::string("http://127.0.0.1:$server_port/token-") + t + ".json");
    }
    Write("token-typed.json", R"({"token":"t","access_token":5})");
    Write("token-crlf.json", R"({"token":"a\r\nX-Evil: 1"})");
    Write("token-none.json", R"({"token":5,"access_token":[1]})");
    nginx_ = std::make_unique<strata::testing::Nginx>(root_.path() + "/www", work_.path(), "", "",
                                                      extra);
    ASSERT_TRUE(nginx_->ok());
  }

  void Write(const std::string& path, const std::string& content) {
    std::filesystem::create_directories(
        std::filesystem::path(root_.path() + "/www/" + path).parent_path());
    std::ofstream(root_.path() + "/www/" + path) << content;
  }
  void Manifest(const std::string& tag, const std::string& json) {
    Write("v2/bad/manifests/" + tag, json);
  }
  std::unique_ptr<Origin> Open(const std::string& name) {
    OriginOptions o;
    o.oci_arch = "amd64";
    o.docker_config = root_.path() + "/absent.json";
    auto origin = OpenOrigin("oci://127.0.0.1:" + std::to_string(nginx_->port()) + "/" + name, o);
    EXPECT_TRUE(origin.ok()) << origin.status();
    return origin.ok() ? std::move(*origin) : nullptr;
  }

  TempDir root_, work_;
  std::unique_ptr<strata::testing::Nginx> nginx_;
};

std::string Digest(char c) { return "sha256:" + std::string(64, c); }

TEST_F(OciHostileRegistryTest, WronglyTypedManifestsAreErrorsNotCrashes) {
  std::string amd64 = R"({"os":"linux","architecture":"amd64"})";
  std::map<std::string, std::string> bad = {
      {"manifests-string", R"({"manifests":"x"})"},
      {"index-string", R"({"mediaType":"application/vnd.oci.image.index.v1+json"})"},
      {"layers-int", R"({"layers":[1]})"},
      {"layers-string", R"({"layers":"x"})"},
      {"no-layers", R"({"config":{}})"},
      {"mediatype-int", R"({"mediaType":5,"layers":[]})"},
      {"config-string", R"({"config":"x","layers":[]})"},
      {"platform-digest-path", R"({"manifests":[{"platform":)" + amd64 + R"(,"digest":"../x"}]})"},
      {"platform-digest-int", R"({"manifests":[{"platform":)" + amd64 + R"(,"digest":5}]})"},
      {"not-an-object", "[1,2]"},
      {"not-json", "{"},
  };
  for (const auto& [tag, json] : bad) Manifest(tag, json);
  for (const auto& [tag, json] : bad) {
    SCOPED_TRACE(tag);
    auto o = Open("bad:" + tag);
    auto st = o->Stat("");
    EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument) << st.status();
    EXPECT_EQ(o->List("").status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Platforms of the wrong types match nothing.
  Manifest("platforms", R"({"manifests":[7,{"platform":"linux"},{"platform":{"os":5}}]})");
  EXPECT_EQ(Open("bad:platforms")->Stat("").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(OciHostileRegistryTest, OnlyBlobsWithADigestAndASizeAreListed) {
  Manifest("entries", R"({"config":{"digest":"","size":1},"layers":[)"
                      R"({"digest":")" +
                          Digest('a') +
                          R"(","size":-1},)"
                          R"({"digest":"../x","size":1},)"
                          R"({"digest":"sha256:","size":1},)"
                          R"({"size":1},)"
                          R"({"digest":")" +
                          Digest('b') +
                          R"(","size":1.5},)"
                          R"({"digest":")" +
                          Digest('c') +
                          R"(","size":"5"},)"
                          R"({"digest":")" +
                          Digest('e') +
                          R"(","size":9007199254740993},)"
                          R"({"digest":")" +
                          Digest('d') +
                          R"(","size":12},)"
                          R"({"digest":")" +
                          Digest('d') + R"(","size":12}]})");
  auto o = Open("bad:entries");
  auto list = o->List("");
  ASSERT_TRUE(list.ok()) << list.status();
  ASSERT_EQ(list->size(), 1u);
  EXPECT_EQ((*list)[0].name, Digest('d'));
  EXPECT_EQ((*list)[0].stat.size, 12u);
}

TEST_F(OciHostileRegistryTest, TokenRealmsMustBeHttpUrls) {
  for (const char* repo : {"file", "gopher", "userinfo", "relative"}) {
    SCOPED_TRACE(repo);
    auto st = Open(std::string(repo) + "/x:v1")->Stat("");
    EXPECT_EQ(st.status().code(), absl::StatusCode::kPermissionDenied) << st.status();
    EXPECT_THAT(std::string(st.status().message()), HasSubstr("realm"));
    EXPECT_THAT(std::string(st.status().message()), ::testing::Not(HasSubstr("TOPSECRET")));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // nginx writes its log
  EXPECT_THAT(testing::ReadPath(nginx_->access_log()), ::testing::Not(HasSubstr("/token")));
}

TEST_F(OciHostileRegistryTest, TokenAnswersOfTheWrongTypesAreRefused) {
  for (const char* t : {"typed", "crlf", "none"}) {
    SCOPED_TRACE(t);
    auto st = Open(std::string("tok") + t + "/x:v1")->Stat("");
    EXPECT_EQ(st.status().code(), absl::StatusCode::kPermissionDenied) << st.status();
  }
}

}  // namespace
}  // namespace strata::origin
