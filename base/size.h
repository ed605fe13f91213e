// Sizes as operators write them: "4MiB", "2G", "1048576".
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace strata {

// "4MiB", "2G", "1048576" -> bytes (K/M/G/T, with or without "iB"/"B").
absl::StatusOr<uint64_t> ParseSize(const std::string& text);

}  // namespace strata
