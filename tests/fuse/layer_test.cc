// Layer indexes from tar headers (what a layer may hold, and every way a
// hostile one is refused), and layer trees over real FUSE mounts stacked by
// the kernel's overlayfs the way containerd stacks them.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>
#include <zlib.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/digest.h"
#include "fuse/engine.h"
#include "fuse/estargz_files.h"
#include "fuse/layer_index.h"
#include "fuse/layer_tree.h"
#include "fuse/open_log.h"
#include "nlohmann/json.hpp"
#include "origin/origin.h"
#include "tests/util/local_cache.h"
#include "tests/util/test_util.h"

namespace strata::fuse {
namespace {
namespace fs = std::filesystem;
using strata::testing::Pattern;
using strata::testing::ReadPath;
using strata::testing::SameBytes;
using strata::testing::TempDir;

// A tar written entry by entry, headers as GNU tar and Go's archive/tar
// write them.
class Tar {
 public:
  struct Entry {
    std::string name;
    char type = '0';
    std::string data;
    std::string link;
    uint32_t mode = 0644;
    uint32_t uid = 0, gid = 0;
    uint64_t mtime = 1700000000;
    int64_t size_override = -1;  // a header that lies about its size
  };

  Tar& Add(const Entry& e) {
    std::string h(512, '\0');
    auto put = [&](size_t off, size_t width, const std::string& v) {
      h.replace(off, std::min(width, v.size()), v.substr(0, width));
    };
    auto octal = [&](size_t off, size_t width, uint64_t v) {
      put(off, width - 1, absl::StrFormat("%0*o", static_cast<int>(width - 1), v));
    };
    put(0, 100, e.name);
    octal(100, 8, e.mode);
    octal(108, 8, e.uid);
    octal(116, 8, e.gid);
    octal(124, 12, e.size_override >= 0 ? e.size_override : e.data.size());
    octal(136, 12, e.mtime);
    h[156] = e.type;
    put(157, 100, e.link);
    put(257, 6, std::string("ustar\0", 6));
    put(263, 2, "00");
    put(148, 8, "        ");
    uint32_t sum = 0;
    for (unsigned char c : h) sum += c;
    put(148, 8, absl::StrFormat("%06o", sum) + std::string("\0 ", 2));
    out_ += h;
    out_ += e.data;
    out_.append((512 - e.data.size() % 512) % 512, '\0');
    return *this;
  }
  Tar& File(const std::string& name, const std::string& data, uint32_t mode = 0644) {
    return Add({.name = name, .type = '0', .data = data, .mode = mode});
  }
  Tar& Dir(const std::string& name, uint32_t mode = 0755) {
    return Add({.name = name, .type = '5', .mode = mode});
  }
  // A pax extended header for the next entry.
  Tar& Pax(const std::vector<std::pair<std::string, std::string>>& records) {
    std::string body;
    for (const auto& [k, v] : records) {
      std::string rec = absl::StrCat(" ", k, "=", v, "\n");
      size_t len = rec.size() + 1;
      while (std::to_string(len).size() + rec.size() != len) ++len;
      body += std::to_string(len) + rec;
    }
    return Add({.name = "PaxHeaders/x", .type = 'x', .data = body});
  }
  std::string Done() const { return out_ + std::string(1024, '\0'); }

