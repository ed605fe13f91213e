// StateDb over RocksDB (synced writes, prefix scans) and over an origin (one
// object per record).
#include "csi/state_db.h"

#include <fcntl.h>
#include <rocksdb/db.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/logging.h"
#include "base/rocksdb_status.h"
#include "origin/root_dir.h"
#include "origin/sigv4.h"

namespace strata::csi {
namespace {

rocksdb::WriteOptions Synced() {
  rocksdb::WriteOptions w;
  w.sync = true;
  return w;
}

class RocksStateDb final : public StateDb {
 public:
  explicit RocksStateDb(std::unique_ptr<rocksdb::DB> db) : db_(std::move(db)) {}

  absl::Status Put(const std::string& key, const nlohmann::json& value) override;
  absl::StatusOr<std::optional<nlohmann::json>> Get(const std::string& key) override;
  absl::Status Delete(const std::string& key) override;
  absl::StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> Scan(
      const std::string& prefix, const std::string& after, size_t max) override;

 private:
  std::unique_ptr<rocksdb::DB> db_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateDb>> StateDb::Open(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", dir, ": ", ec.message()));
  // Records may hold credentials (a volume's secrets): root's alone.
  std::filesystem::permissions(dir, std::filesystem::perms::owner_all,
                               std::filesystem::perm_options::replace, ec);
  auto db = OpenRecordDb(dir, "state directory");
  if (!db.ok()) return db.status();
  return std::make_unique<RocksStateDb>(std::move(*db));
}

absl::Status RocksStateDb::Put(const std::string& key, const nlohmann::json& value) {
  return RocksStatus(db_->Put(Synced(), key, value.dump()), absl::StrCat("record ", key));
}

absl::StatusOr<std::optional<nlohmann::json>> RocksStateDb::Get(const std::string& key) {
  std::string v;
  rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), key, &v);
  if (s.IsNotFound()) return std::nullopt;
  if (!s.ok()) return RocksStatus(s, absl::StrCat("record ", key));
  auto j = nlohmann::json::parse(v, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    spdlog::error("state record {} is not JSON; ignoring it", key);
    return std::nullopt;
  }
  return j;
}

absl::Status RocksStateDb::Delete(const std::string& key) {
  return RocksStatus(db_->Delete(Synced(), key), absl::StrCat("record ", key));
}

absl::StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> RocksStateDb::Scan(
    const std::string& prefix, const std::string& after, size_t max) {
  std::vector<std::pair<std::string, nlohmann::json>> out;
  std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(rocksdb::ReadOptions()));
  std::string start = std::max(prefix, after);  // the prefix, or `after` if that is past it
  for (it->Seek(start); it->Valid(); it->Next()) {
    std::string key = it->key().ToString();
    if (!absl::StartsWith(key, prefix)) break;
    if (!after.empty() && key == after) continue;
    auto j = nlohmann::json::parse(it->value().ToString(), nullptr, false);
    if (j.is_discarded()) {
      spdlog::error("state record {} is not JSON; skipping it", key);
      continue;
    }
    out.emplace_back(std::move(key), std::move(j));
    if (max != 0 && out.size() == max) break;
  }
  if (!it->status().ok()) return RocksStatus(it->status(), absl::StrCat("scan of ", prefix));
  return out;
}

