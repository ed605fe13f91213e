// Statuses that carry the errno a system call gave, so that a layer which
// answers in errnos (FUSE) returns exactly what the origin's file system
// said (ELOOP, ENOTDIR, ENAMETOOLONG...) and not a guess from the code.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace strata {

// A status for `err` (an errno, or -errno) naming `what`, with a code that
// callers can act on (ENOENT -> NotFound, ENOSPC -> ResourceExhausted...)
// and `err` itself attached.
absl::Status ErrnoStatus(int err, const std::string& what);

// `status` with `err` attached as its errno.
absl::Status WithErrno(absl::Status status, int err);

// The errno attached to `status`, or 0.
int AttachedErrno(const absl::Status& status);

}  // namespace strata
