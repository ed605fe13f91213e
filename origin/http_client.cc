// libcurl easy handles are kept in a pool: a handle keeps its connections
// open between requests, so a thread that takes one back reuses them.
#include "origin/http_client.h"

#include <arpa/inet.h>
#include <curl/curl.h>

#include <algorithm>
#include <cstring>
#include <mutex>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"

namespace strata::origin {

std::string HttpResponse::Header(absl::string_view name) const {
  for (auto it = headers.rbegin(); it != headers.rend(); ++it) {
    if (it->first == name) return it->second;
  }
  return "";
}

absl::Status HttpError(const HttpResponse& r, absl::string_view what) {
  // Without an HTTP status line the "body" is not a server's error page
  // (it could be any bytes a non-HTTP URL led to): never echo it.
  std::string body = r.status >= 100 ? r.body.substr(0, 300) : "";
  std::string msg = absl::StrCat(what, ": HTTP ", r.status, body.empty() ? "" : ": ", body);
  if (r.status == 404) return absl::NotFoundError(msg);
  if (r.status == 401 || r.status == 403) return absl::PermissionDeniedError(msg);
  if (r.status == 412) return absl::FailedPreconditionError(msg);
  if (r.status == 416) return absl::OutOfRangeError(msg);
  if (r.status == 429) return absl::ResourceExhaustedError(msg);
  if (r.status >= 500) return absl::UnavailableError(msg);
  return absl::InvalidArgumentError(msg);
}

bool ParseObjectSize(absl::string_view value, uint64_t* size) {
  // absl::SimpleAtoi would take a sign and whitespace; 16 digits hold 2^50.
  if (value.empty() || value.size() > 16 ||
      value.find_first_not_of("0123456789") != absl::string_view::npos) {
    return false;
  }
  uint64_t v = 0;
  if (!absl::SimpleAtoi(value, &v) || v > kMaxObjectSize) return false;
  *size = v;
  return true;
}

namespace {

bool IsDnsName(absl::string_view h) {
  if (h.empty() || h.size() > 253) return false;
  for (absl::string_view label : absl::StrSplit(h, '.')) {
    if (label.empty() || label.size() > 63 || label.front() == '-' || label.back() == '-') {
      return false;
    }
    for (char c : label) {
      if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '-') return false;
    }
  }
  return true;
}

bool IsPort(absl::string_view p) {
  uint32_t port = 0;
  return !p.empty() && p.size() <= 5 &&
         p.find_first_not_of("0123456789") == absl::string_view::npos &&
         absl::SimpleAtoi(p, &port) && port >= 1 && port <= 65535;
}

}  // namespace

bool IsHostAndPort(absl::string_view a) {
  absl::string_view host = a, port;
  if (absl::StartsWith(a, "[")) {
    size_t close = a.find(']');
    if (close == absl::string_view::npos) return false;
    std::string inner(a.substr(1, close - 1));
    in6_addr addr;
    if (::inet_pton(AF_INET6, inner.c_str(), &addr) != 1) return false;
    absl::string_view rest = a.substr(close + 1);
    if (rest.empty()) return true;
    return absl::ConsumePrefix(&rest, ":") && IsPort(rest);
  }
  size_t colon = a.find(':');
  if (colon != absl::string_view::npos) {
    host = a.substr(0, colon);
    port = a.substr(colon + 1);
    if (!IsPort(port)) return false;
  }
  return IsDnsName(host);
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
  size_t max_body;
  bool overflow = false;
  bool too_big = false;
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
    if (t->resp->body_bytes + len > t->max_body) {
      t->too_big = true;
      return 0;  // aborts the transfer
    }
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
  Transfer t{&resp, req.into, req.max_body};
  curl_slist* hdrs = nullptr;
  for (const auto& [k, v] : req.headers) {
    hdrs = curl_slist_append(hdrs, absl::StrCat(k, ": ", v).c_str());
  }
  // libcurl adds "Expect: 100-continue" to large uploads; S3 and most
  // servers do not need the extra round trip.
  hdrs = curl_slist_append(hdrs, "Expect:");
  curl_easy_setopt(c, CURLOPT_URL, req.url.c_str());
  // URLs here may come from servers (token realms, redirects, endpoints):
  // libcurl would otherwise also read file://, dict://, gopher:// and more.
  if (curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
      curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK) {
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    return absl::InternalError("libcurl cannot restrict protocols (it needs 7.85 or later)");
  }
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
    if (t.too_big) {
      return absl::ResourceExhaustedError(absl::StrCat(
          req.method, " ", req.url, ": the answer is longer than ", req.max_body, " bytes"));
    }
    if (rc == CURLE_UNSUPPORTED_PROTOCOL) {
      return absl::InvalidArgumentError(
          absl::StrCat(msg, " (only http:// and https:// are fetched, redirects included)"));
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

}  // namespace strata::origin
