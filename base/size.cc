// ParseSize: the units operators use on command lines and in StorageClasses.
#include "base/size.h"

#include <cctype>
#include <string_view>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace strata {

absl::StatusOr<uint64_t> ParseSize(const std::string& text) {
  std::string t = absl::AsciiStrToLower(text);
  size_t n = 0;
  while (n < t.size() && (std::isdigit(static_cast<unsigned char>(t[n])) || t[n] == '.')) ++n;
  double value;
  if (n == 0 || !absl::SimpleAtod(t.substr(0, n), &value) || value < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("not a size: '", text, "' (try 4MiB, 2G, 1048576)"));
  }
  std::string unit = t.substr(n);
  uint64_t mult = 1;
  if (!unit.empty()) {
    static constexpr const char* kUnits = "kmgt";
    size_t p = std::string_view(kUnits).find(unit[0]);
    if (p == std::string_view::npos ||
        (unit.size() > 1 && unit.substr(1) != "ib" && unit.substr(1) != "b")) {
      if (unit != "b")
        return absl::InvalidArgumentError(absl::StrCat("unknown size unit in '", text, "'"));
    } else {
      mult = 1ull << (10 * (p + 1));
    }
  }
  return static_cast<uint64_t>(value * static_cast<double>(mult));
}

}  // namespace strata