 private:
  std::string out_;
};

absl::StatusOr<LayerIndex> Index(const std::string& blob, int* reads = nullptr,
                                 IndexLimits limits = {}) {
  return IndexTar(
      [&](uint64_t off, absl::Span<char> out) -> absl::Status {
        if (reads) ++*reads;
        if (off + out.size() > blob.size()) return absl::OutOfRangeError("past the end");
        std::memcpy(out.data(), blob.data() + off, out.size());
        return absl::OkStatus();
      },
      blob.size(), limits);
}

const LayerNode* At(const LayerIndex& idx, const std::string& path) {
  uint32_t cur = 0;
  for (const auto& part : absl::StrSplit(path, '/', absl::SkipEmpty())) {
    auto it = idx.nodes[cur].children.find(std::string(part));
    if (it == idx.nodes[cur].children.end()) return nullptr;
    cur = it->second;
  }
  return &idx.nodes[cur];
}

TEST(LayerIndexTest, IndexesWhatImageLayersHold) {
  std::string weights = Pattern(3, 0, 70000);
  std::string longname = std::string(150, 'n') + "/" + std::string(120, 'f');
  std::string blob = Tar()
                         .Dir("./")
                         .Dir("./etc/", 0700)
                         .File("./etc/passwd", "root:x:0:0::/root:/bin/sh\n")
                         .File("/models/weights.bin", weights, 0640)  // parent made
                         .Add({.name = "bin/sh", .type = '2', .link = "/bin/busybox"})
                         .Add({.name = "etc/hard", .type = '1', .link = "./etc/passwd"})
                         .Add({.name = "run/fifo", .type = '6'})
                         .File("old/.wh.gone", "")
                         .File("opaque/.wh..wh..opq", "")
                         .Pax({{"path", longname},
                               {"uid", "4000000"},
                               {"SCHILY.xattr.user.k", "v"},
                               {"mtime", "1700000000.5"}})
                         .File("ignored-by-pax", "long")
                         .Done();
  auto idx = Index(blob);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->nodes[0].mode, S_IFDIR | 0755u);
  const LayerNode* etc = At(*idx, "etc");
  ASSERT_TRUE(etc);
  EXPECT_EQ(etc->mode, S_IFDIR | 0700u);
  const LayerNode* w = At(*idx, "models/weights.bin");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->mode, S_IFREG | 0640u);
  EXPECT_EQ(w->size, weights.size());
  EXPECT_EQ(blob.substr(w->offset, w->size), weights);
  EXPECT_EQ(At(*idx, "models")->mode, S_IFDIR | 0755u);
  const LayerNode* sh = At(*idx, "bin/sh");
  ASSERT_TRUE(sh);
  EXPECT_TRUE(S_ISLNK(sh->mode));
  EXPECT_EQ(sh->link, "/bin/busybox") << "absolute targets are data: the container resolves them";
  EXPECT_EQ(At(*idx, "etc/hard"), At(*idx, "etc/passwd")) << "a hard link is the same node";
  EXPECT_EQ(At(*idx, "etc/passwd")->nlink, 2u);
  EXPECT_TRUE(S_ISFIFO(At(*idx, "run/fifo")->mode));
  const LayerNode* gone = At(*idx, "old/gone");
  ASSERT_TRUE(gone);
  EXPECT_TRUE(S_ISCHR(gone->mode));
  EXPECT_EQ(gone->rdev, makedev(0, 0));
  EXPECT_EQ(At(*idx, "old/.wh.gone"), nullptr);
  EXPECT_TRUE(At(*idx, "opaque")->opaque);
  EXPECT_TRUE(At(*idx, "opaque")->children.empty());
  const LayerNode* lf = At(*idx, longname);
  ASSERT_TRUE(lf) << "pax path";
  EXPECT_EQ(lf->uid, 4000000u);
  EXPECT_EQ(lf->mtime_ns, 1700000000500000000);
  EXPECT_EQ(lf->xattrs.at("user.k"), "v");
  EXPECT_EQ(At(*idx, "ignored-by-pax"), nullptr);
}

TEST(LayerIndexTest, ManySmallFilesCostAReadPerWindowNotPerFile) {
  Tar t;
  for (int i = 0; i < 10000; ++i) t.File(absl::StrCat("d/f", i), Pattern(4, i, 100));
  std::string blob = t.Done();
  int reads = 0;
  auto idx = Index(blob, &reads);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->files, 10000u);
  EXPECT_LE(reads, static_cast<int>(blob.size() / (1 << 20)) + 2) << blob.size() << " bytes";
  const LayerNode* f = At(*idx, "d/f9999");
  ASSERT_TRUE(f);
  EXPECT_EQ(blob.substr(f->offset, f->size), Pattern(4, 9999, 100));
}

