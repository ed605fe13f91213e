// Controller: argument checks with the codes the CSI spec names, volume
// records in the state database, volume directories in the origin.
#include "csi/controller_service.h"

#include <sys/statvfs.h>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/errno_status.h"
#include "base/logging.h"
#include "csi/request_checks.h"
#include "csi/volume_spec.h"
#include "origin/origin.h"
#include "origin/root_dir.h"

namespace strata::csi {
namespace {

using grpc::Status;
using grpc::StatusCode;
using json = nlohmann::json;

constexpr char kVolumePrefix[] = "volume/";
constexpr char kTokenPrefix[] = "after:";
constexpr char kPvcNamespace[] = "csi.storage.k8s.io/pvc/namespace";
constexpr char kPvcName[] = "csi.storage.k8s.io/pvc/name";

// A name that is one safe path component.
absl::Status CheckComponent(const std::string& what, const std::string& v) {
  if (v.empty() || v == "." || v == ".." || v.size() > 255 ||
      v.find_first_of(std::string("/\0", 2)) != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " '", v, "' cannot name a directory (1-255 bytes, no '/')"));
  }
  return absl::OkStatus();
}

// A record's volume path under its base: one or two safe components (the
// volume's name, or namespace/name), and the record's origin is that path.
// Anything else is a damaged or forged record: nothing is deleted for it.
absl::Status CheckRecordPath(const std::string& id, const json& rec) {
  std::string sub = rec.value("sub_path", "");
  std::vector<std::string> parts = absl::StrSplit(sub, '/');
  bool ok = !sub.empty() && parts.size() <= 2;
  for (const std::string& p : parts) ok = ok && CheckComponent("path", p).ok();
  if (!ok || JoinOriginUrl(rec.value("base", ""), sub) != rec.value("origin", "")) {
    return absl::InternalError(absl::StrCat("the record of volume ", id, " is damaged (path '", sub,
                                            "'); not deleting anything for it"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<origin::Origin>> OpenBase(
    const std::string& url, const google::protobuf::Map<std::string, std::string>& secrets) {
  auto origin = origin::OpenOrigin(url, OriginOptionsFrom(FromProto(secrets)));
  if (!origin.ok()) return origin.status();
  if (absl::Status st = ProbeOrigin(**origin); !st.ok()) return st;
  return origin;
}

// A POSIX origin's directories are made and removed beneath its root,
// never through a symlink: a volume directory that a pod swapped for a link
// to the node's files is removed as a link.
absl::Status MakeTree(origin::Origin& origin, const std::string& path) {
  if (origin::RootDir* root = origin.Dir()) return root->MakeDirs(path, 0755);
  return origin.MakeDir(path);
}

// Removes `path` and everything under it; what is already gone is fine.
absl::Status RemoveTree(origin::Origin& origin, const std::string& path) {
  if (origin::RootDir* root = origin.Dir()) {
    absl::Status st = root->RemoveAll(path);
    int err = strata::AttachedErrno(st);
    if (err == ELOOP || err == ENOTDIR) {
      return absl::FailedPreconditionError(
          absl::StrCat("a directory on the way to ", path, " in ", origin.url(),
                       " is no longer a directory (a symlink put there?): nothing was deleted (",
                       st.message(), ")"));
    }
    return st;
  }
  auto entries = origin.List(path);
  if (absl::IsNotFound(entries.status())) return absl::OkStatus();
  if (!entries.ok()) return entries.status();
  for (const origin::DirEntry& e : *entries) {
    std::string child = absl::StrCat(path, "/", e.name);
    absl::Status st = e.stat.is_dir ? RemoveTree(origin, child) : origin.Delete(child);
    if (!st.ok() && !absl::IsNotFound(st)) return st;
  }
  absl::Status st = origin.RemoveDir(path);
  return absl::IsNotFound(st) ? absl::OkStatus() : st;
}

// The capacity a new or expanded volume records: the least that satisfies
// the range (0 when none is asked for: origins have no fixed size).
absl::StatusOr<int64_t> CapacityFor(const ::csi::v1::CapacityRange& r) {
  if (r.required_bytes() < 0 || r.limit_bytes() < 0)
    return absl::InvalidArgumentError("capacity_range has a negative size");
  if (r.limit_bytes() != 0 && r.limit_bytes() < r.required_bytes()) {
    return absl::OutOfRangeError(absl::StrCat("capacity_range limit ", r.limit_bytes(),
                                              " is below its required ", r.required_bytes()));
  }
  return r.required_bytes() != 0 ? r.required_bytes() : r.limit_bytes();
}

void FillVolume(const std::string& id, const json& rec, ::csi::v1::Volume* v) {
  v->set_volume_id(id);
  v->set_capacity_bytes(rec.value("capacity", int64_t{0}));
  auto ctx = rec.find("context");
  if (ctx == rec.end() || !ctx->is_object()) return;
  for (auto it = ctx->begin(); it != ctx->end(); ++it) {
    if (it->is_string()) (*v->mutable_volume_context())[it.key()] = it->get<std::string>();
  }
}

}  // namespace

ControllerService::ControllerService(StateDb& db, ControllerOptions options)
    : db_(db), opts_(std::move(options)) {}

Status ControllerService::CreateVolume(grpc::ServerContext*,
                                       const ::csi::v1::CreateVolumeRequest* req,
                                       ::csi::v1::CreateVolumeResponse* resp) {
  const std::string& name = req->name();
  if (name.empty()) return InvalidArgument("name is missing");
  if (absl::Status st = CheckComponent("volume name", name); !st.ok()) return ToGrpc(st);
  if (req->volume_capabilities().empty()) return InvalidArgument("volume_capabilities is missing");
  for (const auto& cap : req->volume_capabilities()) {
    if (Status st = CheckCapability(cap); !st.ok()) return st;
  }
  if (req->has_volume_content_source())
    return InvalidArgument("volumes from snapshots or clones are not supported");
  auto capacity = CapacityFor(req->capacity_range());
  if (!capacity.ok()) return ToGrpc(capacity.status());

  std::string base = opts_.default_origin;
  std::string sub_from = "pv", on_delete = "delete";
  json context = json::object();
  for (const auto& [key, value] : req->parameters()) {
    if (key == kSubPathFrom) {
      if (value != "pv" && value != "pvc")
        return InvalidArgument(absl::StrCat("subPathFrom must be pv or pvc, not '", value, "'"));
      sub_from = value;
    } else if (key == kOnDelete) {
      if (value != "delete" && value != "retain")
        return InvalidArgument(
            absl::StrCat("onDelete must be delete or retain, not '", value, "'"));
      on_delete = value;
    } else if (absl::StartsWith(key, "csi.storage.k8s.io/")) {
      continue;  // the provisioner's metadata (--extra-create-metadata)
    } else if (absl::Status st = CheckVolumeOption(key, value); !st.ok()) {
      return ToGrpc(st);
    } else if (key == kOrigin) {
      base = value;
    } else {
      context[key] = value;
    }
  }
  if (base.empty()) {
    return InvalidArgument(
        "the StorageClass has no 'origin' parameter (file:///dir or s3://bucket/prefix) and the "
        "controller has no --default-origin");
  }
  std::string sub = name;
  if (sub_from == "pvc") {
    auto ns = req->parameters().find(kPvcNamespace), pvc = req->parameters().find(kPvcName);
    if (ns == req->parameters().end() || pvc == req->parameters().end()) {
      return InvalidArgument(
          "subPathFrom=pvc needs the PVC's namespace and name: run csi-provisioner with "
          "--extra-create-metadata");
    }
    for (const auto& [what, v] :
         {std::pair{"PVC namespace", ns->second}, {"PVC name", pvc->second}})
      if (absl::Status st = CheckComponent(what, v); !st.ok()) return ToGrpc(st);
    sub = absl::StrCat(ns->second, "/", pvc->second);
  }
  std::string url = JoinOriginUrl(base, sub);
  context[kOrigin] = url;

  absl::MutexLock l(&mu_);
  const std::string key = kVolumePrefix + name;
  auto existing = db_.Get(key);
  if (!existing.ok()) return ToGrpc(existing.status());
  if (existing->has_value()) {
    const json& rec = **existing;
    int64_t have = rec.value("capacity", int64_t{0});
    const auto& r = req->capacity_range();
    bool fits = have >= r.required_bytes() && (r.limit_bytes() == 0 || have <= r.limit_bytes());
    if (rec.value("origin", "") != url || !fits) {
      return Status(StatusCode::ALREADY_EXISTS,
                    absl::StrCat("volume ", name, " exists with capacity ", have, " at ",
                                 rec.value("origin", ""),
                                 "; this request asks for another capacity or origin"));
    }
    FillVolume(name, rec, resp->mutable_volume());
    return Status::OK;
  }
  auto origin = OpenBase(base, req->secrets());
  if (!origin.ok()) return ToGrpc(origin.status());
  if (absl::Status st = MakeTree(**origin, sub); !st.ok()) {
    return ToGrpc(absl::Status(
        st.code(), absl::StrCat("cannot create the volume's directory ", url, ": ", st.message())));
  }
  json rec = {{"origin", url},         {"base", base},           {"sub_path", sub},
              {"capacity", *capacity}, {"on_delete", on_delete}, {"context", context}};
  if (absl::Status st = db_.Put(key, rec); !st.ok()) return ToGrpc(st);
  spdlog::info("created volume {} at {} ({} bytes, on delete: {})", name, url, *capacity,
               on_delete);
  FillVolume(name, rec, resp->mutable_volume());
  return Status::OK;
}

Status ControllerService::DeleteVolume(grpc::ServerContext*,
                                       const ::csi::v1::DeleteVolumeRequest* req,
                                       ::csi::v1::DeleteVolumeResponse*) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  absl::MutexLock l(&mu_);
  const std::string key = kVolumePrefix + req->volume_id();
  auto rec = db_.Get(key);
  if (!rec.ok()) return ToGrpc(rec.status());
  if (!rec->has_value()) return Status::OK;  // deleted already, or never ours
  const json& r = **rec;
  if (r.value("on_delete", "delete") == "delete") {
    if (absl::Status st = CheckRecordPath(req->volume_id(), r); !st.ok()) return ToGrpc(st);
    auto origin = OpenBase(r.value("base", ""), req->secrets());
    if (!origin.ok()) return ToGrpc(origin.status());
    if (absl::Status st = RemoveTree(**origin, r.value("sub_path", "")); !st.ok()) {
      return ToGrpc(absl::Status(
          st.code(), absl::StrCat("cannot remove ", r.value("origin", ""), ": ", st.message())));
    }
  }
  if (absl::Status st = db_.Delete(key); !st.ok()) return ToGrpc(st);
  spdlog::info("deleted volume {} ({} its data at {})", req->volume_id(),
               r.value("on_delete", "delete") == "delete" ? "removed" : "kept",
               r.value("origin", ""));
  return Status::OK;
}

Status ControllerService::ValidateVolumeCapabilities(
    grpc::ServerContext*, const ::csi::v1::ValidateVolumeCapabilitiesRequest* req,
    ::csi::v1::ValidateVolumeCapabilitiesResponse* resp) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (req->volume_capabilities().empty()) return InvalidArgument("volume_capabilities is missing");
  auto rec = db_.Get(kVolumePrefix + req->volume_id());
  if (!rec.ok()) return ToGrpc(rec.status());
  if (!rec->has_value())
    return Status(StatusCode::NOT_FOUND, absl::StrCat("no volume ", req->volume_id()));
  bool read_only = false;
  if (auto ctx = (**rec).find("context"); ctx != (**rec).end() && ctx->is_object())
    read_only = ctx->value(kReadOnly, "false") == "true";
  for (const auto& cap : req->volume_capabilities()) {
    if (Status st = CheckCapability(cap); !st.ok()) {
      resp->set_message(st.error_message());
      return Status::OK;
    }
    if (read_only && !IsReaderOnly(cap)) {
      resp->set_message("the volume is read-only (readOnly=true): only reader access modes");
      return Status::OK;
    }
  }
  auto* c = resp->mutable_confirmed();
  *c->mutable_volume_context() = req->volume_context();
  *c->mutable_volume_capabilities() = req->volume_capabilities();
  *c->mutable_parameters() = req->parameters();
  return Status::OK;
}

Status ControllerService::ListVolumes(grpc::ServerContext*,
                                      const ::csi::v1::ListVolumesRequest* req,
                                      ::csi::v1::ListVolumesResponse* resp) {
  if (req->max_entries() < 0) return InvalidArgument("max_entries is negative");
  std::string after;
  if (!req->starting_token().empty()) {
    // Tokens name the last volume returned, so volumes deleted between
    // pages do not shift the next page.
    std::string id;
    if (!absl::StartsWith(req->starting_token(), kTokenPrefix) ||
        !absl::WebSafeBase64Unescape(req->starting_token().substr(sizeof kTokenPrefix - 1), &id) ||
        id.empty()) {
      return Status(StatusCode::ABORTED,
                    absl::StrCat("starting_token '", req->starting_token(),
                                 "' was not returned by ListVolumes; list from the start"));
    }
    after = kVolumePrefix + id;
  }
  size_t max = static_cast<size_t>(req->max_entries());
  auto recs = db_.Scan(kVolumePrefix, after, max == 0 ? 0 : max + 1);
  if (!recs.ok()) return ToGrpc(recs.status());
  for (size_t i = 0; i < recs->size(); ++i) {
    std::string id = (*recs)[i].first.substr(sizeof kVolumePrefix - 1);
    if (max != 0 && i == max) {
      std::string last = (*recs)[i - 1].first.substr(sizeof kVolumePrefix - 1);
      resp->set_next_token(absl::StrCat(kTokenPrefix, absl::WebSafeBase64Escape(last)));
      break;
    }
    FillVolume(id, (*recs)[i].second, resp->add_entries()->mutable_volume());
  }
  return Status::OK;
}

Status ControllerService::GetCapacity(grpc::ServerContext*,
                                      const ::csi::v1::GetCapacityRequest* req,
                                      ::csi::v1::GetCapacityResponse* resp) {
  for (const auto& cap : req->volume_capabilities()) {
    if (!CheckCapability(cap).ok()) return Status::OK;  // none for what we cannot serve
  }
  auto it = req->parameters().find(kOrigin);
  std::string base = it != req->parameters().end() ? it->second : opts_.default_origin;
  if (base.empty()) return Status::OK;
  auto origin = origin::OpenOrigin(base, {});
  if (!origin.ok()) return ToGrpc(origin.status());
  // Only a POSIX origin has a size to report; object stores have no limit
  // to speak of, which CSI expresses by leaving the capacity unset.
  if (origin::RootDir* root = (*origin)->Dir()) {
    auto fd = root->Fd();
    struct statvfs sv {};
    if (!fd.ok() || ::fstatvfs((*fd)->get(), &sv) != 0) {
      return Status(StatusCode::UNAVAILABLE,
                    absl::StrCat("statvfs ", root->path(), ": ",
                                 fd.ok() ? std::strerror(errno) : fd.status().message()));
    }
    resp->set_available_capacity(static_cast<int64_t>(sv.f_bavail * sv.f_frsize));
  }
  return Status::OK;
}

Status ControllerService::ControllerGetCapabilities(
    grpc::ServerContext*, const ::csi::v1::ControllerGetCapabilitiesRequest*,
    ::csi::v1::ControllerGetCapabilitiesResponse* resp) {
  using Rpc = ::csi::v1::ControllerServiceCapability::RPC;
  for (Rpc::Type t :
       {Rpc::CREATE_DELETE_VOLUME, Rpc::LIST_VOLUMES, Rpc::GET_CAPACITY, Rpc::EXPAND_VOLUME}) {
    resp->add_capabilities()->mutable_rpc()->set_type(t);
  }
  return Status::OK;
}

Status ControllerService::ControllerExpandVolume(
    grpc::ServerContext*, const ::csi::v1::ControllerExpandVolumeRequest* req,
    ::csi::v1::ControllerExpandVolumeResponse* resp) {
  if (req->volume_id().empty()) return InvalidArgument("volume_id is missing");
  if (!req->has_capacity_range()) return InvalidArgument("capacity_range is missing");
  auto wanted = CapacityFor(req->capacity_range());
  if (!wanted.ok()) return ToGrpc(wanted.status());
  if (req->has_volume_capability()) {
    if (Status st = CheckCapability(req->volume_capability()); !st.ok()) return st;
  }
  absl::MutexLock l(&mu_);
  const std::string key = kVolumePrefix + req->volume_id();
  auto rec = db_.Get(key);
  if (!rec.ok()) return ToGrpc(rec.status());
  if (!rec->has_value())
    return Status(StatusCode::NOT_FOUND, absl::StrCat("no volume ", req->volume_id()));
  json r = **rec;
  int64_t have = r.value("capacity", int64_t{0});
  int64_t limit = req->capacity_range().limit_bytes();
  if (limit != 0 && have > limit) {
    return Status(StatusCode::OUT_OF_RANGE,
                  absl::StrCat("volume ", req->volume_id(), " already records ", have,
                               " bytes, above the limit ", limit, "; volumes do not shrink"));
  }
  if (*wanted > have) {
    r["capacity"] = *wanted;
    if (absl::Status st = db_.Put(key, r); !st.ok()) return ToGrpc(st);
    spdlog::info("volume {}: capacity {} -> {} bytes", req->volume_id(), have, *wanted);
    have = *wanted;
  }
  // A directory in an origin has no size to grow: the record is the volume's
  // size, and nothing on the node needs to change.
  resp->set_capacity_bytes(have);
  resp->set_node_expansion_required(false);
  return Status::OK;
}

}  // namespace strata::csi
