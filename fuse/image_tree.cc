// Image trees: each layer's index by its format, then merged.
#include "fuse/image_tree.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/logging.h"
#include "fuse/estargz_files.h"

namespace strata::fuse {
namespace {

constexpr char kTocDigest[] = "containerd.io/snapshot/stargz/toc.digest";
constexpr const char* kFilePathAnnotations[] = {
    "org.cncf.model.filepath", "org.cnai.model.filepath", "org.opencontainers.image.title"};

}  // namespace

absl::StatusOr<LayerIndex> IndexLayerBlob(cache::Fetcher& fetcher, const cache::FetchTarget& blob,
                                          const std::string& toc_digest) {
  std::string first(std::min<uint64_t>(512, blob.stat.size), '\0');
  auto n = fetcher.ReadUnverified(blob, 0, absl::MakeSpan(first));
  if (!n.ok()) return n.status();
  BlobReader reader = [&](uint64_t off, absl::Span<char> out) -> absl::Status {
    auto got = fetcher.ReadUnverified(blob, off, out);
    if (!got.ok()) return got.status();
    if (*got != out.size()) return absl::DataLossError("the layer blob ended early");
    return absl::OkStatus();
  };
  if (first.size() >= 2 && first[0] == '\x1f' && first[1] == '\x8b') {
    auto index = IndexEstargz(reader, blob.stat.size, toc_digest);
    if (absl::IsFailedPrecondition(index.status())) {
      return absl::FailedPreconditionError(absl::StrCat(
          "layer ", blob.path, " is gzip-compressed, not eStargz (", index.status().message(),
          "); only uncompressed tar and eStargz layers are read lazily"));
    }
    return index;
  }
  if (!LooksLikeTar(first)) {
    return absl::FailedPreconditionError(
        absl::StrCat("layer ", blob.path, " is neither tar nor gzip; not read lazily"));
  }
  return IndexTar(reader, blob.stat.size);
}

absl::StatusOr<std::unique_ptr<LayerTree>> OpenImageTree(std::shared_ptr<origin::Origin> image,
                                                         cache::ChunkStore& store,
                                                         cache::Fetcher& fetcher) {
  auto layers = image->Layers();
  if (!layers.ok()) return layers.status();
  std::vector<LayerIndex> indexes;
  std::vector<LayerTree::Source> sources;
  for (const origin::LayerDescriptor& d : *layers) {
    cache::FetchTarget blob;
    blob.origin = image;
    blob.path = d.digest;
    blob.stat.size = d.size;
    blob.stat.digest = d.digest;
    blob.stat.version = d.digest;
    blob.stat.mode = 0444;
    absl::StatusOr<LayerIndex> index = absl::UnknownError("");
    if (absl::EndsWith(d.media_type, ".raw")) {
      std::string path;
      for (const char* a : kFilePathAnnotations) {
        if (auto it = d.annotations.find(a); it != d.annotations.end()) {
          path = it->second;
          break;
        }
      }
      if (path.empty()) {
        return absl::FailedPreconditionError(
            absl::StrCat(image->url(), ": raw layer ", d.digest, " names no file path"));
      }
      index = IndexRawFile(path, d.size);
    } else {
      auto toc = d.annotations.find(kTocDigest);
      index = IndexLayerBlob(fetcher, blob, toc == d.annotations.end() ? "" : toc->second);
    }
    if (!index.ok()) {
      return absl::Status(index.status().code(),
                          absl::StrCat(image->url(), ": layer ", d.digest, " (", d.media_type,
                                       "): ", index.status().message()));
    }
    indexes.push_back(std::move(*index));
    sources.push_back({blob, nullptr});
  }
  std::vector<const LayerIndex*> ptrs;
  for (size_t i = 0; i < indexes.size(); ++i) {
    ptrs.push_back(&indexes[i]);
    if (indexes[i].format == LayerFormat::kEstargz) {
      sources[i].files = std::make_shared<EstargzFiles>(
          std::make_shared<const LayerIndex>(indexes[i]), sources[i].blob);
    }
  }
  auto merged = std::make_shared<const LayerIndex>(MergeLayers(ptrs));
  spdlog::info("{}: {} layers, {} entries in one tree", image->url(), indexes.size(),
               merged->nodes.size());
  return std::make_unique<LayerTree>(merged, std::move(sources), store, fetcher);
}

}  // namespace strata::fuse