TEST(LayerIndexTest, RefusesHostileLayersNamingTheEntry) {
  struct Case {
    const char* what;
    std::string blob;
    const char* says;
  };
  std::vector<Case> cases = {
      {"dot-dot", Tar().File("../etc/shadow", "x").Done(), "climbs out"},
      {"dot-dot inside", Tar().File("a/b/../../../x", "x").Done(), "climbs out"},
      {"dot-dot in pax path", Tar().Pax({{"path", "ok/../../x"}}).File("ok", "x").Done(),
       "climbs out"},
      {"hard link out", Tar().Add({.name = "h", .type = '1', .link = "../../etc/shadow"}).Done(),
       "climbs out"},
      {"hard link to nothing", Tar().Add({.name = "h", .type = '1', .link = "etc/shadow"}).Done(),
       "not an earlier regular file"},
      {"hard link to a dir", Tar().Dir("d").Add({.name = "h", .type = '1', .link = "d"}).Done(),
       "not an earlier regular file"},
      {"twice", Tar().File("a", "1").File("a", "2").Done(), "names it twice"},
      {"file then dir", Tar().File("a", "1").Dir("a").Done(), "names it twice"},
      {"dir twice", Tar().Dir("a").Dir("a/").Done(), "names it twice"},
      {"whiteout and file", Tar().File("a", "1").File(".wh.a", "").Done(), "names it twice"},
      {"file as a dir", Tar().File("a", "1").File("a/b", "2").Done(), "not one"},
      {"past the end", Tar().Add({.name = "big", .data = "x", .size_override = 1 << 30}).Done(),
       "past the end"},
      {"device", Tar().Add({.name = "dev/mem", .type = '3'}).Done(), "device nodes"},
      {"sparse", Tar().Add({.name = "s", .type = 'S'}).Done(), "not read lazily"},
      {"gnu sparse pax", Tar().Pax({{"GNU.sparse.major", "1"}}).File("s", "x").Done(), "sparse"},
      {"bad pax", Tar().Add({.name = "p", .type = 'x', .data = "99 path=x\n"}).File("a", "").Done(),
       "pax"},
      {"NUL in pax path", Tar().Pax({{"path", std::string("a\0b", 3)}}).File("a", "").Done(),
       "NUL"},
      {"empty symlink", Tar().Add({.name = "l", .type = '2'}).Done(), "symlink"},
  };
  for (const Case& c : cases) {
    auto idx = Index(c.blob);
    ASSERT_FALSE(idx.ok()) << c.what;
    EXPECT_TRUE(absl::IsInvalidArgument(idx.status())) << c.what << ": " << idx.status();
    EXPECT_NE(idx.status().message().find(c.says), std::string::npos)
        << c.what << ": " << idx.status();
  }
  // A corrupt header, and too many entries.
  std::string blob = Tar().File("a", "x").Done();
  blob[10] ^= 1;
  EXPECT_NE(Index(blob).status().message().find("corrupt"), std::string::npos);
  Tar many;
  for (int i = 0; i < 20; ++i) many.File(absl::StrCat("f", i), "");
  IndexLimits limits;
  limits.max_entries = 10;
  EXPECT_TRUE(absl::IsInvalidArgument(Index(many.Done(), nullptr, limits).status()));
  EXPECT_FALSE(LooksLikeTar(std::string(512, '\0')));
  EXPECT_FALSE(LooksLikeTar(std::string("\x1f\x8b") + std::string(510, 'x')));
  EXPECT_TRUE(LooksLikeTar(Tar().File("a", "x").Done()));
}

TEST(LayerIndexTest, KeptIndexesDecodeToTheSameTreeAndCorruptOnesAreRefused) {
  std::string blob = Tar()
                         .Dir("etc", 0700)
                         .File("etc/passwd", "root\n")
                         .Add({.name = "etc/hard", .type = '1', .link = "etc/passwd"})
                         .Add({.name = "l", .type = '2', .link = "/etc/passwd"})
                         .File("o/.wh..wh..opq", "")
                         .File(".wh.gone", "")
                         .Pax({{"SCHILY.xattr.user.a", "b"}})
                         .File("x", "y")
                         .Done();
  auto idx = Index(blob);
  ASSERT_TRUE(idx.ok()) << idx.status();
  std::string bytes = EncodeIndex(*idx);
  auto back = DecodeIndex(bytes);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(EncodeIndex(*back), bytes);
  ASSERT_EQ(back->nodes.size(), idx->nodes.size());
  for (size_t i = 0; i < idx->nodes.size(); ++i) {
    const LayerNode &a = idx->nodes[i], &b = back->nodes[i];
    EXPECT_EQ(a.mode, b.mode);
    EXPECT_EQ(a.offset, b.offset);
    EXPECT_EQ(a.size, b.size);
    EXPECT_EQ(a.nlink, b.nlink);
    EXPECT_EQ(a.link, b.link);
    EXPECT_EQ(a.opaque, b.opaque);
    EXPECT_EQ(a.xattrs, b.xattrs);
    EXPECT_EQ(a.children, b.children);
    EXPECT_EQ(a.mtime_ns, b.mtime_ns);
  }
  // Truncated, or a byte changed: refused, never a wrong tree (a child
  // number out of range, an extent past the blob, a bad name).
  for (size_t cut : {size_t{0}, size_t{1}, bytes.size() / 2, bytes.size() - 1}) {
    EXPECT_TRUE(absl::IsDataLoss(DecodeIndex(bytes.substr(0, cut)).status())) << cut;
  }
  for (size_t i = 0; i < bytes.size(); ++i) {
    std::string bad = bytes;
    bad[i] ^= 0x40;
    auto d = DecodeIndex(bad);
    if (!d.ok()) {
      EXPECT_TRUE(absl::IsDataLoss(d.status())) << i;
      continue;
    }
    for (const LayerNode& n : d->nodes) {
      for (const auto& [name, id] : n.children) EXPECT_LT(id, d->nodes.size());
      if (S_ISREG(n.mode)) {
        EXPECT_LE(n.offset + n.size, d->blob_size);
      }
    }
  }
}

