// What a Strata volume is as CSI calls carry it: StorageClass parameters (to
// the controller), a volume context (to the node: the volume's own origin
// URL and options) and secrets (S3 credentials). Controller and node parse
// them here, with the same checks and messages; nothing here is gRPC's.
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "origin/origin.h"

namespace strata::csi {

// A volume context or a call's secrets (request_checks.h copies them out
// of a request).
using StringMap = std::map<std::string, std::string>;

// Keys of a volume context and of StorageClass parameters.
inline constexpr char kOrigin[] = "origin";
inline constexpr char kChunkSize[] = "chunkSize";
inline constexpr char kAttrTtl[] = "attrTTL";
inline constexpr char kReadOnly[] = "readOnly";
inline constexpr char kXattrs[] = "xattrs";
// oci:// volumes: "files" (the image's unpacked files, the default) or
// "blobs" (its config and layer blobs, named by digest).
inline constexpr char kView[] = "view";
// StorageClass only.
inline constexpr char kSubPathFrom[] = "subPathFrom";
inline constexpr char kOnDelete[] = "onDelete";
// Set by kubelet for inline (ephemeral) volumes.
inline constexpr char kEphemeral[] = "csi.storage.k8s.io/ephemeral";

// How a node mounts a volume.
struct VolumeSpec {
  std::string origin;        // the volume's own origin URL
  uint32_t chunk_size = 0;   // 0: the node's default
  double attr_ttl_s = 1.0;   // metadata cache; opens always revalidate
  bool read_only = false;    // the volume refuses writes wherever published
  bool xattrs = false;       // file:// volumes keep user xattrs (see VolumeOptions)
  bool ephemeral = false;    // an inline volume in a pod spec
  bool image_blobs = false;  // oci://: the image's blobs rather than its files
};

// Parses a volume context (a node's view). Keys under "csi.storage.k8s.io/"
// (pod info, ephemeral) are the CO's and are skipped; other unknown keys are
// InvalidArgument, so that a typo in a PV's attributes is not silently lost.
// Inline volumes are read-only unless readOnly is "false".
absl::StatusOr<VolumeSpec> ParseVolumeContext(const StringMap& context);
// The same checks for the option keys in StorageClass parameters.
absl::Status CheckVolumeOption(const std::string& key, const std::string& value);

// Origin options for a call's secrets: S3 keys access_key_id,
// secret_access_key and session_token (also the AWS_* and camelCase names).
origin::OriginOptions OriginOptionsFrom(const StringMap& secrets);

// `base` with `sub` (a relative path) appended to its path, before any query:
// s3://b/p?region=x + v -> s3://b/p/v?region=x.
std::string JoinOriginUrl(const std::string& base, const std::string& sub);

// Checks that `origin` answers with our credentials and that its root is a
// directory. An object store's root "exists" without asking it, so its
// listing is read as well: bad keys show here, not at the first write.
absl::Status ProbeOrigin(origin::Origin& origin);

}  // namespace strata::csi
