// An image's files in one read-only tree: its layers indexed where they
// are (tar headers, an eStargz TOC, a raw model layer's one file) and
// merged as overlayfs would stack them. What CSI volumes naming an image or
// a model artifact (ModelPack) show, and how a lazily served layer is
// indexed.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "cache/fetcher.h"
#include "fuse/layer_tree.h"
#include "origin/origin.h"

namespace strata::fuse {

// The index of one layer blob, from what its bytes are: an uncompressed
// tar (its headers) or eStargz (its TOC, which must match `toc_digest`).
// Headers and TOC are read without waiting for the blob's digest check:
// nothing of a file is served before its bytes are checked.
// FailedPrecondition when the blob is in neither format.
absl::StatusOr<LayerIndex> IndexLayerBlob(cache::Fetcher& fetcher, const cache::FetchTarget& blob,
                                          const std::string& toc_digest);

// The tree of `image` (an oci:// origin): every layer indexed and all of
// them merged. A raw layer (media type ending in ".raw", as ModelPack's
// weight layers) is one file named by its org.cncf.model.filepath,
// org.cnai.model.filepath or org.opencontainers.image.title annotation.
// FailedPrecondition naming the first layer that cannot be read in place
// (plain gzip, zstd).
absl::StatusOr<std::unique_ptr<LayerTree>> OpenImageTree(std::shared_ptr<origin::Origin> image,
                                                         cache::ChunkStore& store,
                                                         cache::Fetcher& fetcher);

}  // namespace strata::fuse
