// `strata cat` and `strata prefetch`: read an origin object through the
// fetcher and the node's chunk store — the operator's way to check an origin
// and warm a node, and the benchmarks' handle on the fetch path.
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <optional>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/errno_status.h"
#include "base/logging.h"
#include "base/size.h"
#include "cmd/admin.h"
#include "cmd/cache_stack.h"
#include "cmd/commands.h"

namespace strata::cmd {
namespace {

struct FetchOpts {
  std::string url;
  CacheFlags cache;
  std::string offset = "0";
  std::string length;
  std::string block = "8MiB";
  std::string digest;
  std::string ca_file;
  bool insecure = false;
  bool stats = false;
};

void AddCommon(CLI::App* c, FetchOpts& o) {
  c->add_option("url", o.url, "Object URL: file:///path, http(s)://host/path")->required();
  AddCacheFlags(*c, o.cache);
  c->add_option("--digest", o.digest,
                "Expected sha256:<hex> of the whole object; nothing unverified is served");
  c->add_option("--ca-file", o.ca_file, "Extra CA bundle for https");
  c->add_flag("--insecure", o.insecure, "Do not verify TLS certificates");
  c->add_flag("--stats", o.stats, "Print fetch statistics to stderr at the end");
}

struct Session {
  CacheStack cache;
  cache::FetchTarget target;
};

// A CA file is named by an absolute path: a node daemon resolves it too.
ObjectRef RefOf(const FetchOpts& o) {
  std::string ca = o.ca_file.empty() ? "" : std::filesystem::absolute(o.ca_file).string();
  return ObjectRef{o.url, o.digest, ca, o.insecure};
}

// The store and a fetcher on it, for `target`. `degrade`: serve without
// caching when the store cannot be used (cat); otherwise that is an error
// (prefetch, whose whole point is the cache).
absl::StatusOr<Session> OpenSession(const FetchOpts& o, cache::FetchTarget target, bool degrade,
                                    const cache::FetcherOptions& fo = {}) {
  auto options = o.cache.Parse();
  if (!options.ok()) return options.status();
  options->store.degrade_on_error = degrade;
  options->fetcher = fo;
  auto cache = OpenCacheStack(*options);
  if (!cache.ok()) return cache.status();
  return Session{std::move(*cache), std::move(target)};
}

absl::StatusOr<Session> Open(const FetchOpts& o, bool degrade) {
  auto target = ResolveTarget(RefOf(o));
  if (!target.ok()) return target.status();
  return OpenSession(o, std::move(*target), degrade);
}

// An origin's error as part of one log line: servers' error pages can hold
// line breaks.
std::string OneLine(absl::string_view text) {
  std::string line(text);
  for (char& c : line) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return line;
}

// The origin could not be asked for the object's stat (`why`, an error a
// retry may cure): a session on the version the origin reported last, as
// the cache recorded it, when every chunk of [offset, offset + length) is
// cached (and checked against the digest, when the object has one). The
// origin is never asked: nothing is fetched, nor read ahead.
absl::StatusOr<Session> OpenOffline(const FetchOpts& o, const absl::Status& why, uint64_t offset,
                                    std::optional<uint64_t> length) {
  auto unresolved = UnresolvedTarget(RefOf(o));
  if (!unresolved.ok()) return unresolved.status();
  cache::FetcherOptions fo;
  fo.readahead_max_bytes = 0;
  fo.max_attempts = 1;
  fo.record_seen = false;  // nothing was seen: the records are what is read
  auto s = OpenSession(o, std::move(*unresolved), /*degrade=*/true, fo);
  if (!s.ok()) return s.status();
  const std::string name = cache::ObjectName(s->target);
  auto unavailable = [&](const std::string& what) {
    return absl::UnavailableError(absl::StrCat("the origin of ", name, " is unreachable (",
                                               OneLine(why.message()), ") and ", what));
  };
  if (absl::Status health = s->cache.store->health(); !health.ok()) {
    return unavailable(
        absl::StrCat("the cache in ", o.cache.dir, " cannot be used: ", health.message()));
  }
  origin::ObjectStat& stat = s->target.stat;
  std::string seen_as;  // which version is served, for the warning
  if (!stat.digest.empty()) {
    // Content-addressed: the bytes are the digest's, whatever the origin
    // said last.
    auto info = s->cache.store->Lookup(stat.digest);
    if (!info) return unavailable(absl::StrCat("no object with ", stat.digest, " is cached"));
    stat.size = info->size;
    seen_as = stat.digest;
  } else {
    auto seen = s->cache.store->LastSeen(name);
    if (!seen) return unavailable("it is not in the cache");
    stat.size = seen->size;
    stat.version = seen->version;
    stat.mtime_ns = seen->mtime_ns;
    stat.digest = seen->digest;
    if (cache::StoreKey(s->target) != seen->key) {
      return unavailable(absl::StrCat("its cache record names another object (", seen->key, ")"));
    }
    seen_as = absl::StrCat("version ", seen->version.empty() ? "\"\"" : seen->version);
  }
  const std::string key = cache::StoreKey(s->target);
  auto info = s->cache.store->Lookup(key);
  if (!info) return unavailable(absl::StrCat("its cached copy (", seen_as, ") was evicted"));
  if (!stat.digest.empty() && !info->digest_verified) {
    return unavailable(
        absl::StrCat("its cached copy is not complete and checked against ", stat.digest));
  }
  uint64_t from = std::min(offset, stat.size);
  uint64_t len = std::min(stat.size - from, length.value_or(stat.size));
  auto missing = s->cache.store->MissingChunks(key, from, len);
  if (!missing.ok()) return unavailable(std::string(missing.status().message()));
  if (!missing->empty()) {
    uint64_t cs = info->chunk_size;
    uint64_t needed = len == 0 ? 0 : (from + len - 1) / cs - from / cs + 1;
    return unavailable(absl::StrFormat(
        "the object is not fully cached (%u of the %u chunks %s are missing)", missing->size(),
        needed, length || offset > 0 ? "of the range asked for" : "it has"));
  }
  spdlog::warn("the origin of {} is unreachable ({}); serving the cached copy of {} ({} bytes)",
               name, OneLine(why.message()), seen_as, stat.size);
  return s;
}

// A reader's session: through the origin, or, when the origin cannot be
// reached (as opposed to answering no), on what the cache holds of the
// version it reported last.
absl::StatusOr<Session> OpenToRead(const FetchOpts& o, uint64_t offset,
                                   std::optional<uint64_t> length) {
  auto target = ResolveTarget(RefOf(o));
  if (target.ok()) return OpenSession(o, std::move(*target), /*degrade=*/true);
  if (origin::IsTransient(target.status())) {
    return OpenOffline(o, target.status(), offset, length);
  }
  return target.status();
}

void PrintStats(const Session& s, double seconds, uint64_t bytes) {
  cache::FetcherStats f = s.cache.fetcher->Stats();
  cache::StoreStats c = s.cache.store->Stats();
  std::fprintf(
      stderr,
      "%llu bytes in %.3fs (%.1f MiB/s); origin: %llu requests, %llu bytes, %llu retries; "
      "cache: %llu hits, %llu misses, %llu chunks written\n",
      static_cast<unsigned long long>(bytes), seconds, bytes / 1048576.0 / seconds,
      static_cast<unsigned long long>(f.origin_requests),
      static_cast<unsigned long long>(f.origin_bytes), static_cast<unsigned long long>(f.retries),
      static_cast<unsigned long long>(c.read_hits), static_cast<unsigned long long>(c.read_misses),
      static_cast<unsigned long long>(c.chunks_written));
}

// What writing to stdout came to.
struct Output {
  enum Result { kDone, kUnsent, kReaderGone, kFailed };
  Result result = kDone;
  uint64_t bytes = 0;
  absl::Status error;  // why, when kFailed
};

Output WriteOut(std::string_view data) {
  Output out;
  while (out.bytes < data.size()) {
    ssize_t w = ::write(1, data.data() + out.bytes, data.size() - out.bytes);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      // A reader that went away (EPIPE) is not an error of ours.
      if (errno == EPIPE) {
        out.result = Output::kReaderGone;
      } else {
        out.result = Output::kFailed;
        out.error = ErrnoStatus(errno, "write to stdout");
      }
      return out;
    }
    out.bytes += static_cast<uint64_t>(w);
  }
  return out;
}

// Writes a leased range to stdout: from memory, or by sendfile from the
// cache file. When stdout takes no sendfile (a terminal), `sendfile_ok` is
// cleared and the rest is kUnsent: the caller reads it through a buffer.
Output Send(const cache::ReadLease& lease, bool& sendfile_ok) {
  if (cache::MemoryParts m = lease.memory(); !m.empty()) {
    Output out = WriteOut(m.head);
    if (out.result != Output::kDone || m.tail.empty()) return out;
    Output tail = WriteOut(m.tail);
    tail.bytes += out.bytes;
    return tail;
  }
  Output out;
  off_t from = static_cast<off_t>(lease.offset());
  while (out.bytes < lease.length()) {
    if (!sendfile_ok) {
      out.result = Output::kUnsent;
      return out;
    }
    ssize_t w = ::sendfile(1, lease.fd(), &from, lease.length() - out.bytes);
    if (w < 0 && errno == EINTR) continue;
    if (w > 0) {
      out.bytes += static_cast<uint64_t>(w);
      continue;
    }
    if (w < 0 && errno == EPIPE) {
      out.result = Output::kReaderGone;
      return out;
    }
    if (w < 0 && (errno == EINVAL || errno == ENOSYS)) {
      sendfile_ok = false;
      continue;
    }
    out.result = Output::kFailed;
    out.error =
        w < 0 ? ErrnoStatus(errno, "write to stdout from the cache")
              : absl::DataLossError("write to stdout from the cache: the cache file is short");
    return out;
  }
  return out;
}

double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

absl::Status Cat(const FetchOpts& co) {
  auto offset = ParseSize(co.offset);
  auto block = ParseSize(co.block);
  if (!offset.ok() || !block.ok() || *block == 0) return UsageError("bad --offset or --block");
  std::optional<uint64_t> length;
  if (!co.length.empty()) {
    auto len = ParseSize(co.length);
    if (!len.ok()) return UsageError(len.status());
    length = *len;
  }
  auto s = OpenToRead(co, *offset, length);
  if (!s.ok()) return s.status();
  uint64_t size = s->target.stat.size;
  uint64_t end = length ? std::min(size, *offset + std::min(*length, size)) : size;
  if (*offset > size) {
    return UsageError(
        absl::StrFormat("--offset %u is past the end of %s (%u bytes)", *offset, co.url, size));
  }
  std::signal(SIGPIPE, SIG_IGN);
  std::vector<char> buf;
  auto t0 = std::chrono::steady_clock::now();
  uint64_t written = 0;
  const std::string key = cache::StoreKey(s->target);
  bool sendfile_ok = true;  // until stdout refuses it
  for (uint64_t pos = *offset; pos < end;) {
    size_t want = std::min<uint64_t>(*block, end - pos);
    const uint64_t stop = pos + want;
    // Cached bytes are written from the store's memory when they were
    // just fetched, else sent from the cache file by sendfile, without
    // a copy through this process; bytes the store could not keep go
    // through a buffer.
    auto kept = s->cache.fetcher->Ensure(s->target, pos, want);
    if (!kept.ok()) return kept.status();
    auto info = *kept ? s->cache.store->Lookup(key) : std::nullopt;
    while (info && pos < stop) {
      // One chunk at a time: a lease within one chunk can be in memory.
      uint64_t cend = (pos / info->chunk_size + 1) * info->chunk_size;
      auto lease = s->cache.store->Lease(key, pos, std::min(stop, cend) - pos);
      if (!lease.ok()) break;  // evicted meanwhile: read the rest
      Output out = Send(*lease, sendfile_ok);
      pos += out.bytes;
      written += out.bytes;
      if (out.result == Output::kReaderGone) return absl::OkStatus();
      if (out.result == Output::kFailed) return out.error;
      if (out.result == Output::kUnsent) break;
    }
    if (pos == stop) continue;
    want = stop - pos;
    buf.resize(*block);
    auto n = s->cache.fetcher->Read(s->target, pos, absl::MakeSpan(buf.data(), want));
    if (!n.ok()) return n.status();
    Output out = WriteOut(std::string_view(buf.data(), *n));
    pos += out.bytes;
    written += out.bytes;
    if (out.result == Output::kReaderGone) return absl::OkStatus();
    if (out.result == Output::kFailed) return out.error;
  }
  if (co.stats) PrintStats(*s, Since(t0), written);
  return absl::OkStatus();
}

// `cache_dir_given`: --cache-dir was on the command line, so this process
// warms that store itself rather than a node daemon's.
absl::Status Prefetch(const FetchOpts& po, const std::string& node_socket, bool cache_dir_given) {
  std::string socket = node_socket;
  if (socket.empty() && !cache_dir_given) {
    std::string daemon = DefaultStateDir() + "/admin.sock";
    struct stat st;
    // A socket that nobody answers was left by a killed daemon: the
    // store is free, so this process warms it itself.
    if (::stat(daemon.c_str(), &st) == 0 && S_ISSOCK(st.st_mode) && NodeAnswers(daemon)) {
      socket = daemon;
    }
  }
  bool tty = ::isatty(2);
  auto t0 = std::chrono::steady_clock::now();
  auto last = t0;
  bool complete_shown = false;  // the 100% line
  // Lines at most every 100 ms on a terminal, 2 s in a log; the
  // complete count always.
  auto progress = [&](uint64_t done, uint64_t total) {
    auto now = std::chrono::steady_clock::now();
    if (done != total && now - last < std::chrono::milliseconds(tty ? 100 : 2000)) return;
    if (done == total) {
      if (complete_shown) return;
      complete_shown = true;
    }
    last = now;
    double pct = total ? 100.0 * done / total : 100;
    int bar = static_cast<int>(pct / 2.5);
    std::fprintf(stderr, "%s[%-40s] %5.1f%% %.1f/%.1f MiB %.1f MiB/s%s", tty ? "\r" : "",
                 std::string(bar, '#').c_str(), pct, done / 1048576.0, total / 1048576.0,
                 done / 1048576.0 / std::max(Since(t0), 1e-3), tty ? "" : "\n");
  };
  if (!socket.empty()) {
    // The daemon holds the store: it fetches, this process shows progress.
    auto bytes = PrefetchThroughNode(socket, RefOf(po), progress);
    // A node that did not report its last count (an empty object; an
    // older daemon) still finished: the line says so.
    if (bytes.ok()) progress(*bytes, *bytes);
    if (tty) std::fprintf(stderr, "\n");
    if (!bytes.ok()) return bytes.status();
    std::printf("prefetched %s (%llu bytes) into the cache of the node daemon at %s\n",
                po.url.c_str(), static_cast<unsigned long long>(*bytes), socket.c_str());
    return absl::OkStatus();
  }
  auto s = Open(po, /*degrade=*/false);
  if (!s.ok()) {
    if (!absl::IsFailedPrecondition(s.status())) return s.status();
    return absl::Status(
        s.status().code(),
        absl::StrCat(s.status().message(),
                     " (a running node daemon: --node-socket STATE_DIR/admin.sock)"));
  }
  absl::Status st = s->cache.fetcher->Prefetch(s->target, {}, progress);
  if (st.ok()) progress(s->target.stat.size, s->target.stat.size);
  if (tty) std::fprintf(stderr, "\n");
  if (!st.ok()) return st;
  std::printf("prefetched %s (%llu bytes) into %s\n", po.url.c_str(),
              static_cast<unsigned long long>(s->target.stat.size), po.cache.dir.c_str());
  if (po.stats) PrintStats(*s, Since(t0), s->target.stat.size);
  return absl::OkStatus();
}

}  // namespace