namespace {

// A record's object: "k-" and the key with every byte outside [A-Za-z0-9._-]
// written as %XX, when that makes a short enough name; otherwise "h-" and
// the key's sha256. Either way the record holds its key.
constexpr size_t kMaxName = 200;
constexpr char kSuffix[] = ".json";
// Marks a location as holding records (written when it is set up): a
// location without it (an unmounted share, a removed bucket or prefix) is
// an error, never "no records", which would let DeleteVolume forget data.
constexpr char kMarker[] = "strata-records.json";

std::string ObjectName(const std::string& key) {
  std::string name = "k-";
  for (unsigned char c : key) {
    if (absl::ascii_isalnum(c) || c == '.' || c == '_' || c == '-') {
      name.push_back(static_cast<char>(c));
    } else {
      absl::StrAppendFormat(&name, "%%%02X", c);
    }
  }
  if (name.size() > kMaxName) name = "h-" + strata::Sha256Hex(key);
  return name + kSuffix;
}

// The key a "k-" name stands for; nullopt for "h-" names (read the record)
// and for names that are not records. Strict: only what ObjectName writes.
std::optional<std::string> KeyOfName(const std::string& name) {
  if (!absl::StartsWith(name, "k-") || !absl::EndsWith(name, kSuffix)) return std::nullopt;
  const size_t end = name.size() - (sizeof(kSuffix) - 1);
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  std::string key;
  for (size_t i = 2; i < end; ++i) {
    if (name[i] != '%') {
      key.push_back(name[i]);
      continue;
    }
    if (i + 2 >= end || hex(name[i + 1]) < 0 || hex(name[i + 2]) < 0) return std::nullopt;
    key.push_back(static_cast<char>(hex(name[i + 1]) * 16 + hex(name[i + 2])));
    i += 2;
  }
  return key;
}

absl::Status Errno(int err, const std::string& what) {
  return absl::InternalError(absl::StrCat(what, ": ", std::strerror(err)));
}

// Writes `path` so that it holds the old content or the new one, never a
// mix, and survives a crash once this returns.
absl::Status WriteFileDurably(const std::string& dir, const std::string& name,
                              const std::string& body) {
  // A name of its own (two writers must never share a temporary file).
  std::string tmp = absl::StrFormat("%s/.%s.tmp-XXXXXX", dir, name);
  int fd = ::mkostemp(tmp.data(), O_CLOEXEC);
  if (fd < 0) return Errno(errno, "create " + tmp);
  size_t done = 0;
  while (done < body.size()) {
    ssize_t n = ::write(fd, body.data() + done, body.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      return Errno(err, "write " + tmp);
    }
    done += static_cast<size_t>(n);
  }
  int synced = ::fsync(fd);
  int err = errno;
  if (::close(fd) != 0 && synced == 0) {
    synced = -1;
    err = errno;
  }
  if (synced != 0) {
    ::unlink(tmp.c_str());
    return Errno(err, "sync " + tmp);
  }
  std::string path = dir + "/" + name;
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    return Errno(err, "rename to " + path);
  }
  int d = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (d < 0) return Errno(errno, "open " + dir);
  int rc = ::fsync(d);
  err = errno;
  ::close(d);
  return rc == 0 ? absl::OkStatus() : Errno(err, "sync " + dir);
}

class OriginStateDb final : public StateDb {
 public:
  explicit OriginStateDb(std::unique_ptr<origin::Origin> origin)
      : origin_(std::move(origin)), root_(origin_->Dir() ? origin_->Dir()->path() : "") {}

  absl::Status Put(const std::string& key, const nlohmann::json& value) override {
    absl::Status st =
        WriteObject(ObjectName(key), nlohmann::json{{"key", key}, {"value", value}}.dump());
    if (!st.ok()) {
      return absl::Status(st.code(),
                          absl::StrCat("record ", key, " in ", origin_->url(), ": ", st.message()));
    }
    return absl::OkStatus();
  }

  // Writes object `name` whole: a reader sees the old body or the new one.
  absl::Status WriteObject(const std::string& name, const std::string& body) {
    absl::Status st;
    if (!root_.empty()) {
      st = WriteFileDurably(root_, name, body);
    } else {
      // Object stores take whole objects (atomically): upload a local copy.
      std::string tmp =
          absl::StrFormat("%s/strata-record-%d-%d", std::filesystem::temp_directory_path().string(),
                          ::getpid(), next_tmp_++);
      {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        f << body;
        f.close();
        st = f.fail() ? absl::InternalError("cannot write " + tmp) : absl::OkStatus();
      }
      if (st.ok()) st = origin_->Put(name, tmp);
      std::error_code ec;
      std::filesystem::remove(tmp, ec);
    }
    return st;
  }

  absl::StatusOr<std::optional<nlohmann::json>> Get(const std::string& key) override {
    auto rec = Read(ObjectName(key));
    if (!rec.ok()) return rec.status();
    if (rec->has_value() && (**rec)["key"] == key) return (**rec)["value"];
    // "No such record" only from a location that still holds the records.
    if (absl::Status st = CheckMarker(); !st.ok()) return st;
    return std::nullopt;
  }

  // OK when the location still carries its marker.
  absl::Status CheckMarker() {
    auto st = origin_->Stat(kMarker);
    if (st.ok()) return absl::OkStatus();
    if (absl::IsNotFound(st.status())) {
      return absl::UnavailableError(absl::StrCat(
          "the records at ", origin_->url(), " are not there (no ", kMarker,
          "): an unmounted share or a removed bucket or prefix? Not answering from it"));
    }
    return st.status();
  }

  absl::Status Delete(const std::string& key) override {
    std::string name = ObjectName(key);
    if (!root_.empty()) {
      std::string path = root_ + "/" + name;
      if (::unlink(path.c_str()) != 0 && errno != ENOENT) return Errno(errno, "remove " + path);
      int d = ::open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
      if (d >= 0) {
        ::fsync(d);
        ::close(d);
      }
      return absl::OkStatus();
    }
    absl::Status st = origin_->Delete(name);
    return absl::IsNotFound(st) ? absl::OkStatus() : st;
  }

