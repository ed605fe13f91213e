// AWS Signature Version 4, following the canonical-request rules of AWS's
// published test suite and the S3 exceptions to them. There is no state
// between signatures.
#include "origin/sigv4.h"

#include <algorithm>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/digest.h"
#include "base/uri.h"

namespace strata::origin {
namespace {

using Pairs = std::vector<std::pair<std::string, std::string>>;

constexpr char kAlgorithm[] = "AWS4-HMAC-SHA256";

// Debian's abseil is built with its own absl::string_view
// (ABSL_OPTION_USE_STD_STRING_VIEW 0), which does not convert from
// std::string_view, so StrCat and friends need this bridge.
absl::string_view AV(std::string_view s) { return absl::string_view(s.data(), s.size()); }

bool IsHexDigit(char c) { return absl::ascii_isxdigit(static_cast<unsigned char>(c)); }

// RFC 9110 token characters: what a header name may be made of.
bool IsTokenChar(unsigned char c) {
  return absl::ascii_isalnum(c) ||
         std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
}

bool IsLowerHex64(std::string_view s) {
  return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

// AWS's "Trimall": leading and trailing whitespace dropped, each inner run of
// it turned into one space. The SDKs treat any whitespace this way, quoted or
// not ("a   b" inside quotes still becomes "a b").
std::string TrimAll(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  bool pending_space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out.push_back(' ');
    pending_space = false;
    out.push_back(c);
  }
  return out;
}

// Removes "." and ".." segments and empty segments the way the AWS SDKs do for
// non-S3 services, keeping a trailing slash.
std::string NormalizePath(std::string_view path) {
  std::vector<absl::string_view> segments;
  size_t start = 0;
  while (start <= path.size()) {
    size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    std::string_view seg = path.substr(start, end - start);
    if (seg == "..") {
      if (!segments.empty()) segments.pop_back();
    } else if (!seg.empty() && seg != ".") {
      segments.push_back(AV(seg));
    }
    start = end + 1;
  }
  std::string out = absl::StrCat("/", absl::StrJoin(segments, "/"));
  if (!segments.empty() && path.back() == '/') out.push_back('/');
  return out;
}

std::string AmzDate(absl::Time now) {
  return absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone());
}

std::string CredentialScope(absl::Time now, std::string_view region, std::string_view service) {
  return absl::StrCat(AmzDate(now).substr(0, 8), "/", AV(region), "/", AV(service),
                      "/aws4_request");
}

// An S3 path is signed as sent, so it must already be in UriEncode form: any
// byte that S3 would encode (a space, '$', '+', UTF-8) makes S3 compute a
// different canonical URI and answer SignatureDoesNotMatch.
absl::Status CheckS3Path(std::string_view path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(
        absl::StrCat("SigV4: path \"", AV(path), "\" must start with '/'"));
  }
  for (size_t i = 0; i < path.size(); ++i) {
    const unsigned char c = path[i];
    if (IsUnreserved(c) || c == '/') continue;
    if (c == '%' && i + 2 < path.size() && IsHexDigit(path[i + 1]) && IsHexDigit(path[i + 2])) {
      i += 2;
      continue;
    }
    static constexpr char kHexUpper[] = "0123456789ABCDEF";
    const char hex[] = {kHexUpper[c >> 4], kHexUpper[c & 0xf], '\0'};
    return absl::InvalidArgumentError(
        absl::StrCat("SigV4: S3 path \"", AV(path), "\" has byte 0x", hex, " at offset ", i,
                     " that is not percent-encoded; build the path with UriEncode(key, false)"));
  }
  return absl::OkStatus();
}

