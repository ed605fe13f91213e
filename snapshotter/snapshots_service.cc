// Translation between containerd's messages and the Snapshotter, and the
// log line for every refusal (containerd shows the message to its user).
#include "snapshotter/snapshots_service.h"

#include "absl/time/time.h"
#include "base/grpc_status.h"
#include "base/logging.h"

namespace strata::snapshotter {
namespace v1 = containerd::services::snapshots::v1;
namespace {

Labels LabelsOf(const google::protobuf::Map<std::string, std::string>& m) {
  return Labels(m.begin(), m.end());
}

void SetTime(absl::Time t, google::protobuf::Timestamp* ts) {
  int64_t ns = absl::ToUnixNanos(t);
  ts->set_seconds(ns / 1000000000);
  ts->set_nanos(static_cast<int32_t>(ns % 1000000000));
}

void ToProto(const SnapshotInfo& s, v1::Info* out) {
  out->set_name(s.name);
  out->set_parent(s.parent);
  out->set_kind(static_cast<v1::Kind>(static_cast<int>(s.kind)));
  SetTime(s.created, out->mutable_created_at());
  SetTime(s.updated, out->mutable_updated_at());
  out->mutable_labels()->insert(s.labels.begin(), s.labels.end());
}

template <typename Resp>
grpc::Status Answer(const char* call, const std::string& key,
                    absl::StatusOr<std::vector<Mount>> mounts, Resp* resp) {
  if (!mounts.ok()) {
    // AlreadyExists is how containerd learns that a layer is there; not a
    // failure worth a warning.
    if (absl::IsAlreadyExists(mounts.status())) {
      spdlog::debug("snapshots {} {}: {}", call, key, mounts.status().message());
    } else {
      spdlog::warn("snapshots {} {}: {}", call, key, mounts.status().message());
    }
    return ToGrpc(mounts.status());
  }
  for (const Mount& m : *mounts) {
    containerd::types::Mount* pm = resp->add_mounts();
    pm->set_type(m.type);
    pm->set_source(m.source);
    for (const std::string& o : m.options) pm->add_options(o);
  }
  return grpc::Status::OK;
}

grpc::Status Logged(const char* call, const std::string& key, const absl::Status& st) {
  if (!st.ok() && !absl::IsNotFound(st))
    spdlog::warn("snapshots {} {}: {}", call, key, st.message());
  return ToGrpc(st);
}

}  // namespace

grpc::Status SnapshotsService::Prepare(grpc::ServerContext*, const v1::PrepareSnapshotRequest* req,
                                       v1::PrepareSnapshotResponse* resp) {
  return Answer("Prepare", req->key(),
                sn_.Prepare(req->key(), req->parent(), LabelsOf(req->labels())), resp);
}

grpc::Status SnapshotsService::View(grpc::ServerContext*, const v1::ViewSnapshotRequest* req,
                                    v1::ViewSnapshotResponse* resp) {
  return Answer("View", req->key(), sn_.View(req->key(), req->parent(), LabelsOf(req->labels())),
                resp);
}

grpc::Status SnapshotsService::Mounts(grpc::ServerContext*, const v1::MountsRequest* req,
                                      v1::MountsResponse* resp) {
  return Answer("Mounts", req->key(), sn_.Mounts(req->key()), resp);
}

grpc::Status SnapshotsService::Commit(grpc::ServerContext*, const v1::CommitSnapshotRequest* req,
                                      google::protobuf::Empty*) {
  return Logged("Commit", req->key(), sn_.Commit(req->name(), req->key(), LabelsOf(req->labels())));
}

grpc::Status SnapshotsService::Remove(grpc::ServerContext*, const v1::RemoveSnapshotRequest* req,
                                      google::protobuf::Empty*) {
  return Logged("Remove", req->key(), sn_.Remove(req->key()));
}

grpc::Status SnapshotsService::Stat(grpc::ServerContext*, const v1::StatSnapshotRequest* req,
                                    v1::StatSnapshotResponse* resp) {
  auto s = sn_.Stat(req->key());
  if (!s.ok()) return Logged("Stat", req->key(), s.status());
  ToProto(*s, resp->mutable_info());
  return grpc::Status::OK;
}

grpc::Status SnapshotsService::Update(grpc::ServerContext*, const v1::UpdateSnapshotRequest* req,
                                      v1::UpdateSnapshotResponse* resp) {
  SnapshotInfo in;
  in.name = req->info().name();
  in.labels = LabelsOf(req->info().labels());
  std::vector<std::string> paths(req->update_mask().paths().begin(),
                                 req->update_mask().paths().end());
  auto s = sn_.Update(in, paths);
  if (!s.ok()) return Logged("Update", in.name, s.status());
  ToProto(*s, resp->mutable_info());
  return grpc::Status::OK;
}

grpc::Status SnapshotsService::List(grpc::ServerContext*, const v1::ListSnapshotsRequest* req,
                                    grpc::ServerWriter<v1::ListSnapshotsResponse>* writer) {
  std::vector<SnapshotFilter> filters;
  for (const std::string& text : req->filters()) {
    auto f = SnapshotFilter::Parse(text);
    if (!f.ok()) return Logged("List", text, f.status());
    filters.push_back(std::move(*f));
  }
  // Batches of 100, as containerd's own service sends them.
  v1::ListSnapshotsResponse batch;
  bool open = true;
  absl::Status st = sn_.List(filters, [&](const SnapshotInfo& s) {
    if (!open) return;
    ToProto(s, batch.add_info());
    if (batch.info_size() >= 100) {
      open = writer->Write(batch);
      batch.Clear();
    }
  });
  if (!st.ok()) return Logged("List", "", st);
  if (open && batch.info_size() > 0) writer->Write(batch);
  return grpc::Status::OK;
}

grpc::Status SnapshotsService::Usage(grpc::ServerContext*, const v1::UsageRequest* req,
                                     v1::UsageResponse* resp) {
  auto u = sn_.GetUsage(req->key());
  if (!u.ok()) return Logged("Usage", req->key(), u.status());
  resp->set_size(u->size);
  resp->set_inodes(u->inodes);
  return grpc::Status::OK;
}

grpc::Status SnapshotsService::Cleanup(grpc::ServerContext*, const v1::CleanupRequest*,
                                       google::protobuf::Empty*) {
  return Logged("Cleanup", "", sn_.Cleanup());
}

}  // namespace strata::snapshotter
