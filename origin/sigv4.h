// AWS Signature Version 4 request signing, for the S3 origin (and any other
// AWS-style endpoint: MinIO, Ceph RGW, R2). Pure computation, no I/O: the caller
// describes the request, gets back the headers to add, and sends it unchanged.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "base/digest.h"
#include "base/uri.h"

namespace strata::origin {

// The payload hash S3 accepts when the body is not hashed (fine over TLS).
inline constexpr char kUnsignedPayload[] = "UNSIGNED-PAYLOAD";
// Sha256Hex(""): the payload hash of every GET and HEAD.
inline constexpr char kEmptyPayloadSha256[] =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

struct AwsCredentials {
  std::string access_key_id;
  std::string secret_access_key;
  std::string session_token;  // empty unless the keys are temporary (STS, IRSA)
};

struct SigV4Request {
  std::string method;  // "GET"
  // The Host header exactly as it will be sent, port included when the client
  // sends one ("127.0.0.1:9000"); the server signs what it receives.
  std::string host;
  // The path as sent on the wire. With double_encode_path false (S3) it is
  // signed verbatim, so it must already be percent-encoded the way S3 expects:
  // build it as "/" + UriEncode(key, /*encode_slash=*/false).
  std::string path;
  // Every AWS service except S3 normalizes the path (drops "." and ".."
  // segments and empty segments) and then percent-encodes it a second time
  // before signing. S3 does neither, so an object key like "a/../b" or "a//b"
  // keeps its meaning. Set this for non-S3 services only.
  bool double_encode_path = false;
  // Unencoded names and values, in any order; the signer encodes and sorts
  // them. Send CanonicalQueryString(query) as the URL's query so what is sent
  // is byte-for-byte what was signed. A value-less parameter ("?lifecycle")
  // is {"lifecycle", ""}.
  std::vector<std::pair<std::string, std::string>> query;
  // Extra headers to sign and send (range, content-type, x-amz-*). Repeated
  // names are signed as one comma-joined value, in the order given. Host,
  // Authorization, x-amz-date, x-amz-security-token and (for S3)
  // x-amz-content-sha256 come from the signer and are rejected here.
  std::vector<std::pair<std::string, std::string>> headers;
  // Lowercase hex SHA-256 of the body, or kUnsignedPayload.
  std::string payload_sha256;
};

struct SigV4Signature {
  // Add these to the request: Authorization, x-amz-date, x-amz-content-sha256
  // (service "s3" only) and x-amz-security-token (when there is a token).
  std::vector<std::pair<std::string, std::string>> headers;
  // The intermediate steps, for tests and for debugging a SignatureDoesNotMatch
  // (S3 returns its own canonical request in the error body).
  std::string canonical_request;
  std::string string_to_sign;
  std::string signature;  // lowercase hex
};

// Signs `req` for `region`/`service` at `now`. InvalidArgument when the
// request could not be sent as described (a header that is not an HTTP token,
// a CR or LF in a value, an S3 path that is not percent-encoded, a malformed
// payload hash) or would be signed twice over (a signer-owned header).
absl::StatusOr<SigV4Signature> SignV4(const SigV4Request& req, const AwsCredentials& creds,
                                      std::string_view region, std::string_view service,
                                      absl::Time now);

// The building blocks SignV4 uses, exposed so tests can check each step
// against AWS's published vectors and the S3 origin can build matching URLs.

// The CanonicalURI line: `path` verbatim (S3), or normalized and encoded again.
std::string CanonicalUri(std::string_view path, bool double_encode_path);

// The CanonicalQueryString line: names and values encoded, sorted by name and
// then value, joined as a=1&b=2. Also a valid query string to send.
std::string CanonicalQueryString(const std::vector<std::pair<std::string, std::string>>& query);

struct CanonicalRequest {
  std::string text;
  std::string signed_headers;  // "host;range;x-amz-date"
};

// The canonical request over exactly `headers` (which must include host and
// whatever date header the signature relies on): names lowercased, values
// trimmed with inner runs of whitespace collapsed, sorted by name.
CanonicalRequest BuildCanonicalRequest(
    std::string_view method, std::string_view canonical_uri, std::string_view canonical_query,
    const std::vector<std::pair<std::string, std::string>>& headers,
    std::string_view payload_sha256);

// "AWS4-HMAC-SHA256\n<amz-date>\n<scope>\n<hex sha256 of canonical request>".
std::string StringToSign(absl::Time now, std::string_view region, std::string_view service,
                         std::string_view canonical_request);

// The raw 32-byte key the string to sign is HMACed with; it depends only on
// the secret, the UTC day, the region and the service, so it could be cached
// per day.
std::string SigningKey(std::string_view secret_access_key, absl::Time now, std::string_view region,
                       std::string_view service);

}  // namespace strata::origin
