// s3:// origin: an S3-compatible bucket and prefix. Requests are signed with
// SigV4; objects are versioned by ETag (sent back as If-Match on ranged GETs);
// "directories" are common prefixes of ListObjectsV2 with delimiter '/'.
// Uploads are one PutObject, or a multipart upload above a threshold.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <fstream>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/errno_status.h"
#include "base/logging.h"
#include "origin/origin_impl.h"
#include "origin/sigv4.h"

namespace strata::origin {
namespace {

// --- a minimal reader for S3's XML answers (flat, well-known shapes) -------

std::string XmlDecode(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out.push_back(s[i]);
      continue;
    }
    size_t semi = s.find(';', i);
    if (semi == absl::string_view::npos) {
      out.push_back('&');
      continue;
    }
    absl::string_view ent = s.substr(i + 1, semi - i - 1);
    uint32_t cp = 0;
    if (ent == "amp")
      cp = '&';
    else if (ent == "lt")
      cp = '<';
    else if (ent == "gt")
      cp = '>';
    else if (ent == "quot")
      cp = '"';
    else if (ent == "apos")
      cp = '\'';
    else if (absl::ConsumePrefix(&ent, "#x"))
      absl::SimpleHexAtoi(ent, &cp);
    else if (absl::ConsumePrefix(&ent, "#"))
      absl::SimpleAtoi(ent, &cp);
    if (cp == 0) {
      out.push_back('&');
      continue;
    }
    if (cp < 0x80) {
      out.push_back(static_cast<char>(cp));
    } else if (cp < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
      out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    i = semi;
  }
  return out;
}

// The raw inner text of each <tag>...</tag> in `xml`, in order.
std::vector<absl::string_view> XmlElements(absl::string_view xml, absl::string_view tag) {
  std::vector<absl::string_view> out;
  std::string open = absl::StrCat("<", tag, ">"), close = absl::StrCat("</", tag, ">");
  size_t pos = 0;
  for (;;) {
    size_t a = xml.find(open, pos);
    if (a == absl::string_view::npos) break;
    size_t b = xml.find(close, a + open.size());
    if (b == absl::string_view::npos) break;
    out.push_back(xml.substr(a + open.size(), b - a - open.size()));
    pos = b + close.size();
  }
  return out;
}

std::string XmlText(absl::string_view xml, absl::string_view tag) {
  auto e = XmlElements(xml, tag);
  return e.empty() ? "" : XmlDecode(e.front());
}

// --- credentials ------------------------------------------------------------

std::string ReadSmallFile(const std::string& path) {
  std::ifstream f(path);
  if (!f) return "";
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  return std::string(absl::StripAsciiWhitespace(s));
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

absl::StatusOr<AwsCredentials> FindCredentials(const OriginOptions& o) {
  AwsCredentials c;
  if (!o.aws_access_key_id.empty() || !o.aws_secret_access_key.empty()) {
    if (o.aws_access_key_id.empty() || o.aws_secret_access_key.empty()) {
      return absl::PermissionDeniedError(
          "S3 credentials need both an access key id and a secret access key");
    }
    return AwsCredentials{o.aws_access_key_id, o.aws_secret_access_key, o.aws_session_token};
  }
  if (!o.aws_secret_dir.empty()) {
    for (auto [id, secret, token] :
         {std::tuple{"access_key_id", "secret_access_key", "session_token"},
          std::tuple{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"},
          std::tuple{"accessKeyID", "secretAccessKey", "sessionToken"}}) {
      c.access_key_id = ReadSmallFile(absl::StrCat(o.aws_secret_dir, "/", id));
      c.secret_access_key = ReadSmallFile(absl::StrCat(o.aws_secret_dir, "/", secret));
      c.session_token = ReadSmallFile(absl::StrCat(o.aws_secret_dir, "/", token));
      if (!c.access_key_id.empty() && !c.secret_access_key.empty()) return c;
    }
    return absl::PermissionDeniedError(
        absl::StrCat("no S3 credentials in secret directory ", o.aws_secret_dir,
                     " (expected files access_key_id and secret_access_key)"));
  }
  c.access_key_id = Env("AWS_ACCESS_KEY_ID");
  c.secret_access_key = Env("AWS_SECRET_ACCESS_KEY");
  c.session_token = Env("AWS_SESSION_TOKEN");
  if (!c.access_key_id.empty() && !c.secret_access_key.empty()) return c;
  std::string file = !o.aws_credentials_file.empty() ? o.aws_credentials_file
                     : !Env("AWS_SHARED_CREDENTIALS_FILE").empty()
                         ? Env("AWS_SHARED_CREDENTIALS_FILE")
                         : absl::StrCat(Env("HOME"), "/.aws/credentials");
  std::string profile = !o.aws_profile.empty()        ? o.aws_profile
                        : !Env("AWS_PROFILE").empty() ? Env("AWS_PROFILE")
                                                      : "default";
  std::ifstream f(file);
  std::string line, section;
  c = {};
  while (std::getline(f, line)) {
    absl::string_view l = absl::StripAsciiWhitespace(line);
    if (l.empty() || l[0] == '#' || l[0] == ';') continue;
    if (l.front() == '[' && l.back() == ']') {
      section = std::string(absl::StripAsciiWhitespace(l.substr(1, l.size() - 2)));
      continue;
    }
    if (section != profile) continue;
    std::vector<std::string> kv = absl::StrSplit(l, absl::MaxSplits('=', 1));
    if (kv.size() != 2) continue;
    std::string k(absl::StripAsciiWhitespace(kv[0])), v(absl::StripAsciiWhitespace(kv[1]));
    if (k == "aws_access_key_id") c.access_key_id = v;
    if (k == "aws_secret_access_key") c.secret_access_key = v;
    if (k == "aws_session_token") c.session_token = v;
  }
  if (!c.access_key_id.empty() && !c.secret_access_key.empty()) return c;
  return absl::PermissionDeniedError(
      absl::StrCat("no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, mount a "
                   "secret, or add profile [",
                   profile, "] to ", file));
}

// --- the origin -------------------------------------------------------------

struct S3Request {
  std::string method = "GET";
  std::string key;
  std::vector<std::pair<std::string, std::string>> query;
  std::vector<std::pair<std::string, std::string>> headers;
  absl::string_view body;
  absl::Span<char> into;
};

class S3Origin final : public Origin {
 public:
  S3Origin(std::string url, std::string bucket, std::string prefix, std::string scheme,
           std::string host, bool virtual_host, std::string region, AwsCredentials creds,
           const OriginOptions& o, std::shared_ptr<HttpClient> http)
      : url_(std::move(url)),
        bucket_(std::move(bucket)),
        prefix_(std::move(prefix)),
        scheme_(std::move(scheme)),
        host_(std::move(host)),
        virtual_host_(virtual_host),
        region_(std::move(region)),
        creds_(std::move(creds)),
        opts_(o),
        http_(std::move(http)) {}

  const std::string& url() const override { return url_; }

  // An ETag (or Last-Modified) is the bucket's, the same for every reader.
  bool SharedVersion(const ObjectStat& stat) const override {
    return !stat.is_dir && !stat.version.empty() && !stat.version.starts_with("lm::");
  }

  absl::StatusOr<ObjectStat> Stat(const std::string& path) override {
    auto key = Key(path);
    if (!key.ok()) return key.status();
    if (key->empty()) return DirStat();  // the bucket itself
    S3Request r;
    r.method = "HEAD";
    r.key = *key;
    auto resp = Send(r);
    if (!resp.ok()) return resp.status();
    if (resp->status == 200) {
      ObjectStat st;
      if (!ParseObjectSize(resp->Header("content-length"), &st.size)) {
        return absl::InvalidArgumentError(
            absl::StrCat("HEAD ", Name(*key), ": no valid Content-Length (digits, at most 2^50): '",
                         absl::CHexEscape(resp->Header("content-length").substr(0, 40)), "'"));
      }
      st.version = resp->Header("etag");
      if (st.version.empty())
        st.version = absl::StrCat("lm:", resp->Header("last-modified"), ":", st.size);
      absl::Time t;
      std::string err;
      if (absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", resp->Header("last-modified"), &t, &err)) {
        st.mtime_ns = absl::ToUnixNanos(t);
      }
      return st;
    }
    if (resp->status == 403) {
      return absl::PermissionDeniedError(
          absl::StrCat("HEAD ", Name(*key),
                       ": HTTP 403: access denied (wrong credentials or no permission for key id ",
                       creds_.access_key_id, "; a HEAD answer carries no detail)"));
    }
    if (resp->status != 404) return HttpError(*resp, absl::StrCat("HEAD ", Name(*key)));
    // The origin's root is a directory even before anything is under it (a
    // new volume's prefix).
    if (path.empty()) return DirStat();
    // No such object: a "directory" if anything lies below it.
    auto page = ListPage(*key + "/", "", 1, "");
    if (!page.ok()) return page.status();
    if (page->any) return DirStat();
    return absl::NotFoundError(absl::StrCat(Name(*key), ": no such object"));
  }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    auto key = Key(dir);
    if (!key.ok()) return key.status();
    std::string prefix = key->empty() ? "" : *key + "/";
    std::vector<DirEntry> out;
    // A name can come twice: as an object and as a common prefix (keys "a"
    // and "a/b"), or repeated by a misbehaving server. One entry is kept,
    // the object when there is one, since Stat of the name answers for it.
    absl::flat_hash_map<std::string, size_t> seen;
    std::string token;
    for (int pages = 0; pages < 100000; ++pages) {
      auto page = ListPage(prefix, "/", opts_.s3_list_page_size, token);
      if (!page.ok()) return page.status();
      for (auto& e : page->entries) {
        auto [it, fresh] = seen.emplace(e.name, out.size());
        if (fresh) {
          out.push_back(std::move(e));
        } else if (out[it->second].stat.is_dir && !e.stat.is_dir) {
          out[it->second] = std::move(e);
        }
      }
      if (page->next_token.empty()) return out;
      token = page->next_token;
    }
    return absl::ResourceExhaustedError(absl::StrCat("listing ", Name(prefix), " does not end"));
  }

  absl::Status ReadInRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                           absl::Span<char> out) override {
    auto key = Key(path);
    if (!key.ok()) return key.status();
    S3Request r;
    r.key = *key;
    r.headers = {{"range", absl::StrFormat("bytes=%u-%u", offset, offset + out.size() - 1)}};
    if (IsStrongEtag(stat.version)) r.headers.emplace_back("if-match", stat.version);
    r.into = out;
    auto resp = Send(r);
    if (!resp.ok()) return resp.status();
    return CheckRangedGet(*resp, offset, out.size(), stat,
                          absl::StrFormat("GET %s [%u, +%u)", Name(*key), offset, out.size()));
  }

  absl::Status Put(const std::string& path, const std::string& local_file) override {
    auto key = Key(path);
    if (!key.ok()) return key.status();
    if (key->empty()) return absl::InvalidArgumentError("cannot write the bucket itself");
    int fd = ::open(local_file.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", local_file));
    struct stat st;
    ::fstat(fd, &st);
    uint64_t size = st.st_size;
    absl::Status result =
        size > opts_.multipart_threshold ? PutMultipart(*key, fd, size) : PutWhole(*key, fd, size);
    ::close(fd);
    return result;
  }

  absl::Status Copy(const std::string& from, const std::string& to) override {
    auto src = Key(from);
    if (!src.ok()) return src.status();
    auto dst = Key(to);
    if (!dst.ok()) return dst.status();
    S3Request r;
    r.method = "PUT";
    r.key = *dst;
    r.headers = {{"x-amz-copy-source", absl::StrCat("/", bucket_, "/", UriEncode(*src, false))}};
    auto resp = SendWithRetry(r);
    if (!resp.ok()) return resp.status();
    // A copy can fail after its 200 has started: the error is in the body.
    if (resp->status != 200 || absl::StrContains(resp->body, "<Error>")) {
      HttpResponse failed = *resp;
      if (failed.status == 200) failed.status = 500;
      return HttpError(failed, absl::StrCat("copy ", Name(*src), " to ", Name(*dst)));
    }
    return absl::OkStatus();
  }

  absl::Status MakeDir(const std::string& path) override {
    auto key = Key(path);
    if (!key.ok()) return key.status();
    S3Request r;
    r.method = "PUT";
    r.key = *key + "/";
    auto resp = SendWithRetry(r);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) return HttpError(*resp, absl::StrCat("mkdir ", Name(*key)));
    return absl::OkStatus();
  }

  absl::Status RemoveDir(const std::string& path) override {
    auto key = Key(path);
    if (!key.ok()) return key.status();
    auto page = ListPage(*key + "/", "/", 2, "");
    if (!page.ok()) return page.status();
    if (!page->entries.empty() || page->skipped > 0) {
      return absl::FailedPreconditionError(absl::StrCat(Name(*key), " is not empty"));
    }
    S3Request r;
    r.method = "DELETE";
    r.key = *key + "/";
    auto resp = Send(r);
    if (!resp.ok()) return resp.status();
    if (resp->status != 204 && resp->status != 200)
      return HttpError(*resp, absl::StrCat("rmdir ", Name(*key)));
    return absl::OkStatus();
  }

  absl::Status Delete(const std::string& path) override {
    auto key = Key(path);
    if (!key.ok()) return key.status();
    S3Request r;
    r.method = "DELETE";
    r.key = *key;
    auto resp = Send(r);
    if (!resp.ok()) return resp.status();
    if (resp->status != 204 && resp->status != 200)
      return HttpError(*resp, absl::StrCat("DELETE ", Name(*key)));
    return absl::OkStatus();
  }

 private:
  struct Page {
    std::vector<DirEntry> entries;
    std::string next_token;
    bool any = false;  // anything under the prefix, a "dir/" marker included
    int skipped = 0;   // entries left out: not valid names, or no valid size
  };

  static ObjectStat DirStat() {
    ObjectStat st;
    st.is_dir = true;
    st.mode = 0755;
    st.version = "dir";
    return st;
  }

  std::string Name(const std::string& key) const {
    return absl::StrCat("s3://", bucket_, "/", key);
  }

  absl::StatusOr<std::string> Key(const std::string& path) const {
    if (auto st = CheckRelativePath(path); !st.ok()) return st;
    if (prefix_.empty()) return path;
    return path.empty() ? prefix_ : absl::StrCat(prefix_, "/", path);
  }

  absl::StatusOr<Page> ListPage(const std::string& prefix, const std::string& delimiter,
                                int max_keys, const std::string& token) {
    S3Request r;
    r.query = {{"list-type", "2"}, {"prefix", prefix}, {"max-keys", std::to_string(max_keys)}};
    if (!delimiter.empty()) r.query.emplace_back("delimiter", delimiter);
    if (!token.empty()) r.query.emplace_back("continuation-token", token);
    auto resp = Send(r);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) return HttpError(*resp, absl::StrCat("list ", Name(prefix)));
    Page page;
    page.any = !XmlElements(resp->body, "Contents").empty() ||
               !XmlElements(resp->body, "CommonPrefixes").empty();
    for (absl::string_view c : XmlElements(resp->body, "Contents")) {
      std::string key = XmlText(c, "Key");
      if (key.size() <= prefix.size() || !absl::StartsWith(key, prefix))
        continue;  // the prefix itself
      DirEntry e;
      e.name = key.substr(prefix.size());
      if (!delimiter.empty() && e.name.find('/') != std::string::npos) continue;
      // The server's names become file names: "..", "." or an over-long one
      // must not reach the file tree (nor a size the store cannot hold).
      if ((!delimiter.empty() && !CheckEntryName(e.name).ok()) ||
          !ParseObjectSize(XmlText(c, "Size"), &e.stat.size)) {
        Skip(&page, key);
        continue;
      }
      e.stat.version = XmlText(c, "ETag");
      absl::Time t;
      std::string err;
      if (absl::ParseTime(absl::RFC3339_full, XmlText(c, "LastModified"), &t, &err)) {
        e.stat.mtime_ns = absl::ToUnixNanos(t);
      }
      page.entries.push_back(std::move(e));
    }
    for (absl::string_view p : XmlElements(resp->body, "CommonPrefixes")) {
      std::string sub = XmlText(p, "Prefix");
      // Only "<prefix><name>/" is a subdirectory of what was listed.
      if (sub.size() <= prefix.size() + 1 || !absl::StartsWith(sub, prefix) || sub.back() != '/') {
        Skip(&page, sub);
        continue;
      }
      DirEntry e;
      e.name = sub.substr(prefix.size(), sub.size() - prefix.size() - 1);
      if (!CheckEntryName(e.name).ok()) {
        Skip(&page, sub);
        continue;
      }
      e.stat = DirStat();
      page.entries.push_back(std::move(e));
    }
    if (XmlText(resp->body, "IsTruncated") == "true") {
      page.next_token = XmlText(resp->body, "NextContinuationToken");
      if (page.next_token.empty()) {
        return absl::InternalError(
            absl::StrCat("list ", Name(prefix), ": truncated without a continuation token"));
      }
    }
    return page;
  }

