// http(s):// origin: ranged GETs on a URL (a static server, presigned object
// URLs, model hubs). The version is the strong ETag when the server gives
// one (sent back as If-Match, so a changed object fails instead of mixing),
// else Last-Modified and size.
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "origin/origin_impl.h"
#include "origin/sigv4.h"

namespace strata::origin {
namespace {

// Parses "bytes FIRST-LAST/TOTAL".
bool ParseContentRange(absl::string_view v, uint64_t* first, uint64_t* last, uint64_t* total) {
  if (!absl::ConsumePrefix(&v, "bytes ")) return false;
  std::vector<absl::string_view> a = absl::StrSplit(v, absl::MaxSplits('/', 1));
  if (a.size() != 2) return false;
  std::vector<absl::string_view> b = absl::StrSplit(a[0], absl::MaxSplits('-', 1));
  return b.size() == 2 && absl::SimpleAtoi(b[0], first) && absl::SimpleAtoi(b[1], last) &&
         (a[1] == "*" ? (*total = 0, true) : absl::SimpleAtoi(a[1], total));
}

class HttpOrigin final : public Origin {
 public:
  HttpOrigin(std::string url, std::shared_ptr<HttpClient> http)
      : url_(std::move(url)), http_(std::move(http)) {}

  const std::string& url() const override { return url_; }

  // A strong ETag or a Last-Modified is the server's word for every client;
  // with neither, only the size is known, which says nothing about content.
  bool SharedVersion(const ObjectStat& stat) const override {
    return !stat.is_dir && !stat.version.empty() && !stat.version.starts_with("lm::");
  }

  absl::StatusOr<ObjectStat> Stat(const std::string& path) override {
    auto target = Target(path);
    if (!target.ok()) return target.status();
    HttpRequest req;
    req.method = "HEAD";
    req.url = *target;
    auto resp = http_->Do(req);
    if (!resp.ok()) return resp.status();
    if (resp->status == 405 || resp->status == 501) {
      // No HEAD: ask for one byte and read the total from Content-Range.
      char one;
      req.method = "GET";
      req.headers = {{"Range", "bytes=0-0"}};
      req.into = absl::MakeSpan(&one, 1);
      resp = http_->Do(req);
      if (!resp.ok()) return resp.status();
    }
    if (path.empty() && url_.back() == '/') {
      // A URL ending in "/" is a prefix (a volume's), which plain HTTP
      // cannot stat: whatever the server says of it (a listing, 403, 404),
      // it answered, and the names beneath are asked for one by one.
      ObjectStat dir;
      dir.is_dir = true;
      dir.mode = 0555;
      dir.version = "dir";
      return dir;
    }
    if (resp->status != 200 && resp->status != 206)
      return HttpError(*resp, absl::StrCat("stat ", *target));
    ObjectStat st;
    uint64_t first, last, total;
    if (resp->status == 206 &&
        ParseContentRange(resp->Header("content-range"), &first, &last, &total)) {
      st.size = total;
    } else if (!ParseObjectSize(resp->Header("content-length"), &st.size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          *target, " has no valid Content-Length (at most 2^50); it cannot be read in ranges"));
    }
    if (st.size > kMaxObjectSize) {
      return absl::InvalidArgumentError(
          absl::StrCat(*target, ": its size ", st.size, " is larger than 2^50 bytes"));
    }
    std::string etag = resp->Header("etag");
    std::string lm = resp->Header("last-modified");
    if (IsStrongEtag(etag)) {
      st.version = etag;
    } else {
      st.version = absl::StrCat("lm:", lm, ":", st.size, etag.empty() ? "" : ":", etag);
    }
    absl::Time t;
    std::string err;
    if (!lm.empty() && absl::ParseTime("%a, %d %b %Y %H:%M:%S GMT", lm, &t, &err)) {
      st.mtime_ns = absl::ToUnixNanos(t);
    }
    st.mode = 0444;
    return st;
  }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    return absl::UnimplementedError(
        absl::StrCat("cannot list ", url_, "/", dir, ": plain HTTP has no directory listing"));
  }

  absl::Status ReadInRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                           absl::Span<char> out) override {
    auto target = Target(path);
    if (!target.ok()) return target.status();
    HttpRequest req;
    req.url = *target;
    uint64_t last = offset + out.size() - 1;
    req.headers = {{"Range", absl::StrFormat("bytes=%u-%u", offset, last)}};
    if (IsStrongEtag(stat.version)) req.headers.emplace_back("If-Match", stat.version);
    req.into = out;
    auto resp = http_->Do(req);
    if (!resp.ok()) return resp.status();
    return CheckRangedGet(*resp, offset, out.size(), stat,
                          absl::StrFormat("GET %s [%u, +%u)", *target, offset, out.size()));
  }

 private:
  absl::StatusOr<std::string> Target(const std::string& path) const {
    if (auto st = CheckRelativePath(path); !st.ok()) return st;
    if (path.empty()) return url_;
    return absl::StrCat(url_, url_.back() == '/' ? "" : "/",
                        UriEncode(path, /*encode_slash=*/false));
  }

  std::string url_;
  std::shared_ptr<HttpClient> http_;
};

}  // namespace

bool IsStrongEtag(absl::string_view v) { return v.size() >= 2 && v.front() == '"'; }

absl::Status CheckRangedGet(const HttpResponse& resp, uint64_t offset, size_t len,
                            const ObjectStat& stat, const std::string& what) {
  uint64_t last = offset + len - 1;
  if (resp.status == 200) {
    // The server ignored Range: acceptable only when the whole object was asked.
    if (offset != 0 || len != stat.size) {
      return absl::UnimplementedError(absl::StrCat(what, ": the server ignores Range requests"));
    }
  } else if (resp.status == 206) {
    uint64_t f, l, total;
    if (!ParseContentRange(resp.Header("content-range"), &f, &l, &total) || f != offset ||
        l != last) {
      return absl::DataLossError(
          absl::StrCat(what, ": unexpected Content-Range '", resp.Header("content-range"), "'"));
    }
    if (total != 0 && total != stat.size) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s: the object is now %u bytes, was %u", what, total, stat.size));
    }
  } else {
    return HttpError(resp, what);
  }
  std::string etag = resp.Header("etag");
  if (IsStrongEtag(stat.version) && IsStrongEtag(etag) && etag != stat.version) {
    return absl::FailedPreconditionError(
        absl::StrCat(what, ": the object changed (ETag ", stat.version, " is now ", etag, ")"));
  }
  if (resp.body_bytes != len) {
    return absl::DataLossError(
        absl::StrFormat("%s: truncated body (%u of %u bytes)", what, resp.body_bytes, len));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Origin>> NewHttpOrigin(const std::string& url,
                                                      std::shared_ptr<HttpClient> http) {
  return std::make_unique<HttpOrigin>(url, std::move(http));
}

}  // namespace strata::origin
