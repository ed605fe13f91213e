// Which origins a pod may name itself. StorageClasses and PVs are an
// administrator's, but an inline (ephemeral) volume's origin is whatever
// the pod's author wrote, served by a root daemon on the node: without a
// limit, file:///var/lib/kubelet/pods would hand every pod's secrets to
// any pod. So an inline origin must lie under a prefix that the node's
// administrator allowed (--allowed-inline-origins), and is read-only unless
// that entry says "rw:". There are none by default.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::csi {

class InlineOrigins {
 public:
  // Entries are origin URL prefixes, "rw:" in front for writable ones:
  //   file:///srv/models           that directory and what is beneath it
  //   oci://registry.example/models/   repositories under that path
  //   s3://bucket/team?endpoint=https://minio:9000   (the query must match)
  static absl::StatusOr<InlineOrigins> Parse(const std::vector<std::string>& entries);

  struct Grant {
    bool writable = false;
    // file://: the allowed directory, which the origin is reached beneath
    // without following symlinks (origin::OriginOptions::file_beneath).
    std::string file_beneath;
  };
  // PermissionDenied, naming the flag, unless `origin` is allowed.
  absl::StatusOr<Grant> Check(const std::string& origin) const;

  bool empty() const { return entries_.empty(); }

 private:
  struct Entry {
    std::string base;   // scheme://authority[/path], no trailing '/'
    std::string query;  // "" or "?..."; a matching origin has the same
    bool writable = false;
  };
  std::vector<Entry> entries_;
};

}  // namespace strata::csi
