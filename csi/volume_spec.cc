// Parsing and checking what CSI calls say about a volume.
#include "csi/volume_spec.h"

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/size.h"

namespace strata::csi {
namespace {

absl::StatusOr<bool> ParseBool(const std::string& key, const std::string& v) {
  if (v == "true" || v == "True" || v == "1") return true;
  if (v == "false" || v == "False" || v == "0") return false;
  return absl::InvalidArgumentError(absl::StrCat(key, " must be true or false, not '", v, "'"));
}

}  // namespace

absl::Status CheckVolumeOption(const std::string& key, const std::string& value) {
  if (key == kChunkSize) {
    auto n = strata::ParseSize(value);
    if (!n.ok())
      return absl::InvalidArgumentError(absl::StrCat(kChunkSize, ": ", n.status().message()));
    if (*n < (64u << 10) || *n > (64u << 20) || (*n & (*n - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          kChunkSize, " must be a power of two from 64KiB to 64MiB, not '", value, "'"));
    }
    return absl::OkStatus();
  }
  if (key == kAttrTtl) {
    double s;
    if (!absl::SimpleAtod(value, &s) || !(s >= 0 && s <= 3600)) {  // NaN fails too
      return absl::InvalidArgumentError(
          absl::StrCat(kAttrTtl, " must be seconds from 0 to 3600, not '", value, "'"));
    }
    return absl::OkStatus();
  }
  if (key == kReadOnly || key == kXattrs) return ParseBool(key, value).status();
  if (key == kView) {
    if (value == "files" || value == "blobs") return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat(kView, " must be files or blobs (oci:// volumes), not '", value, "'"));
  }
  if (key == kOrigin) {
    if (value.empty()) return absl::InvalidArgumentError("origin is empty");
    for (const char* scheme : {"file://", "s3://", "http://", "https://", "oci://"}) {
      if (absl::StartsWith(value, scheme)) return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "origin '", value, "' has no supported scheme (file://, s3://, http(s)://, oci://)"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown volume option '", key,
                   "' (known: origin, chunkSize, attrTTL, readOnly, xattrs, view)"));
}

absl::StatusOr<VolumeSpec> ParseVolumeContext(const StringMap& context) {
  VolumeSpec spec;
  auto eph = context.find(kEphemeral);
  spec.ephemeral = eph != context.end() && eph->second == "true";
  spec.read_only = spec.ephemeral;  // inline volumes: read-only unless asked
  for (const auto& [key, value] : context) {
    if (absl::StartsWith(key, "csi.storage.k8s.io/")) continue;
    if (absl::Status st = CheckVolumeOption(key, value); !st.ok()) return st;
    if (key == kOrigin) spec.origin = value;
    if (key == kChunkSize) spec.chunk_size = static_cast<uint32_t>(*strata::ParseSize(value));
    if (key == kAttrTtl) (void)absl::SimpleAtod(value, &spec.attr_ttl_s);
    if (key == kReadOnly) spec.read_only = *ParseBool(key, value);
    if (key == kXattrs) spec.xattrs = *ParseBool(key, value);
    if (key == kView) spec.image_blobs = value == "blobs";
  }
  if (spec.origin.empty()) {
    return absl::InvalidArgumentError(
        "volume context has no 'origin' (file:///dir, s3://bucket/prefix, http(s)://...): "
        "a static PV or inline volume names its origin in volumeAttributes");
  }
  return spec;
}

origin::OriginOptions OriginOptionsFrom(const StringMap& secrets) {
  origin::OriginOptions o;
  auto first = [&](std::initializer_list<const char*> keys) -> std::string {
    for (const char* k : keys) {
      auto it = secrets.find(k);
      if (it != secrets.end() && !it->second.empty()) return it->second;
    }
    return "";
  };
  o.aws_access_key_id = first({"access_key_id", "AWS_ACCESS_KEY_ID", "accessKeyID"});
  o.aws_secret_access_key =
      first({"secret_access_key", "AWS_SECRET_ACCESS_KEY", "secretAccessKey"});
  o.aws_session_token = first({"session_token", "AWS_SESSION_TOKEN", "sessionToken"});
  return o;
}

std::string JoinOriginUrl(const std::string& base, const std::string& sub) {
  size_t q = base.find('?');
  std::string path = base.substr(0, q);
  std::string query = q == std::string::npos ? "" : base.substr(q);
  while (!path.empty() && path.back() == '/' && !absl::EndsWith(path, "://")) path.pop_back();
  return absl::StrCat(path, absl::EndsWith(path, "/") ? "" : "/", sub, query);
}

absl::Status ProbeOrigin(origin::Origin& origin) {
  auto root = origin.Stat("");
  if (root.ok() && !root->is_dir) {
    return absl::FailedPreconditionError(absl::StrCat("origin ", origin.url(), " is a file"));
  }
  absl::Status st = root.status();
  if (st.ok() && origin.Dir() == nullptr) {
    st = origin.List("").status();
    if (absl::IsUnimplemented(st)) st = absl::OkStatus();
  }
  if (st.ok()) return st;
  // Transient trouble is Unavailable (callers retry); an origin that is not
  // there needs the operator; refused credentials stay PermissionDenied.
  absl::StatusCode code = origin::IsTransient(st) ? absl::StatusCode::kUnavailable
                          : absl::IsNotFound(st)  ? absl::StatusCode::kFailedPrecondition
                                                  : st.code();
  return absl::Status(code,
                      absl::StrCat("origin ", origin.url(), " is not reachable: ", st.message()));
}

}  // namespace strata::csi
