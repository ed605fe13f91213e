// A shared origin's other writers must never steer the root daemon outside
// it. Each test swaps a directory that a mount has cached for a symlink to
// a "host" directory, then works through the mount as a pod would
// (tests/util/pod.cc): in a mount namespace of its own where the host
// directory is hidden under an empty tmpfs (the pod's view of the node). What the pod's kernel
// follows lands in that tmpfs; only the daemon could reach the real host directory, and it must
// change nothing there and reveal nothing of it.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/mount.h"
#include "tests/util/subprocess.h"
#include "tests/util/test_util.h"

namespace strata {
namespace {

using strata::testing::ReadPath;
using strata::testing::TempDir;
using strata::testing::WriteFile;
using testing::StrataMount;

// What can be seen of a directory tree: names, kinds, modes, owners,
// sizes, times and contents.
std::map<std::string, std::string> Snapshot(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    struct stat st;
    if (::lstat(e.path().c_str(), &st) != 0) continue;
    std::string v = absl::StrCat(st.st_mode, " ", st.st_uid, ":", st.st_gid, " ", st.st_size, " ",
                                 st.st_mtim.tv_sec, ".", st.st_mtim.tv_nsec, " ", st.st_nlink);
    if (S_ISREG(st.st_mode)) v += " " + ReadPath(e.path());
    out[e.path().string()] = v;
  }
  return out;
}

// Runs one operation of tests/util/pod.cc as a pod: in a mount namespace
// of its own in which `hidden` is covered by an empty tmpfs. Returns the
// errno it ended with (0: done; -1: the pod could not run) and, in
// `read_back`, what it read.
int AsPod(const std::string& hidden, const std::string& mnt, const std::string& d,
          const std::string& op, std::string* read_back = nullptr) {
  std::string out;
  int rc = strata::testing::RunCommand({POD_PATH, hidden, "op", mnt, d, op}, &out,
                                       std::chrono::seconds(60));
  size_t nl = out.find('\n');
  if (rc != 0 || nl == std::string::npos) return -1;
  if (read_back) *read_back = out.substr(nl + 1);
  return std::atoi(out.substr(0, nl).c_str());
}

// The operations of tests/util/pod.cc that are tried on a swapped directory.
const std::vector<std::string> kOps = {"read",  "stat",        "readdir",    "create",  "write",
                                       "mkdir", "rename-into", "rename-out", "unlink",  "rmdir",
                                       "chmod", "truncate",    "utimes",     "symlink", "link",
                                       "chown", "setxattr"};

class EscapeTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    origin_ = dir_.path() + "/origin";
    host_ = dir_.path() + "/host";
    std::filesystem::create_directories(origin_);
    std::filesystem::create_directories(host_ + "/sub");
    WriteFile(host_ + "/secret", "host secret, longer\n");
    WriteFile(host_ + "/sub/deeper", "host deeper\n");
    ::chmod((host_ + "/secret").c_str(), 0600);
    before_ = Snapshot(host_);
  }

  // A mount with long kernel timeouts, so that what it cached stays cached.
  std::unique_ptr<StrataMount> Mount(const std::string& name) {
    std::string mnt = dir_.path() + "/" + name;
    std::filesystem::create_directories(mnt);
    auto m = std::make_unique<StrataMount>(
        STRATA_PATH, "file://" + origin_, mnt,
        std::vector<std::string>{"--cache-dir", dir_.path() + "/cache-" + name, "--attr-ttl",
                                 "600"});
    EXPECT_TRUE(m->ok()) << m->output();
    return m;
  }

  // A directory `d` in the origin as the volume's users made it, with a
  // file beside it; its names are looked up through `mnt` (and so cached).
  void MakeAndCache(const std::string& mnt, const std::string& d) {
    std::filesystem::create_directories(origin_ + "/" + d + "/sub");
    WriteFile(origin_ + "/" + d + "/secret", "volume data\n");
    WriteFile(origin_ + "/" + d + ".file", "a file\n");
    struct stat st;
    for (const char* n : {"", "/secret", "/sub"}) {
      ASSERT_EQ(::stat((mnt + "/" + d + n).c_str(), &st), 0) << d << n;
    }
    ASSERT_EQ(::stat((mnt + "/" + d + ".file").c_str(), &st), 0);
  }

  // Nothing of the host directory changed, and nothing new appeared in the
  // directory above it.
  void ExpectHostUntouched() {
    EXPECT_EQ(Snapshot(host_), before_);
    for (const auto& e : std::filesystem::directory_iterator(dir_.path())) {
      std::string n = e.path().filename().string();
      EXPECT_TRUE(n == "origin" || n == "host" || n.rfind("mnt", 0) == 0 ||
                  n.rfind("cache-", 0) == 0)
          << "appeared outside the origin: " << n;
    }
  }

  TempDir dir_;
  std::string origin_, host_;
  std::map<std::string, std::string> before_;
};

