// Constructors of the concrete origins, for OpenOrigin and their tests.
#pragma once

#include <memory>
#include <string>

#include "origin/http_client.h"
#include "origin/origin.h"

namespace strata::origin {

// With `beneath`, `root` must lie under that directory and is reached from
// it without following symlinks (see OriginOptions::file_beneath).
absl::StatusOr<std::unique_ptr<Origin>> NewFileOrigin(const std::string& url,
                                                      const std::string& root,
                                                      const std::string& beneath = "");
absl::StatusOr<std::unique_ptr<Origin>> NewHttpOrigin(const std::string& url,
                                                      std::shared_ptr<HttpClient> http);
absl::StatusOr<std::unique_ptr<Origin>> NewS3Origin(const std::string& url,
                                                    const OriginOptions& options,
                                                    std::shared_ptr<HttpClient> http);
absl::StatusOr<std::unique_ptr<Origin>> NewOciOrigin(const std::string& url,
                                                     const OriginOptions& options,
                                                     std::shared_ptr<HttpClient> http);

// Checks the answer to a ranged GET of [offset, offset + len) of an object
// of `stat` (206 with the right Content-Range, the whole body, the same
// strong ETag); `what` names the request in errors.
absl::Status CheckRangedGet(const HttpResponse& resp, uint64_t offset, size_t len,
                            const ObjectStat& stat, const std::string& what);
bool IsStrongEtag(absl::string_view etag);

}  // namespace strata::origin