// One gzip member of `data` (with an extra field when given), as eStargz
// writers make them.
std::string Gzip(const std::string& data, const std::string& extra = "") {
  z_stream z{};
  // The footer is a stored (uncompressed) empty block: level 0.
  int level = extra.empty() ? 6 : 0;
  EXPECT_EQ(deflateInit2(&z, level, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY), Z_OK);
  gz_header h{};
  std::string ex = extra;
  if (!ex.empty()) {
    h.extra = reinterpret_cast<Bytef*>(ex.data());
    h.extra_len = static_cast<uInt>(ex.size());
    deflateSetHeader(&z, &h);
  }
  std::string out(deflateBound(&z, data.size()) + 64, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  z.avail_in = static_cast<uInt>(data.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&z, Z_FINISH), Z_STREAM_END);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// An eStargz blob: each file's chunks a gzip member of their own, then the
// TOC (a tar of stargz.index.json) and the 51-byte footer. Returns the
// blob; `toc_digest` gets the TOC's digest.
struct EstargzFile {
  std::string name, type = "reg", data, link;
  uint32_t mode = 0644;
};
std::string Estargz(const std::vector<EstargzFile>& files, size_t chunk, std::string* toc_digest,
                    const std::function<void(nlohmann::json&)>& tamper = {}) {
  std::string blob = Gzip(std::string(512, '\0'));  // a leading member, as tar headers would be
  nlohmann::json entries = nlohmann::json::array();
  for (const auto& f : files) {
    nlohmann::json e = {{"name", f.name}, {"type", f.type}, {"mode", f.mode},
                        {"uid", 0},       {"gid", 0},       {"modtime", "2024-01-02T03:04:05Z"}};
    if (!f.link.empty()) e["linkName"] = f.link;
    if (f.type != "reg" || f.data.empty()) {
      if (f.type == "reg") e["size"] = 0;
      entries.push_back(e);
      continue;
    }
    e["size"] = f.data.size();
    e["digest"] = "sha256:" + Sha256Hex(f.data);
    for (size_t off = 0; off < f.data.size(); off += chunk) {
      std::string piece = f.data.substr(off, chunk);
      nlohmann::json c = off == 0 ? e : nlohmann::json{{"name", f.name}, {"type", "chunk"}};
      c["offset"] = blob.size();
      c["chunkOffset"] = off;
      c["chunkSize"] = off + chunk < f.data.size() ? chunk : 0;
      c["chunkDigest"] = "sha256:" + Sha256Hex(piece);
      entries.push_back(c);
      blob += Gzip(piece);
    }
  }
  nlohmann::json toc = {{"version", 1}, {"entries", entries}};
  if (tamper) tamper(toc);
  std::string json = toc.dump();
  *toc_digest = "sha256:" + Sha256Hex(json);
  std::string tar = Tar().File("stargz.index.json", json).Done();
  size_t toc_off = blob.size();
  blob += Gzip(tar);
  std::string extra = std::string("SG\x16\x00", 4) + absl::StrFormat("%016xSTARGZ", toc_off);
  std::string footer = Gzip("", extra);
  EXPECT_EQ(footer.size(), 51u) << "the footer is 51 bytes";
  return blob + footer;
}

absl::StatusOr<LayerIndex> IndexStargz(const std::string& blob, const std::string& toc) {
  return IndexEstargz(
      [&](uint64_t off, absl::Span<char> out) -> absl::Status {
        if (off + out.size() > blob.size()) return absl::OutOfRangeError("past the end");
        std::memcpy(out.data(), blob.data() + off, out.size());
        return absl::OkStatus();
      },
      blob.size(), toc);
}

TEST(EstargzIndexTest, IndexesFromTheTocAndRefusesWhatItCannotTrust) {
  std::string weights = Pattern(6, 0, 3 * 4096 * 2 + 100);
  std::string toc;
  std::string blob = Estargz({{.name = "bin/", .type = "dir", .mode = 0755},
                              {.name = "bin/sh", .type = "symlink", .link = "busybox"},
                              {.name = "w.bin", .data = weights},
                              {.name = "empty"},
                              {.name = "data/.wh.gone"},
                              {.name = ".prefetch.landmark", .data = "\x0f"}},
                             8192, &toc);
  auto idx = IndexStargz(blob, toc);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(idx->format, LayerFormat::kEstargz);
  EXPECT_EQ(idx->chunk_size, 8192u);
  EXPECT_GT(idx->prefetch_end, 0u);
  EXPECT_EQ(At(*idx, ".prefetch.landmark"), nullptr) << "landmarks are not files";
  const LayerNode* w = At(*idx, "w.bin");
  ASSERT_TRUE(w);
  EXPECT_EQ(w->size, weights.size());
  EXPECT_EQ(w->chunks.size(), 4u);
  EXPECT_EQ(w->mtime_ns, absl::ToUnixNanos(absl::FromUnixSeconds(1704164645)));
  EXPECT_TRUE(S_ISLNK(At(*idx, "bin/sh")->mode));
  EXPECT_TRUE(S_ISCHR(At(*idx, "data/gone")->mode));
  EXPECT_EQ(At(*idx, "empty")->size, 0u);
  EXPECT_EQ(DecodeIndex(EncodeIndex(*idx))->nodes[w - idx->nodes.data()].chunks.size(), 4u);

  // Nothing vouches for a TOC without the manifest's digest of it; a TOC
  // that is not the one the manifest names is refused.
  EXPECT_TRUE(absl::IsFailedPrecondition(IndexStargz(blob, "").status()));
  auto lied = IndexStargz(blob, "sha256:" + std::string(64, 'a'));
  EXPECT_TRUE(absl::IsInvalidArgument(lied.status())) << lied.status();
  EXPECT_NE(lied.status().message().find("TOC's digest"), std::string::npos);
  // Plain gzip has no footer: not eStargz.
  EXPECT_TRUE(absl::IsFailedPrecondition(IndexStargz(Gzip(std::string(4096, 'x')), toc).status()));
  // TOCs that lie in ways the digest cannot catch (the image's author
  // wrote them): names climbing out, chunks outside the data, no chunk
  // digests, mixed chunk sizes.
  struct Case {
    const char* what;
    std::function<void(nlohmann::json&)> tamper;
  };
  std::vector<Case> cases = {
      {"dot-dot", [](nlohmann::json& t) { t["entries"][2]["name"] = "../../w.bin"; }},
      {"chunk past the TOC",
       [](nlohmann::json& t) { t["entries"][3]["offset"] = uint64_t{1} << 40; }},
      {"no chunk digest", [](nlohmann::json& t) { t["entries"][2].erase("chunkDigest"); }},
      {"device", [](nlohmann::json& t) { t["entries"][0]["type"] = "char"; }},
      {"mixed sizes", [](nlohmann::json& t) { t["entries"][2]["chunkSize"] = 4096; }},
  };
  for (const Case& c : cases) {
    std::string t2;
    std::string b2 = Estargz({{.name = "bin/", .type = "dir", .mode = 0755},
                              {.name = "bin/sh", .type = "symlink", .link = "busybox"},
                              {.name = "w.bin", .data = weights}},
                             8192, &t2, c.tamper);
    auto bad = IndexStargz(b2, t2);
    EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << c.what << ": " << bad.status();
  }
}

// Layer trees over real FUSE, stacked by overlayfs as containerd stacks a
// container's rootfs.
class LayerTreeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    auto c = strata::testing::OpenLocalCache(dir_.path());
    ASSERT_TRUE(c.ok()) << c.status();
    cache_ = std::move(*c);
  }
  void TearDown() override {
    for (auto it = mounts_.rbegin(); it != mounts_.rend(); ++it) ::umount2(it->c_str(), MNT_DETACH);
    for (auto& s : servers_) s->Stop();
    for (auto& t : threads_) t.join();
  }

  // Serves `blob` (as it is at the origin, and with its true digest unless
  // `digest` says otherwise) at a new mountpoint; returns it.
  std::string Serve(const std::string& name, const std::string& blob, std::string digest = "") {
    std::ofstream(dir_.path() + "/origin/" + name, std::ios::binary) << blob;
    auto idx = Index(blob);
    EXPECT_TRUE(idx.ok()) << idx.status();
    cache::FetchTarget t;
    t.origin = cache_.origin;
    t.path = name;
    t.stat = *cache_.origin->Stat(name);
    t.stat.digest = digest.empty() ? "sha256:" + Sha256Hex(blob) : digest;
    return MountTree(
        std::make_unique<LayerTree>(std::make_shared<const LayerIndex>(std::move(*idx)), t, nullptr,
                                    *cache_.store, *cache_.fetcher),
        name);
  }

  // Mounts `tree` (kept until the test ends) at a new mountpoint; returns
  // it. With `passthrough`, whole files are passed through, and the opens
  // are logged in `name`.opens.
  std::string MountTree(std::unique_ptr<LayerTree> tree, const std::string& name,
                        bool passthrough = false) {
    trees_.push_back(std::move(tree));
    std::string mnt = dir_.path() + "/" + name + ".mnt";
    fs::create_directories(mnt);
    MountOptions mo;
    mo.mountpoint = mnt;
    if (passthrough) {
      trees_.back()->EnableBackingFiles();
      mo.open_log = dir_.path() + "/" + name + ".opens";
    }
    auto server = FuseServer::Mount(*trees_.back(), mo);
    EXPECT_TRUE(server.ok()) << server.status();
    if (!server.ok()) return mnt;
    FuseServer* s = server->get();
    servers_.push_back(std::move(*server));
    threads_.emplace_back([s] { s->Run().IgnoreError(); });
    return mnt;
  }

  TempDir dir_;
  strata::testing::LocalCache cache_;
  std::vector<std::unique_ptr<LayerTree>> trees_;
  std::vector<std::unique_ptr<FuseServer>> servers_;
  std::vector<std::thread> threads_;
  std::vector<std::string> mounts_;
};

