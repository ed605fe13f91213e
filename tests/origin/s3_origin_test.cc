// The s3:// origin against a real S3-speaking server on 127.0.0.1 (s3rver,
// which checks SigV4 signatures; tests/util/s3_server.sh).
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include "cache/fetcher.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "origin/origin.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/nginx.h"
#include "tests/util/s3_server.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::origin {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::UnorderedElementsAre;

constexpr const char* kKey = strata::testing::S3Server::kKey;
constexpr const char* kSecret = strata::testing::S3Server::kSecret;

class S3OriginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_ = std::make_unique<strata::testing::S3Server>(dir_.path(), "models");
    ASSERT_TRUE(server_->ok()) << server_->error();
    port_ = server_->port();
    endpoint_ = server_->endpoint();
  }
  void TearDown() override { server_.reset(); }

  std::unique_ptr<Origin> Open(const std::string& prefix, OriginOptions o = {}) {
    o.s3_endpoint = endpoint_;
    auto origin = OpenOrigin("s3://models" + prefix, o);
    EXPECT_TRUE(origin.ok()) << origin.status();
    return origin.ok() ? std::move(*origin) : nullptr;
  }

  void Upload(Origin& o, const std::string& path, const std::string& data) {
    std::string f = files_.path() + "/staged";
    std::ofstream(f, std::ios::binary) << data;
    absl::Status st = o.Put(path, f);
    ASSERT_TRUE(st.ok()) << st;
  }

  TempDir dir_, files_;
  std::unique_ptr<strata::testing::S3Server> server_;
  int port_ = 0;
  std::string endpoint_;
};

TEST_F(S3OriginTest, PutStatRangedReadAndChange) {
  auto o = Open("/team");
  std::string data = Pattern(21, 0, 300000);
  Upload(*o, "llama/weights.bin", data);
  auto st = o->Stat("llama/weights.bin");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->size, data.size());
  EXPECT_EQ(st->version.front(), '"');
  for (uint64_t off : {uint64_t{0}, uint64_t{1}, uint64_t{65535}, uint64_t{299990}}) {
    std::string out(10, '\0');
    ASSERT_TRUE(o->ReadRange("llama/weights.bin", *st, off, absl::MakeSpan(out)).ok()) << off;
    EXPECT_EQ(out, data.substr(off, 10));
  }
  // Overwritten: a read of the old version is refused, not mixed.
  Upload(*o, "llama/weights.bin", Pattern(22, 0, 300000));
  std::string out(10, '\0');
  EXPECT_EQ(o->ReadRange("llama/weights.bin", *st, 0, absl::MakeSpan(out)).code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(o->Delete("llama/weights.bin").ok());
  EXPECT_EQ(o->Stat("llama/weights.bin").status().code(), absl::StatusCode::kNotFound);
}

TEST_F(S3OriginTest, MultipartUploadOfALargeObject) {
  OriginOptions opts;
  opts.multipart_threshold = 6 << 20;
  opts.multipart_part_size = 5 << 20;
  auto o = Open("", opts);
  std::string data = Pattern(23, 0, (12 << 20) + 777);
  Upload(*o, "big.bin", data);
  auto st = o->Stat("big.bin");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->size, data.size());
  std::string out(1 << 20, '\0');
  uint64_t across = (5 << 20) - 1000;  // spans the first part boundary
  ASSERT_TRUE(o->ReadRange("big.bin", *st, across, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, data.substr(across, out.size()));
}

