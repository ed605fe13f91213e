// libcurl easy handles are kept in a pool: a handle keeps its connections
// open between requests, so a thread that takes one back reuses them.
#include "cache/http_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

namespace strata::cache {

std::string HttpResponse::Header(absl::string_view name) const {
  for (auto it = headers.rbegin(); it != headers.rend(); ++it) {
    if (it->first == name) return it->second;
  }
  return "";
}

absl::Status HttpError(const HttpResponse& r, absl::string_view what) {
  std::string body = r.body.substr(0, 300);
  std::string msg = absl::StrCat(what, ": HTTP ", r.status, body.empty() ? "" : ": ", body);
  if (r.status == 404) return absl::NotFoundError(msg);
  if (r.status == 401 || r.status == 403) return absl::PermissionDeniedError(msg);
  if (r.status == 412) return absl::FailedPreconditionError(msg);
  if (r.status == 416) return absl::OutOfRangeError(msg);
  if (r.status == 429) return absl::ResourceExhaustedError(msg);
  if (r.status >= 500) return absl::UnavailableError(msg);
  return absl::InvalidArgumentError(msg);
}

struct HttpClient::Pool {
  absl::Mutex mu;
  std::vector<CURL*> free ABSL_GUARDED_BY(mu);
  ~Pool() {
    absl::MutexLock l(&mu);
    for (CURL* c : free) curl_easy_cleanup(c);
  }
  CURL* Take() {
    {
      absl::MutexLock l(&mu);
      if (!free.empty()) {
        CURL* c = free.back();
        free.pop_back();
        return c;
      }
    }
    return curl_easy_init();
  }
  void Give(CURL* c) {
    absl::MutexLock l(&mu);
    if (free.size() < 64) {
      free.push_back(c);
      return;
    }
    curl_easy_cleanup(c);
  }
};

namespace {

struct Transfer {
  HttpResponse* resp;
  absl::Span<char> into;
  bool overflow = false;
  long status = 0;  // of the response being received (from its status line)
};

constexpr size_t kMaxErrorBody = 64 << 10;

size_t OnBody(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  size_t len = size * n;
  bool success = t->status >= 200 && t->status < 300;
  if (!success) {
    // An error page goes to `body` (bounded), never into the caller's buffer.
    size_t keep = std::min(len, kMaxErrorBody - std::min(kMaxErrorBody, t->resp->body.size()));
    t->resp->body.append(data, keep);
    return len;
  }
  if (!t->into.empty() || t->into.data() != nullptr) {
    if (t->resp->body_bytes + len > t->into.size()) {
      t->overflow = true;
      return 0;  // aborts the transfer
    }
    std::memcpy(t->into.data() + t->resp->body_bytes, data, len);
  } else {
    t->resp->body.append(data, len);
  }
  t->resp->body_bytes += len;
  return len;
}

size_t OnHeader(char* data, size_t size, size_t n, void* user) {
  auto* t = static_cast<Transfer*>(user);
  absl::string_view line(data, size * n);
  if (absl::StartsWith(line, "HTTP/")) {
    t->resp->headers.clear();  // a new response (after a redirect or 100)
    size_t sp = line.find(' ');
    long code = 0;
    if (sp != absl::string_view::npos) absl::SimpleAtoi(line.substr(sp + 1, 3), &code);
    t->status = code;
    return size * n;
  }
  size_t colon = line.find(':');
  if (colon != absl::string_view::npos) {
    std::string name = absl::AsciiStrToLower(line.substr(0, colon));
    std::string value(absl::StripAsciiWhitespace(line.substr(colon + 1)));
    t->resp->headers.emplace_back(std::move(name), std::move(value));
  }
  return size * n;
}

}  // namespace

HttpClient::HttpClient(HttpClientOptions options)
    : options_(std::move(options)), pool_(std::make_unique<Pool>()) {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

HttpClient::~HttpClient() = default;

absl::StatusOr<HttpResponse> HttpClient::Do(const HttpRequest& req) {
  CURL* c = pool_->Take();
  if (c == nullptr) return absl::ResourceExhaustedError("cannot create an HTTP handle");
  curl_easy_reset(c);
  HttpResponse resp;
  Transfer t{&resp, req.into};
  curl_slist* hdrs = nullptr;
  for (const auto& [k, v] : req.headers) {
    hdrs = curl_slist_append(hdrs, absl::StrCat(k, ": ", v).c_str());
  }
  // libcurl adds "Expect: 100-continue" to large uploads; S3 and most
  // servers do not need the extra round trip.
  hdrs = curl_slist_append(hdrs, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnBody);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &t);
  curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, OnHeader);
  curl_easy_setopt(c, CURLOPT_HEADERDATA, &t);
  curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, req.follow_redirects ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(req.timeout)));
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                   static_cast<long>(absl::ToInt64Milliseconds(options_.connect_timeout)));
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, options_.verify_tls ? 1L : 0L);
  curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, options_.verify_tls ? 2L : 0L);
  if (!options_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, options_.ca_file.c_str());
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_slist* connect_to = nullptr;
  for (const auto& ct : options_.connect_to) connect_to = curl_slist_append(connect_to, ct.c_str());
  if (connect_to) curl_easy_setopt(c, CURLOPT_CONNECT_TO, connect_to);
  curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
  if (req.method == "HEAD") {
    curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
  } else if (req.method == "GET") {
    curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
  } else {
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    if (req.method == "PUT" || req.method == "POST" || !req.body.empty()) {
      curl_easy_setopt(c, CURLOPT_POSTFIELDS, req.body.data());
      curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    }
  }
  CURLcode rc = curl_easy_perform(c);
  curl_slist_free_all(hdrs);
  curl_slist_free_all(connect_to);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp.status);
  char* eff = nullptr;
  if (curl_easy_getinfo(c, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff)
    resp.effective_url = eff;
  if (rc != CURLE_OK) {
    curl_easy_cleanup(c);  // a failed transfer may leave the connection unusable
    std::string msg = absl::StrCat(req.method, " ", req.url, ": ", curl_easy_strerror(rc));
    if (t.overflow) {
      return absl::DataLossError(absl::StrCat(req.method, " ", req.url,
                                              ": the body is longer than the ", req.into.size(),
                                              " bytes asked for"));
    }
    if (rc == CURLE_OPERATION_TIMEDOUT) return absl::DeadlineExceededError(msg);
    if (rc == CURLE_PARTIAL_FILE)
      return absl::DataLossError(absl::StrCat(msg, " (truncated body)"));
    if (rc == CURLE_PEER_FAILED_VERIFICATION || rc == CURLE_SSL_CACERT_BADFILE) {
      return absl::PermissionDeniedError(msg);
    }
    return absl::UnavailableError(msg);
  }
  pool_->Give(c);
  return resp;
}

}  // namespace strata::cache
