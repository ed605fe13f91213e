// containerd.services.snapshots.v1.Snapshots over a Snapshotter: the proxy
// plugin containerd talks to on --snapshotter-address.
#pragma once

#include <grpcpp/grpcpp.h>

#include "containerd_snapshots.grpc.pb.h"
#include "snapshotter/snapshotter.h"

namespace strata::snapshotter {

class SnapshotsService final : public containerd::services::snapshots::v1::Snapshots::Service {
 public:
  explicit SnapshotsService(Snapshotter& snapshotter) : sn_(snapshotter) {}

  grpc::Status Prepare(grpc::ServerContext*,
                       const containerd::services::snapshots::v1::PrepareSnapshotRequest* req,
                       containerd::services::snapshots::v1::PrepareSnapshotResponse* resp) override;
  grpc::Status View(grpc::ServerContext*,
                    const containerd::services::snapshots::v1::ViewSnapshotRequest* req,
                    containerd::services::snapshots::v1::ViewSnapshotResponse* resp) override;
  grpc::Status Mounts(grpc::ServerContext*,
                      const containerd::services::snapshots::v1::MountsRequest* req,
                      containerd::services::snapshots::v1::MountsResponse* resp) override;
  grpc::Status Commit(grpc::ServerContext*,
                      const containerd::services::snapshots::v1::CommitSnapshotRequest* req,
                      google::protobuf::Empty*) override;
  grpc::Status Remove(grpc::ServerContext*,
                      const containerd::services::snapshots::v1::RemoveSnapshotRequest* req,
                      google::protobuf::Empty*) override;
  grpc::Status Stat(grpc::ServerContext*,
                    const containerd::services::snapshots::v1::StatSnapshotRequest* req,
                    containerd::services::snapshots::v1::StatSnapshotResponse* resp) override;
  grpc::Status Update(grpc::ServerContext*,
                      const containerd::services::snapshots::v1::UpdateSnapshotRequest* req,
                      containerd::services::snapshots::v1::UpdateSnapshotResponse* resp) override;
  grpc::Status List(grpc::ServerContext*,
                    const containerd::services::snapshots::v1::ListSnapshotsRequest* req,
                    grpc::ServerWriter<containerd::services::snapshots::v1::ListSnapshotsResponse>*
                        writer) override;
  grpc::Status Usage(grpc::ServerContext*,
                     const containerd::services::snapshots::v1::UsageRequest* req,
                     containerd::services::snapshots::v1::UsageResponse* resp) override;
  grpc::Status Cleanup(grpc::ServerContext*,
                       const containerd::services::snapshots::v1::CleanupRequest*,
                       google::protobuf::Empty*) override;

 private:
  Snapshotter& sn_;
};

}  // namespace strata::snapshotter
