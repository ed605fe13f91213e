// oci:// origin: an image in an OCI distribution registry. The namespace is
// the image: List("") gives its config and layer blobs (named by digest),
// each content-addressed, so the fetcher checks them against their digest.
// A tag resolves through an image index to this platform's manifest.
// Auth: anonymous, Basic, or the Bearer token flow of WWW-Authenticate,
// with credentials from a docker config.json.
#include <algorithm>
#include <fstream>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "base/logging.h"
#include "nlohmann/json.hpp"
#include "origin/origin_impl.h"
#include "origin/sigv4.h"

namespace strata::origin {
namespace {

using json = nlohmann::json;

constexpr char kOciIndex[] = "application/vnd.oci.image.index.v1+json";
constexpr char kOciManifest[] = "application/vnd.oci.image.manifest.v1+json";
constexpr char kDockerList[] = "application/vnd.docker.distribution.manifest.list.v2+json";
constexpr char kDockerManifest[] = "application/vnd.docker.distribution.manifest.v2+json";

std::string DefaultArch() {
#if defined(__aarch64__)
  return "arm64";
#else
  return "amd64";
#endif
}

bool IsDigest(absl::string_view s) {
  return s.size() == 71 && absl::StartsWith(s, "sha256:") &&
         s.substr(7).find_first_not_of("0123456789abcdef") == absl::string_view::npos;
}

// The distribution spec's repository name: path components
// [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)* joined by '/', at most 255 bytes.
bool IsRepository(absl::string_view repo) {
  if (repo.empty() || repo.size() > 255) return false;
  auto alnum = [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); };
  for (absl::string_view part : absl::StrSplit(repo, '/')) {
    if (part.empty() || !alnum(part.front()) || !alnum(part.back())) return false;
    for (size_t i = 0; i < part.size();) {
      size_t j = i;
      while (j < part.size() && !alnum(part[j])) ++j;
      absl::string_view sep = part.substr(i, j - i);
      if (!sep.empty() && sep != "." && sep != "_" && sep != "__" &&
          sep.find_first_not_of('-') != absl::string_view::npos) {
        return false;
      }
      while (j < part.size() && alnum(part[j])) ++j;
      i = j;
    }
  }
  return true;
}

// The distribution spec's tag: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
bool IsTag(absl::string_view tag) {
  return !tag.empty() && tag.size() <= 128 && tag.front() != '.' && tag.front() != '-' &&
         std::all_of(tag.begin(), tag.end(), [](char c) {
           return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '.' ||
                  c == '-';
         });
}

// RFC 6750's b64token, what may follow "Bearer " (and "Basic "): a value
// with anything else could add header lines or parameters to the request.
bool IsB64Token(absl::string_view t) {
  size_t end = t.find_last_not_of('=');
  if (end == absl::string_view::npos) return false;  // empty, or only '='
  return std::all_of(t.begin(), t.begin() + end + 1, [](char c) {
    return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_' ||
           c == '~' || c == '+' || c == '/';
  });
}

// Typed reads of JSON from a registry. nlohmann's value() and get() throw on
// a field of another type, on threads (FUSE, fetcher) where nothing catches:
// every read goes through these instead.
const json* Member(const json& j, const char* name) {
  if (!j.is_object()) return nullptr;
  auto it = j.find(name);
  return it == j.end() ? nullptr : &*it;
}

std::string StringAt(const json& j, const char* name) {
  const json* v = Member(j, name);
  return v != nullptr && v->is_string() ? v->get<std::string>() : "";
}

// A size: an integer from 0 to 2^53 (the largest a JSON number holds exactly).
bool SizeAt(const json& j, const char* name, uint64_t* size) {
  const json* v = Member(j, name);
  if (v == nullptr || !v->is_number_unsigned()) return false;
  uint64_t n = v->get<uint64_t>();
  if (n > (uint64_t{1} << 53)) return false;
  *size = n;
  return true;
}

// Parses `Bearer realm="...",service="...",scope="..."` (or Basic ...).
std::map<std::string, std::string> ParseChallenge(absl::string_view h, std::string* scheme) {
  std::map<std::string, std::string> out;
  size_t sp = h.find(' ');
  *scheme = absl::AsciiStrToLower(h.substr(0, sp));
  if (sp == absl::string_view::npos) return out;
  absl::string_view rest = h.substr(sp + 1);
  while (!rest.empty()) {
    rest = absl::StripLeadingAsciiWhitespace(rest);
    size_t eq = rest.find('=');
    if (eq == absl::string_view::npos) break;
    std::string key = absl::AsciiStrToLower(absl::StripAsciiWhitespace(rest.substr(0, eq)));
    rest.remove_prefix(eq + 1);
    std::string value;
    if (!rest.empty() && rest[0] == '"') {
      size_t end = rest.find('"', 1);
      value =
          std::string(rest.substr(1, end == absl::string_view::npos ? rest.size() - 1 : end - 1));
      rest.remove_prefix(end == absl::string_view::npos ? rest.size() : end + 1);
    } else {
      size_t end = rest.find(',');
      value = std::string(rest.substr(0, end));
      rest.remove_prefix(end == absl::string_view::npos ? rest.size() : end);
    }
    out[key] = value;
    rest = absl::StripLeadingAsciiWhitespace(rest);
    if (!rest.empty() && rest[0] == ',') rest.remove_prefix(1);
  }
  return out;
}

std::string UrlEncodeQuery(absl::string_view s) {
  return UriEncode(std::string_view(s.data(), s.size()), true);
}

class OciOrigin final : public Origin {
 public:
  OciOrigin(std::string url, std::string scheme, std::string registry, std::string repo,
            std::string ref, std::string basic, const OriginOptions& o,
            std::shared_ptr<HttpClient> http)
      : url_(std::move(url)),
        scheme_(std::move(scheme)),
        registry_(std::move(registry)),
        repo_(std::move(repo)),
        ref_(std::move(ref)),
        basic_(std::move(basic)),
        opts_(o),
        http_(std::move(http)) {
    if (opts_.oci_arch.empty()) opts_.oci_arch = DefaultArch();
  }

