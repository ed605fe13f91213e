// IndexTar: a tar reader that reads headers only and skips over file data,
// through a window of the blob (pax, GNU long names and base-256 numbers
// included; sparse files refused).
#include "fuse/layer_index.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "base/digest.h"
#include "nlohmann/json.hpp"

namespace strata::fuse {
namespace {

constexpr size_t kBlock = 512;
constexpr char kWhiteoutPrefix[] = ".wh.";
constexpr char kOpaque[] = ".wh..wh..opq";

// The blob through a window: header reads cost one read per window.
class Window {
 public:
  Window(const BlobReader& read, uint64_t size, size_t window)
      : read_(read), size_(size), window_(window) {}

  // Bytes [offset, offset + n), which must lie within the blob.
  absl::StatusOr<absl::string_view> At(uint64_t offset, size_t n) {
    if (offset > size_ || n > size_ - offset) {
      return absl::InvalidArgumentError(
          absl::StrCat("the tar needs bytes [", offset, ", +", n, ") past its end (", size_, ")"));
    }
    if (offset < start_ || offset + n > start_ + buf_.size()) {
      uint64_t len = std::min<uint64_t>(std::max(window_, n), size_ - offset);
      buf_.resize(len);
      if (absl::Status st = read_(offset, absl::MakeSpan(buf_)); !st.ok()) return st;
      start_ = offset;
    }
    return absl::string_view(buf_.data() + (offset - start_), n);
  }

 private:
  const BlobReader& read_;
  const uint64_t size_;
  const size_t window_;
  uint64_t start_ = 0;
  std::string buf_;
};

// A header field: NUL-terminated within its width.
std::string Field(absl::string_view h, size_t off, size_t width) {
  absl::string_view f = h.substr(off, width);
  size_t nul = f.find('\0');
  return std::string(f.substr(0, nul));
}

// A numeric field: octal (spaces and NULs around it), or base-256 when the
// first byte's high bit is set.
std::optional<uint64_t> Number(absl::string_view h, size_t off, size_t width) {
  absl::string_view f = h.substr(off, width);
  if (static_cast<unsigned char>(f[0]) & 0x80) {
    if (static_cast<unsigned char>(f[0]) != 0x80) return std::nullopt;  // negative or huge
    uint64_t v = 0;
    for (size_t i = 1; i < f.size(); ++i) {
      if (v >> 56) return std::nullopt;
      v = (v << 8) | static_cast<unsigned char>(f[i]);
    }
    return v;
  }
  size_t i = 0;
  while (i < f.size() && (f[i] == ' ' || f[i] == '\0')) ++i;
  uint64_t v = 0;
  bool any = false;
  for (; i < f.size() && f[i] >= '0' && f[i] <= '7'; ++i) {
    if (v >> 60) return std::nullopt;
    v = v * 8 + (f[i] - '0');
    any = true;
  }
  for (; i < f.size(); ++i) {
    if (f[i] != ' ' && f[i] != '\0') return std::nullopt;
  }
  if (!any) return 0;
  return v;
}

bool ChecksumOk(absl::string_view h) {
  auto want = Number(h, 148, 8);
  if (!want) return false;
  uint64_t unsigned_sum = 0;
  int64_t signed_sum = 0;
  for (size_t i = 0; i < kBlock; ++i) {
    char c = (i >= 148 && i < 156) ? ' ' : h[i];
    unsigned_sum += static_cast<unsigned char>(c);
    signed_sum += static_cast<signed char>(c);
  }
  return *want == unsigned_sum || static_cast<int64_t>(*want) == signed_sum;
}

bool AllZero(absl::string_view b) {
  return std::all_of(b.begin(), b.end(), [](char c) { return c == '\0'; });
}

// Pax records: "LEN KEY=VALUE\n" each, LEN counting the whole record.
absl::Status ParsePax(absl::string_view data, std::map<std::string, std::string>& out) {
  while (!data.empty()) {
    size_t sp = data.find(' ');
    uint64_t len = 0;
    if (sp == absl::string_view::npos || !absl::SimpleAtoi(data.substr(0, sp), &len) ||
        len <= sp + 1 || len > data.size() || data[len - 1] != '\n') {
      return absl::InvalidArgumentError("a pax header record is malformed");
    }
    absl::string_view rec = data.substr(sp + 1, len - sp - 2);
    size_t eq = rec.find('=');
    if (eq == absl::string_view::npos || eq == 0) {
      return absl::InvalidArgumentError("a pax header record has no key");
    }
    out[std::string(rec.substr(0, eq))] = std::string(rec.substr(eq + 1));
    data.remove_prefix(len);
  }
  return absl::OkStatus();
}

// A tar name as a list of components: "/", "./" and "." parts dropped,
// ".." refused. Empty: the root.
absl::StatusOr<std::vector<std::string>> CleanName(const std::string& name, uint64_t max) {
  if (name.size() > max) {
    return absl::InvalidArgumentError(absl::StrCat("a name is longer than ", max, " bytes"));
  }
  if (name.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("a name holds a NUL byte");
  }
  std::vector<std::string> parts;
  for (absl::string_view p : absl::StrSplit(name, '/')) {
    if (p.empty() || p == ".") continue;
    if (p == "..") {
      return absl::InvalidArgumentError(
          absl::StrCat("entry \"", absl::CHexEscape(name), "\" climbs out with \"..\""));
    }
    parts.emplace_back(p);
  }
  return parts;
}

// What an entry says of itself (a directory's attributes, not its
// children).
void CopyAttrs(const LayerNode& from, LayerNode& to) {
  to.mode = from.mode;
  to.uid = from.uid;
  to.gid = from.gid;
  to.mtime_ns = from.mtime_ns;
  to.xattrs = from.xattrs;
}

class Indexer {
 public:
  Indexer(const BlobReader& read, uint64_t size, const IndexLimits& limits)
      : win_(read, size, limits.window), size_(size), limits_(limits) {
    LayerNode root;
    root.mode = S_IFDIR | 0755;
    root.nlink = 2;
    index_.nodes.push_back(root);
    index_.blob_size = size;
  }