  absl::StatusOr<std::vector<std::pair<std::string, nlohmann::json>>> Scan(
      const std::string& prefix, const std::string& after, size_t max) override {
    if (absl::Status st = CheckMarker(); !st.ok()) return st;
    auto entries = origin_->List("");
    if (!entries.ok()) return entries.status();
    // The keys in order first (from the names, reading only hashed ones),
    // then the records of the page.
    std::vector<std::pair<std::string, std::string>> keys;  // key, object name
    for (const origin::DirEntry& e : *entries) {
      if (e.stat.is_dir || !absl::EndsWith(e.name, kSuffix)) continue;
      std::optional<std::string> key = KeyOfName(e.name);
      if (!key && absl::StartsWith(e.name, "h-")) {
        auto rec = Read(e.name);
        if (!rec.ok()) return rec.status();
        if (rec->has_value() && (**rec)["key"].is_string()) key = (**rec)["key"];
      }
      if (!key || !absl::StartsWith(*key, prefix) || (!after.empty() && *key <= after)) continue;
      keys.emplace_back(std::move(*key), e.name);
    }
    std::sort(keys.begin(), keys.end());
    std::vector<std::pair<std::string, nlohmann::json>> out;
    for (const auto& [key, name] : keys) {
      auto rec = Read(name);
      if (!rec.ok()) return rec.status();
      if (!rec->has_value()) continue;  // removed meanwhile, or not a record
      if ((**rec)["key"] != key) {
        spdlog::error("state record {} in {} holds key {}; ignoring it", name, origin_->url(),
                      (**rec)["key"].dump());
        continue;
      }
      out.emplace_back(key, (**rec)["value"]);
      if (max != 0 && out.size() == max) break;
    }
    return out;
  }

 private:
  // The record object `name` ({"key", "value"}), or nullopt when there is
  // none (or it does not parse: logged).
  absl::StatusOr<std::optional<nlohmann::json>> Read(const std::string& name) {
    std::string body;
    for (int attempt = 1;; ++attempt) {
      auto st = origin_->Stat(name);
      if (absl::IsNotFound(st.status())) return std::nullopt;
      if (!st.ok()) return st.status();
      body.assign(st->size, '\0');
      absl::Status rs = origin_->ReadRange(name, *st, 0, absl::MakeSpan(body));
      if (rs.ok()) break;
      if (absl::IsNotFound(rs)) return std::nullopt;
      // Replaced between the two (a record being rewritten): read it again.
      if (!(absl::IsFailedPrecondition(rs) || absl::IsDataLoss(rs)) || attempt == 3) return rs;
    }
    auto j = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object() || !j.contains("key") || !j.contains("value")) {
      spdlog::error("state record {} in {} is not a record; ignoring it", name, origin_->url());
      return std::nullopt;
    }
    return j;
  }

  std::unique_ptr<origin::Origin> origin_;
  std::string root_;  // a POSIX origin's directory: written there directly
  std::atomic<int> next_tmp_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<StateDb>> StateDb::OpenAt(const std::string& url,
                                                         const origin::OriginOptions& options) {
  if (!absl::StartsWith(url, "file://") && !absl::StartsWith(url, "s3://")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "records need an origin that takes writes (file:///dir or s3://bucket/prefix), not ", url));
  }
  auto origin = origin::OpenOrigin(url, options);
  if (!origin.ok()) return origin.status();
  if (origin::RootDir* dir = (*origin)->Dir()) {
    const std::string& root = dir->path();
    std::error_code ec;
    bool made = std::filesystem::create_directories(root, ec);
    if (ec) return absl::InternalError(absl::StrCat("cannot create ", root, ": ", ec.message()));
    // Records name every volume: root's alone (set on a directory made here).
    if (made) {
      std::filesystem::permissions(root, std::filesystem::perms::owner_all,
                                   std::filesystem::perm_options::replace, ec);
    }
  }
  // The records must be readable now: a wrong URL, a missing bucket or
  // missing credentials is an error at start, not at the first call.
  auto listed = (*origin)->List("");
  if (!listed.ok()) {
    return absl::Status(
        absl::IsNotFound(listed.status()) ? absl::StatusCode::kFailedPrecondition
                                          : listed.status().code(),
        absl::StrCat("cannot read records in ", url, ": ", listed.status().message()));
  }
  bool marked = false, other = false;
  for (const origin::DirEntry& e : *listed) {
    if (e.name == kMarker) {
      marked = true;
    } else if (!absl::StartsWith(e.name, ".")) {  // "." : a writer's temporary file
      other = true;
    }
  }
  auto db = std::make_unique<OriginStateDb>(std::move(*origin));
  if (!marked) {
    if (other) {
      return absl::FailedPreconditionError(
          absl::StrCat(url, " holds other things and no ", kMarker,
                       ": records need a location of their own, which no volume serves"));
    }
    if (absl::Status st = db->WriteObject(kMarker, R"({"strata_records": 1})"); !st.ok()) {
      return absl::Status(st.code(),
                          absl::StrCat("cannot set up records in ", url, ": ", st.message()));
    }
  }
  return db;
}

}  // namespace strata::csi