absl::Status CheckRequest(const SigV4Request& req, const AwsCredentials& creds,
                          std::string_view region, std::string_view service, absl::Time now,
                          bool is_s3) {
  auto invalid = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("SigV4: ", parts...));
  };
  if (creds.access_key_id.empty() || creds.secret_access_key.empty()) {
    return invalid("the access key id and the secret access key must both be set");
  }
  for (std::string_view part : {std::string_view(creds.access_key_id), region, service}) {
    // These end up '/'-separated in the credential scope.
    if (part.empty() || part.find_first_of("/, \t\r\n") != std::string_view::npos) {
      return invalid(
          "access key id, region and service must be non-empty with no '/', ',' or "
          "whitespace; got \"",
          AV(part), "\"");
    }
  }
  if (now == absl::InfiniteFuture() || now == absl::InfinitePast() || AmzDate(now).size() != 16) {
    return invalid("signing time ", absl::FormatTime(now), " has no YYYYMMDDTHHMMSSZ form");
  }
  if (req.method.empty() || !std::all_of(req.method.begin(), req.method.end(), IsTokenChar)) {
    return invalid("method \"", req.method, "\" is not an HTTP token");
  }
  // '#', '?', '@', a backslash or '%' would make the URL built from the host
  // reach another host than the one signed for.
  if (req.host.empty() || req.host.find_first_of(" \t\r\n/#?@\\%") != std::string::npos) {
    return invalid("host \"", req.host, "\" must be a non-empty host[:port]");
  }
  if (!IsLowerHex64(req.payload_sha256) && req.payload_sha256 != kUnsignedPayload) {
    return invalid("payload hash \"", req.payload_sha256,
                   "\" is neither 64 lowercase hex digits nor UNSIGNED-PAYLOAD");
  }
  if (req.double_encode_path) {
    for (unsigned char c : req.path) {
      if (c < 0x20 || c == 0x7f) return invalid("path has a control character");
    }
  } else if (absl::Status s = CheckS3Path(req.path); !s.ok()) {
    return s;
  }
  for (const auto& [name, value] : req.headers) {
    if (name.empty() || !std::all_of(name.begin(), name.end(), IsTokenChar)) {
      return invalid("header name \"", name, "\" is not an HTTP token");
    }
    if (value.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      return invalid("header ", name, " has a CR, LF or NUL in its value");
    }
    const std::string lower = absl::AsciiStrToLower(name);
    if (lower == "host" || lower == "x-amz-date" || lower == "authorization" ||
        lower == "x-amz-security-token" || (is_s3 && lower == "x-amz-content-sha256")) {
      return invalid("header ", name, " is set by the signer; do not pass it");
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string CanonicalUri(std::string_view path, bool double_encode_path) {
  if (path.empty()) return "/";
  if (!double_encode_path) return std::string(path);
  return UriEncode(NormalizePath(path), /*encode_slash=*/false);
}

std::string CanonicalQueryString(const Pairs& query) {
  Pairs encoded;
  encoded.reserve(query.size());
  for (const auto& [name, value] : query) {
    encoded.emplace_back(UriEncode(name, true), UriEncode(value, true));
  }
  // Sorting happens after encoding: AWS compares the encoded bytes, which is
  // not the order of the raw ones once a name has a reserved or non-ASCII byte.
  std::sort(encoded.begin(), encoded.end());
  return absl::StrJoin(encoded, "&", absl::PairFormatter("="));
}

CanonicalRequest BuildCanonicalRequest(std::string_view method, std::string_view canonical_uri,
                                       std::string_view canonical_query, const Pairs& headers,
                                       std::string_view payload_sha256) {
  Pairs canonical;
  canonical.reserve(headers.size());
  for (const auto& [name, value] : headers) {
    canonical.emplace_back(absl::AsciiStrToLower(name), TrimAll(value));
  }
  // Stable, so repeated headers keep their order when their values are joined.
  std::stable_sort(canonical.begin(), canonical.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });

  std::string header_block;
  std::vector<absl::string_view> names;
  for (size_t i = 0; i < canonical.size();) {
    const std::string& name = canonical[i].first;
    std::string joined = canonical[i].second;
    for (++i; i < canonical.size() && canonical[i].first == name; ++i) {
      absl::StrAppend(&joined, ",", canonical[i].second);
    }
    absl::StrAppend(&header_block, name, ":", joined, "\n");
    names.push_back(name);
  }

  CanonicalRequest out;
  out.signed_headers = absl::StrJoin(names, ";");
  out.text = absl::StrCat(AV(method), "\n", AV(canonical_uri), "\n", AV(canonical_query), "\n",
                          header_block, "\n", out.signed_headers, "\n", AV(payload_sha256));
  return out;
}

std::string StringToSign(absl::Time now, std::string_view region, std::string_view service,
                         std::string_view canonical_request) {
  return absl::StrCat(kAlgorithm, "\n", AmzDate(now), "\n", CredentialScope(now, region, service),
                      "\n", Sha256Hex(canonical_request));
}

std::string SigningKey(std::string_view secret_access_key, absl::Time now, std::string_view region,
                       std::string_view service) {
  std::string key =
      HmacSha256(absl::StrCat("AWS4", AV(secret_access_key)), AmzDate(now).substr(0, 8));
  key = HmacSha256(key, region);
  key = HmacSha256(key, service);
  return HmacSha256(key, "aws4_request");
}

absl::StatusOr<SigV4Signature> SignV4(const SigV4Request& req, const AwsCredentials& creds,
                                      std::string_view region, std::string_view service,
                                      absl::Time now) {
  const bool is_s3 = service == "s3";
  if (absl::Status s = CheckRequest(req, creds, region, service, now, is_s3); !s.ok()) return s;

  const std::string amz_date = AmzDate(now);
  // Headers the signer owns; they are both signed and returned for sending.
  Pairs added = {{"x-amz-date", amz_date}};
  // S3 refuses a request without it, and it tells S3 whether the body is hashed.
  if (is_s3) added.emplace_back("x-amz-content-sha256", req.payload_sha256);
  // Signed rather than appended afterwards: S3 and STS accept both, but a
  // signed token cannot be swapped by anything between us and the origin.
  if (!creds.session_token.empty()) {
    added.emplace_back("x-amz-security-token", creds.session_token);
  }

  Pairs to_sign = req.headers;
  to_sign.emplace_back("host", req.host);
  to_sign.insert(to_sign.end(), added.begin(), added.end());

  CanonicalRequest creq =
      BuildCanonicalRequest(req.method, CanonicalUri(req.path, req.double_encode_path),
                            CanonicalQueryString(req.query), to_sign, req.payload_sha256);

  SigV4Signature out;
  out.string_to_sign = StringToSign(now, region, service, creq.text);
  const std::string mac =
      HmacSha256(SigningKey(creds.secret_access_key, now, region, service), out.string_to_sign);
  out.signature = HexLower(mac);
  out.headers.emplace_back("Authorization",
                           absl::StrCat(kAlgorithm, " Credential=", creds.access_key_id, "/",
                                        CredentialScope(now, region, service), ", SignedHeaders=",
                                        creq.signed_headers, ", Signature=", out.signature));
  out.headers.insert(out.headers.end(), added.begin(), added.end());
  out.canonical_request = std::move(creq.text);
  return out;
}

}  // namespace strata::origin
