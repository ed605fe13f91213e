// SHA-256 and HMAC come from OpenSSL. Over memory they fail only if OpenSSL
// itself is broken (no provider for SHA-256), which no input could cause or
// recover from, so that aborts. Chunk checksums come from libxxhash.
#include "base/digest.h"

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <xxhash.h>
#if defined(__x86_64__)
#include <xxh_x86dispatch.h>
#endif

#include <cstdio>
#include <cstdlib>

namespace strata {
namespace {

[[noreturn]] void DieOnOpenSsl(const char* what) {
  char detail[256];
  ERR_error_string_n(ERR_get_error(), detail, sizeof(detail));
  std::fprintf(stderr, "OpenSSL %s failed: %s\n", what, detail);
  std::abort();
}

std::string_view Bytes(const unsigned char* data, unsigned int n) {
  return std::string_view(reinterpret_cast<const char*>(data), n);
}

}  // namespace

// On x86-64 through libxxhash's dispatcher, which picks AVX2 or AVX-512
// where the CPU has them: the same value, at about twice the speed of the
// baseline SSE2 build.
uint64_t ChunkChecksum(std::string_view data) {
#if defined(__x86_64__)
  return XXH3_64bits_dispatch(data.data(), data.size());
#else
  return XXH3_64bits(data.data(), data.size());
#endif
}

std::string HexLower(std::string_view bytes) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * bytes.size(), '\0');
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto c = static_cast<unsigned char>(bytes[i]);
    out[2 * i] = kHex[c >> 4];
    out[2 * i + 1] = kHex[c & 0xf];
  }
  return out;
}

std::string Sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr) != 1) {
    DieOnOpenSsl("SHA-256");
  }
  return HexLower(Bytes(md, n));
}

std::string HmacSha256(std::string_view key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
           reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &n) == nullptr) {
    DieOnOpenSsl("HMAC-SHA256");
  }
  return std::string(Bytes(mac, n));
}

struct Sha256::Ctx {
  EVP_MD_CTX* md = nullptr;
};

Sha256::Sha256() : ctx_(std::make_unique<Ctx>()) {
  ctx_->md = EVP_MD_CTX_new();
  if (ctx_->md == nullptr || EVP_DigestInit_ex(ctx_->md, EVP_sha256(), nullptr) != 1) {
    DieOnOpenSsl("SHA-256 init");
  }
}

Sha256::~Sha256() { EVP_MD_CTX_free(ctx_->md); }

void Sha256::Update(std::string_view data) {
  if (EVP_DigestUpdate(ctx_->md, data.data(), data.size()) != 1) DieOnOpenSsl("SHA-256 update");
}

std::string Sha256::HexDigest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  if (EVP_DigestFinal_ex(ctx_->md, md, &n) != 1) DieOnOpenSsl("SHA-256 final");
  return HexLower(Bytes(md, n));
}

}  // namespace strata
