// A small HTTP/1.1 client on libcurl for the origins: connection reuse
// (keep-alive) across requests and threads, TLS verification on by default,
// bodies streamed straight into the caller's buffer for ranged reads.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace strata::origin {

using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  std::string method = "GET";
  std::string url;
  HttpHeaders headers;
  absl::string_view body;  // sent for PUT/POST
  // When set, the response body is written here (it must fit; a longer body
  // is an error) instead of into HttpResponse::body.
  absl::Span<char> into;
  // Without `into`, a success body longer than this is ResourceExhausted:
  // listings, manifests and tokens come from servers we do not trust, and
  // none of them is legitimately this large.
  size_t max_body = 16 << 20;
  bool follow_redirects = true;
  absl::Duration timeout = absl::Seconds(60);
};

struct HttpResponse {
  long status = 0;
  HttpHeaders headers;  // names lowercased, in arrival order (last response only)
  std::string body;     // unless the request had `into`
  size_t body_bytes = 0;
  std::string effective_url;  // after redirects

  // The last value of a header, or "" when absent. `name` is lowercase.
  std::string Header(absl::string_view name) const;
};

struct HttpClientOptions {
  std::string ca_file;  // extra CA bundle; empty: the system's
  bool verify_tls = true;
  absl::Duration connect_timeout = absl::Seconds(10);
  std::vector<std::string> connect_to;  // CURLOPT_CONNECT_TO entries
};

class HttpClient {
 public:
  explicit HttpClient(HttpClientOptions options = {});
  ~HttpClient();
  HttpClient(const HttpClient&) = delete;
  HttpClient& operator=(const HttpClient&) = delete;

  // A transport failure (refused, reset, timeout, TLS) is Unavailable or
  // DeadlineExceeded; any HTTP status is a response for the caller to judge.
  // Only http:// and https:// URLs are fetched, redirects included (a URL
  // from a server, like a token realm, must not reach file:// or others):
  // another scheme is InvalidArgument.
  absl::StatusOr<HttpResponse> Do(const HttpRequest& request);

 private:
  struct Pool;
  HttpClientOptions options_;
  std::unique_ptr<Pool> pool_;
};

// Maps an unexpected HTTP status to a status code and a message naming `what`:
// 404 NotFound, 401/403 PermissionDenied, 412 FailedPrecondition,
// 416 OutOfRange, 429 ResourceExhausted, 5xx Unavailable.
absl::Status HttpError(const HttpResponse& response, absl::string_view what);

// The largest object size an origin reports: 1 PiB. Sizes come from
// servers, and the chunk store's arithmetic must never see one near 2^64.
inline constexpr uint64_t kMaxObjectSize = uint64_t{1} << 50;

// Parses a Content-Length or a listed size: decimal digits only, at most
// kMaxObjectSize; false otherwise.
bool ParseObjectSize(absl::string_view value, uint64_t* size);

// True for "host[:port]" as it may follow "scheme://" in a URL we build: a
// DNS name, an IPv4 address or a bracketed IPv6 address, and a port of 1 to
// 65535. Nothing else (no userinfo, path, query, fragment or escapes), so a
// name from outside cannot make the URL reach another host than it says.
bool IsHostAndPort(absl::string_view authority);

}  // namespace strata::origin
