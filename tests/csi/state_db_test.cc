// The CSI records, in each of their homes: a RocksDB in a state directory,
// a shared POSIX directory, an S3 prefix (s3rver on 127.0.0.1). The same
// contract holds for all three; records at an origin follow a controller
// that is started again elsewhere.
#include "csi/state_db.h"

#include <unistd.h>

#include <filesystem>

#include "csi/controller_service.h"
#include "gtest/gtest.h"
#include "tests/util/s3_server.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata::csi::testing {
namespace {

using nlohmann::json;
using strata::testing::TempDir;

class StateDbTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "s3") {
      server_ = std::make_unique<strata::testing::S3Server>(dir_.path() + "/s3", "state");
      ASSERT_TRUE(server_->ok()) << server_->error();
    }
  }

  std::unique_ptr<StateDb> OpenDb() {
    absl::StatusOr<std::unique_ptr<StateDb>> db;
    if (GetParam() == "rocksdb") {
      db = StateDb::Open(dir_.path() + "/db");
    } else if (GetParam() == "file") {
      db = StateDb::OpenAt("file://" + dir_.path() + "/shared/records");
    } else {
      origin::OriginOptions o;
      o.aws_access_key_id = strata::testing::S3Server::kKey;
      o.aws_secret_access_key = strata::testing::S3Server::kSecret;
      o.s3_list_page_size = 2;  // listings of a few records take several pages
      db = StateDb::OpenAt(
          "s3://state/controller?endpoint=" + server_->endpoint() + "&region=us-east-1", o);
    }
    EXPECT_TRUE(db.ok()) << db.status();
    return db.ok() ? std::move(*db) : nullptr;
  }

  TempDir dir_;
  std::unique_ptr<strata::testing::S3Server> server_;
};

TEST_P(StateDbTest, PutGetDeleteAndScanInKeyOrder) {
  auto db = OpenDb();
  ASSERT_TRUE(db);
  auto missing = db->Get("volume/none");
  ASSERT_TRUE(missing.ok()) << missing.status();
  EXPECT_FALSE(missing->has_value());
  EXPECT_TRUE(db->Delete("volume/none").ok()) << "deleting what is not there is fine";

  // Keys with separators, odd bytes and one too long for a file name.
  std::string longkey = "volume/" + std::string(300, 'x');
  std::vector<std::string> keys = {"volume/pvc-b", "volume/pvc-a", "volume/ns%2Fname α",
                                   longkey,        "other/thing",  "volume/pvc-c"};
  for (size_t i = 0; i < keys.size(); ++i) {
    ASSERT_TRUE(db->Put(keys[i], json{{"n", i}, {"origin", "file:///x/" + keys[i]}}).ok());
  }
  ASSERT_TRUE(db->Put("volume/pvc-a", json{{"n", 42}}).ok());  // replaced whole
  auto a = db->Get("volume/pvc-a");
  ASSERT_TRUE(a.ok() && a->has_value());
  EXPECT_EQ(**a, (json{{"n", 42}}));
  auto l = db->Get(longkey);
  ASSERT_TRUE(l.ok() && l->has_value());
  EXPECT_EQ((**l)["n"], 3);

  auto all = db->Scan("volume/");
  ASSERT_TRUE(all.ok()) << all.status();
  std::vector<std::string> got;
  for (const auto& [k, v] : *all) got.push_back(k);
  EXPECT_EQ(got, (std::vector<std::string>{"volume/ns%2Fname α", "volume/pvc-a", "volume/pvc-b",
                                           "volume/pvc-c", longkey}));
  // An `after` that sorts before the prefix lists the prefix from its start.
  auto from_before = db->Scan("volume/", "other/zzz");
  ASSERT_TRUE(from_before.ok());
  EXPECT_EQ(from_before->size(), got.size());
  // Pages: after a key, at most so many.
  auto page = db->Scan("volume/", "volume/pvc-a", 2);
  ASSERT_TRUE(page.ok());
  ASSERT_EQ(page->size(), 2u);
  EXPECT_EQ((*page)[0].first, "volume/pvc-b");
  EXPECT_EQ((*page)[1].first, "volume/pvc-c");

  ASSERT_TRUE(db->Delete("volume/pvc-b").ok());
  auto gone = db->Get("volume/pvc-b");
  ASSERT_TRUE(gone.ok());
  EXPECT_FALSE(gone->has_value());
  auto rest = db->Scan("volume/", "volume/pvc-a");
  ASSERT_TRUE(rest.ok());
  ASSERT_EQ(rest->size(), 2u);
  EXPECT_EQ((*rest)[0].first, "volume/pvc-c");
}