  absl::StatusOr<LayerIndex> Run() {
    uint64_t off = 0;
    std::map<std::string, std::string> global, local;
    std::optional<std::string> long_name, long_link;
    while (true) {
      if (off == size_) break;  // no end-of-archive blocks: tolerated
      auto h = win_.At(off, kBlock);
      if (!h.ok()) return h.status();
      if (AllZero(*h)) break;  // the end of the archive
      if (!ChecksumOk(*h)) {
        return absl::InvalidArgumentError(absl::StrCat("the tar header at ", off, " is corrupt"));
      }
      auto size = Number(*h, 124, 12);
      if (!size) return absl::InvalidArgumentError(absl::StrCat("bad size at ", off));
      char type = (*h)[156];
      uint64_t data = off + kBlock;
      uint64_t file_size = *size;
      if (local.count("size")) {
        if (!absl::SimpleAtoi(local["size"], &file_size)) {
          return absl::InvalidArgumentError(absl::StrCat("bad pax size at ", off));
        }
      }
      // Header-only types carry no data whatever their size field says
      // (GNU tar writes 0; pax's size only counts for regular files).
      uint64_t data_len =
          (type == '0' || type == '\0' || type == '7' || type == 'x' || type == 'g' ||
           type == 'L' || type == 'K')
              ? (type == 'x' || type == 'g' || type == 'L' || type == 'K' ? *size : file_size)
              : 0;
      if (data > size_ || data_len > size_ - data) {
        return absl::InvalidArgumentError(absl::StrCat("entry at ", off, " claims ", data_len,
                                                       " bytes past the end of the layer"));
      }
      uint64_t next = data + (data_len + kBlock - 1) / kBlock * kBlock;
      if (next > size_) next = size_;  // the last entry's padding may be cut
      if (type == 'x' || type == 'g' || type == 'L' || type == 'K') {
        if (data_len > limits_.max_pax) {
          return absl::InvalidArgumentError(absl::StrCat("a ", std::string(1, type), " record of ",
                                                         data_len, " bytes at ", off,
                                                         " is larger than ", limits_.max_pax));
        }
        auto body = win_.At(data, data_len);
        if (!body.ok()) return body.status();
        if (type == 'x' || type == 'g') {
          if (absl::Status st = ParsePax(*body, type == 'x' ? local : global); !st.ok()) {
            return absl::InvalidArgumentError(absl::StrCat(st.message(), " at ", off));
          }
        } else {
          std::string v(body->substr(0, body->find('\0')));
          (type == 'L' ? long_name : long_link) = std::move(v);
        }
        off = next;
        continue;
      }
      std::map<std::string, std::string> pax = global;
      for (auto& [k, v] : local) pax[k] = v;
      local.clear();
      std::string name = Field(*h, 0, 100);
      std::string magic = Field(*h, 257, 6);
      if (magic == "ustar") {  // POSIX ustar: a prefix field
        std::string prefix = Field(*h, 345, 155);
        if (!prefix.empty()) name = prefix + "/" + name;
      }
      if (long_name) name = *long_name;
      if (pax.count("path")) name = pax["path"];
      std::string link = Field(*h, 157, 100);
      if (long_link) link = *long_link;
      if (pax.count("linkpath")) link = pax["linkpath"];
      long_name.reset();
      long_link.reset();
      if (++index_.files > limits_.max_entries) {
        return absl::InvalidArgumentError(
            absl::StrCat("the layer has more than ", limits_.max_entries, " entries"));
      }
      if (absl::Status st = Add(*h, type, name, link, data, file_size, pax); !st.ok()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "entry \"", absl::CHexEscape(name.substr(0, 256)), "\" at ", off, ": ", st.message()));
      }
      off = next;
    }
    return std::move(index_);
  }