  const std::string& url() const override { return url_; }

  absl::StatusOr<ObjectStat> Stat(const std::string& path) override {
    if (path.empty()) {
      // A digest reference may name a blob: then the URL is one object.
      if (IsDigest(ref_)) {
        auto blob = StatBlob(ref_);
        if (blob.ok() || !absl::IsNotFound(blob.status())) {
          if (blob.ok() || !IsManifestDigest()) return blob;
        }
      }
      auto m = Manifest();
      if (!m.ok()) return m.status();
      ObjectStat st;
      st.is_dir = true;
      st.mode = 0555;
      absl::MutexLock l(&mu_);
      st.version = manifest_digest_;
      return st;
    }
    if (!IsDigest(path)) {
      return absl::NotFoundError(
          absl::StrCat(url_, ": '", path, "' is not a blob digest (sha256:<hex>)"));
    }
    return StatBlob(path);
  }

  absl::StatusOr<std::vector<DirEntry>> List(const std::string& dir) override {
    if (!dir.empty())
      return absl::NotFoundError(absl::StrCat(url_, ": an image has no directory '", dir, "'"));
    auto m = Manifest();
    if (!m.ok()) return m.status();
    std::vector<DirEntry> out;
    absl::flat_hash_set<std::string> seen;
    int skipped = 0;
    // The digests become file names and the sizes the store's: only a
    // well-formed digest (never "", "..", a path) and a real size pass, and
    // a blob listed twice (config and layer alike) is one file.
    auto add = [&](const json& d) {
      DirEntry e;
      e.name = StringAt(d, "digest");
      if (!IsDigest(e.name) || !SizeAt(d, "size", &e.stat.size)) {
        ++skipped;
        return;
      }
      if (!seen.insert(e.name).second) return;
      e.stat.digest = e.name;
      e.stat.version = e.name;
      e.stat.mode = 0444;
      out.push_back(std::move(e));
    };
    if (const json* config = Member(*m, "config")) add(*config);
    for (const json& l : *Member(*m, "layers")) add(l);  // an array: Manifest checked
    if (skipped > 0) {
      spdlog::warn("{}: left out {} blobs of the manifest without a sha256 digest or a size", url_,
                   skipped);
    }
    return out;
  }