void AddFetchCommands(CLI::App& app, Runner& run) {
  auto co = std::make_shared<FetchOpts>();
  CLI::App* cat = app.add_subcommand("cat", "Write an origin object to stdout through the cache");
  AddCommon(cat, *co);
  cat->add_option("--offset", co->offset, "First byte")->capture_default_str();
  cat->add_option("--length", co->length, "Bytes to write (default: to the end)");
  cat->add_option("--block", co->block, "Read size")->capture_default_str();
  cat->callback([co, &run] { run = StatusRunner([co] { return Cat(*co); }); });

  auto po = std::make_shared<FetchOpts>();
  auto node_socket = std::make_shared<std::string>();
  CLI::App* pre =
      app.add_subcommand("prefetch", "Warm the node's cache with a whole origin object");
  AddCommon(pre, *po);
  pre->add_option("--node-socket", *node_socket,
                  "Warm a running node daemon's cache through its admin socket (default: "
                  "STATE_DIR/admin.sock when it exists and no --cache-dir is given)");
  CLI::Option* cache_dir_opt = pre->get_option("--cache-dir");
  pre->callback([po, node_socket, cache_dir_opt, &run] {
    run = StatusRunner([po, node_socket, cache_dir_opt] {
      return Prefetch(*po, *node_socket, cache_dir_opt->count() > 0);
    });
  });
}

}  // namespace strata::cmd