TEST_F(S3OriginTest, ListsDirectoriesWithPagination) {
  OriginOptions opts;
  opts.s3_list_page_size = 2;  // force several pages
  auto o = Open("/ds", opts);
  for (const char* k : {"train/a.bin", "train/b.bin", "train/c.bin", "train/sub/d.bin",
                        "train/sub/e.bin", "valid.bin"}) {
    Upload(*o, k, k);
  }
  auto list = o->List("train");
  ASSERT_TRUE(list.ok()) << list.status();
  std::vector<std::string> names;
  for (auto& e : *list) names.push_back(e.name + (e.stat.is_dir ? "/" : ""));
  EXPECT_THAT(names, UnorderedElementsAre("a.bin", "b.bin", "c.bin", "sub/"));
  auto root = o->List("");
  ASSERT_TRUE(root.ok());
  names.clear();
  for (auto& e : *root) names.push_back(e.name + (e.stat.is_dir ? "/" : ""));
  EXPECT_THAT(names, UnorderedElementsAre("train/", "valid.bin"));
  EXPECT_TRUE(o->Stat("train/sub")->is_dir);
  EXPECT_EQ(o->Stat("train/nothing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(o->Stat("../escape").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(S3OriginTest, WrongOrMissingCredentialsAreClearErrors) {
  ::setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret", 1);
  auto o = Open("");
  auto st = o->Stat("anything");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kPermissionDenied) << st.status();
  EXPECT_THAT(std::string(st.status().message()), HasSubstr(kKey));
  auto list = o->List("");
  EXPECT_EQ(list.status().code(), absl::StatusCode::kPermissionDenied) << list.status();
  EXPECT_THAT(std::string(list.status().message()), HasSubstr("SignatureDoesNotMatch"));
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  OriginOptions none;
  none.s3_endpoint = endpoint_;
  none.aws_credentials_file = files_.path() + "/absent";
  auto missing = OpenOrigin("s3://models", none);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("no S3 credentials"));
}

TEST_F(S3OriginTest, CredentialsFromAFileOrAMountedSecret) {
  ::unsetenv("AWS_ACCESS_KEY_ID");
  ::unsetenv("AWS_SECRET_ACCESS_KEY");
  std::ofstream(files_.path() + "/credentials")
      << "[other]\naws_access_key_id = X\naws_secret_access_key = Y\n"
      << "[ci]\naws_access_key_id = " << kKey << "\naws_secret_access_key = " << kSecret << "\n";
  OriginOptions f;
  f.aws_credentials_file = files_.path() + "/credentials";
  f.aws_profile = "ci";
  auto o = Open("", f);
  Upload(*o, "from-file", "x");
  std::filesystem::create_directory(files_.path() + "/secret");
  std::ofstream(files_.path() + "/secret/access_key_id") << kKey << "\n";
  std::ofstream(files_.path() + "/secret/secret_access_key") << kSecret << "\n";
  OriginOptions s;
  s.aws_secret_dir = files_.path() + "/secret";
  auto o2 = Open("", s);
  EXPECT_TRUE(o2->Stat("from-file").ok());
}