// Every operation of the list, on a cached directory that another writer
// of the origin swapped for a symlink to the host directory.
TEST_F(EscapeTest, EveryOperationOnASwappedDirectoryStaysInTheOrigin) {
  auto m = Mount("mnt");
  const std::string mnt = dir_.path() + "/mnt";
  for (size_t i = 0; i < kOps.size(); ++i) MakeAndCache(mnt, absl::StrCat("d", i));
  for (size_t i = 0; i < kOps.size(); ++i) {
    std::string d = origin_ + "/d" + std::to_string(i);
    std::filesystem::rename(d, d + ".old");
    std::filesystem::create_directory_symlink(host_, d);
  }
  for (size_t i = 0; i < kOps.size(); ++i) {
    std::string read;
    int rc = AsPod(host_, mnt, absl::StrCat("d", i), kOps[i], &read);
    SCOPED_TRACE(kOps[i]);
    ASSERT_NE(rc, -1) << "the pod could not run";
    if (kOps[i] == "stat" && rc == 0) {
      EXPECT_EQ(read, "size=12") << "the volume's file as cached, not the host's";
      continue;
    }
    EXPECT_NE(rc, 0) << kOps[i] << " succeeded through a swapped directory";
    EXPECT_THAT(rc, ::testing::AnyOf(ELOOP, ENOTDIR, ENOENT, EPERM, EOPNOTSUPP))
        << kOps[i] << ": " << std::strerror(rc);
    EXPECT_EQ(read.find("host"), std::string::npos) << read;
    EXPECT_EQ(read.find("secret"), std::string::npos) << read;
  }
  ExpectHostUntouched();
  // The kernel was told to forget the swapped names: the pod now sees the
  // symlink as a symlink, which its own kernel resolves in its own view.
  struct stat st;
  bool seen_as_link = false;
  for (int i = 0; i < 100 && !seen_as_link; ++i) {
    seen_as_link = ::lstat((mnt + "/d0").c_str(), &st) == 0 && S_ISLNK(st.st_mode);
    if (!seen_as_link) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(seen_as_link);
}

// The root of the volume has no name beneath the origin: its attributes
// are set through the origin's descriptor, as chmod/chown/touch expect.
TEST_F(EscapeTest, TheVolumeRootsAttributesCanStillBeSet) {
  auto m = Mount("mnt");
  const std::string mnt = dir_.path() + "/mnt";
  ASSERT_EQ(::chmod(mnt.c_str(), 01777), 0) << std::strerror(errno);
  ASSERT_EQ(::chown(mnt.c_str(), 4242, 4343), 0) << std::strerror(errno);
  struct timespec ts[2] = {{1000, 0}, {2000, 0}};
  ASSERT_EQ(::utimensat(AT_FDCWD, mnt.c_str(), ts, 0), 0) << std::strerror(errno);
  struct stat st;
  ASSERT_EQ(::stat(origin_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 01777u);
  EXPECT_EQ(st.st_uid, 4242u);
  EXPECT_EQ(st.st_gid, 4343u);
  EXPECT_EQ(st.st_mtim.tv_sec, 2000);
}

// A file that the mount cached, swapped for a symlink to a host file: the
// open goes to the daemon by inode and must not follow the link.
TEST_F(EscapeTest, ASwappedFileIsNotFollowed) {
  auto m = Mount("mnt");
  const std::string mnt = dir_.path() + "/mnt";
  MakeAndCache(mnt, "d");
  ASSERT_EQ(ReadPath(mnt + "/d/secret"), "volume data\n");
  std::filesystem::remove(origin_ + "/d/secret");
  std::filesystem::create_symlink(host_ + "/secret", origin_ + "/d/secret");
  std::string read;
  EXPECT_NE(AsPod(host_, mnt, "d", "read", &read), 0);
  EXPECT_EQ(read.find("host"), std::string::npos) << read;
  EXPECT_NE(AsPod(host_, mnt, "d", "chmod"), 0);
  EXPECT_NE(AsPod(host_, mnt, "d", "truncate"), 0);
  // A file swapped for a directory: the open fails as on a local disk.
  std::filesystem::remove(origin_ + "/d.file");
  std::filesystem::create_directory(origin_ + "/d.file");
  EXPECT_NE(AsPod(host_, mnt, "d", "read-side"), 0);
  ExpectHostUntouched();
}

// Two nodes: the swap is made through one mount, by a pod of that node, and
// the other node's mount, which cached the directory, is used next.
TEST_F(EscapeTest, ASwapThroughOneMountDoesNotSteerTheOther) {
  auto a = Mount("mnt-a");
  auto b = Mount("mnt-b");
  const std::string mnt_a = dir_.path() + "/mnt-a", mnt_b = dir_.path() + "/mnt-b";
  for (size_t i = 0; i < kOps.size(); ++i) MakeAndCache(mnt_b, absl::StrCat("d", i));
  for (size_t i = 0; i < kOps.size(); ++i) {
    ASSERT_EQ(AsPod(host_, mnt_a, absl::StrCat("d", i), "swap-to=" + host_), 0)
        << "the swap through mount a";
  }
  for (size_t i = 0; i < kOps.size(); ++i) {
    std::string read;
    int rc = AsPod(host_, mnt_b, absl::StrCat("d", i), kOps[i], &read);
    SCOPED_TRACE(kOps[i]);
    if (kOps[i] != "stat") {
      EXPECT_NE(rc, 0) << kOps[i];
    }
    EXPECT_EQ(read.find("host"), std::string::npos) << read;
  }
  ExpectHostUntouched();
}

// The swap at random moments: a writer of the origin flips a directory
// between itself and a symlink to the host while a pod works in it through
// the mount. Whatever each call answers, the host never changes.
TEST_F(EscapeTest, SwapsAtRandomMomentsDuringOperations) {
  auto m = Mount("mnt");
  const std::string mnt = dir_.path() + "/mnt";
  MakeAndCache(mnt, "d");
  const std::string d = origin_ + "/d", alt = origin_ + "/d.alt";
  std::filesystem::create_directory_symlink(host_, alt);
  std::atomic<bool> done{false};
  std::thread flipper([&] {
    std::mt19937 rng(7);
    for (int i = 0; i < 20000 && !done.load(); ++i) {
      ::renameat2(AT_FDCWD, d.c_str(), AT_FDCWD, alt.c_str(), RENAME_EXCHANGE);
      if (rng() % 4 == 0) std::this_thread::yield();
    }
  });
  std::string seen;
  int rc = strata::testing::RunCommand({POD_PATH, host_, "loop", mnt, "d", "600", "11"}, &seen,
                                       std::chrono::seconds(120));
  done = true;
  flipper.join();
  EXPECT_EQ(rc, 0) << seen;
  EXPECT_EQ(seen, "");
  ExpectHostUntouched();
}

}  // namespace
}  // namespace strata
