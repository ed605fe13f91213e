// Percent-encoding of names for URLs, in the strict form AWS signs (and
// every registry and HTTP server accepts).
#pragma once

#include <string>
#include <string_view>

namespace strata {

// RFC 3986 unreserved: A-Z a-z 0-9 - _ . ~
bool IsUnreserved(unsigned char c);

// Unreserved bytes kept, every other byte as %XX with uppercase hex (so a
// space is %20, never +). '/' is kept when !encode_slash, which is how an
// object key goes into a path.
std::string UriEncode(std::string_view s, bool encode_slash);

}  // namespace strata
