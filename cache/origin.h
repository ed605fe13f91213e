// An origin is where a volume's or an image's bytes really live: a POSIX
// directory, an HTTP server, an S3 bucket, an OCI registry. Every origin is
// read through this one interface; paths are relative to the origin's root.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace strata::cache {

// What an origin says about one object: enough to key its chunks. `version`
// changes whenever the content may have changed (ETag; mtime, size and inode).
struct ObjectStat {
  uint64_t size = 0;
  std::string version;
  int64_t mtime_ns = 0;
  uint32_t mode = 0644;  // permission bits
  bool is_dir = false;
  std::string digest;  // "sha256:<hex>" when the content is addressed by it
};

struct DirEntry {
  std::string name;
  ObjectStat stat;
};

// Error codes every origin uses, so callers can decide without parsing text:
//   NotFound            the object (or its parent) does not exist
//   PermissionDenied    credentials missing or refused
//   FailedPrecondition  the object changed since `stat` (version mismatch)
//   InvalidArgument     a bad path or URL
//   Unavailable, ResourceExhausted, DeadlineExceeded, DataLoss (truncated or
//   corrupt transfer): transient; worth a retry with backoff.
class Origin {
 public:
  virtual ~Origin() = default;
  // The origin's URL, for logs and chunk keys.
  virtual const std::string& url() const = 0;
  virtual absl::StatusOr<ObjectStat> Stat(const std::string& path) = 0;
  virtual absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) = 0;
  // Fills `out` with the bytes at [offset, offset + out.size()) of the object
  // as it was when `stat` was taken; all of them or an error.
  virtual absl::Status ReadRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                                 absl::Span<char> out) = 0;
};

struct OriginOptions {
  std::string ca_file;     // extra CA bundle for https
  bool verify_tls = true;  // off only for tests and explicit operator choice
  absl::Duration request_timeout = absl::Seconds(60);
};

// file:///dir, http(s)://host/path. Other schemes: InvalidArgument naming them.
absl::StatusOr<std::unique_ptr<Origin>> OpenOrigin(const std::string& url,
                                                   const OriginOptions& options);

// True for the codes that a retry may cure.
bool IsTransient(const absl::Status& status);

// Rejects paths that could leave the origin's root: absolute paths, "..",
// empty components, NUL. "" (the root itself) is allowed.
absl::Status CheckRelativePath(const std::string& path);

}  // namespace strata::cache