TEST_P(StateDbTest, RecordsOutliveTheProcessThatWroteThem) {
  {
    auto db = OpenDb();
    ASSERT_TRUE(db);
    ASSERT_TRUE(db->Put("volume/kept", json{{"capacity", 7}}).ok());
    ASSERT_TRUE(db->Put("volume/dropped", json{{"capacity", 8}}).ok());
    ASSERT_TRUE(db->Delete("volume/dropped").ok());
  }
  auto db = OpenDb();
  ASSERT_TRUE(db);
  auto kept = db->Get("volume/kept");
  ASSERT_TRUE(kept.ok() && kept->has_value());
  EXPECT_EQ((**kept)["capacity"], 7);
  auto all = db->Scan("volume/");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 1u);
}

INSTANTIATE_TEST_SUITE_P(Homes, StateDbTest, ::testing::Values("rocksdb", "file", "s3"),
                         [](const auto& info) { return info.param; });

TEST(StateDbAtTest, OnlyOriginsThatTakeWritesAndThatAnswer) {
  auto http = StateDb::OpenAt("http://127.0.0.1:1/records");
  EXPECT_EQ(http.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(http.status().message().find("takes writes"), std::string::npos)
      << http.status().message();
  auto oci = StateDb::OpenAt("oci://127.0.0.1:1/repo:tag");
  EXPECT_EQ(oci.status().code(), absl::StatusCode::kInvalidArgument);
  // An S3 endpoint that does not answer is an error at open, naming it.
  origin::OriginOptions o;
  o.aws_access_key_id = "k";
  o.aws_secret_access_key = "s";
  auto dead = StateDb::OpenAt("s3://records/p?endpoint=http://127.0.0.1:1&region=us-east-1", o);
  EXPECT_FALSE(dead.ok());
  EXPECT_NE(dead.status().message().find("cannot read records"), std::string::npos)
      << dead.status().message();
}

// A controller whose pod moved to another node: a fresh process, nothing
// local, the same records origin. It finds the volumes the first one made.
TEST(StateDbAtTest, ControllerRecordsFollowItToAnotherNode) {
  TempDir dir;
  std::string origin = dir.path() + "/volumes";
  std::filesystem::create_directories(origin);
  std::string records = "file://" + dir.path() + "/volumes/.strata-controller";
  ::csi::v1::CreateVolumeRequest create;
  create.set_name("pvc-moved");
  (*create.mutable_parameters())["origin"] = "file://" + origin;
  create.add_volume_capabilities()->mutable_mount();
  create.mutable_volume_capabilities(0)->mutable_access_mode()->set_mode(
      ::csi::v1::VolumeCapability::AccessMode::MULTI_NODE_MULTI_WRITER);
  {
    auto db = StateDb::OpenAt(records);
    ASSERT_TRUE(db.ok()) << db.status();
    ControllerService first(**db, ControllerOptions{});
    ::csi::v1::CreateVolumeResponse r;
    grpc::Status st = first.CreateVolume(nullptr, &create, &r);
    ASSERT_TRUE(st.ok()) << st.error_message();
  }
  ASSERT_TRUE(std::filesystem::is_directory(origin + "/pvc-moved"));
  auto db = StateDb::OpenAt(records);
  ASSERT_TRUE(db.ok()) << db.status();
  ControllerService second(**db, ControllerOptions{});
  ::csi::v1::ListVolumesRequest list;
  ::csi::v1::ListVolumesResponse listed;
  ASSERT_TRUE(second.ListVolumes(nullptr, &list, &listed).ok());
  ASSERT_EQ(listed.entries_size(), 1);
  EXPECT_EQ(listed.entries(0).volume().volume_id(), "pvc-moved");
  ::csi::v1::DeleteVolumeRequest del;
  del.set_volume_id("pvc-moved");
  ::csi::v1::DeleteVolumeResponse deleted;
  grpc::Status st = second.DeleteVolume(nullptr, &del, &deleted);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_FALSE(std::filesystem::exists(origin + "/pvc-moved")) << "the data was left behind";
}

TEST(StateDbAtTest, ALocationThatIsGoneIsAnErrorNotNoRecords) {
  TempDir dir;
  std::string records = dir.path() + "/share/records";
  {
    auto db = StateDb::OpenAt("file://" + records);
    ASSERT_TRUE(db.ok()) << db.status();
    ASSERT_TRUE((*db)->Put("volume/a", json{{"n", 1}}).ok());
    // The share goes away under a running controller (unmounted, emptied).
    std::filesystem::remove_all(records);
    std::filesystem::create_directories(records);
    auto a = (*db)->Get("volume/a");
    EXPECT_EQ(a.status().code(), absl::StatusCode::kUnavailable) << a.status();
    EXPECT_EQ((*db)->Scan("volume/").status().code(), absl::StatusCode::kUnavailable);
  }
  // A directory holding other things is not taken for a records location.
  std::filesystem::create_directories(dir.path() + "/origin/pvc-1");
  auto shared = StateDb::OpenAt("file://" + dir.path() + "/origin");
  EXPECT_EQ(shared.status().code(), absl::StatusCode::kFailedPrecondition) << shared.status();
  // Nor is a bucket that does not exist.
  strata::testing::S3Server s3(dir.path() + "/s3", "present");
  ASSERT_TRUE(s3.ok()) << s3.error();
  origin::OriginOptions o;
  o.aws_access_key_id = strata::testing::S3Server::kKey;
  o.aws_secret_access_key = strata::testing::S3Server::kSecret;
  auto missing =
      StateDb::OpenAt("s3://absent/records?endpoint=" + s3.endpoint() + "&region=us-east-1", o);
  EXPECT_FALSE(missing.ok());
  auto present =
      StateDb::OpenAt("s3://present/records?endpoint=" + s3.endpoint() + "&region=us-east-1", o);
  EXPECT_TRUE(present.ok()) << present.status();
}

TEST(StateDbAtTest, AForgedRecordDeletesNothing) {
  TempDir dir;
  std::string origin = dir.path() + "/volumes";
  std::filesystem::create_directories(origin + "/keep/me");
  auto db = StateDb::OpenAt("file://" + dir.path() + "/records");
  ASSERT_TRUE(db.ok()) << db.status();
  // A record rewritten to point its delete at something else.
  ASSERT_TRUE((*db)
                  ->Put("volume/pvc-x", json{{"origin", "file://" + origin + "/pvc-x"},
                                             {"base", "file://" + origin},
                                             {"sub_path", "../volumes/keep"},
                                             {"capacity", 0},
                                             {"on_delete", "delete"}})
                  .ok());
  ControllerService c(**db, ControllerOptions{});
  ::csi::v1::DeleteVolumeRequest del;
  del.set_volume_id("pvc-x");
  ::csi::v1::DeleteVolumeResponse r;
  grpc::Status st = c.DeleteVolume(nullptr, &del, &r);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INTERNAL) << st.error_message();
  EXPECT_TRUE(std::filesystem::is_directory(origin + "/keep/me"));
}

