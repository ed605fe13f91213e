// A layer's index: every file of an image layer (its tree, attributes and,
// for regular files, where their bytes are in the layer blob), built from
// the layer itself without unpacking it. Built from an uncompressed tar's
// headers (IndexTar); the tree's inode numbers are node positions, so the
// same blob always gives the same numbers.
//
// A layer is hostile until indexed: names are cleaned (a leading "/" or
// "./" dropped) and any ".." refused, hard links must name an earlier file
// of the same layer, every extent lies within the blob, an entry may not
// appear twice, and device nodes other than overlay whiteouts are refused
// (a lazily served layer shows its metadata before its digest is checked).
// Whatever is refused is an InvalidArgument naming the entry; the caller
// lets containerd pull such a layer as usual.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace strata::fuse {

// eStargz: a piece of a regular file, compressed on its own in the blob.
struct LayerChunk {
  uint64_t blob_offset = 0;  // the gzip member that starts with it
  uint64_t blob_end = 0;     // where the next member of another chunk (or the TOC) starts
  uint64_t file_offset = 0;
  uint64_t size = 0;
  std::string digest;  // sha256:... of its uncompressed bytes
};

struct LayerNode {
  uint32_t mode = 0;  // type and permission bits
  uint32_t uid = 0, gid = 0;
  int64_t mtime_ns = 0;
  uint64_t size = 0;    // regular files: bytes; symlinks: the target's length
  uint64_t offset = 0;  // regular files: where the bytes start in the blob
  uint64_t rdev = 0;
  uint32_t nlink = 1;
  uint32_t parent = 0;  // the directory it was first named in
  std::string link;     // symlinks: the target, as the layer gives it
  bool opaque = false;  // directories: hides the lower layers' content
  std::map<std::string, std::string> xattrs;
  std::map<std::string, uint32_t> children;  // directories: name -> node
  // eStargz regular files: the whole file's digest (may be empty) and its
  // chunks in file order.
  std::string digest;
  std::vector<LayerChunk> chunks;
  // In a merged image (MergeLayers): the layer it comes from, and its node
  // in that layer's own index (where an eStargz layer finds its chunks).
  uint32_t layer = 0;
  uint32_t layer_node = 0;
};

enum class LayerFormat { kTar = 0, kEstargz = 1 };

struct LayerIndex {
  std::vector<LayerNode> nodes;  // nodes[0] is the root; inode = position + 1
  uint64_t blob_size = 0;
  uint64_t files = 0;  // entries in the layer
  LayerFormat format = LayerFormat::kTar;
  // eStargz: every chunk but a file's last has this many bytes.
  uint64_t chunk_size = 0;
  // eStargz: chunks at blob offsets below this are the ones the image asks
  // to have first (its prefetch landmark); 0: none.
  uint64_t prefetch_end = 0;
  // Made by MergeLayers: nodes name their layer (never kept in a database).
  bool merged = false;
};

// Random access to the layer blob: fills `out` from `offset` (all of it or
// an error).
using BlobReader = std::function<absl::Status(uint64_t offset, absl::Span<char> out)>;

struct IndexLimits {
  uint64_t max_entries = 1000000;
  uint64_t max_name = 4096;
  uint64_t max_pax = 1 << 20;  // bytes of one pax or GNU long-name record
  // Header reads go through a window of this many bytes, so that a layer of
  // many small files costs a read per window, not per file.
  size_t window = 1 << 20;
};

// Indexes the uncompressed tar of `blob_size` bytes read by `read`.
absl::StatusOr<LayerIndex> IndexTar(const BlobReader& read, uint64_t blob_size,
                                    const IndexLimits& limits = {});

// Indexes an eStargz blob (gzip members with a table of contents at the
// end) from its footer and TOC alone. The TOC must have `toc_digest` (the
// layer's containerd.io/snapshot/stargz/toc.digest annotation: without it
// nothing vouches for the TOC); every non-empty file must have chunk
// digests, all chunks but each file's last one size (a multiple of 4096).
// FailedPrecondition when the blob is no eStargz; InvalidArgument when its
// TOC is refused (the reason and the entry named).
absl::StatusOr<LayerIndex> IndexEstargz(const BlobReader& read, uint64_t blob_size,
                                        const std::string& toc_digest,
                                        const IndexLimits& limits = {});

// A layer that is one file (a raw model layer): `size` bytes at offset 0
// of the blob, named `path` (cleaned, and refused with "..", as tar names).
absl::StatusOr<LayerIndex> IndexRawFile(const std::string& path, uint64_t size,
                                        int64_t mtime_ns = 0);

// Inflates the gzip member at the start of `compressed` until `want` bytes
// came out or the member ends; DataLoss when the bytes are not gzip.
absl::StatusOr<std::string> InflateMember(std::string_view compressed, size_t want);

// One tree of an image's layers, given bottom first, as overlayfs shows them
// stacked: an upper entry replaces a lower one, a whiteout removes it, an
// opaque directory hides what is below it, directories merge. Each node
// records its layer and its node there. The same layers always merge to
// the same node numbers.
LayerIndex MergeLayers(const std::vector<const LayerIndex*>& layers);

// The index as bytes, for the snapshotter's database (a restart then does
// not read the layer again), and back. DecodeIndex checks what it reads
// (DataLoss when the bytes are not an index).
std::string EncodeIndex(const LayerIndex& index);
absl::StatusOr<LayerIndex> DecodeIndex(std::string_view bytes);

// Where indexes are kept across restarts, by layer digest (the snapshot
// database), so that a restart does not read a layer's headers again.
class LayerIndexStore {
 public:
  virtual ~LayerIndexStore() = default;
  virtual absl::StatusOr<std::optional<std::string>> GetIndex(const std::string& digest) = 0;
  virtual absl::Status PutIndex(const std::string& digest, const std::string& bytes) = 0;
};

// Whether the first 512 bytes of a blob are a tar header (ustar, GNU or
// v7 with a valid checksum).
bool LooksLikeTar(absl::Span<const char> first_block);

}  // namespace strata::fuse
