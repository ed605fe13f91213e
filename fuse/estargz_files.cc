// EstargzFiles: a file's range to its chunks, each chunk's member read from
// the registry and inflated.
#include "fuse/estargz_files.h"

#include <sys/stat.h>

#include <algorithm>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace strata::fuse {

EstargzFiles::EstargzFiles(std::shared_ptr<const LayerIndex> index, cache::FetchTarget blob)
    : index_(std::move(index)),
      blob_(std::move(blob)),
      url_(absl::StrCat("estargz:", blob_.origin->url(), "@", blob_.stat.digest)) {}

absl::StatusOr<const LayerNode*> EstargzFiles::Node(const std::string& path) const {
  uint32_t id = 0;
  if (!absl::SimpleAtoi(path, &id) || id >= index_->nodes.size() ||
      !S_ISREG(index_->nodes[id].mode)) {
    return absl::NotFoundError(absl::StrCat(url_, ": no file ", path));
  }
  return &index_->nodes[id];
}

absl::StatusOr<origin::ObjectStat> EstargzFiles::Stat(const std::string& path) {
  auto n = Node(path);
  if (!n.ok()) return n.status();
  origin::ObjectStat st;
  st.size = (*n)->size;
  st.digest = (*n)->digest;
  // The layer and the file: the same bytes wherever this layer is read.
  st.version = absl::StrCat(blob_.stat.digest, "/", path);
  st.mode = (*n)->mode & 07777;
  return st;
}

absl::StatusOr<std::vector<origin::DirEntry>> EstargzFiles::List(const std::string&) {
  return absl::UnimplementedError("an eStargz layer's files are listed by its index");
}

cache::FetchTarget EstargzFiles::Target(const std::shared_ptr<EstargzFiles>& files, uint32_t node) {
  const LayerNode& n = files->index_->nodes[node];
  cache::FetchTarget t;
  t.origin = files;
  t.path = std::to_string(node);
  t.stat = *files->Stat(t.path);
  t.chunk_size = static_cast<uint32_t>(files->index_->chunk_size);
  for (const LayerChunk& c : n.chunks) t.chunk_sha256.push_back(c.digest.substr(7));
  return t;
}

absl::Status EstargzFiles::ReadInRange(const std::string& path, const origin::ObjectStat&,
                                       uint64_t offset, absl::Span<char> out) {
  auto n = Node(path);
  if (!n.ok()) return n.status();
  const auto& chunks = (*n)->chunks;
  uint64_t pos = offset, end = offset + out.size();
  // The chunk holding `pos`: the last whose file offset is at or before it.
  auto it = std::upper_bound(chunks.begin(), chunks.end(), pos,
                             [](uint64_t p, const LayerChunk& c) { return p < c.file_offset; });
  if (it == chunks.begin()) return absl::DataLossError(absl::StrCat(url_, ": no chunk at ", pos));
  for (--it; pos < end && it != chunks.end(); ++it) {
    const LayerChunk& c = *it;
    // A member holds its chunk first; its compressed bytes are at most the
    // distance to the next member (the TOC checked that they lie within).
    uint64_t span = c.blob_end - c.blob_offset;
    if (span > 2 * index_->chunk_size + (1 << 20)) {
      return absl::DataLossError(absl::StrCat(url_, ": a chunk of ", span, " compressed bytes"));
    }
    std::string compressed(span, '\0');
    if (absl::Status st = blob_.origin->ReadRange(blob_.path, blob_.stat, c.blob_offset,
                                                  absl::MakeSpan(compressed));
        !st.ok()) {
      return st;
    }
    auto plain = InflateMember(compressed, c.size);
    if (!plain.ok()) return plain.status();
    if (plain->size() != c.size) {
      return absl::DataLossError(
          absl::StrCat(url_, ": the chunk at ", c.blob_offset, " inflates short"));
    }
    uint64_t from = pos - c.file_offset;
    uint64_t len = std::min<uint64_t>(c.size - from, end - pos);
    std::copy_n(plain->data() + from, len, out.data() + (pos - offset));
    pos += len;
  }
  if (pos != end) return absl::DataLossError(absl::StrCat(url_, ": chunks end before ", end));
  return absl::OkStatus();
}

}  // namespace strata::fuse
