// The snapshotter as containerd drives it: the overlayfs snapshotter's
// semantics and errors, the mounts it answers mounted for real, records
// across a restart, filters as containerd's metadata layer sends them, and
// the gRPC service over a unix socket.
#include "snapshotter/snapshotter.h"

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "snapshotter/snapshots_service.h"
#include "tests/util/test_util.h"

namespace strata::snapshotter {
namespace {
namespace fs = std::filesystem;
namespace v1 = containerd::services::snapshots::v1;
using testing::ReadPath;
using testing::TempDir;
using testing::WriteFile;

class SnapshotterTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }
  void TearDown() override {
    for (auto it = mounted_.rbegin(); it != mounted_.rend(); ++it)
      ::umount2(it->c_str(), MNT_DETACH);
  }

  void Reopen() {
    sn_.reset();
    auto s = Snapshotter::Open({dir_.path() + "/root"});
    ASSERT_TRUE(s.ok()) << s.status();
    sn_ = std::move(*s);
  }

  // Mounts `mounts` as containerd would, at a new directory; returns it.
  std::string MountAt(const std::vector<Mount>& mounts) {
    EXPECT_EQ(mounts.size(), 1u);
    std::string target = absl::StrCat(dir_.path(), "/mnt", mounted_.size());
    fs::create_directories(target);
    const Mount& m = mounts[0];
    unsigned long flags = 0;
    std::vector<std::string> data;
    for (const std::string& o : m.options) {
      if (o == "ro") {
        flags |= MS_RDONLY;
      } else if (o == "rbind") {
        flags |= MS_BIND | MS_REC;
      } else if (o != "rw") {
        data.push_back(o);
      }
    }
    std::string d = absl::StrJoin(data, ",");
    int rc =
        ::mount(m.source.c_str(), target.c_str(), m.type.c_str(), flags & ~MS_RDONLY, d.c_str());
    EXPECT_EQ(rc, 0) << m.type << " " << d << ": " << strerror(errno);
    if (rc == 0 && (flags & MS_BIND) && (flags & MS_RDONLY)) {
      EXPECT_EQ(::mount("", target.c_str(), "", MS_REMOUNT | MS_BIND | MS_RDONLY, nullptr), 0);
    } else if (rc == 0 && (flags & MS_RDONLY)) {
      // overlay without an upper directory is read-only already
    }
    if (rc == 0) mounted_.push_back(target);
    return target;
  }

  void Unmount(const std::string& target) {
    ASSERT_EQ(::umount2(target.c_str(), 0), 0) << strerror(errno);
    std::erase(mounted_, target);
  }

  TempDir dir_;
  std::unique_ptr<Snapshotter> sn_;
  std::vector<std::string> mounted_;
};