TEST_F(S3OriginTest, VirtualHostAddressing) {
  OriginOptions v;
  v.s3_endpoint = "http://s3.localhost:" + std::to_string(port_);
  v.s3_addressing = "virtual";
  v.connect_to = {"models.s3.localhost:" + std::to_string(port_) +
                  ":127.0.0.1:" + std::to_string(port_)};
  auto o = OpenOrigin("s3://models/vh", v);
  ASSERT_TRUE(o.ok()) << o.status();
  Upload(**o, "key with spaces+plus.bin", "virtual host bytes");
  auto st = (*o)->Stat("key with spaces+plus.bin");
  ASSERT_TRUE(st.ok()) << st.status();
  std::string out(st->size, '\0');
  ASSERT_TRUE((*o)->ReadRange("key with spaces+plus.bin", *st, 0, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, "virtual host bytes");
}

TEST_F(S3OriginTest, ReadThroughTheFetcher) {
  std::shared_ptr<Origin> o = Open("/f");
  std::string data = Pattern(24, 0, (3 << 20) + 5);
  Upload(*o, "blob", data);
  TempDir cache;
  cache::StoreOptions so;
  so.dir = cache.path();
  so.chunk_size = 1 << 20;
  auto store = cache::ChunkStore::Open(so);
  ASSERT_TRUE(store.ok());
  cache::Fetcher f(**store);
  cache::FetchTarget t{o, "blob", *o->Stat("blob"), 0, {}};
  std::string out(data.size(), '\0');
  auto n = f.Read(t, 0, absl::MakeSpan(out));
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_EQ(out, data);
}

TEST_F(S3OriginTest, ANameThatIsBothAnObjectAndAPrefixIsListedOnce) {
  auto o = Open("/d");
  Upload(*o, "dup", "object");
  Upload(*o, "dup/inner", "below");
  Upload(*o, "plain", "x");
  auto list = o->List("");
  ASSERT_TRUE(list.ok()) << list.status();
  std::vector<std::string> names;
  for (auto& e : *list) names.push_back(e.name + (e.stat.is_dir ? "/" : ""));
  // As Stat answers: "dup" is the object.
  EXPECT_THAT(names, UnorderedElementsAre("dup", "plain"));
  auto st = o->Stat("dup");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_FALSE(st->is_dir);
}

OriginOptions FakeCredentials() {
  OriginOptions o;
  o.aws_access_key_id = "AKIAFAKE";
  o.aws_secret_access_key = "fake";
  return o;
}

TEST(S3OriginUrlTest, HostileRegionsAndEndpointsAreRefused) {
  for (const std::string& url : std::vector<std::string>{
           "s3://models?region=evil.example#",
           "s3://models?region=evil.example%23",
           "s3://models?region=us-east-1.evil.example",
           "s3://models?region=US-EAST-1",
           "s3://models?region=" + std::string(33, 'a'),
           std::string("s3://models?endpoint=ftp://127.0.0.1:9000"),
           std::string("s3://models?endpoint=127.0.0.1:9000"),
           std::string("s3://models?endpoint=http://user@127.0.0.1:9000"),
           std::string("s3://models?endpoint=http://127.0.0.1:1@evil.example"),
           std::string("s3://models?endpoint=http://127.0.0.1:9000/path"),
           std::string("s3://models?endpoint=http://127.0.0.1:9000#x"),
           std::string("s3://models?endpoint=http://evil.example\\@127.0.0.1"),
           std::string("s3://models?endpoint=http://%65vil.example"),
           std::string("s3://models?endpoint=http://127.0.0.1:99999"),
           std::string("s3://models?endpoint=http://"),
       }) {
    SCOPED_TRACE(url);
    EXPECT_EQ(OpenOrigin(url, FakeCredentials()).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // The region from the environment is held to the same rule.
  const char* old = std::getenv("AWS_REGION");
  std::string saved = old ? old : "";
  ::setenv("AWS_REGION", "evil.example#", 1);
  EXPECT_EQ(OpenOrigin("s3://models", FakeCredentials()).status().code(),
            absl::StatusCode::kInvalidArgument);
  if (old) {
    ::setenv("AWS_REGION", saved.c_str(), 1);
  } else {
    ::unsetenv("AWS_REGION");
  }
}

TEST(S3OriginUrlTest, TheUrlNamesTheHostReached) {
  auto url = [](const std::string& u) {
    auto o = OpenOrigin(u, FakeCredentials());
    EXPECT_TRUE(o.ok()) << u << ": " << o.status();
    return o.ok() ? (*o)->url() : "<error>";
  };
  EXPECT_EQ(url("s3://models/p?endpoint=http://127.0.0.1:9000/"),
            "s3://models/p?endpoint=http://127.0.0.1:9000");
  EXPECT_EQ(url("s3://models/p?endpoint=http://127.0.0.1:9000&region=eu-west-1"),
            "s3://models/p?endpoint=http://127.0.0.1:9000");
  EXPECT_NE(url("s3://models/p?endpoint=http://127.0.0.1:9000"),
            url("s3://models/p?endpoint=http://127.0.0.1:9001"));
  EXPECT_NE(url("s3://models/p?endpoint=http://127.0.0.1:9000"),
            url("s3://models/p?endpoint=https://127.0.0.1:9000"));
  EXPECT_EQ(url("s3://models/p?endpoint=http://[::1]:9000"),
            "s3://models/p?endpoint=http://[::1]:9000");
  // AWS's own endpoints: bucket names are global there.
  EXPECT_EQ(url("s3://models/p?region=eu-west-1"), "s3://models/p");
}

// An endpoint serving a canned ListObjectsV2 answer (nginx ignores the
// query and the signature).
class S3HostileListingTest : public ::testing::Test {
 protected:
  std::unique_ptr<Origin> Serve(const std::string& xml) {
    std::filesystem::create_directories(root_.path() + "/www");
    std::ofstream(root_.path() + "/www/models") << xml;
    nginx_ = std::make_unique<strata::testing::Nginx>(root_.path() + "/www", work_.path(), "", "",
                                                      "    default_type application/xml;\n");
    EXPECT_TRUE(nginx_->ok());
    OriginOptions o = FakeCredentials();
    o.s3_endpoint = "http://127.0.0.1:" + std::to_string(nginx_->port());
    auto origin = OpenOrigin("s3://models", o);
    EXPECT_TRUE(origin.ok()) << origin.status();
    return origin.ok() ? std::move(*origin) : nullptr;
  }

  TempDir root_, work_;
  std::unique_ptr<strata::testing::Nginx> nginx_;
};

std::string Contents(const std::string& key, const std::string& size) {
  return "<Contents><Key>" + key + "</Key><Size>" + size + "</Size><ETag>\"e\"</ETag></Contents>";
}

std::string Prefix(const std::string& p) {
  return "<CommonPrefixes><Prefix>" + p + "</Prefix></CommonPrefixes>";
}

TEST_F(S3HostileListingTest, NamesThatAreNotFileNamesAreLeftOut) {
  std::string xml = "<ListBucketResult><IsTruncated>false</IsTruncated>";
  for (const char* bad : {"dir/..", "dir/.", "dir/&#46;&#46;", "dir/&#46;"}) {
    xml += Contents(bad, "1");
  }
  xml += Contents("dir/" + std::string(256, 'n'), "1");
  xml += Contents("dir/huge", "18446744073709551615");
  xml += Contents("dir/negative", "-1");
  xml += Contents("dir/good.bin", "5") + Contents("dir/good.bin", "5");
  xml += Contents("dir/" + std::string(255, 'm'), "2");
  xml += Contents("dir/both", "3");
  for (const char* bad :
       {"dir/../", "dir/./", "dir//", "dir/a//", "elsewhere/", "dir/noslash", "dir/&#46;&#46;/"}) {
    xml += Prefix(bad);
  }
  xml += Prefix("dir/sub/") + Prefix("dir/both/");
  xml += "</ListBucketResult>";
  auto o = Serve(xml);
  ASSERT_NE(o, nullptr);
  auto list = o->List("dir");
  ASSERT_TRUE(list.ok()) << list.status();
  std::vector<std::string> names;
  for (auto& e : *list) names.push_back(e.name + (e.stat.is_dir ? "/" : ""));
  EXPECT_THAT(names, UnorderedElementsAre("good.bin", std::string(255, 'm'), "both", "sub/"));
  // Something was left out: the directory does not count as empty.
  EXPECT_EQ(o->RemoveDir("dir").code(), absl::StatusCode::kFailedPrecondition);
}

TEST(S3OriginRedirectTest, SignedRequestsAreNotForwarded) {
  TempDir root, work, root2, work2;
  std::filesystem::create_directories(root.path() + "/www");
  std::filesystem::create_directories(root2.path() + "/www");
  strata::testing::Nginx elsewhere(root2.path() + "/www", work2.path());
  ASSERT_TRUE(elsewhere.ok());
  strata::testing::Nginx endpoint(
      root.path() + "/www", work.path(), "", "",
      "    location / { return 307 " + elsewhere.url("models/x") + "; }\n");
  ASSERT_TRUE(endpoint.ok());
  OriginOptions o = FakeCredentials();
  o.aws_session_token = "SESSIONTOKEN";
  o.s3_endpoint = "http://127.0.0.1:" + std::to_string(endpoint.port());
  auto origin = OpenOrigin("s3://models", o);
  ASSERT_TRUE(origin.ok()) << origin.status();
  EXPECT_FALSE((*origin)->Stat("x").ok());
  EXPECT_FALSE((*origin)->List("").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // nginx writes its log
  EXPECT_EQ(testing::ReadPath(elsewhere.access_log()), "");
}

TEST(S3OriginSizeTest, AContentLengthPastTheBoundIsRefused) {
  strata::testing::FaultProxy server(
      1,
      [](uint64_t, const std::string&, const std::string&) {
        return strata::testing::Fault{strata::testing::Fault::Kind::kCanned, 0, 0};
      },
      [](const std::string&) -> std::string {
        return "HTTP/1.1 200 OK\r\nContent-Length: 1125899906842625\r\nETag: \"e\"\r\n\r\n";
      });
  OriginOptions o = FakeCredentials();
  o.s3_endpoint = "http://127.0.0.1:" + std::to_string(server.port());
  auto origin = OpenOrigin("s3://models", o);
  ASSERT_TRUE(origin.ok()) << origin.status();
  EXPECT_EQ((*origin)->Stat("x").status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace strata::origin
