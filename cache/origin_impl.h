// Constructors of the concrete origins, for OpenOrigin and their tests.
#pragma once

#include <memory>
#include <string>

#include "cache/http_client.h"
#include "cache/origin.h"

namespace strata::cache {

absl::StatusOr<std::unique_ptr<Origin>> NewFileOrigin(const std::string& url,
                                                      const std::string& root);
absl::StatusOr<std::unique_ptr<Origin>> NewHttpOrigin(const std::string& url,
                                                      std::shared_ptr<HttpClient> http);

}  // namespace strata::cache