 private:
  absl::Status Add(absl::string_view h, char type, const std::string& name, const std::string& link,
                   uint64_t data, uint64_t file_size,
                   const std::map<std::string, std::string>& pax) {
    auto parts = CleanName(name, limits_.max_name);
    if (!parts.ok()) return parts.status();
    LayerNode n;
    auto mode = Number(h, 100, 8);
    auto uid = Number(h, 108, 8);
    auto gid = Number(h, 116, 8);
    auto mtime = Number(h, 136, 12);
    if (!mode || !uid || !gid || !mtime) return absl::InvalidArgumentError("bad numeric field");
    n.mode = static_cast<uint32_t>(*mode & 07777);
    n.uid = static_cast<uint32_t>(*uid);
    n.gid = static_cast<uint32_t>(*gid);
    n.mtime_ns =
        static_cast<int64_t>(std::min<uint64_t>(*mtime, INT64_MAX / 1000000000)) * 1000000000;
    auto num = [&](const char* key, auto& into) {
      auto it = pax.find(key);
      if (it == pax.end()) return true;
      uint64_t v = 0;
      if (!absl::SimpleAtoi(it->second, &v) || v > UINT32_MAX) return false;
      into = static_cast<uint32_t>(v);
      return true;
    };
    if (!num("uid", n.uid) || !num("gid", n.gid)) {
      return absl::InvalidArgumentError("bad pax uid or gid");
    }
    if (auto it = pax.find("mtime"); it != pax.end()) {
      double secs = 0;
      if (!absl::SimpleAtod(it->second, &secs) || !(secs >= 0 && secs <= 9e9)) {
        return absl::InvalidArgumentError("bad pax mtime");
      }
      n.mtime_ns = static_cast<int64_t>(secs * 1e9);
    }
    for (const auto& [k, v] : pax) {
      if (absl::StartsWith(k, "SCHILY.xattr.")) n.xattrs[k.substr(13)] = v;
      if (absl::StartsWith(k, "GNU.sparse.")) {
        return absl::InvalidArgumentError("sparse files are not read lazily");
      }
    }
    return Insert(type, name, link, std::move(n), file_size, data);
  }

 public:
  // Adds an entry of tar type `type` ('0' regular, '5' directory, '2'
  // symlink, '1' hard link to `link`, '6' fifo) with `n`'s attributes; a
  // regular file's bytes are `file_size` at `data`. Whiteouts and opaque
  // markers by name. last_placed() is then the entry's node (0 for an
  // opaque marker).
  absl::Status Insert(char type, const std::string& name, const std::string& link, LayerNode n,
                      uint64_t file_size, uint64_t data) {
    last_placed_ = 0;
    auto parts = CleanName(name, limits_.max_name);
    if (!parts.ok()) return parts.status();
    // Whiteouts: ".wh..wh..opq" makes the directory opaque; ".wh.NAME"
    // hides NAME below, as a 0/0 character device for overlayfs.
    if (!parts->empty()) {
      const std::string& base = parts->back();
      if (base == kOpaque) {
        parts->pop_back();
        auto dir = Dir(*parts);
        if (!dir.ok()) return dir.status();
        index_.nodes[*dir].opaque = true;
        return absl::OkStatus();
      }
      if (absl::StartsWith(base, kWhiteoutPrefix)) {
        std::string hidden = base.substr(strlen(kWhiteoutPrefix));
        if (hidden.empty() || absl::StartsWith(hidden, kWhiteoutPrefix)) {
          return absl::InvalidArgumentError("an unknown whiteout form");
        }
        parts->back() = hidden;
        LayerNode w;
        w.mode = S_IFCHR;
        w.rdev = makedev(0, 0);
        w.mtime_ns = n.mtime_ns;
        return Place(*parts, std::move(w));
      }
    }
    switch (type) {
      case '0':
      case '\0':
      case '7':
        n.mode |= S_IFREG;
        n.size = file_size;
        n.offset = data;
        return Place(*parts, std::move(n));
      case '5':
        n.mode |= S_IFDIR;
        return PlaceDir(*parts, std::move(n));
      case '2':
        if (link.empty() || link.size() > limits_.max_name ||
            link.find('\0') != std::string::npos) {
          return absl::InvalidArgumentError("a symlink with an empty or bad target");
        }
        n.mode |= S_IFLNK;
        n.link = link;
        n.size = link.size();
        return Place(*parts, std::move(n));
      case '6':
        n.mode |= S_IFIFO;
        return Place(*parts, std::move(n));
      case '1': {
        auto target = CleanName(link, limits_.max_name);
        if (!target.ok()) return target.status();
        auto node = Find(*target);
        if (!node || !S_ISREG(index_.nodes[*node].mode)) {
          return absl::InvalidArgumentError(
              absl::StrCat("a hard link to \"", absl::CHexEscape(link.substr(0, 256)),
                           "\", which is not an earlier regular file of this layer"));
        }
        return Link(*parts, *node);
      }
      case '3':
      case '4':
        return absl::InvalidArgumentError("device nodes are not served from lazy layers");
      default:
        return absl::InvalidArgumentError(absl::StrCat(
            "entry type '", absl::CHexEscape(std::string(1, type)), "' is not read lazily"));
    }
  }

  uint32_t last_placed() const { return last_placed_; }
  LayerIndex& index() { return index_; }

 private:
  std::optional<uint32_t> Find(const std::vector<std::string>& parts) const {
    uint32_t cur = 0;
    for (const std::string& p : parts) {
      const LayerNode& d = index_.nodes[cur];
      if (!S_ISDIR(d.mode)) return std::nullopt;
      auto it = d.children.find(p);
      if (it == d.children.end()) return std::nullopt;
      cur = it->second;
    }
    return cur;
  }

