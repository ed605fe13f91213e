// The file:// and http(s):// origins against the real file system and a real
// nginx on 127.0.0.1.
#include "origin/origin.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string_view>
#include <thread>
#include <utility>

#include "base/io_buffer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "origin/origin_impl.h"
#include "tests/util/fault_proxy.h"
#include "tests/util/nginx.h"
#include "tests/util/test_util.h"

namespace strata::origin {
namespace {

using strata::testing::Pattern;
using strata::testing::TempDir;
using ::testing::HasSubstr;
using ::testing::Not;

void WriteFile(const std::string& path, const std::string& data) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << data;
}

TEST(FileOriginTest, StatListReadAndChangeDetection) {
  TempDir dir;
  std::string data = Pattern(3, 0, 1 << 20);
  WriteFile(dir.path() + "/models/a.bin", data);
  WriteFile(dir.path() + "/models/sub/b.bin", "bee");
  auto origin = OpenOrigin("file://" + dir.path(), {});
  ASSERT_TRUE(origin.ok()) << origin.status();
  auto st = (*origin)->Stat("models/a.bin");
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->size, data.size());
  EXPECT_FALSE(st->is_dir);
  auto dst = (*origin)->Stat("models");
  ASSERT_TRUE(dst.ok());
  EXPECT_TRUE(dst->is_dir);
  auto list = (*origin)->List("models");
  ASSERT_TRUE(list.ok());
  std::vector<std::string> names;
  for (auto& e : *list) names.push_back(e.name + (e.stat.is_dir ? "/" : ""));
  EXPECT_THAT(names, ::testing::UnorderedElementsAre("a.bin", "sub/"));