  // Leaves a listed key out of a page; the first one is logged, so an
  // operator learns why a listing is short without a flood of lines.
  void Skip(Page* page, const std::string& key) {
    ++page->skipped;
    if (!warned_skip_.exchange(true)) {
      spdlog::warn(
          "{}: leaving out listed key '{}' and any like it: not a valid file name, "
          "outside the listed prefix, or without a valid size",
          url_, absl::CHexEscape(key.substr(0, 300)));
    }
  }

  absl::Status PutWhole(const std::string& key, int fd, uint64_t size) {
    std::string body(size, '\0');
    if (size > 0 && ::pread(fd, body.data(), size, 0) != static_cast<ssize_t>(size)) {
      return ErrnoStatus(errno ? errno : EIO, absl::StrCat("read staged data for ", Name(key)));
    }
    S3Request r;
    r.method = "PUT";
    r.key = key;
    r.body = body;
    auto resp = SendWithRetry(r);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) return HttpError(*resp, absl::StrCat("PUT ", Name(key)));
    return absl::OkStatus();
  }

  absl::Status PutMultipart(const std::string& key, int fd, uint64_t size) {
    S3Request start;
    start.method = "POST";
    start.key = key;
    start.query = {{"uploads", ""}};
    auto resp = SendWithRetry(start);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200)
      return HttpError(*resp, absl::StrCat("start multipart upload of ", Name(key)));
    std::string upload_id = XmlText(resp->body, "UploadId");
    if (upload_id.empty()) return absl::InternalError(absl::StrCat("no UploadId for ", Name(key)));
    uint64_t part_size = std::max<uint64_t>(opts_.multipart_part_size, 5ull << 20);
    std::string complete = "<CompleteMultipartUpload>";
    std::string body;
    absl::Status st;
    int part = 1;
    for (uint64_t off = 0; off < size && st.ok(); off += part_size, ++part) {
      uint64_t len = std::min(part_size, size - off);
      body.resize(len);
      if (::pread(fd, body.data(), len, off) != static_cast<ssize_t>(len)) {
        st = ErrnoStatus(errno ? errno : EIO, absl::StrCat("read staged data for ", Name(key)));
        break;
      }
      S3Request r;
      r.method = "PUT";
      r.key = key;
      r.query = {{"partNumber", std::to_string(part)}, {"uploadId", upload_id}};
      r.body = body;
      auto pr = SendWithRetry(r);
      if (!pr.ok()) {
        st = pr.status();
      } else if (pr->status != 200 || pr->Header("etag").empty()) {
        st = HttpError(*pr, absl::StrFormat("upload part %d of %s", part, Name(key)));
      } else {
        absl::StrAppend(&complete, "<Part><PartNumber>", part, "</PartNumber><ETag>",
                        pr->Header("etag"), "</ETag></Part>");
      }
    }
    if (st.ok()) {
      complete += "</CompleteMultipartUpload>";
      S3Request r;
      r.method = "POST";
      r.key = key;
      r.query = {{"uploadId", upload_id}};
      r.headers = {{"content-type", "application/xml"}};
      r.body = complete;
      auto cr = SendWithRetry(r);
      if (!cr.ok()) {
        st = cr.status();
      } else if (cr->status != 200 || absl::StrContains(cr->body, "<Error>")) {
        // S3 may answer 200 and still fail the completion in the body.
        HttpResponse failed = *cr;
        if (failed.status == 200) failed.status = 500;
        st = HttpError(failed, absl::StrCat("complete multipart upload of ", Name(key)));
      } else {
        return absl::OkStatus();
      }
    }
    S3Request abort;
    abort.method = "DELETE";
    abort.key = key;
    abort.query = {{"uploadId", upload_id}};
    if (auto ar = Send(abort); !ar.ok() || (ar->status != 204 && ar->status != 200)) {
      spdlog::warn(
          "could not abort the multipart upload {} of {}; the bucket's lifecycle rules must clean "
          "it",
          upload_id, Name(key));
    }
    return st;
  }

  absl::StatusOr<HttpResponse> SendWithRetry(const S3Request& r) {
    absl::Duration backoff = absl::Milliseconds(100);
    for (int attempt = 1;; ++attempt) {
      auto resp = Send(r);
      absl::Status st =
          resp.ok() ? (resp->status >= 500 || resp->status == 429 ? HttpError(*resp, r.method)
                                                                  : absl::OkStatus())
                    : resp.status();
      if (st.ok() || !IsTransient(st) || attempt >= 5) return resp;
      absl::SleepFor(backoff);
      backoff *= 2;
    }
  }

  absl::StatusOr<HttpResponse> Send(const S3Request& r) {
    std::string host = virtual_host_ ? absl::StrCat(bucket_, ".", host_) : host_;
    std::string path =
        virtual_host_ ? absl::StrCat("/", UriEncode(r.key, false))
                      : absl::StrCat("/", bucket_, r.key.empty() && !r.query.empty() ? "" : "/",
                                     UriEncode(r.key, false));
    if (!virtual_host_ && r.key.empty()) path = absl::StrCat("/", bucket_);
    SigV4Request sr;
    sr.method = r.method;
    sr.host = host;
    sr.path = path;
    sr.query = r.query;
    sr.headers = r.headers;
    sr.payload_sha256 = r.body.empty() ? kEmptyPayloadSha256
                                       : Sha256Hex(std::string_view(r.body.data(), r.body.size()));
    auto sig = SignV4(sr, creds_, region_, "s3", absl::Now());
    if (!sig.ok()) return sig.status();
    HttpRequest req;
    req.method = r.method;
    std::string query = CanonicalQueryString(r.query);
    req.url = absl::StrCat(scheme_, "://", host, path, query.empty() ? "" : "?", query);
    req.headers = r.headers;
    for (auto& h : sig->headers) req.headers.push_back(h);
    req.body = r.body;
    req.into = r.into;
    req.timeout = opts_.request_timeout;
    // A signed request (with a session token) must not be replayed to
    // wherever a Location header points; S3 itself never redirects a
    // correctly addressed request.
    req.follow_redirects = false;
    return http_->Do(req);
  }

  std::string url_, bucket_, prefix_, scheme_, host_;
  bool virtual_host_;
  std::string region_;
  AwsCredentials creds_;
  OriginOptions opts_;
  std::shared_ptr<HttpClient> http_;
  std::atomic<bool> warned_skip_{false};
};

