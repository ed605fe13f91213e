// The files of an eStargz layer as an origin: each regular file is an
// object (named by its node in the layer's index) whose chunks are the
// layer's gzip members, read from the registry by range and inflated. The
// fetcher caches files by their content digest and checks every chunk
// against the TOC's chunk digest, so a registry's lie costs a refetch,
// never a wrong byte; files the same across layers and images are cached
// (and asked of peers) once.
#pragma once

#include <memory>
#include <string>

#include "cache/fetcher.h"
#include "fuse/layer_index.h"
#include "origin/origin.h"

namespace strata::fuse {

class EstargzFiles final : public origin::Origin {
 public:
  // `blob` is the layer in its registry (origin, digest, size).
  EstargzFiles(std::shared_ptr<const LayerIndex> index, cache::FetchTarget blob);

  const std::string& url() const override { return url_; }
  absl::StatusOr<origin::ObjectStat> Stat(const std::string& path) override;
  absl::StatusOr<std::vector<origin::DirEntry>> List(const std::string& dir) override;

  // How the fetcher reads node `node` of `files`.
  static cache::FetchTarget Target(const std::shared_ptr<EstargzFiles>& files, uint32_t node);

 protected:
  absl::Status ReadInRange(const std::string& path, const origin::ObjectStat& stat, uint64_t offset,
                           absl::Span<char> out) override;

 private:
  absl::StatusOr<const LayerNode*> Node(const std::string& path) const;

  const std::shared_ptr<const LayerIndex> index_;
  const cache::FetchTarget blob_;
  const std::string url_;
};

}  // namespace strata::fuse