  // The directory at `parts`, made (0755, root's) where the layer names
  // files in it before, or without, the directory itself.
  absl::StatusOr<uint32_t> Dir(const std::vector<std::string>& parts) {
    uint32_t cur = 0;
    for (const std::string& p : parts) {
      auto it = index_.nodes[cur].children.find(p);
      if (it != index_.nodes[cur].children.end()) {
        if (!S_ISDIR(index_.nodes[it->second].mode)) {
          return absl::InvalidArgumentError(
              absl::StrCat("\"", absl::CHexEscape(p), "\" is used as a directory but is not one"));
        }
        cur = it->second;
        continue;
      }
      LayerNode d;
      d.mode = S_IFDIR | 0755;
      d.nlink = 2;
      d.parent = cur;
      uint32_t id = static_cast<uint32_t>(index_.nodes.size());
      index_.nodes.push_back(std::move(d));
      index_.nodes[cur].children[p] = id;
      index_.nodes[cur].nlink++;
      cur = id;
    }
    return cur;
  }

  // The directory a new entry `parts` goes in (made where missing) and its
  // name there, which must be free.
  absl::StatusOr<std::pair<uint32_t, std::string>> Slot(std::vector<std::string> parts,
                                                        const char* root_error) {
    if (parts.empty()) return absl::InvalidArgumentError(root_error);
    std::string base = std::move(parts.back());
    parts.pop_back();
    auto dir = Dir(parts);
    if (!dir.ok()) return dir.status();
    if (index_.nodes[*dir].children.count(base)) {
      return absl::InvalidArgumentError("the layer names it twice");
    }
    return std::make_pair(*dir, std::move(base));
  }

  absl::Status Place(std::vector<std::string> parts, LayerNode n) {
    auto slot = Slot(std::move(parts), "only a directory may be the root");
    if (!slot.ok()) return slot.status();
    n.parent = slot->first;
    uint32_t id = static_cast<uint32_t>(index_.nodes.size());
    index_.nodes.push_back(std::move(n));
    index_.nodes[slot->first].children[slot->second] = id;
    last_placed_ = id;
    return absl::OkStatus();
  }

  // A directory entry: made, or its attributes set if only its children
  // had made it so far (or it is the root).
  absl::Status PlaceDir(const std::vector<std::string>& parts, LayerNode n) {
    if (parts.empty()) {
      LayerNode& root = index_.nodes[0];
      if (explicit_root_) return absl::InvalidArgumentError("the layer names the root twice");
      explicit_root_ = true;
      CopyAttrs(n, root);
      return absl::OkStatus();
    }
    std::vector<std::string> up(parts.begin(), parts.end() - 1);
    auto parent = Dir(up);
    if (!parent.ok()) return parent.status();
    auto& children = index_.nodes[*parent].children;
    auto it = children.find(parts.back());
    if (it == children.end()) {
      auto made = Dir(parts);
      if (!made.ok()) return made.status();
      it = index_.nodes[*parent].children.find(parts.back());
    } else if (!S_ISDIR(index_.nodes[it->second].mode) || named_dirs_.count(it->second)) {
      return absl::InvalidArgumentError("the layer names it twice");
    }
    uint32_t id = it->second;
    named_dirs_.insert(id);
    last_placed_ = id;
    CopyAttrs(n, index_.nodes[id]);
    return absl::OkStatus();
  }

  absl::Status Link(std::vector<std::string> parts, uint32_t target) {
    auto slot = Slot(std::move(parts), "a hard link cannot be the root");
    if (!slot.ok()) return slot.status();
    index_.nodes[slot->first].children[slot->second] = target;
    index_.nodes[target].nlink++;
    last_placed_ = target;
    return absl::OkStatus();
  }

  Window win_;
  const uint64_t size_;
  const IndexLimits limits_;
  LayerIndex index_;
  bool explicit_root_ = false;
  uint32_t last_placed_ = 0;
  std::set<uint32_t> named_dirs_;
};

}  // namespace

namespace {

constexpr uint64_t kIndexFormat = 2;

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

void PutString(std::string& out, std::string_view s) {
  PutVarint(out, s.size());
  out.append(s);
}

class IndexReader {
 public:
  explicit IndexReader(std::string_view in) : in_(in) {}
  bool Varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (in_.empty()) return false;
      uint8_t b = static_cast<uint8_t>(in_[0]);
      in_.remove_prefix(1);
      v |= uint64_t{b & 0x7fu} << shift;
      if (!(b & 0x80)) return true;
    }
    return false;
  }
  bool String(std::string& s) {
    uint64_t n = 0;
    if (!Varint(n) || n > in_.size()) return false;
    s.assign(in_.data(), n);
    in_.remove_prefix(n);
    return true;
  }
  bool done() const { return in_.empty(); }

 private:
  std::string_view in_;
};

}  // namespace