  absl::StatusOr<std::vector<LayerDescriptor>> Layers() override {
    auto m = Manifest();
    if (!m.ok()) return m.status();
    std::vector<LayerDescriptor> out;
    for (const json& l : *Member(*m, "layers")) {  // an array: Manifest checked
      LayerDescriptor d;
      d.digest = StringAt(l, "digest");
      if (!IsDigest(d.digest) || !SizeAt(l, "size", &d.size)) {
        return absl::InvalidArgumentError(
            absl::StrCat(url_, ": a layer without a sha256 digest or a size"));
      }
      d.media_type = StringAt(l, "mediaType");
      if (const json* a = Member(l, "annotations"); a && a->is_object()) {
        for (const auto& [k, v] : a->items()) {
          if (v.is_string()) d.annotations[k] = v.get<std::string>();
        }
      }
      out.push_back(std::move(d));
    }
    return out;
  }

  absl::Status ReadInRange(const std::string& path, const ObjectStat& stat, uint64_t offset,
                           absl::Span<char> out) override {
    std::string digest = path.empty() ? ref_ : path;
    if (!IsDigest(digest))
      return absl::InvalidArgumentError(absl::StrCat(url_, ": not a blob: ", digest));
    HttpRequest req;
    req.url = BlobUrl(digest);
    req.headers = {{"Range", absl::StrFormat("bytes=%u-%u", offset, offset + out.size() - 1)}};
    req.into = out;
    auto resp = Send(req, "pull");
    if (!resp.ok()) return resp.status();
    ObjectStat versionless = stat;
    versionless.version
        .clear();  // a registry's ETag is its own business; the digest is the version
    return CheckRangedGet(
        *resp, offset, out.size(), versionless,
        absl::StrFormat("GET %s blob %s [%u, +%u)", url_, digest, offset, out.size()));
  }

 private:
  bool IsManifestDigest() {
    HttpRequest req;
    req.method = "HEAD";
    req.url = ManifestUrl(ref_);
    req.headers = {{"Accept", AcceptManifests()}};
    auto resp = Send(req, "pull");
    return resp.ok() && resp->status == 200;
  }

  std::string Base() const { return absl::StrCat(scheme_, "://", registry_, "/v2/", repo_); }
  std::string BlobUrl(const std::string& d) const { return absl::StrCat(Base(), "/blobs/", d); }
  std::string ManifestUrl(const std::string& r) const {
    return absl::StrCat(Base(), "/manifests/", r);
  }
  static std::string AcceptManifests() {
    return absl::StrCat(kOciIndex, ", ", kOciManifest, ", ", kDockerList, ", ", kDockerManifest);
  }

  absl::StatusOr<ObjectStat> StatBlob(const std::string& digest) {
    HttpRequest req;
    req.method = "HEAD";
    req.url = BlobUrl(digest);
    auto resp = Send(req, "pull");
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) return HttpError(*resp, absl::StrCat(url_, ": blob ", digest));
    ObjectStat st;
    if (!ParseObjectSize(resp->Header("content-length"), &st.size)) {
      return absl::InvalidArgumentError(absl::StrCat(
          url_, ": blob ", digest, " has no valid Content-Length (digits, at most 2^50)"));
    }
    st.digest = digest;
    st.version = digest;
    st.mode = 0444;
    return st;
  }

