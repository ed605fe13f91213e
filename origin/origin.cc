// OpenOrigin: picks the origin for a URL's scheme. Shared path rules.
#include "origin/origin.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "origin/origin_impl.h"

namespace strata::origin {

absl::Status Origin::ReadRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                               absl::Span<char> out) {
  if (out.empty()) return absl::OkStatus();
  if (offset > stat.size || out.size() > stat.size - offset) {
    return absl::OutOfRangeError(absl::StrFormat("%s: %s: [%u, +%u) is past its end (%u bytes)",
                                                 url(), path.empty() ? "the object" : path, offset,
                                                 out.size(), stat.size));
  }
  return ReadInRange(path, stat, offset, out);
}

absl::Status Origin::Put(const std::string& path, const std::string&) {
  return absl::UnimplementedError(absl::StrCat(url(), " does not accept writes (", path, ")"));
}

absl::Status Origin::Delete(const std::string& path) {
  return absl::UnimplementedError(absl::StrCat(url(), " does not accept deletes (", path, ")"));
}

absl::Status Origin::Copy(const std::string& from, const std::string&) {
  return absl::UnimplementedError(absl::StrCat(url(), " does not copy objects (", from, ")"));
}

absl::Status Origin::MakeDir(const std::string& path) {
  return absl::UnimplementedError(absl::StrCat(url(), " does not make directories (", path, ")"));
}

absl::Status Origin::RemoveDir(const std::string& path) {
  return absl::UnimplementedError(absl::StrCat(url(), " does not remove directories (", path, ")"));
}

bool IsTransient(const absl::Status& s) {
  return absl::IsUnavailable(s) || absl::IsResourceExhausted(s) || absl::IsDeadlineExceeded(s) ||
         absl::IsDataLoss(s) || absl::IsAborted(s);
}

absl::Status CheckRelativePath(const std::string& path) {
  if (path.empty()) return absl::OkStatus();
  if (path.find('\0') != std::string::npos) return absl::InvalidArgumentError("path contains NUL");
  if (path.front() == '/')
    return absl::InvalidArgumentError(absl::StrCat("path '", path, "' must be relative"));
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part.empty() || part == "." || part == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("path '", path, "' has an empty, '.' or '..' component"));
    }
    if (part.size() > 255) {
      return absl::InvalidArgumentError(
          absl::StrCat("a component of '", path, "' is longer than 255 bytes"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Origin>> OpenOrigin(const std::string& url,
                                                   const OriginOptions& options) {
  if (absl::StartsWith(url, "file://")) {
    return NewFileOrigin(url, url.substr(7), options.file_beneath);
  }
  HttpClientOptions ho;
  ho.ca_file = options.ca_file;
  ho.verify_tls = options.verify_tls;
  ho.connect_to = options.connect_to;
  if (absl::StartsWith(url, "http://") || absl::StartsWith(url, "https://")) {
    return NewHttpOrigin(url, std::make_shared<HttpClient>(ho));
  }
  if (absl::StartsWith(url, "s3://"))
    return NewS3Origin(url, options, std::make_shared<HttpClient>(ho));
  if (absl::StartsWith(url, "oci://")) {
    return NewOciOrigin(url, options, std::make_shared<HttpClient>(ho));
  }
  size_t colon = url.find("://");
  return absl::InvalidArgumentError(absl::StrCat(
      "unsupported origin '", url, "'", colon == std::string::npos ? " (no scheme)" : "",
      ": use file:///dir, http(s)://host/path, s3://bucket/prefix or oci://registry/repo:tag"));
}

absl::Status CheckEntryName(const std::string& name) {
  if (name.empty() || name == "." || name == ".." || name.size() > 255 ||
      name.find_first_of(std::string("/\0", 2)) != std::string::npos) {
    // The name itself is not quoted: it may hold any bytes.
    return absl::InvalidArgumentError(
        absl::StrCat("an entry name of ", name.size(),
                     " bytes is empty, '.', '..', over 255 bytes or has a '/' or NUL"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<LayerDescriptor>> Origin::Layers() {
  return absl::UnimplementedError(absl::StrCat(url(), " is not an image"));
}

}  // namespace strata::origin