std::string EncodeIndex(const LayerIndex& index) {
  std::string out;
  PutVarint(out, kIndexFormat);
  PutVarint(out, index.blob_size);
  PutVarint(out, index.files);
  PutVarint(out, static_cast<uint64_t>(index.format));
  PutVarint(out, index.chunk_size);
  PutVarint(out, index.prefetch_end);
  PutVarint(out, index.nodes.size());
  for (const LayerNode& n : index.nodes) {
    for (uint64_t v :
         {uint64_t{n.mode}, uint64_t{n.uid}, uint64_t{n.gid}, static_cast<uint64_t>(n.mtime_ns),
          n.size, n.offset, n.rdev, uint64_t{n.nlink}, uint64_t{n.parent}, uint64_t{n.opaque}}) {
      PutVarint(out, v);
    }
    PutString(out, n.link);
    PutVarint(out, n.xattrs.size());
    for (const auto& [k, v] : n.xattrs) {
      PutString(out, k);
      PutString(out, v);
    }
    PutVarint(out, n.children.size());
    for (const auto& [name, id] : n.children) {
      PutString(out, name);
      PutVarint(out, id);
    }
    PutString(out, n.digest);
    PutVarint(out, n.chunks.size());
    for (const LayerChunk& c : n.chunks) {
      PutVarint(out, c.blob_offset);
      PutVarint(out, c.blob_end);
      PutVarint(out, c.file_offset);
      PutVarint(out, c.size);
      PutString(out, c.digest);
    }
  }
  return out;
}

absl::StatusOr<LayerIndex> DecodeIndex(std::string_view bytes) {
  IndexReader r(bytes);
  auto bad = [] { return absl::DataLossError("a stored layer index does not decode"); };
  uint64_t format = 0, count = 0;
  LayerIndex index;
  uint64_t layer_format = 0;
  if (!r.Varint(format) || format != kIndexFormat || !r.Varint(index.blob_size) ||
      !r.Varint(index.files) || !r.Varint(layer_format) || layer_format > 1 ||
      !r.Varint(index.chunk_size) || !r.Varint(index.prefetch_end) || !r.Varint(count) ||
      count == 0 || count > bytes.size()) {
    return bad();
  }
  index.format = static_cast<LayerFormat>(layer_format);
  index.nodes.resize(count);
  for (LayerNode& n : index.nodes) {
    uint64_t v[10];
    for (uint64_t& x : v) {
      if (!r.Varint(x)) return bad();
    }
    n.mode = static_cast<uint32_t>(v[0]);
    n.uid = static_cast<uint32_t>(v[1]);
    n.gid = static_cast<uint32_t>(v[2]);
    n.mtime_ns = static_cast<int64_t>(v[3]);
    n.size = v[4];
    n.offset = v[5];
    n.rdev = v[6];
    n.nlink = static_cast<uint32_t>(v[7]);
    n.parent = static_cast<uint32_t>(v[8]);
    n.opaque = v[9] != 0;
    if (n.parent >= count || !r.String(n.link)) return bad();
    // Extents are checked again: a file's bytes must lie within the blob.
    if (S_ISREG(n.mode) && index.format == LayerFormat::kTar &&
        (n.offset > index.blob_size || n.size > index.blob_size - n.offset)) {
      return bad();
    }
    uint64_t m = 0;
    if (!r.Varint(m)) return bad();
    for (uint64_t i = 0; i < m; ++i) {
      std::string k, val;
      if (!r.String(k) || !r.String(val)) return bad();
      n.xattrs[k] = val;
    }
    if (!r.Varint(m)) return bad();
    for (uint64_t i = 0; i < m; ++i) {
      std::string name;
      uint64_t id = 0;
      if (!r.String(name) || !r.Varint(id) || id == 0 || id >= count || name.empty() ||
          name.find('/') != std::string::npos || name == "." || name == "..") {
        return bad();
      }
      n.children[name] = static_cast<uint32_t>(id);
    }
    if (!r.String(n.digest) || !r.Varint(m) || m > bytes.size()) return bad();
    uint64_t expect = 0;
    for (uint64_t i = 0; i < m; ++i) {
      LayerChunk c;
      if (!r.Varint(c.blob_offset) || !r.Varint(c.blob_end) || !r.Varint(c.file_offset) ||
          !r.Varint(c.size) || !r.String(c.digest) || c.file_offset != expect ||
          c.blob_offset >= c.blob_end || c.blob_end > index.blob_size) {
        return bad();
      }
      expect += c.size;
      n.chunks.push_back(std::move(c));
    }
    if (m > 0 && expect != n.size) return bad();
  }
  if (!r.done() || !S_ISDIR(index.nodes[0].mode)) return bad();
  return index;
}

bool LooksLikeTar(absl::Span<const char> first_block) {
  if (first_block.size() < kBlock) return false;
  absl::string_view h(first_block.data(), kBlock);
  return !AllZero(h) && ChecksumOk(h);
}

absl::StatusOr<LayerIndex> IndexRawFile(const std::string& path, uint64_t size, int64_t mtime_ns) {
  BlobReader none = [](uint64_t, absl::Span<char>) {
    return absl::InternalError("a raw layer reads no tar");
  };
  Indexer b(none, size, IndexLimits{});
  LayerNode n;
  n.mode = 0444;
  n.mtime_ns = mtime_ns;
  b.index().files = 1;
  if (absl::Status st = b.Insert('0', path, "", std::move(n), size, 0); !st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("file \"", absl::CHexEscape(path.substr(0, 256)), "\": ", st.message()));
  }
  if (b.last_placed() == 0 || !S_ISREG(b.index().nodes[b.last_placed()].mode)) {
    return absl::InvalidArgumentError("a raw layer's name must be a file's");
  }
  return std::move(b.index());
}

absl::StatusOr<LayerIndex> IndexTar(const BlobReader& read, uint64_t blob_size,
                                    const IndexLimits& limits) {
  return Indexer(read, blob_size, limits).Run();
}

}  // namespace strata::fuse