  // Fetches a manifest by reference and checks it against the digest when
  // the reference is one (or when the registry names one).
  absl::StatusOr<std::pair<json, std::string>> FetchManifest(const std::string& ref) {
    HttpRequest req;
    req.url = ManifestUrl(ref);
    req.headers = {{"Accept", AcceptManifests()}};
    auto resp = Send(req, "pull");
    if (!resp.ok()) return resp.status();
    if (resp->status != 200) return HttpError(*resp, absl::StrCat(url_, ": manifest ", ref));
    std::string digest = "sha256:" + Sha256Hex(resp->body);
    std::string want = IsDigest(ref) ? ref : resp->Header("docker-content-digest");
    if (!want.empty() && want != digest) {
      return absl::DataLossError(
          absl::StrCat(url_, ": manifest ", ref, " has digest ", digest, ", want ", want));
    }
    json j = json::parse(resp->body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(url_, ": manifest ", ref, " is not a JSON object"));
    }
    return std::make_pair(std::move(j), digest);
  }

  // The platform's image manifest, resolved once.
  absl::StatusOr<json> Manifest() {
    absl::MutexLock l(&mu_);
    if (!manifest_.is_null()) return manifest_;
    auto m = FetchManifest(ref_);
    if (!m.ok()) return m.status();
    if (auto st = CheckShape(m->first); !st.ok()) return st;
    std::string type = StringAt(m->first, "mediaType");
    const json* manifests = Member(m->first, "manifests");
    if (type == kOciIndex || type == kDockerList || manifests != nullptr) {
      if (manifests == nullptr || !manifests->is_array()) {
        return absl::InvalidArgumentError(
            absl::StrCat(url_, ": the image index has no \"manifests\" array"));
      }
      std::string chosen;
      bool found = false;
      for (const json& d : *manifests) {
        const json* p = Member(d, "platform");
        if (p != nullptr && StringAt(*p, "os") == opts_.oci_os &&
            StringAt(*p, "architecture") == opts_.oci_arch) {
          chosen = StringAt(d, "digest");
          found = true;
          break;
        }
      }
      if (!found) {
        return absl::NotFoundError(absl::StrCat(url_, ": the image index has no manifest for ",
                                                opts_.oci_os, "/", opts_.oci_arch));
      }
      // It becomes part of a URL path: only a digest, never "../..".
      if (!IsDigest(chosen)) {
        return absl::InvalidArgumentError(
            absl::StrCat(url_, ": the image index names no sha256 digest for ", opts_.oci_os, "/",
                         opts_.oci_arch));
      }
      m = FetchManifest(chosen);
      if (!m.ok()) return m.status();
      if (auto st = CheckShape(m->first); !st.ok()) return st;
    }
    const json* layers = Member(m->first, "layers");
    if (layers == nullptr || !layers->is_array()) {
      return absl::InvalidArgumentError(
          absl::StrCat(url_, ": not an image manifest (no \"layers\" array)"));
    }
    for (const json& l : *layers) {
      if (!l.is_object()) {
        return absl::InvalidArgumentError(
            absl::StrCat(url_, ": not an image manifest (a layer is not a JSON object)"));
      }
    }
    manifest_ = std::move(m->first);
    manifest_digest_ = m->second;
    return manifest_;
  }

  // The fields every manifest or index reader relies on have their types.
  absl::Status CheckShape(const json& m) const {
    const json* type = Member(m, "mediaType");
    const json* config = Member(m, "config");
    if ((type != nullptr && !type->is_string()) || (config != nullptr && !config->is_object())) {
      return absl::InvalidArgumentError(
          absl::StrCat(url_,
                       ": malformed manifest (\"mediaType\" is not a string or \"config\" not an "
                       "object)"));
    }
    return absl::OkStatus();
  }

  // A token realm the registry names: https, or http when the registry is
  // itself reached over http; a host[:port]; nothing that could make it
  // another kind of URL (file://, userinfo, a fragment, spaces).
  bool IsRealm(absl::string_view realm) const {
    if (!absl::ConsumePrefix(&realm, "https://") &&
        !(scheme_ == "http" && absl::ConsumePrefix(&realm, "http://"))) {
      return false;
    }
    size_t end = realm.find_first_of("/?");
    if (!IsHostAndPort(realm.substr(0, end))) return false;
    return std::all_of(realm.begin(), realm.end(), [](char c) {
      return c > ' ' && c < 0x7f && c != '#' && c != '"' && c != '\\';
    });
  }

  // Sends with the current token; on 401 runs the challenge once and resends.
  absl::StatusOr<HttpResponse> Send(HttpRequest req, const std::string& action) {
    std::string auth;
    {
      absl::MutexLock l(&auth_mu_);
      auth = auth_header_;
    }
    for (int round = 0; round < 2; ++round) {
      HttpRequest r = req;
      if (!auth.empty()) r.headers.emplace_back("Authorization", auth);
      auto resp = http_->Do(r);
      if (!resp.ok() || resp->status != 401 || round == 1) {
        if (resp.ok() && resp->status == 401) {
          return absl::PermissionDeniedError(
              absl::StrCat(url_, ": the registry refused the credentials",
                           basic_.empty() ? " (none were found in the docker config)" : "", ": ",
                           resp->body.substr(0, 200)));
        }
        return resp;
      }
      auto fresh = Authorize(resp->Header("www-authenticate"), action);
      if (!fresh.ok()) return fresh.status();
      auth = *fresh;
      absl::MutexLock l(&auth_mu_);
      auth_header_ = auth;
    }
    return absl::InternalError("unreachable");
  }

  absl::StatusOr<std::string> Authorize(const std::string& challenge, const std::string& action) {
    std::string scheme;
    auto params = ParseChallenge(challenge, &scheme);
    if (scheme == "basic") {
      if (basic_.empty()) {
        return absl::PermissionDeniedError(absl::StrCat(
            url_, ": the registry wants a login and the docker config has none for ", registry_));
      }
      return "Basic " + basic_;
    }
    if (scheme != "bearer" || params["realm"].empty()) {
      return absl::PermissionDeniedError(absl::StrCat(
          url_, ": unsupported auth challenge '", absl::CHexEscape(challenge.substr(0, 200)), "'"));
    }
    if (!IsRealm(params["realm"])) {
      return absl::PermissionDeniedError(absl::StrCat(
          url_, ": the registry's token realm '", absl::CHexEscape(params["realm"].substr(0, 200)),
          "' is not an ", scheme_ == "http" ? "http(s)" : "https", "://host[:port] URL"));
    }
    std::string scope =
        params.count("scope") ? params["scope"] : absl::StrCat("repository:", repo_, ":", action);
    HttpRequest tr;
    tr.url = absl::StrCat(
        params["realm"], params["realm"].find('?') == std::string::npos ? "?" : "&",
        "service=", UrlEncodeQuery(params["service"]), "&scope=", UrlEncodeQuery(scope));
    if (!basic_.empty()) tr.headers.emplace_back("Authorization", "Basic " + basic_);
    auto resp = http_->Do(tr);
    if (!resp.ok()) return resp.status();
    if (resp->status != 200)
      return HttpError(*resp, absl::StrCat(url_, ": token from ", params["realm"]));
    json j = json::parse(resp->body, nullptr, false);
    std::string token = StringAt(j, "token");
    if (token.empty()) token = StringAt(j, "access_token");
    if (token.empty())
      return absl::PermissionDeniedError(absl::StrCat(url_, ": the token server sent no token"));
    // It goes into a header line as it is.
    if (!IsB64Token(token)) {
      return absl::PermissionDeniedError(
          absl::StrCat(url_,
                       ": the token server sent a token with characters a bearer token "
                       "cannot have"));
    }
    return "Bearer " + token;
  }

  std::string url_, scheme_, registry_, repo_, ref_, basic_;
  OriginOptions opts_;
  std::shared_ptr<HttpClient> http_;
  absl::Mutex mu_;  // held while the manifest is resolved (which sends requests)
  json manifest_ ABSL_GUARDED_BY(mu_);
  std::string manifest_digest_ ABSL_GUARDED_BY(mu_);
  absl::Mutex auth_mu_;
  std::string auth_header_ ABSL_GUARDED_BY(auth_mu_);
};

