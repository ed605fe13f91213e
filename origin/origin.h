// An origin is where a volume's or an image's bytes really live: a POSIX
// directory, an HTTP server, an S3 bucket, an OCI registry. Every origin is
// read through this one interface; paths are relative to the origin's root.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace strata::origin {

class RootDir;

// What an origin says about one object: enough to key its chunks. `version`
// changes whenever the content may have changed (ETag; mtime, ctime, size
// and inode).
struct ObjectStat {
  uint64_t size = 0;
  std::string version;
  int64_t mtime_ns = 0;
  uint32_t mode = 0644;  // permission bits
  uint32_t uid = 0, gid = 0;
  bool is_dir = false;
  bool is_symlink = false;  // POSIX origins: `size` is the target's length
  std::string digest;       // "sha256:<hex>" when the content is addressed by it

  // What only a POSIX origin knows (all 0 where an origin does not say).
  uint64_t dev = 0, ino = 0;  // the file's identity: every hard link shares it
  uint32_t nlink = 0;         // names (and, for a directory, subdirectories)
  int64_t atime_ns = 0, ctime_ns = 0;
  int64_t blocks = -1;   // 512-byte blocks held (-1: count from the size)
  uint32_t special = 0;  // S_IFIFO, S_IFSOCK, S_IFCHR or S_IFBLK; 0: none of them
  uint64_t rdev = 0;     // the device a S_IFCHR or S_IFBLK node stands for
};

struct DirEntry {
  std::string name;
  ObjectStat stat;
};

// A layer of an image, as the image's manifest describes it.
struct LayerDescriptor {
  std::string digest;  // sha256:<hex>, checked
  uint64_t size = 0;
  std::string media_type;
  std::map<std::string, std::string> annotations;
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
  // as it was when `stat` was taken; all of them or an error. A range that
  // does not lie within stat.size is OutOfRange, checked here once for every
  // origin.
  absl::Status ReadRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                         absl::Span<char> out);

  // Writes, where the origin allows them (Unimplemented elsewhere).
  // Put stores the whole content of `local_file` as `path` (object stores
  // upload it, in parts when large); Delete removes `path`.
  virtual absl::Status Put(const std::string& path, const std::string& local_file);
  virtual absl::Status Delete(const std::string& path);
  // Server-side copy of an object (object stores' half of a rename).
  virtual absl::Status Copy(const std::string& from, const std::string& to);
  // Makes an empty directory exist (object stores: a "dir/" marker object).
  virtual absl::Status MakeDir(const std::string& path);
  // Removes an empty directory made by MakeDir; FailedPrecondition if not empty.
  virtual absl::Status RemoveDir(const std::string& path);

  // The directory behind a POSIX origin (file://), where a volume writes
  // through with system calls beneath it (see root_dir.h); null for every
  // other origin.
  virtual RootDir* Dir() { return nullptr; }

  // Whether `stat` names the same bytes on every node that reads this
  // origin (a content digest, an ETag, a file's identity on a file system
  // the nodes share), so that its chunks may be asked of peers. A version
  // only this node can vouch for (a local directory's inode and mtime) is
  // not. Default: only content digests.
  virtual bool SharedVersion(const ObjectStat& stat) const { return !stat.digest.empty(); }

  // An image origin's (oci://) layers, bottom first, each also an object
  // named by its digest; Unimplemented for every other origin.
  virtual absl::StatusOr<std::vector<LayerDescriptor>> Layers();

 protected:
  // ReadRange of a non-empty range that lies within stat.size.
  virtual absl::Status ReadInRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                                   absl::Span<char> out) = 0;
};

struct OriginOptions {
  std::string ca_file;     // extra CA bundle for https
  bool verify_tls = true;  // off only for tests and explicit operator choice
  absl::Duration request_timeout = absl::Seconds(60);

  // s3:// (each also settable in the URL's query: ?endpoint=&region=&addressing=)
  std::string s3_endpoint;    // default https://s3.REGION.amazonaws.com
  std::string s3_region;      // default $AWS_REGION, else us-east-1
  std::string s3_addressing;  // "path" or "virtual"; default: virtual on AWS, path elsewhere
  // Credentials, first found wins: given here (from a CSI request's secrets),
  // a mounted Kubernetes secret directory
  // (files access_key_id, secret_access_key[, session_token], or the
  // AWS_ACCESS_KEY_ID style names), the environment (AWS_ACCESS_KEY_ID,
  // AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN), then a shared credentials file
  // ($AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
  // $AWS_PROFILE or "default").
  std::string aws_access_key_id, aws_secret_access_key, aws_session_token;
  std::string aws_secret_dir;
  std::string aws_credentials_file;
  std::string aws_profile;
  int s3_list_page_size = 1000;                // ListObjectsV2 max-keys
  uint64_t multipart_threshold = 64ull << 20;  // uploads above this go in parts
  uint64_t multipart_part_size = 16ull << 20;  // at least 5 MiB (S3's minimum)
  // oci://: registry credentials from a docker config.json (default
  // $DOCKER_CONFIG/config.json, else ~/.docker/config.json); "auths" entries
  // with "auth" (base64 user:password) or "username"/"password".
  std::string docker_config;
  // Platform picked from an image index (default: this machine's, linux).
  std::string oci_os = "linux";
  std::string oci_arch;  // default: amd64 or arm64 as built
  // curl CONNECT_TO entries ("host:port:connect-host:connect-port"), for
  // virtual-host names that DNS does not resolve (tests, private endpoints).
  std::vector<std::string> connect_to;
  // file://: when set, the origin's directory must lie beneath this one and
  // is reached from it without following any symlink (origins named by a
  // pod rather than an administrator: see csi/inline_origins.h).
  std::string file_beneath;
};

// file:///dir, http(s)://host/path, s3://bucket/prefix,
// oci://registry/repository[:tag|@sha256:...]. Other schemes: InvalidArgument
// naming them.
absl::StatusOr<std::unique_ptr<Origin>> OpenOrigin(const std::string& url,
                                                   const OriginOptions& options);

// True for the codes that a retry may cure.
bool IsTransient(const absl::Status& status);

// Rejects paths that could leave the origin's root: absolute paths, "..",
// empty components, NUL. "" (the root itself) is allowed.
absl::Status CheckRelativePath(const std::string& path);

// Checks one name of a directory listing from an origin: non-empty, not "."
// or "..", no '/' or NUL, at most 255 bytes (InvalidArgument otherwise).
// Listings come from servers; a name that fails would alias another entry
// or leave the directory once it becomes a path.
absl::Status CheckEntryName(const std::string& name);

}  // namespace strata::origin