// eStargz: the footer, the TOC and the tree it describes.
namespace strata::fuse {
namespace {

constexpr size_t kFooterSize = 51;
constexpr uint64_t kMaxTocBytes = 64ull << 20;  // compressed or not
constexpr char kTocName[] = "stargz.index.json";
constexpr char kPrefetchLandmark[] = ".prefetch.landmark";
constexpr char kNoPrefetchLandmark[] = ".no.prefetch.landmark";

// The TOC's offset from the 51-byte footer: an empty gzip member whose
// extra field (SI1 'S', SI2 'G') holds "%016xSTARGZ".
std::optional<uint64_t> FooterTocOffset(std::string_view f) {
  if (f.size() != kFooterSize || static_cast<uint8_t>(f[0]) != 0x1f ||
      static_cast<uint8_t>(f[1]) != 0x8b || f[2] != 8 || !(f[3] & 4)) {
    return std::nullopt;
  }
  auto le16 = [&](size_t at) {
    return static_cast<uint8_t>(f[at]) | static_cast<uint8_t>(f[at + 1]) << 8;
  };
  if (le16(10) != 26 || f[12] != 'S' || f[13] != 'G' || le16(14) != 22 ||
      f.substr(32, 6) != "STARGZ") {
    return std::nullopt;
  }
  uint64_t off = 0;
  for (char c : f.substr(16, 16)) {
    int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (v < 0) return std::nullopt;
    off = off << 4 | static_cast<uint64_t>(v);
  }
  return off;
}

bool IsSha256(const std::string& d) {
  return d.size() == 71 && d.compare(0, 7, "sha256:") == 0 &&
         d.find_first_not_of("0123456789abcdef", 7) == std::string::npos;
}

}  // namespace

absl::StatusOr<std::string> InflateMember(std::string_view compressed, size_t want) {
  z_stream z{};
  if (inflateInit2(&z, 16 + MAX_WBITS) != Z_OK) return absl::InternalError("zlib init failed");
  std::string out(want, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(compressed.data()));
  z.avail_in = static_cast<uInt>(std::min<size_t>(compressed.size(), UINT32_MAX));
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(want);
  int rc = Z_OK;
  while (z.avail_out > 0 && rc == Z_OK) rc = inflate(&z, Z_NO_FLUSH);
  size_t got = want - z.avail_out;
  inflateEnd(&z);
  if (rc != Z_OK && rc != Z_STREAM_END && !(rc == Z_BUF_ERROR && got == want)) {
    return absl::DataLossError(absl::StrCat("not a gzip member (zlib: ", rc, ")"));
  }
  out.resize(got);
  return out;
}

absl::StatusOr<LayerIndex> IndexEstargz(const BlobReader& read, uint64_t blob_size,
                                        const std::string& toc_digest, const IndexLimits& limits) {
  if (blob_size < kFooterSize) return absl::FailedPreconditionError("too small for eStargz");
  std::string footer(kFooterSize, '\0');
  if (absl::Status st = read(blob_size - kFooterSize, absl::MakeSpan(footer)); !st.ok()) return st;
  auto toc_off = FooterTocOffset(footer);
  if (!toc_off) return absl::FailedPreconditionError("no eStargz footer");
  if (toc_digest.empty()) {
    return absl::FailedPreconditionError(
        "an eStargz layer without its TOC digest annotation (nothing vouches for its TOC)");
  }
  const uint64_t toc_end = blob_size - kFooterSize;
  if (*toc_off >= toc_end || toc_end - *toc_off > kMaxTocBytes) {
    return absl::InvalidArgumentError("the eStargz footer points outside the blob");
  }
  std::string compressed(toc_end - *toc_off, '\0');
  if (absl::Status st = read(*toc_off, absl::MakeSpan(compressed)); !st.ok()) return st;
  auto tar = InflateMember(compressed, kMaxTocBytes + 1024);
  if (!tar.ok())
    return absl::InvalidArgumentError(absl::StrCat("the TOC: ", tar.status().message()));
  // One tar entry, stargz.index.json.
  if (tar->size() < kBlock || !ChecksumOk(absl::string_view(tar->data(), kBlock)) ||
      Field(absl::string_view(tar->data(), kBlock), 0, 100) != kTocName) {
    return absl::InvalidArgumentError("the TOC member holds no stargz.index.json");
  }
  auto json_size = Number(absl::string_view(tar->data(), kBlock), 124, 12);
  if (!json_size || *json_size > tar->size() - kBlock) {
    return absl::InvalidArgumentError("the TOC's size is wrong");
  }
  std::string json_text = tar->substr(kBlock, *json_size);
  std::string got = "sha256:" + Sha256Hex(json_text);
  if (got != toc_digest) {
    return absl::InvalidArgumentError(
        absl::StrCat("the TOC's digest is ", got, ", not ", toc_digest, " as the image says"));
  }
  nlohmann::json toc = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (!toc.is_object() || toc.value("version", 0) != 1 || !toc.contains("entries") ||
      !toc["entries"].is_array()) {
    return absl::InvalidArgumentError("the TOC is not an eStargz TOC of version 1");
  }
  const nlohmann::json& entries = toc["entries"];
  if (entries.size() > limits.max_entries) {
    return absl::InvalidArgumentError(
        absl::StrCat("the layer has more than ", limits.max_entries, " entries"));
  }
  // Where each chunk's member ends: at the next member any entry starts.
  std::vector<uint64_t> starts = {*toc_off};
  for (const auto& e : entries) {
    if (e.is_object() && e.contains("offset") && e["offset"].is_number_unsigned()) {
      starts.push_back(e["offset"].get<uint64_t>());
    }
  }
  std::sort(starts.begin(), starts.end());
  starts.erase(std::unique(starts.begin(), starts.end()), starts.end());

  BlobReader none = [](uint64_t, absl::Span<char>) {
    return absl::InternalError("an eStargz index reads no tar");
  };
  Indexer b(none, blob_size, limits);
  b.index().format = LayerFormat::kEstargz;
  std::map<std::string, uint32_t> regular;  // name -> node, for its later chunks
  uint64_t chunk_size = 0;
  for (const auto& e : entries) {
    if (!e.is_object()) return absl::InvalidArgumentError("a TOC entry is not an object");
    std::string name = e.value("name", "");
    std::string type = e.value("type", "");
    auto fail = [&](const std::string& why) {
      return absl::InvalidArgumentError(
          absl::StrCat("TOC entry \"", absl::CHexEscape(name.substr(0, 256)), "\": ", why));
    };
    if (name == kPrefetchLandmark || name == kNoPrefetchLandmark) {
      if (name == kPrefetchLandmark) b.index().prefetch_end = e.value("offset", uint64_t{0});
      continue;  // markers for the reader, not files of the image
    }
    auto u64 = [&](const char* key) -> std::optional<uint64_t> {
      if (!e.contains(key)) return uint64_t{0};
      if (!e[key].is_number_unsigned()) return std::nullopt;
      return e[key].get<uint64_t>();
    };
    auto offset = u64("offset"), size = u64("size"), chunk_offset = u64("chunkOffset"),
         csize = u64("chunkSize"), mode = u64("mode"), uid = u64("uid"), gid = u64("gid");
    if (!offset || !size || !chunk_offset || !csize || !mode || !uid || !gid || *uid > UINT32_MAX ||
        *gid > UINT32_MAX) {
      return fail("a number field is not a number of its range");
    }
    if (type == "chunk") {
      auto it = regular.find(name);
      if (it == regular.end()) return fail("a chunk of no earlier regular file");
      LayerNode& n = b.index().nodes[it->second];
      uint64_t expect = n.chunks.empty() ? 0 : n.chunks.back().file_offset + n.chunks.back().size;
      if (*chunk_offset != expect || n.chunks.empty() || n.chunks.back().size == 0) {
        return fail("chunks out of order");
      }
      uint64_t len = *csize != 0 ? *csize : n.size - std::min(n.size, *chunk_offset);
      auto end = std::upper_bound(starts.begin(), starts.end(), *offset);
      LayerChunk c{*offset, end == starts.end() ? 0 : *end, *chunk_offset, len,
                   e.value("chunkDigest", "")};
      if (!IsSha256(c.digest)) return fail("a chunk without a sha256 chunkDigest");
      n.chunks.push_back(std::move(c));
      continue;
    }
    LayerNode n;
    n.mode = static_cast<uint32_t>(*mode & 07777);
    n.uid = static_cast<uint32_t>(*uid);
    n.gid = static_cast<uint32_t>(*gid);
    std::string modtime = e.value("modtime", "");
    if (!modtime.empty()) {
      absl::Time t;
      std::string err;
      if (!absl::ParseTime(absl::RFC3339_full, modtime, &t, &err)) return fail("bad modtime");
      n.mtime_ns = absl::ToUnixNanos(t);
    }
    if (e.contains("xattrs") && e["xattrs"].is_object()) {
      for (const auto& [k, v] : e["xattrs"].items()) {
        std::string raw;
        if (!v.is_string() || !absl::Base64Unescape(v.get<std::string>(), &raw)) {
          return fail("an xattr value is not base64");
        }
        n.xattrs[k] = raw;
      }
    }
    char tar_type = 0;
    if (type == "dir") {
      tar_type = '5';
    } else if (type == "reg") {
      tar_type = '0';
    } else if (type == "symlink") {
      tar_type = '2';
    } else if (type == "hardlink") {
      tar_type = '1';
    } else if (type == "fifo") {
      tar_type = '6';
    } else if (type == "char" || type == "block") {
      tar_type = '3';
    } else {
      return fail(absl::StrCat("unknown type \"", absl::CHexEscape(type.substr(0, 32)), "\""));
    }
    if (++b.index().files > limits.max_entries) return fail("too many entries");
    if (absl::Status st = b.Insert(tar_type, name, e.value("linkName", ""), std::move(n), *size, 0);
        !st.ok()) {
      return fail(std::string(st.message()));
    }
    if (tar_type != '0' || b.last_placed() == 0) continue;
    LayerNode& placed = b.index().nodes[b.last_placed()];
    if (!S_ISREG(placed.mode)) continue;  // a whiteout
    placed.offset = 0;
    placed.digest = e.value("digest", "");
    regular[name] = b.last_placed();
    if (*size == 0) continue;
    uint64_t len = *csize != 0 ? *csize : *size;
    auto end = std::upper_bound(starts.begin(), starts.end(), *offset);
    LayerChunk c{*offset, end == starts.end() ? 0 : *end, 0, len, e.value("chunkDigest", "")};
    if (!IsSha256(c.digest)) return fail("a regular file without a sha256 chunkDigest");
    placed.chunks.push_back(std::move(c));
  }
  // Every file's chunks cover it, lie before the TOC and, but for its last,
  // have the layer's one chunk size.
  for (LayerNode& n : b.index().nodes) {
    if (!S_ISREG(n.mode) || n.size == 0) continue;
    uint64_t covered = 0;
    for (size_t i = 0; i < n.chunks.size(); ++i) {
      const LayerChunk& c = n.chunks[i];
      if (c.size == 0 || c.blob_end == 0 || c.blob_offset >= c.blob_end || c.blob_end > *toc_off) {
        return absl::InvalidArgumentError("a chunk lies outside the blob's data");
      }
      if (i + 1 < n.chunks.size()) {
        if (chunk_size == 0) chunk_size = c.size;
        if (c.size != chunk_size) {
          return absl::InvalidArgumentError("the layer's files are chunked in more than one size");
        }
      }
      covered += c.size;
    }
    if (covered != n.size) return absl::InvalidArgumentError("a file's chunks do not cover it");
  }
  if (chunk_size == 0) chunk_size = 4 << 20;
  if (chunk_size % 4096 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunks of ", chunk_size, " bytes (not a multiple of 4096)"));
  }
  for (const LayerNode& n : b.index().nodes) {
    if (S_ISREG(n.mode) && n.chunks.size() == 1 && n.size > chunk_size) {
      return absl::InvalidArgumentError("a file in one chunk larger than the layer's chunks");
    }
  }
  b.index().chunk_size = chunk_size;
  return std::move(b.index());
}

}  // namespace strata::fuse