TEST(StateDbAtTest, StartingWithAStateOriginMovesTheRecordsOfTheStateDir) {
  TempDir dir;
  std::string state = dir.path() + "/state";
  {
    auto old = StateDb::Open(state);
    ASSERT_TRUE(old.ok()) << old.status();
    ASSERT_TRUE((*old)->Put("volume/old-1", json{{"capacity", 5}}).ok());
  }
  std::string records = "file://" + dir.path() + "/share/records";
  // The controller moves the records before it serves, and runs until a
  // signal: stopped once it says it serves.
  strata::testing::Child controller =
      strata::testing::Spawn({STRATA_PATH, "controller", "--state-dir", state, "--state-origin",
                              records, "--csi-endpoint", "unix://" + dir.path() + "/csi.sock"});
  ASSERT_GT(controller.pid, 0);
  std::string out =
      strata::testing::ReadUntil(controller.out, "Controller on", std::chrono::seconds(60));
  ::kill(controller.pid, SIGTERM);
  out += strata::testing::ReadUntil(controller.out, "stopped", std::chrono::seconds(60));
  EXPECT_EQ(strata::testing::Wait(controller), 0) << out;
  EXPECT_FALSE(std::filesystem::exists(state)) << out;
  EXPECT_TRUE(std::filesystem::exists(state + ".moved")) << out;
  auto db = StateDb::OpenAt(records);
  ASSERT_TRUE(db.ok()) << db.status();
  auto moved = (*db)->Get("volume/old-1");
  ASSERT_TRUE(moved.ok() && moved->has_value()) << out;
  EXPECT_EQ((**moved)["capacity"], 5);
}

}  // namespace
}  // namespace strata::csi::testing
