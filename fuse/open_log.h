// What the kernel holds open on one FUSE mount, and how, in a file that
// outlives the daemon: a successor that takes the mount over (see
// FuseServer::Adopt) must know it before it answers a single open.
//
// The kernel does an inode's I/O in one mode at a time: through its page
// cache (cached opens) or through one backing file (FUSE passthrough opens,
// all with the same backing file; while there is one, even a direct I/O
// open is refused). An open whose answer would mix them fails in the
// kernel with EIO; so does an open under a daemon that guesses wrong about
// opens its predecessor made.
//
// The log is a file of records (an open, a close), each appended with one
// write(2), so a daemon killed at any moment leaves whole records behind (a
// torn last one is ignored). It is rewritten from what is open when it has
// grown well past that.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata::fuse {

enum class IoMode : uint8_t {
  kCached = 1,       // through the kernel's page cache (and the daemon)
  kPassthrough = 2,  // the kernel reads a backing file itself
};

struct OpenRecord {
  uint64_t ino = 0;
  IoMode mode = IoMode::kCached;
  int32_t backing_id = 0;  // kPassthrough: the kernel's id of the backing file
  std::string backing;     // kPassthrough: BackingFile::id, to hold it again
  // The kernel's id of the OPEN or CREATE request answered with it (0: not
  // known): a successor to which the kernel resends that request knows
  // the answer never reached the kernel (FuseServer::Adopt).
  uint64_t request = 0;
};

// Open files by file handle.
using OpenFiles = absl::flat_hash_map<uint64_t, OpenRecord>;

class OpenLog {
 public:
  // Starts the log at `path` with `open` (replacing any log there; on
  // failure, removing it).
  static absl::StatusOr<std::unique_ptr<OpenLog>> Start(const std::string& path,
                                                        const OpenFiles& open);
  // What the log at `path` says is open; NotFound when there is no log,
  // DataLoss when it is not one this mount's daemons wrote (too large, or
  // opens the kernel would not allow together).
  static absl::StatusOr<OpenFiles> Read(const std::string& path);
  // The backing files (BackingFile::id) that the logs in `dir` (*.opens)
  // say the kernel reads, for the store to hold from its start.
  static std::vector<std::string> BackingsIn(const std::string& dir);
  ~OpenLog();

  // Record an open or a close; `open` is everything open after it (the log
  // is rewritten from it now and then). A log that cannot be written is
  // removed (a successor then knows it knows nothing) and stays quiet.
  void Opened(uint64_t handle, const OpenRecord& record, const OpenFiles& open);
  void Closed(uint64_t handle, const OpenFiles& open);
  // The mount is gone: so is its log.
  void Remove();
  // Still written (not removed after a failed write).
  bool ok() const { return fd_ >= 0; }

 private:
  OpenLog(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  void Append(const std::string& record, const OpenFiles& open);
  void Broken(const std::string& what);

  std::string path_;
  int fd_;
  uint64_t records_ = 0;  // in the file now
};

}  // namespace strata::fuse