// MergeLayers: each layer walked into one tree, bottom first.
namespace strata::fuse {
namespace {

class Merger {
 public:
  Merger() {
    LayerNode root;
    root.mode = S_IFDIR | 0755;
    out_.nodes.push_back(root);
  }

  void Add(uint32_t layer, const LayerIndex& l) {
    std::map<uint32_t, uint32_t> copied;  // the layer's file nodes already in: hard links
    Walk(layer, l, 0, 0, copied);
    out_.files += l.files;
  }

  LayerIndex Done() {
    out_.merged = true;
    // Link counts as the merged tree has them.
    std::vector<uint32_t> names(out_.nodes.size(), 0);
    std::vector<bool> reachable(out_.nodes.size(), false);
    std::vector<uint32_t> stack = {0};
    reachable[0] = true;
    while (!stack.empty()) {
      uint32_t d = stack.back();
      stack.pop_back();
      uint32_t subdirs = 0;
      for (const auto& [name, id] : out_.nodes[d].children) {
        ++names[id];
        if (S_ISDIR(out_.nodes[id].mode)) {
          ++subdirs;
          if (!reachable[id]) stack.push_back(id);
        }
        reachable[id] = true;
      }
      out_.nodes[d].nlink = 2 + subdirs;
    }
    for (uint32_t i = 0; i < out_.nodes.size(); ++i) {
      if (!S_ISDIR(out_.nodes[i].mode) && names[i] > 0) out_.nodes[i].nlink = names[i];
    }
    return std::move(out_);
  }