TEST_F(LayerTreeTest, OverlayStacksLayerTreesWithWhiteoutsAndOpaqueDirs) {
  std::string weights = Pattern(5, 0, (3 << 20) + 77);
  std::string lower = Tar()
                          .Dir("data")
                          .File("data/a.txt", "one\n")
                          .File("data/b.txt", "two\n")
                          .File("data/sub/c.txt", "three\n")
                          .File("models/weights.bin", weights, 0640)
                          .Add({.name = "data/link", .type = '2', .link = "a.txt"})
                          .Add({.name = "data/hard", .type = '1', .link = "data/a.txt"})
                          .File("keep/x", "x")
                          .Done();
  std::string upper = Tar()
                          .File("data/.wh.b.txt", "")
                          .File("data/sub/.wh..wh..opq", "")
                          .File("data/sub/d.txt", "four\n")
                          .File("data/e.txt", "five\n")
                          .Done();
  std::string l = Serve("lower", lower);
  std::string u = Serve("upper", upper);
  // The trees themselves.
  EXPECT_EQ(ReadPath(l + "/data/a.txt"), "one\n");
  EXPECT_TRUE(SameBytes(ReadPath(l + "/models/weights.bin"), weights));
  struct stat st;
  ASSERT_EQ(::lstat((u + "/data/b.txt").c_str(), &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
  EXPECT_EQ(st.st_rdev, makedev(0, 0));
  char v[8] = {};
  EXPECT_EQ(::lgetxattr((u + "/data/sub").c_str(), "trusted.overlay.opaque", v, sizeof v), 1);
  EXPECT_EQ(v[0], 'y');
  ASSERT_EQ(::stat((l + "/data/hard").c_str(), &st), 0);
  struct stat st2;
  ASSERT_EQ(::stat((l + "/data/a.txt").c_str(), &st2), 0);
  EXPECT_EQ(st.st_ino, st2.st_ino);
  EXPECT_EQ(st.st_nlink, 2u);
  EXPECT_NE(::open((l + "/data/a.txt").c_str(), O_WRONLY), 0);
  EXPECT_EQ(errno, EROFS);

  // Stacked as a container's rootfs: upper directory, then the layers.
  std::string root = dir_.path() + "/rootfs";
  fs::create_directories(root);
  fs::create_directories(dir_.path() + "/up");
  fs::create_directories(dir_.path() + "/work");
  std::string opts = absl::StrCat("index=off,lowerdir=", u, ":", l, ",upperdir=", dir_.path(),
                                  "/up,workdir=", dir_.path(), "/work");
  ASSERT_EQ(::mount("overlay", root.c_str(), "overlay", 0, opts.c_str()), 0) << strerror(errno);
  mounts_.push_back(root);
  EXPECT_EQ(ReadPath(root + "/data/a.txt"), "one\n");
  EXPECT_EQ(ReadPath(root + "/data/e.txt"), "five\n");
  EXPECT_FALSE(fs::exists(root + "/data/b.txt"));
  EXPECT_TRUE(fs::exists(root + "/data/sub/d.txt"));
  EXPECT_FALSE(fs::exists(root + "/data/sub/c.txt")) << "the opaque directory hides the lower";
  EXPECT_EQ(ReadPath(root + "/keep/x"), "x");
  EXPECT_EQ(fs::read_symlink(root + "/data/link"), "a.txt");
  EXPECT_TRUE(SameBytes(ReadPath(root + "/models/weights.bin"), weights));
  std::ofstream(root + "/data/new") << "rw";  // the container's own writes go up
  EXPECT_EQ(ReadPath(dir_.path() + "/up/data/new"), "rw");
}

// An eStargz layer over real FUSE: files come chunk by chunk from their
// gzip members, each chunk checked against the TOC; a chunk that does not
// match is an I/O error, the others are served.
TEST_F(LayerTreeTest, ServesEstargzFilesChunkByChunkCheckingEach) {
  std::string good = Pattern(7, 0, 5 * 4096 + 17), bad = Pattern(8, 0, 3 * 4096);
  std::string toc;
  std::string blob =
      Estargz({{.name = "good.bin", .data = good}, {.name = "bad.bin", .data = bad}}, 4096, &toc);
  // The registry's copy of bad.bin's second chunk differs from what the TOC
  // says of it: a bit flipped in its member's compressed data.
  auto idx = IndexStargz(blob, toc);
  ASSERT_TRUE(idx.ok()) << idx.status();
  const LayerNode* b = At(*idx, "bad.bin");
  ASSERT_TRUE(b);
  std::string served = blob;
  const LayerChunk& c = b->chunks[1];
  std::string evil = Gzip(std::string(4096, 'E'));
  ASSERT_LE(evil.size(), c.blob_end - c.blob_offset);
  served.replace(c.blob_offset, evil.size(), evil);
  std::ofstream(dir_.path() + "/origin/layer", std::ios::binary) << served;
  cache::FetchTarget t;
  t.origin = cache_.origin;
  t.path = "layer";
  t.stat = *cache_.origin->Stat("layer");
  t.stat.digest = "sha256:" + Sha256Hex(blob);
  auto shared = std::make_shared<const LayerIndex>(std::move(*idx));
  auto files = std::make_shared<EstargzFiles>(shared, t);
  std::string mnt = MountTree(
      std::make_unique<LayerTree>(shared, t, files, *cache_.store, *cache_.fetcher), "estargz");

  EXPECT_TRUE(SameBytes(ReadPath(mnt + "/good.bin"), good));
  int fd = ::open((mnt + "/bad.bin").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  std::string buf(4096, '\0');
  EXPECT_EQ(::pread(fd, buf.data(), 4096, 0), 4096) << "the first chunk is right";
  EXPECT_EQ(buf, bad.substr(0, 4096));
  EXPECT_EQ(::pread(fd, buf.data(), 4096, 4096), -1) << "the second is not: never served";
  EXPECT_EQ(errno, EIO);
  EXPECT_EQ(::pread(fd, buf.data(), 4096, 8192), 4096);
  EXPECT_EQ(buf, bad.substr(8192, 4096));
  ::close(fd);
}

// Files that are whole objects of the cache (a raw model layer's one file is
// its blob; an eStargz file is cached by its content) are read by the
// kernel from the store's file once whole and checked, and held against
// eviction meanwhile; a file inside a tar layer, an extent of the blob, is
// read through the daemon.
TEST_F(LayerTreeTest, WholeObjectFilesArePassedThroughOnceCachedAndChecked) {
  const std::string weights = Pattern(9, 0, (3 << 20) + 5);
  auto target = [&](const std::string& name, const std::string& blob) {
    std::ofstream(dir_.path() + "/origin/" + name, std::ios::binary) << blob;
    cache::FetchTarget t;
    t.origin = cache_.origin;
    t.path = name;
    t.stat = *cache_.origin->Stat(name);
    t.stat.digest = "sha256:" + Sha256Hex(blob);
    return t;
  };
  cache::FetchTarget raw = target("raw", weights);
  auto raw_index = IndexRawFile("w.bin", weights.size());
  ASSERT_TRUE(raw_index.ok()) << raw_index.status();
  std::string toc;
  cache::FetchTarget esgz =
      target("esgz", Estargz({{.name = "w.bin", .data = weights}}, 1 << 20, &toc));
  auto esgz_index = IndexStargz(ReadPath(dir_.path() + "/origin/esgz"), toc);
  ASSERT_TRUE(esgz_index.ok()) << esgz_index.status();
  cache::FetchTarget tar = target("tar", Tar().File("w.bin", weights).Done());
  auto tar_index = Index(ReadPath(dir_.path() + "/origin/tar"));
  ASSERT_TRUE(tar_index.ok()) << tar_index.status();

  auto shared_esgz = std::make_shared<const LayerIndex>(std::move(*esgz_index));
  struct Case {
    std::string name;
    std::unique_ptr<LayerTree> tree;
    bool passed_through;
  };
  std::vector<Case> cases;
  cases.push_back(
      {"raw",
       std::make_unique<LayerTree>(std::make_shared<const LayerIndex>(std::move(*raw_index)), raw,
                                   nullptr, *cache_.store, *cache_.fetcher),
       true});
  cases.push_back({"esgz",
                   std::make_unique<LayerTree>(shared_esgz, esgz,
                                               std::make_shared<EstargzFiles>(shared_esgz, esgz),
                                               *cache_.store, *cache_.fetcher),
                   true});
  cases.push_back(
      {"tar",
       std::make_unique<LayerTree>(std::make_shared<const LayerIndex>(std::move(*tar_index)), tar,
                                   nullptr, *cache_.store, *cache_.fetcher),
       false});
  for (Case& c : cases) {
    SCOPED_TRACE(c.name);
    LayerTree* tree = c.tree.get();
    std::string mnt = MountTree(std::move(c.tree), c.name + "-pt", /*passthrough=*/true);
    std::string log = dir_.path() + "/" + c.name + "-pt.opens";
    auto nothing_open = [&] {
      auto open = OpenLog::Read(log);
      return open.ok() && open->empty();
    };
    // Cold: read through the daemon, which fetches and checks it.
    int fd = ::open((mnt + "/w.bin").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    EXPECT_TRUE(SameBytes(strata::testing::ReadFdUncached(fd), weights));
    ::close(fd);
    ASSERT_TRUE(strata::testing::Eventually(nothing_open)) << "the release never arrived";
    EXPECT_EQ(cache_.store->Stats().kernel_held_objects, 0u);

    fd = ::open((mnt + "/w.bin").c_str(), O_RDONLY);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    uint64_t before = tree->bytes_read();
    EXPECT_TRUE(SameBytes(strata::testing::ReadFdUncached(fd), weights));
    if (c.passed_through) {
      EXPECT_EQ(tree->bytes_read(), before) << "a passthrough read reached the daemon";
      EXPECT_EQ(cache_.store->Stats().kernel_held_objects, 1u);
      cache::EvictRequest all;
      all.mode = cache::EvictRequest::Mode::kAll;
      EXPECT_GE(cache_.store->Evict(all).skipped_busy, 1u);
      EXPECT_TRUE(SameBytes(strata::testing::ReadFdUncached(fd), weights));
    } else {
      EXPECT_GT(tree->bytes_read(), before) << "an extent of a tar layer read by the kernel";
      EXPECT_EQ(cache_.store->Stats().kernel_held_objects, 0u);
    }
    ::close(fd);
    ASSERT_TRUE(strata::testing::Eventually(nothing_open));
    ASSERT_TRUE(strata::testing::Eventually(
        [&] { return cache_.store->Stats().kernel_held_objects == 0; }));
  }
}

TEST_F(LayerTreeTest, ABlobThatDoesNotMatchItsDigestServesNoByte) {
  std::string blob = Tar().File("secret", "the registry lied\n").Done();
  std::string mnt = Serve("bad", blob, "sha256:" + std::string(64, '0'));
  // The index is visible (its headers were read), the bytes are not.
  EXPECT_TRUE(fs::exists(mnt + "/secret"));
  int fd = ::open((mnt + "/secret").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0);
  char buf[64];
  EXPECT_EQ(::read(fd, buf, sizeof buf), -1);
  EXPECT_EQ(errno, EIO);
  ::close(fd);
}

}  // namespace
}  // namespace strata::fuse