TEST_F(SnapshotterTest, LayersStackAsOverlaysWithWhiteouts) {
  // A root layer: a bind mount of its own directory, written as an
  // unpacker writes a layer.
  auto m = sn_->Prepare("extract-1", "", {});
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->size(), 1u);
  EXPECT_EQ((*m)[0].type, "bind");
  EXPECT_EQ((*m)[0].options, (std::vector<std::string>{"rw", "rbind"}));
  std::string t = MountAt(*m);
  WriteFile(t + "/etc/os", "base");
  WriteFile(t + "/gone", "x");
  Unmount(t);
  ASSERT_TRUE(sn_->Commit("layer1", "extract-1", {{"containerd.io/snapshot.ref", "l1"}}).ok());
  auto info = sn_->Stat("layer1");
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->kind, Kind::kCommitted);
  EXPECT_EQ(info->labels.at("containerd.io/snapshot.ref"), "l1");
  EXPECT_FALSE(sn_->Stat("extract-1").ok());
  auto usage = sn_->GetUsage("layer1");
  ASSERT_TRUE(usage.ok());
  EXPECT_GE(usage->inodes, 4);  // fs, etc, etc/os, gone
  EXPECT_GT(usage->size, 0);

  // The second layer deletes a file of the first: overlay leaves a whiteout
  // in the upper directory, which is what the layer holds.
  m = sn_->Prepare("extract-2", "layer1", {});
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ((*m)[0].type, "overlay");
  std::string opts = absl::StrJoin((*m)[0].options, ",");
  EXPECT_NE(opts.find("upperdir="), std::string::npos) << opts;
  EXPECT_NE(opts.find("workdir="), std::string::npos) << opts;
  EXPECT_NE(opts.find("lowerdir="), std::string::npos) << opts;
  t = MountAt(*m);
  EXPECT_EQ(ReadPath(t + "/etc/os"), "base");
  ASSERT_EQ(::unlink((t + "/gone").c_str()), 0);
  WriteFile(t + "/etc/new", "two");
  Unmount(t);
  ASSERT_TRUE(sn_->Commit("layer2", "extract-2", {}).ok());

  // A container: active over both; a view: read-only over both.
  m = sn_->Prepare("container", "layer2", {});
  ASSERT_TRUE(m.ok());
  opts = absl::StrJoin((*m)[0].options, ",");
  EXPECT_NE(opts.find("lowerdir="), std::string::npos);
  EXPECT_NE(opts.find(":"), std::string::npos) << "two lower directories: " << opts;
  t = MountAt(*m);
  EXPECT_EQ(ReadPath(t + "/etc/os"), "base");
  EXPECT_EQ(ReadPath(t + "/etc/new"), "two");
  EXPECT_FALSE(fs::exists(t + "/gone"));
  WriteFile(t + "/scratch", "rw");
  EXPECT_EQ(ReadPath(t + "/scratch"), "rw");

  auto v = sn_->View("view", "layer2", {});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)[0].type, "overlay");
  for (const std::string& o : (*v)[0].options) {
    EXPECT_EQ(o.find("upperdir="), std::string::npos) << "a view has no upper directory";
  }
  std::string vt = MountAt(*v);
  EXPECT_EQ(ReadPath(vt + "/etc/new"), "two");
  EXPECT_FALSE(fs::exists(vt + "/gone"));
  EXPECT_FALSE(fs::exists(vt + "/scratch"));
  EXPECT_NE(::mkdir((vt + "/d").c_str(), 0755), 0);
  EXPECT_EQ(errno, EROFS);

  // A view of one layer is a read-only bind of its directory.
  v = sn_->View("view1", "layer1", {});
  ASSERT_TRUE(v.ok());
  EXPECT_EQ((*v)[0].type, "bind");
  EXPECT_EQ((*v)[0].options, (std::vector<std::string>{"ro", "rbind"}));

  // Mounts answers again what Prepare did.
  auto again = sn_->Mounts("container");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(absl::StrJoin((*again)[0].options, ","), opts);
}