 private:
  void Walk(uint32_t layer, const LayerIndex& l, uint32_t from, uint32_t to,
            std::map<uint32_t, uint32_t>& copied) {
    const LayerNode& dir = l.nodes[from];
    CopyAttrs(dir, out_.nodes[to]);
    out_.nodes[to].layer = layer;
    out_.nodes[to].layer_node = from;
    if (dir.opaque) out_.nodes[to].children.clear();
    for (const auto& [name, id] : dir.children) {
      const LayerNode& c = l.nodes[id];
      auto& kids = out_.nodes[to].children;
      if (S_ISCHR(c.mode) && c.rdev == 0) {  // a whiteout
        kids.erase(name);
        continue;
      }
      if (S_ISDIR(c.mode)) {
        auto it = kids.find(name);
        uint32_t into;
        if (it != kids.end() && S_ISDIR(out_.nodes[it->second].mode)) {
          into = it->second;
        } else {
          into = New();
          out_.nodes[to].children[name] = into;
          out_.nodes[into].mode = S_IFDIR;
        }
        Walk(layer, l, id, into, copied);
        continue;
      }
      auto seen = copied.find(id);
      if (seen != copied.end()) {
        out_.nodes[to].children[name] = seen->second;
        continue;
      }
      uint32_t n = New();
      LayerNode& made = out_.nodes[n];
      made = c;
      made.children.clear();
      made.opaque = false;
      made.layer = layer;
      made.layer_node = id;
      copied[id] = n;
      out_.nodes[to].children[name] = n;
    }
  }

  uint32_t New() {
    out_.nodes.emplace_back();
    return static_cast<uint32_t>(out_.nodes.size() - 1);
  }

  LayerIndex out_;
};

}  // namespace

LayerIndex MergeLayers(const std::vector<const LayerIndex*>& layers) {
  Merger m;
  for (uint32_t i = 0; i < layers.size(); ++i) m.Add(i, *layers[i]);
  return m.Done();
}

}  // namespace strata::fuse