// base64("user:password") for `registry` from a docker config.json, or "".
std::string DockerCredentials(const OriginOptions& o, const std::string& registry) {
  std::string path = o.docker_config;
  if (path.empty()) {
    const char* dc = std::getenv("DOCKER_CONFIG");
    const char* home = std::getenv("HOME");
    path = dc ? absl::StrCat(dc, "/config.json")
              : absl::StrCat(home ? home : "/root", "/.docker/config.json");
  }
  std::ifstream f(path);
  if (!f) return "";
  json j = json::parse(f, nullptr, false);
  const json* auths = Member(j, "auths");
  if (auths == nullptr || !auths->is_object()) return "";
  for (const auto& [host, entry] : auths->items()) {
    std::string h = host;
    for (const char* p : {"https://", "http://"}) {
      if (absl::StartsWith(h, p)) h = h.substr(strlen(p));
    }
    h = h.substr(0, h.find('/'));
    // Docker Hub's entries are keyed by its old index host (docker login
    // writes https://index.docker.io/v1/); its API host is another.
    if ((h == "index.docker.io" || h == "docker.io") && registry == "registry-1.docker.io") {
      h = registry;
    }
    if (h != registry || !entry.is_object()) continue;
    std::string basic;
    if (entry.contains("auth")) {
      basic = StringAt(entry, "auth");
    } else if (entry.contains("username")) {
      basic = absl::Base64Escape(
          absl::StrCat(StringAt(entry, "username"), ":", StringAt(entry, "password")));
    }
    // It goes into a header line as it is.
    if (!basic.empty() && !IsB64Token(basic)) {
      spdlog::warn("{}: the \"auth\" of {} is not base64; ignoring it", path, registry);
      return "";
    }
    return basic;
  }
  return "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<Origin>> NewOciOrigin(const std::string& url,
                                                     const OriginOptions& options,
                                                     std::shared_ptr<HttpClient> http) {
  // oci://registry[:port]/repository[:tag|@sha256:...][?scheme=http]
  absl::string_view rest = absl::string_view(url).substr(6);
  std::string scheme;
  size_t q = rest.find('?');
  if (q != absl::string_view::npos) {
    absl::string_view query = rest.substr(q + 1);
    if (query == "scheme=http" || query == "scheme=https") {
      scheme = std::string(query.substr(7));
    } else {
      return absl::InvalidArgumentError(absl::StrCat("unknown parameters '", query, "' in ", url));
    }
    rest = rest.substr(0, q);
  }
  size_t slash = rest.find('/');
  if (slash == absl::string_view::npos || slash == 0 || slash + 1 == rest.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": expected oci://registry/repository[:tag|@digest]"));
  }
  std::string registry(rest.substr(0, slash));
  // It becomes the host of every request: "localhost:1@evil" and the like
  // must not reach another host than they seem to name.
  if (!IsHostAndPort(registry)) {
    return absl::InvalidArgumentError(
        absl::StrCat(url, ": '", absl::CHexEscape(registry), "' is not a registry host[:port]"));
  }
  absl::string_view name = rest.substr(slash + 1);
  std::string repo, ref;
  size_t at = name.find('@');
  if (at != absl::string_view::npos) {
    repo = std::string(name.substr(0, at));
    ref = std::string(name.substr(at + 1));
    if (!IsDigest(ref))
      return absl::InvalidArgumentError(absl::StrCat(url, ": '", ref, "' is not a sha256 digest"));
  } else {
    size_t colon = name.rfind(':');
    bool has_tag =
        colon != absl::string_view::npos && name.find('/', colon) == absl::string_view::npos;
    repo = std::string(has_tag ? name.substr(0, colon) : name);
    ref = has_tag ? std::string(name.substr(colon + 1)) : "latest";
    if (!IsTag(ref)) {
      return absl::InvalidArgumentError(
          absl::StrCat(url, ": '", absl::CHexEscape(ref),
                       "' is not a valid tag ([A-Za-z0-9_][A-Za-z0-9._-]{0,127})"));
    }
  }
  if (!IsRepository(repo)) {
    return absl::InvalidArgumentError(absl::StrCat(
        url, ": '", absl::CHexEscape(repo),
        "' is not a valid repository name (lowercase components joined by '/', at most 255 "
        "bytes)"));
  }
  if (scheme.empty()) {
    std::string host = registry[0] == '[' ? registry.substr(0, registry.find(']') + 1)
                                          : registry.substr(0, registry.find(':'));
    bool local = host == "127.0.0.1" || host == "localhost" || host == "[::1]";
    scheme = local ? "http" : "https";  // like docker: loopback registries speak plain HTTP
  }
  return std::make_unique<OciOrigin>(url, scheme, registry, repo, ref,
                                     DockerCredentials(options, registry), options,
                                     std::move(http));
}

}  // namespace strata::origin