TEST_F(SnapshotterTest, RefusesWhatContainerdsOverlayRefuses) {
  ASSERT_TRUE(sn_->Prepare("a", "", {}).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(sn_->Prepare("a", "", {}).status()));
  EXPECT_TRUE(absl::IsNotFound(sn_->Prepare("b", "nope", {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(sn_->Prepare("b", "a", {}).status())) << "an active parent";
  EXPECT_TRUE(absl::IsFailedPrecondition(sn_->Mounts("nope").status()) ||
              absl::IsNotFound(sn_->Mounts("nope").status()));
  ASSERT_TRUE(sn_->Commit("A", "a", {}).ok());
  EXPECT_TRUE(absl::IsNotFound(sn_->Commit("A2", "a", {})));
  EXPECT_TRUE(absl::IsFailedPrecondition(sn_->Mounts("A").status()));
  ASSERT_TRUE(sn_->View("v", "A", {}).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(sn_->Commit("V", "v", {}))) << "a view";
  ASSERT_TRUE(sn_->Prepare("c", "A", {}).ok());
  EXPECT_TRUE(absl::IsAlreadyExists(sn_->Commit("A", "c", {})));
  EXPECT_TRUE(absl::IsFailedPrecondition(sn_->Remove("A"))) << "A has children";
  EXPECT_TRUE(absl::IsNotFound(sn_->Remove("nope")));
  EXPECT_TRUE(absl::IsInvalidArgument(sn_->Prepare("", "", {}).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(sn_->Prepare(std::string("x\0y", 3), "", {}).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(sn_->Prepare("big", "", {{"k", std::string(4096, 'v')}}).status()));

  // Leaves go, then their parent; the directories with them.
  auto c = sn_->Stat("c");
  ASSERT_TRUE(c.ok());
  std::string cdir = absl::StrCat(dir_.path(), "/root/snapshots/", c->id);
  EXPECT_TRUE(fs::exists(cdir));
  ASSERT_TRUE(sn_->Remove("c").ok());
  EXPECT_FALSE(fs::exists(cdir));
  EXPECT_TRUE(absl::IsFailedPrecondition(sn_->Remove("A")));
  ASSERT_TRUE(sn_->Remove("v").ok());
  ASSERT_TRUE(sn_->Remove("A").ok());
  EXPECT_TRUE(absl::IsNotFound(sn_->Stat("A").status()));
}

TEST_F(SnapshotterTest, UpdatesLabelsByMask) {
  ASSERT_TRUE(sn_->Prepare("a", "", {{"keep", "1"}, {"drop", "2"}}).ok());
  auto before = sn_->Stat("a");
  ASSERT_TRUE(before.ok());
  SnapshotInfo in;
  in.name = "a";
  in.labels = {{"new", "3"}};
  auto u = sn_->Update(in, {"labels.new", "labels.drop"});
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->labels, (Labels{{"keep", "1"}, {"new", "3"}}));
  EXPECT_GE(u->updated, before->updated);
  EXPECT_EQ(u->created, before->created);
  u = sn_->Update(in, {});
  ASSERT_TRUE(u.ok());
  EXPECT_EQ(u->labels, (Labels{{"new", "3"}}));
  EXPECT_TRUE(absl::IsInvalidArgument(sn_->Update(in, {"parent"}).status()));
  in.name = "nope";
  EXPECT_TRUE(absl::IsNotFound(sn_->Update(in, {}).status()));
  EXPECT_EQ(sn_->Stat("a")->labels, (Labels{{"new", "3"}}));
}

std::vector<std::string> Listed(Snapshotter& sn, const std::vector<std::string>& texts) {
  std::vector<SnapshotFilter> filters;
  for (const auto& t : texts) {
    auto f = SnapshotFilter::Parse(t);
    EXPECT_TRUE(f.ok()) << t << ": " << f.status();
    if (f.ok()) filters.push_back(*f);
  }
  std::vector<std::string> names;
  EXPECT_TRUE(sn.List(filters, [&](const SnapshotInfo& s) { names.push_back(s.name); }).ok());
  return names;
}

TEST_F(SnapshotterTest, ListsByContainerdFilters) {
  ASSERT_TRUE(sn_->Prepare("default/1/extract", "", {}).ok());
  ASSERT_TRUE(
      sn_->Commit("sha256:aaa", "default/1/extract", {{"containerd.io/snapshot.ref", "sha256:aaa"}})
          .ok());
  ASSERT_TRUE(sn_->Prepare("default/2/extract", "sha256:aaa", {{"a.b", "x y"}}).ok());
  using V = std::vector<std::string>;
  EXPECT_EQ(Listed(*sn_, {}), (V{"default/2/extract", "sha256:aaa"}));
  // What containerd's metadata layer sends after an AlreadyExists.
  EXPECT_EQ(Listed(*sn_, {R"(labels."containerd.io/snapshot.ref"==sha256:aaa,parent=="")"}),
            (V{"sha256:aaa"}));
  EXPECT_EQ(Listed(*sn_, {R"(labels."containerd.io/snapshot.ref"==sha256:aaa,parent=="x")"}), V{});
  EXPECT_EQ(Listed(*sn_, {"kind==active"}), (V{"default/2/extract"}));
  EXPECT_EQ(Listed(*sn_, {"kind==committed", "parent==sha256:aaa"}),
            (V{"default/2/extract", "sha256:aaa"}))
      << "filters are OR'ed";
  EXPECT_EQ(Listed(*sn_, {"labels.a.b"}), (V{"default/2/extract"})) << "presence; dotted key";
  EXPECT_EQ(Listed(*sn_, {R"(labels."a.b"=="x y")"}), (V{"default/2/extract"}));
  EXPECT_EQ(Listed(*sn_, {"name~=^sha256:"}), (V{"sha256:aaa"}));
  EXPECT_EQ(Listed(*sn_, {"name!=sha256:aaa"}), (V{"default/2/extract"}));
  for (const char* bad : {"", "name==", "==x", "name==a,", R"(labels."x)", "name~=(", "a b"}) {
    EXPECT_TRUE(absl::IsInvalidArgument(SnapshotFilter::Parse(bad).status())) << bad;
  }
}

TEST_F(SnapshotterTest, KeepsRecordsAcrossARestartAndCleansOrphans) {
  ASSERT_TRUE(sn_->Prepare("a", "", {{"l", "v"}}).ok());
  ASSERT_TRUE(sn_->Commit("A", "a", {{"l", "w"}}).ok());
  ASSERT_TRUE(sn_->Prepare("b", "A", {}).ok());
  auto b = sn_->Stat("b");
  ASSERT_TRUE(b.ok());
  auto mounts = sn_->Mounts("b");
  ASSERT_TRUE(mounts.ok());
  // Left by a crash: a Prepare's directory never recorded, a removal's
  // directory never removed.
  fs::create_directories(dir_.path() + "/root/snapshots/999/fs");
  fs::create_directories(dir_.path() + "/root/snapshots/rm-998/fs/x");
  Reopen();
  auto a = sn_->Stat("A");
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->labels, (Labels{{"l", "w"}}));
  EXPECT_EQ(a->kind, Kind::kCommitted);
  auto b2 = sn_->Stat("b");
  ASSERT_TRUE(b2.ok());
  EXPECT_EQ(b2->id, b->id);
  EXPECT_EQ(b2->created, b->created);
  EXPECT_EQ(absl::StrJoin((*sn_->Mounts("b"))[0].options, ","),
            absl::StrJoin((*mounts)[0].options, ","));
  ASSERT_TRUE(sn_->Cleanup().ok());
  EXPECT_FALSE(fs::exists(dir_.path() + "/root/snapshots/999"));
  EXPECT_FALSE(fs::exists(dir_.path() + "/root/snapshots/rm-998"));
  EXPECT_TRUE(fs::exists(absl::StrCat(dir_.path(), "/root/snapshots/", a->id, "/fs")));
  EXPECT_TRUE(fs::exists(absl::StrCat(dir_.path(), "/root/snapshots/", b->id, "/work")));
  // Ids are never reused: a new snapshot cannot take over an old one's
  // directory.
  ASSERT_TRUE(sn_->Prepare("c", "", {}).ok());
  EXPECT_GT(sn_->Stat("c")->id, b->id);
}

// The service over a real unix socket, as containerd's proxy plugin calls it.
TEST_F(SnapshotterTest, ServesTheSnapshotsApiOverAUnixSocket) {
  SnapshotsService service(*sn_);
  std::string socket = "unix://" + dir_.path() + "/sn.sock";
  grpc::ServerBuilder b;
  b.AddListeningPort(socket, grpc::InsecureServerCredentials());
  b.RegisterService(&service);
  auto server = b.BuildAndStart();
  ASSERT_TRUE(server);
  auto stub =
      v1::Snapshots::NewStub(grpc::CreateChannel(socket, grpc::InsecureChannelCredentials()));

  // 250 snapshots: List streams them in batches.
  for (int i = 0; i < 250; ++i) {
    grpc::ClientContext ctx;
    v1::PrepareSnapshotRequest req;
    req.set_snapshotter("strata");
    req.set_key(absl::StrCat("k", i));
    (*req.mutable_labels())["i"] = std::to_string(i);
    v1::PrepareSnapshotResponse resp;
    grpc::Status st = stub->Prepare(&ctx, req, &resp);
    ASSERT_TRUE(st.ok()) << st.error_message();
    ASSERT_EQ(resp.mounts_size(), 1);
    EXPECT_EQ(resp.mounts(0).type(), "bind");
  }
  {
    grpc::ClientContext ctx;
    v1::ListSnapshotsRequest req;
    auto reader = stub->List(&ctx, req);
    v1::ListSnapshotsResponse resp;
    int total = 0, batches = 0;
    while (reader->Read(&resp)) {
      total += resp.info_size();
      ++batches;
      for (const auto& info : resp.info()) EXPECT_EQ(info.kind(), v1::ACTIVE);
    }
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(total, 250);
    EXPECT_EQ(batches, 3);
  }
  {
    grpc::ClientContext ctx;
    v1::ListSnapshotsRequest req;
    req.add_filters("labels.i==7");
    req.add_filters("name==k9");
    auto reader = stub->List(&ctx, req);
    v1::ListSnapshotsResponse resp;
    std::vector<std::string> names;
    while (reader->Read(&resp)) {
      for (const auto& info : resp.info()) names.push_back(info.name());
    }
    EXPECT_TRUE(reader->Finish().ok());
    EXPECT_EQ(names, (std::vector<std::string>{"k7", "k9"}));
  }
  {
    grpc::ClientContext ctx;
    v1::ListSnapshotsRequest req;
    req.add_filters("name==");
    auto reader = stub->List(&ctx, req);
    v1::ListSnapshotsResponse resp;
    while (reader->Read(&resp)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
  {
    grpc::ClientContext ctx;
    v1::CommitSnapshotRequest req;
    req.set_key("k1");
    req.set_name("c1");
    google::protobuf::Empty e;
    ASSERT_TRUE(stub->Commit(&ctx, req, &e).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::StatSnapshotRequest req;
    req.set_key("c1");
    v1::StatSnapshotResponse resp;
    ASSERT_TRUE(stub->Stat(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.info().kind(), v1::COMMITTED);
    EXPECT_EQ(resp.info().labels().size(), 0u) << "commit's labels replace the active's";
    EXPECT_GT(resp.info().created_at().seconds(), 1600000000);
  }
  {
    grpc::ClientContext ctx;
    v1::UpdateSnapshotRequest req;
    req.mutable_info()->set_name("c1");
    (*req.mutable_info()->mutable_labels())["x"] = "y";
    req.mutable_update_mask()->add_paths("labels.x");
    v1::UpdateSnapshotResponse resp;
    ASSERT_TRUE(stub->Update(&ctx, req, &resp).ok());
    EXPECT_EQ(resp.info().labels().at("x"), "y");
  }
  {
    grpc::ClientContext ctx;
    v1::UsageRequest req;
    req.set_key("c1");
    v1::UsageResponse resp;
    ASSERT_TRUE(stub->Usage(&ctx, req, &resp).ok());
    EXPECT_GE(resp.inodes(), 1);
  }
  // The codes containerd maps back to its errdefs.
  auto prepare_code = [&](const std::string& key, const std::string& parent) {
    grpc::ClientContext ctx;
    v1::PrepareSnapshotRequest req;
    req.set_key(key);
    req.set_parent(parent);
    v1::PrepareSnapshotResponse resp;
    return stub->Prepare(&ctx, req, &resp).error_code();
  };
  EXPECT_EQ(prepare_code("k2", ""), grpc::StatusCode::ALREADY_EXISTS);
  EXPECT_EQ(prepare_code("n", "missing"), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(prepare_code("", ""), grpc::StatusCode::INVALID_ARGUMENT);
  {
    grpc::ClientContext ctx;
    v1::RemoveSnapshotRequest req;
    req.set_key("missing");
    google::protobuf::Empty e;
    EXPECT_EQ(stub->Remove(&ctx, req, &e).error_code(), grpc::StatusCode::NOT_FOUND);
  }
  {
    grpc::ClientContext ctx;
    v1::CleanupRequest req;
    google::protobuf::Empty e;
    EXPECT_TRUE(stub->Cleanup(&ctx, req, &e).ok());
  }
  server->Shutdown();
}

}  // namespace
}  // namespace strata::snapshotter