  std::string out(1000, '\0');
  ASSERT_TRUE((*origin)->ReadRange("models/a.bin", *st, 12345, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, data.substr(12345, 1000));
  EXPECT_EQ((*origin)->ReadRange("models/a.bin", *st, data.size() - 10, absl::MakeSpan(out)).code(),
            absl::StatusCode::kOutOfRange);

  // A rewrite gives a new version; reads of the old one are refused.
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  WriteFile(dir.path() + "/models/a.bin", Pattern(4, 0, 1 << 20));
  auto st2 = (*origin)->Stat("models/a.bin");
  EXPECT_NE(st2->version, st->version);
  auto r = (*origin)->ReadRange("models/a.bin", *st, 0, absl::MakeSpan(out));
  EXPECT_EQ(r.code(), absl::StatusCode::kFailedPrecondition) << r;

  EXPECT_EQ((*origin)->Stat("missing").status().code(), absl::StatusCode::kNotFound);
  for (const char* bad : {"../etc/passwd", "/etc/passwd", "a//b", "models/../../x", "./a"}) {
    EXPECT_EQ((*origin)->Stat(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ((*origin)->Stat(std::string(300, 'n')).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Aligned ranges are read around the page cache: straight into a buffer
// that is aligned (a chunk's), through an aligned one into one that is not,
// and a tail shorter than a block either way; every byte lands where asked.
TEST(FileOriginTest, DirectReadsLandInAlignedAndUnalignedBuffers) {
  TempDir dir;
  const size_t size = (1 << 20) + 100;
  std::string data = Pattern(5, 0, size);
  WriteFile(dir.path() + "/w.bin", data);
  ::sync();  // the blocks on disk, as a shared directory's are
  auto origin = OpenOrigin("file://" + dir.path(), {});
  ASSERT_TRUE(origin.ok()) << origin.status();
  auto st = (*origin)->Stat("w.bin");
  ASSERT_TRUE(st.ok()) << st.status();

  IoBuffer aligned = IoBuffer::Allocate(size + 4096);
  ASSERT_TRUE(aligned);
  for (auto [offset, len] : {std::pair<size_t, size_t>{0, size},
                             {4096, size - 4096},
                             {8192, 64 << 10},
                             {1 << 20, 100}}) {
    for (size_t shift : {size_t{0}, size_t{1}}) {  // aligned, then one byte off
      absl::Span<char> out(aligned.data() + shift, len);
      std::memset(out.data(), 0, len);
      auto r = (*origin)->ReadRange("w.bin", *st, offset, out);
      ASSERT_TRUE(r.ok()) << r << " at " << offset << " shifted " << shift;
      EXPECT_TRUE(std::string_view(out.data(), len) == std::string_view(data).substr(offset, len))
          << "at " << offset << " +" << len << " shifted " << shift;
    }
  }
}

TEST(OriginTest, UnknownSchemesAreRejected) {
  auto o = OpenOrigin("gopher://x/y", {});
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(o.status().message()), HasSubstr("gopher://x/y"));
  EXPECT_EQ(OpenOrigin("file://relative/path", {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

class HttpOriginTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::filesystem::create_directories(root_.path() + "/www");
    data_ = Pattern(5, 0, 3 << 20);
    WriteFile(root_.path() + "/www/data/model.bin", data_);
    nginx_ = std::make_unique<strata::testing::Nginx>(root_.path() + "/www", work_.path());
    ASSERT_TRUE(nginx_->ok());
  }
  TempDir root_, work_;
  std::string data_;
  std::unique_ptr<strata::testing::Nginx> nginx_;
};

// An origin URL ending in "/" is a prefix (a volume's root): a directory,
// whatever the server says of the URL itself (nginx: 403, no index). Without
// the slash it is an object, and a 403 is believed.
TEST_F(HttpOriginTest, AUrlEndingInASlashIsADirectory) {
  auto prefix = OpenOrigin(nginx_->url("data/"), {});
  ASSERT_TRUE(prefix.ok());
  auto root = (*prefix)->Stat("");
  ASSERT_TRUE(root.ok()) << root.status();
  EXPECT_TRUE(root->is_dir);
  EXPECT_FALSE((*prefix)->SharedVersion(*root));
  auto file = (*prefix)->Stat("model.bin");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->size, data_.size());
  EXPECT_TRUE((*prefix)->SharedVersion(*file));  // nginx's ETag
  auto object = OpenOrigin(nginx_->url("data"), {});
  ASSERT_TRUE(object.ok());
  EXPECT_FALSE((*object)->Stat("").ok());
  auto missing = OpenOrigin(nginx_->url("nowhere/"), {});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE((*missing)->Stat("").ok());  // a 404 prefix: names beneath are asked anyway
  auto down = OpenOrigin("http://127.0.0.1:1/data/", {});
  ASSERT_TRUE(down.ok());
  EXPECT_FALSE((*down)->Stat("").ok());  // nobody answered
}

TEST_F(HttpOriginTest, StatAndRangedReadsAgainstNginx) {
  auto origin = OpenOrigin(nginx_->url("data"), {});
  ASSERT_TRUE(origin.ok());
  auto st = (*origin)->Stat("model.bin");
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->size, data_.size());
  EXPECT_EQ(st->version.front(), '"') << "nginx sends a strong ETag: " << st->version;
  EXPECT_GT(st->mtime_ns, 0);
  for (uint64_t off : {0ull, 1ull, 4095ull, 1234567ull, (3ull << 20) - 100}) {
    std::string out(100, '\0');
    ASSERT_TRUE((*origin)->ReadRange("model.bin", *st, off, absl::MakeSpan(out)).ok()) << off;
    EXPECT_EQ(out, data_.substr(off, 100));
  }
  std::string big(data_.size(), '\0');
  ASSERT_TRUE((*origin)->ReadRange("model.bin", *st, 0, absl::MakeSpan(big)).ok());
  EXPECT_EQ(big, data_);
  std::string out(200, '\0');
  EXPECT_EQ((*origin)->ReadRange("model.bin", *st, data_.size() - 100, absl::MakeSpan(out)).code(),
            absl::StatusCode::kOutOfRange);
  auto missing = (*origin)->Stat("nope.bin");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope.bin"));
  EXPECT_EQ((*origin)->List("").status().code(), absl::StatusCode::kUnimplemented);
}

TEST_F(HttpOriginTest, AChangedObjectIsRefusedNotMixed) {
  auto origin = OpenOrigin(nginx_->url("data/model.bin"), {});
  ASSERT_TRUE(origin.ok());
  auto st = (*origin)->Stat("");
  ASSERT_TRUE(st.ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));  // ETag has 1 s mtime resolution
  WriteFile(root_.path() + "/www/data/model.bin", Pattern(6, 0, 3 << 20));
  std::string out(100, '\0');
  absl::Status r = (*origin)->ReadRange("", *st, 0, absl::MakeSpan(out));
  EXPECT_EQ(r.code(), absl::StatusCode::kFailedPrecondition) << r;
}

TEST(HttpsOriginTest, CertificatesAreVerifiedByDefault) {
  TempDir root, work, pki;
  std::filesystem::create_directories(root.path() + "/www");
  WriteFile(root.path() + "/www/x.bin", "secret bytes");
  std::string out;
  ASSERT_EQ(strata::testing::RunCommand(
                {"/usr/bin/openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                 "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                 pki.path() + "/key.pem", "-out", pki.path() + "/cert.pem"},
                &out),
            0)
      << out;
  strata::testing::Nginx nginx(root.path() + "/www", work.path(), pki.path() + "/cert.pem",
                               pki.path() + "/key.pem");
  ASSERT_TRUE(nginx.ok());
  // An unknown CA: refused, and the error says why.
  auto strict = OpenOrigin(nginx.url("x.bin"), {});
  auto st = (*strict)->Stat("");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kPermissionDenied) << st.status();
  EXPECT_THAT(std::string(st.status().message()), HasSubstr("certificate"));
  // With the CA bundle: read.
  OriginOptions ca;
  ca.ca_file = pki.path() + "/cert.pem";
  auto trusted = OpenOrigin(nginx.url("x.bin"), ca);
  auto ok = (*trusted)->Stat("");
  ASSERT_TRUE(ok.ok()) << ok.status();
  std::string bytes(ok->size, '\0');
  ASSERT_TRUE((*trusted)->ReadRange("", *ok, 0, absl::MakeSpan(bytes)).ok());
  EXPECT_EQ(bytes, "secret bytes");
  // Verification off only when asked.
  OriginOptions insecure;
  insecure.verify_tls = false;
  EXPECT_TRUE((*OpenOrigin(nginx.url("x.bin"), insecure))->Stat("").ok());
}

TEST(HttpOriginKeepAliveTest, ConnectionsAreReusedAndRedirectsFollowed) {
  TempDir root, work;
  std::string data = Pattern(7, 0, 1 << 20);
  WriteFile(root.path() + "/www/blobs/b.bin", data);
  // Like a registry sending blob reads to storage elsewhere.
  strata::testing::Nginx nginx(root.path() + "/www", work.path(), "", "",
                               "    location /v2/ { return 307 /blobs/b.bin; }\n");
  ASSERT_TRUE(nginx.ok());
  auto origin = OpenOrigin(nginx.url("blobs/b.bin"), {});
  auto st = (*origin)->Stat("");
  ASSERT_TRUE(st.ok()) << st.status();
  for (int i = 0; i < 20; ++i) {
    std::string out(1000, '\0');
    ASSERT_TRUE((*origin)->ReadRange("", *st, i * 4096, absl::MakeSpan(out)).ok());
    EXPECT_EQ(out, data.substr(i * 4096, 1000));
  }
  auto redirected = OpenOrigin(nginx.url("v2/x/blobs/sha256:abc"), {});
  auto rst = (*redirected)->Stat("");
  ASSERT_TRUE(rst.ok()) << rst.status();
  EXPECT_EQ(rst->size, data.size());
  std::string out(100, '\0');
  ASSERT_TRUE((*redirected)->ReadRange("", *rst, 500, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out, data.substr(500, 100));
  // 21 requests to blobs/b.bin (a HEAD and 20 GETs) over far fewer connections.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // nginx writes its log
  std::ifstream log(nginx.access_log());
  std::set<std::string> conns;
  int requests = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find("/blobs/b.bin") == std::string::npos) continue;
    ++requests;
    conns.insert(line.substr(0, line.find(' ')));
  }
  EXPECT_GE(requests, 23);  // + the two after the redirect
  EXPECT_LE(conns.size(), 3u) << "connections were not kept alive";
}

TEST(HttpClientTest, OnlyHttpAndHttpsAreFetched) {
  TempDir root, work;
  WriteFile(root.path() + "/secret", "TOPSECRET");
  WriteFile(root.path() + "/www/ok.bin", "fine");
  strata::testing::Nginx nginx(root.path() + "/www", work.path(), "", "",
                               "    location = /to-ftp { return 302 ftp://127.0.0.1/x; }\n"
                               "    location = /to-file { return 302 file://" +
                                   root.path() + "/secret; }\n");
  ASSERT_TRUE(nginx.ok());
  auto http = std::make_shared<HttpClient>();
  for (std::string url :
       {"file://" + root.path() + "/secret", std::string("dict://127.0.0.1:1/x"),
        std::string("gopher://127.0.0.1:1/x"), nginx.url("to-ftp"), nginx.url("to-file")}) {
    SCOPED_TRACE(url);
    HttpRequest req;
    req.url = url;
    auto resp = http->Do(req);
    EXPECT_EQ(resp.status().code(), absl::StatusCode::kInvalidArgument) << resp.status();
    auto origin = NewHttpOrigin(url, http);
    ASSERT_TRUE(origin.ok());
    auto st = (*origin)->Stat("");
    EXPECT_EQ(st.status().code(), absl::StatusCode::kInvalidArgument) << st.status();
    EXPECT_THAT(std::string(st.status().message()), Not(HasSubstr("TOPSECRET")));
  }
  auto ok = NewHttpOrigin(nginx.url("ok.bin"), http);
  EXPECT_EQ((*ok)->Stat("")->size, 4u);
}

TEST(HttpClientTest, SuccessBodiesWithoutABufferAreBounded) {
  TempDir root, work;
  WriteFile(root.path() + "/www/big.bin", Pattern(3, 0, (16 << 20) + 1));
  strata::testing::Nginx nginx(root.path() + "/www", work.path());
  ASSERT_TRUE(nginx.ok());
  HttpClient http;
  HttpRequest req;
  req.url = nginx.url("big.bin");
  auto resp = http.Do(req);  // the default bound: 16 MiB
  EXPECT_EQ(resp.status().code(), absl::StatusCode::kResourceExhausted) << resp.status();
  req.max_body = 17 << 20;
  resp = http.Do(req);
  ASSERT_TRUE(resp.ok()) << resp.status();
  EXPECT_EQ(resp->body.size(), (16u << 20) + 1);
}

TEST(HttpOriginSizeTest, SizesPastTheBoundAreRefused) {
  // Answers no real server gives; each once led to a size near 2^64. libcurl
  // itself refuses some Content-Lengths (Unavailable); the rest are ours.
  for (auto [answer, code] : std::vector<std::pair<std::string, absl::StatusCode>>{
           {"HTTP/1.1 200 OK\r\nContent-Length: 1125899906842625\r\n\r\n",
            absl::StatusCode::kInvalidArgument},
           {"HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551615\r\n\r\n",
            absl::StatusCode::kInvalidArgument},
           {"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", absl::StatusCode::kUnavailable},
           {"HTTP/1.1 405 No\r\nContent-Length: 0\r\n\r\n", absl::StatusCode::kInvalidArgument},
       }) {
    SCOPED_TRACE(answer);
    strata::testing::FaultProxy server(
        1,
        [](uint64_t, const std::string&, const std::string&) {
          return strata::testing::Fault{strata::testing::Fault::Kind::kCanned, 0, 0};
        },
        [&](const std::string& line) -> std::string {
          // A GET (after a 405 to HEAD) gets a total past the bound.
          if (line.rfind("HEAD", 0) == 0) return answer;
          return "HTTP/1.1 206 Partial\r\nContent-Range: bytes 0-0/18446744073709551615\r\n"
                 "Content-Length: 1\r\n\r\nx";
        });
    auto origin = OpenOrigin("http://127.0.0.1:" + std::to_string(server.port()) + "/x", {});
    ASSERT_TRUE(origin.ok());
    auto st = (*origin)->Stat("");
    EXPECT_EQ(st.status().code(), code) << st.status();
  }
}

TEST(HttpOriginConnTest, RefusedConnectionIsTransient) {
  int port = strata::testing::FreePort();
  auto origin = OpenOrigin("http://127.0.0.1:" + std::to_string(port) + "/x", {});
  ASSERT_TRUE(origin.ok());
  auto st = (*origin)->Stat("");
  EXPECT_EQ(st.status().code(), absl::StatusCode::kUnavailable) << st.status();
  EXPECT_TRUE(IsTransient(st.status()));
}

}  // namespace
}  // namespace strata::origin
