// Hex and SHA-256, the one copy every part of Strata uses: origins hash
// request bodies and blobs, the fetcher checks content digests, the CSI
// records shorten long names.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace strata {

// XXH3-64 of `data`: the checksum of a chunk, as the chunk store keeps it and
// as it travels between peers. Not a content digest: it catches corruption,
// not a forger.
uint64_t ChunkChecksum(std::string_view data);

// Lowercase hex of `bytes`.
std::string HexLower(std::string_view bytes);

// Lowercase hex SHA-256 of `data`.
std::string Sha256Hex(std::string_view data);

// The raw 32-byte HMAC-SHA256 of `data` under `key`.
std::string HmacSha256(std::string_view key, std::string_view data);

// SHA-256 over data that arrives in pieces (an object read chunk by chunk).
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::string_view data);
  // Lowercase hex of the digest of everything given so far; the hasher is
  // spent afterwards.
  std::string HexDigest();

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

}  // namespace strata