// "scheme://host[:port]" with scheme http or https and nothing else (a
// trailing '/' aside); false otherwise.
bool ParseEndpoint(absl::string_view endpoint, std::string* scheme, std::string* host) {
  size_t sep = endpoint.find("://");
  if (sep == absl::string_view::npos) return false;
  absl::string_view s = endpoint.substr(0, sep), h = endpoint.substr(sep + 3);
  absl::ConsumeSuffix(&h, "/");
  if ((s != "http" && s != "https") || !IsHostAndPort(h)) return false;
  *scheme = std::string(s);
  *host = std::string(h);
  return true;
}

bool IsRegion(absl::string_view r) {
  return !r.empty() && r.size() <= 32 &&
         r.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789-") == absl::string_view::npos;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Origin>> NewS3Origin(const std::string& url,
                                                    const OriginOptions& options,
                                                    std::shared_ptr<HttpClient> http) {
  // s3://bucket[/prefix][?endpoint=...&region=...&addressing=path|virtual]
  absl::string_view rest = absl::string_view(url).substr(5);
  OriginOptions o = options;
  size_t q = rest.find('?');
  if (q != absl::string_view::npos) {
    for (absl::string_view kv : absl::StrSplit(rest.substr(q + 1), '&', absl::SkipEmpty())) {
      std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      std::string v = p.size() > 1 ? p[1] : "";
      if (p[0] == "endpoint")
        o.s3_endpoint = v;
      else if (p[0] == "region")
        o.s3_region = v;
      else if (p[0] == "addressing")
        o.s3_addressing = v;
      else
        return absl::InvalidArgumentError(absl::StrCat("unknown parameter '", p[0], "' in ", url));
    }
    rest = rest.substr(0, q);
  }
  std::vector<std::string> parts = absl::StrSplit(rest, absl::MaxSplits('/', 1));
  std::string bucket = parts[0];
  std::string prefix = parts.size() > 1 ? parts[1] : "";
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  if (bucket.size() < 3 || bucket.size() > 63 ||
      bucket.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789.-") != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("'", bucket, "' in ", url, " is not a valid bucket name"));
  }
  if (auto st = CheckRelativePath(prefix); !st.ok()) return st;
  std::string region = !o.s3_region.empty()         ? o.s3_region
                       : !Env("AWS_REGION").empty() ? Env("AWS_REGION")
                                                    : "us-east-1";
  // The region becomes part of the default host name.
  if (!IsRegion(region)) {
    return absl::InvalidArgumentError(absl::StrCat("region '", absl::CHexEscape(region),
                                                   "' must be 1 to 32 of a-z, 0-9 and '-'"));
  }
  std::string endpoint = !o.s3_endpoint.empty()
                             ? o.s3_endpoint
                             : absl::StrCat("https://s3.", region, ".amazonaws.com");
  std::string scheme, host;
  if (!ParseEndpoint(endpoint, &scheme, &host)) {
    return absl::InvalidArgumentError(
        absl::StrCat("endpoint '", absl::CHexEscape(endpoint),
                     "' must be http:// or https:// and a host[:port], nothing more"));
  }
  bool virtual_host;
  if (o.s3_addressing.empty()) {
    virtual_host = absl::EndsWith(host, "amazonaws.com") && bucket.find('.') == std::string::npos;
  } else if (o.s3_addressing == "virtual" || o.s3_addressing == "path") {
    virtual_host = o.s3_addressing == "virtual";
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("addressing must be path or virtual, not '", o.s3_addressing, "'"));
  }
  auto creds = FindCredentials(o);
  if (!creds.ok()) return creds.status();
  // The URL names the origin in chunk keys and logs: a custom endpoint is
  // part of it, as the scheme and host actually reached, so two stores'
  // "same" bucket never share chunks. Without one the host is AWS's for the
  // region (checked above), where bucket names are global: the same bucket
  // whichever region's endpoint answers.
  std::string canonical = absl::StrCat("s3://", bucket, prefix.empty() ? "" : "/", prefix);
  if (!o.s3_endpoint.empty()) absl::StrAppend(&canonical, "?endpoint=", scheme, "://", host);
  return std::make_unique<S3Origin>(canonical, bucket, prefix, scheme, host, virtual_host, region,
                                    std::move(*creds), o, std::move(http));
}

}  // namespace strata::origin
