// A RocksDB file system for the chunk index that loses, at a power cut,
// everything written since the last sync: every file is cut back to the
// length it had when it was last synced, as after a crash of a machine whose
// page cache never reached the disk. It shares its PowerSwitch with the
// store's PowerLossFs, so data and index lose power at the same moment.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <memory>
#include <random>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "rocksdb/env.h"
#include "rocksdb/file_system.h"
#include "tests/cache/faulty_fs.h"

namespace strata::cache::testing {

class PowerLossFileSystem final : public rocksdb::FileSystemWrapper {
 public:
  explicit PowerLossFileSystem(std::shared_ptr<PowerSwitch> power)
      : rocksdb::FileSystemWrapper(rocksdb::FileSystem::Default()), power_(std::move(power)) {}

  const char* Name() const override { return "PowerLossFileSystem"; }

  rocksdb::IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                    std::unique_ptr<rocksdb::FSWritableFile>* r,
                                    rocksdb::IODebugContext* dbg) override {
    if (power_->off) return Dead(f);
    auto s = target()->NewWritableFile(f, o, r, dbg);
    if (s.ok()) Wrap(f, 0, r);
    return s;
  }
  rocksdb::IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                                       std::unique_ptr<rocksdb::FSWritableFile>* r,
                                       rocksdb::IODebugContext* dbg) override {
    if (power_->off) return Dead(f);
    auto s = target()->ReopenWritableFile(f, o, r, dbg);
    if (s.ok()) Wrap(f, SizeOnDisk(f), r);
    return s;
  }
  rocksdb::IOStatus ReuseWritableFile(const std::string& f, const std::string& old,
                                      const rocksdb::FileOptions& o,
                                      std::unique_ptr<rocksdb::FSWritableFile>* r,
                                      rocksdb::IODebugContext* dbg) override {
    if (power_->off) return Dead(f);
    auto s = target()->ReuseWritableFile(f, old, o, r, dbg);
    if (s.ok()) Wrap(f, 0, r);
    return s;
  }
  rocksdb::IOStatus RenameFile(const std::string& from, const std::string& to,
                               const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
    if (power_->off) return Dead(from);
    auto s = target()->RenameFile(from, to, o, dbg);
    if (s.ok()) {
      absl::MutexLock lock(&mu_);
      auto it = files_.find(from);
      if (it != files_.end()) {
        std::shared_ptr<Lengths> len = std::move(it->second);
        files_.erase(it);
        files_[to] = std::move(len);
      }
    }
    return s;
  }
  rocksdb::IOStatus DeleteFile(const std::string& f, const rocksdb::IOOptions& o,
                               rocksdb::IODebugContext* dbg) override {
    if (power_->off) return Dead(f);
    auto s = target()->DeleteFile(f, o, dbg);
    absl::MutexLock lock(&mu_);
    files_.erase(f);
    return s;
  }

  // After the database is closed: cuts every file written since the last
  // power cut back to a length between what was synced and what was written
  // (the page cache may have written back part of it), chosen by `seed`.
  // Returns the bytes dropped.
  uint64_t DropUnsyncedData(uint64_t seed) {
    absl::MutexLock lock(&mu_);
    std::mt19937_64 rng(seed);
    uint64_t dropped = 0;
    for (auto& [name, len] : files_) {
      absl::MutexLock file_lock(&len->mu);
      uint64_t now = SizeOnDisk(name);
      if (now <= len->synced) continue;
      uint64_t keep = len->synced + rng() % (now - len->synced + 1);
      if (keep < now && ::truncate(name.c_str(), static_cast<off_t>(keep)) == 0) {
        dropped += now - keep;
      }
    }
    files_.clear();
    return dropped;
  }

 private:
  struct Lengths {
    absl::Mutex mu;
    uint64_t written ABSL_GUARDED_BY(mu) = 0;
    uint64_t synced ABSL_GUARDED_BY(mu) = 0;
  };

  class TrackedFile final : public rocksdb::FSWritableFileOwnerWrapper {
   public:
    TrackedFile(std::unique_ptr<rocksdb::FSWritableFile> f, std::shared_ptr<Lengths> len,
                std::shared_ptr<PowerSwitch> power)
        : rocksdb::FSWritableFileOwnerWrapper(std::move(f)),
          len_(std::move(len)),
          power_(std::move(power)) {}

    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      auto s = target()->Append(data, o, dbg);
      if (s.ok()) Grow(data.size());
      return s;
    }
    rocksdb::IOStatus Append(const rocksdb::Slice& data, const rocksdb::IOOptions& o,
                             const rocksdb::DataVerificationInfo& v,
                             rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      auto s = target()->Append(data, o, v, dbg);
      if (s.ok()) Grow(data.size());
      return s;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& o,
                                       rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      auto s = target()->PositionedAppend(data, offset, o, dbg);
      if (s.ok()) GrowTo(offset + data.size());
      return s;
    }
    rocksdb::IOStatus PositionedAppend(const rocksdb::Slice& data, uint64_t offset,
                                       const rocksdb::IOOptions& o,
                                       const rocksdb::DataVerificationInfo& v,
                                       rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      auto s = target()->PositionedAppend(data, offset, o, v, dbg);
      if (s.ok()) GrowTo(offset + data.size());
      return s;
    }
    rocksdb::IOStatus Flush(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      return target()->Flush(o, dbg);
    }
    rocksdb::IOStatus Sync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      auto s = target()->Sync(o, dbg);
      if (s.ok()) MarkSynced();
      return s;
    }
    rocksdb::IOStatus Fsync(const rocksdb::IOOptions& o, rocksdb::IODebugContext* dbg) override {
      if (power_->off) return Dead();
      auto s = target()->Fsync(o, dbg);
      if (s.ok()) MarkSynced();
      return s;
    }

   private:
    static rocksdb::IOStatus Dead() { return rocksdb::IOStatus::IOError("power is off"); }
    void Grow(uint64_t n) {
      absl::MutexLock lock(&len_->mu);
      len_->written += n;
    }
    void GrowTo(uint64_t end) {
      absl::MutexLock lock(&len_->mu);
      len_->written = std::max(len_->written, end);
    }
    void MarkSynced() {
      absl::MutexLock lock(&len_->mu);
      len_->synced = len_->written;
    }

    std::shared_ptr<Lengths> len_;
    std::shared_ptr<PowerSwitch> power_;
  };

  static rocksdb::IOStatus Dead(const std::string& f) {
    return rocksdb::IOStatus::IOError("power is off: " + f);
  }
  static uint64_t SizeOnDisk(const std::string& f) {
    struct stat st;
    return ::stat(f.c_str(), &st) == 0 ? static_cast<uint64_t>(st.st_size) : 0;
  }
  void Wrap(const std::string& f, uint64_t durable, std::unique_ptr<rocksdb::FSWritableFile>* r) {
    auto len = std::make_shared<Lengths>();
    {
      absl::MutexLock lock(&len->mu);
      len->written = durable;
      len->synced = durable;
    }
    {
      absl::MutexLock lock(&mu_);
      files_[f] = len;
    }
    *r = std::make_unique<TrackedFile>(std::move(*r), std::move(len), power_);
  }

  std::shared_ptr<PowerSwitch> power_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Lengths>> files_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata::cache::testing
