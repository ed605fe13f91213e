// Matching an inline volume's origin against the administrator's prefixes:
// URLs are split and compared by their parts, never as plain strings, so
// that "https://host" does not allow "https://host.evil" or
// "https://host@evil", and nothing climbs out of an allowed path.
#include "csi/inline_origins.h"

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace strata::csi {
namespace {

constexpr char kFlag[] = "--allowed-inline-origins";

struct Split {
  std::string scheme;  // "file", "s3", ...
  std::string base;    // scheme://authority[/path] without trailing '/'
  std::string query;   // "" or "?..."
};

absl::StatusOr<Split> SplitUrl(const std::string& url) {
  for (char c : url) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f || c == '\\' || c == '#') {
      return absl::InvalidArgumentError(
          absl::StrCat("origin '", absl::CEscape(url), "' has a control character, '\\' or '#'"));
    }
  }
  size_t colon = url.find("://");
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(absl::StrCat("'", url, "' is not an origin URL"));
  }
  Split s;
  s.scheme = absl::AsciiStrToLower(url.substr(0, colon));
  size_t q = url.find('?');
  std::string rest = url.substr(0, q);
  s.query = q == std::string::npos ? "" : url.substr(q);
  while (rest.size() > colon + 3 && rest.back() == '/') rest.pop_back();
  s.base = absl::StrCat(s.scheme, rest.substr(colon));
  return s;
}

// The part of a path below an allowed prefix must be plain names: no
// empty, "." or ".." step, and no percent-encoded one (a server decodes
// "%2e%2e" into ".." after we looked).
bool PlainBelow(absl::string_view rest) {
  std::string lower = absl::AsciiStrToLower(rest);
  if (absl::StrContains(lower, "%2e") || absl::StrContains(lower, "%2f") ||
      absl::StrContains(lower, "%5c")) {
    return false;
  }
  for (absl::string_view part : absl::StrSplit(rest, '/')) {
    if (part.empty() || part == "." || part == "..") return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<InlineOrigins> InlineOrigins::Parse(const std::vector<std::string>& entries) {
  InlineOrigins out;
  for (std::string e : entries) {
    e = std::string(absl::StripAsciiWhitespace(e));
    if (e.empty()) continue;
    Entry entry;
    if (absl::StartsWith(e, "rw:")) {
      entry.writable = true;
      e = e.substr(3);
    }
    auto s = SplitUrl(e);
    if (!s.ok()) return absl::InvalidArgumentError(absl::StrCat(kFlag, ": ", s.status().message()));
    if (s->scheme != "file" && s->scheme != "s3" && s->scheme != "http" && s->scheme != "https" &&
        s->scheme != "oci") {
      return absl::InvalidArgumentError(
          absl::StrCat(kFlag, ": '", e, "' is not a file://, s3://, http(s):// or oci:// prefix"));
    }
    size_t path = s->base.find('/', s->scheme.size() + 3);
    if (s->scheme == "file" ? s->base.size() <= 7
                            : path == std::string::npos && s->base.size() <= s->scheme.size() + 3) {
      return absl::InvalidArgumentError(absl::StrCat(kFlag, ": '", e, "' names no place"));
    }
    if (path != std::string::npos && !PlainBelow(s->base.substr(path + 1))) {
      return absl::InvalidArgumentError(
          absl::StrCat(kFlag, ": '", e, "' has an empty, '.' or '..' step"));
    }
    entry.base = s->base;
    entry.query = s->query;
    out.entries_.push_back(std::move(entry));
  }
  return out;
}

absl::StatusOr<InlineOrigins::Grant> InlineOrigins::Check(const std::string& origin) const {
  auto denied = [&](const std::string& why) {
    return absl::PermissionDeniedError(absl::StrCat(
        "inline volumes may not name origin '", origin, "'", why,
        ": a pod may only name origins under the node's ", kFlag,
        " (set by the cluster administrator); use a StorageClass or a PersistentVolume instead"));
  };
  if (entries_.empty()) return denied(" (this node allows no inline origins)");
  auto s = SplitUrl(origin);
  if (!s.ok()) return denied(absl::StrCat(" (", s.status().message(), ")"));
  for (const Entry& e : entries_) {
    if (s->query != e.query) continue;
    if (s->base != e.base) {
      if (!absl::StartsWith(s->base, e.base)) continue;
      char next = s->base[e.base.size()];
      // An OCI repository named in full is followed by its tag or digest.
      bool oci_ref = s->scheme == "oci" && (next == ':' || next == '@') &&
                     e.base.find('/', 6) != std::string::npos;
      if (next != '/' && !oci_ref) continue;
      absl::string_view rest = absl::string_view(s->base).substr(e.base.size() + 1);
      if (next == '/' && !PlainBelow(rest)) return denied(" (it steps out of an allowed prefix)");
    }
    Grant g;
    g.writable = e.writable;
    if (s->scheme == "file") g.file_beneath = e.base.substr(7);
    return g;
  }
  return denied("");
}

}  // namespace strata::csi
