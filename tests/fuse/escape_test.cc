// A shared origin's other writers must never steer the root daemon outside
// it. Each test swaps a directory that a mount has cached for a symlink to
// a "host" directory, then works through the mount as a pod would: in a
// mount namespace of its own where the host directory is hidden under an
// empty tmpfs (the pod's view of the node). What the pod's kernel follows
// lands in that tmpfs; only the daemon could reach the real host directory,
// and it must change nothing there and reveal nothing of it.
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cache/test_util.h"
#include "tests/util/mount.h"

namespace strata {
namespace {

using cache::testing::ReadPath;
using cache::testing::TempDir;
using testing::StrataMount;

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary) << data;
}

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

// Runs `op` in a child with a mount namespace of its own in which `hidden`
// is covered by an empty tmpfs; returns the child's result: 0 for success,
// an errno, or -1 if the child could not set itself up. `op` writes what it
// read, if anything, to `read_back`.
int AsPod(const std::string& hidden, const std::function<int(std::string*)>& op,
          std::string* read_back = nullptr) {
  int pipefd[2];
  if (::pipe(pipefd) != 0) return -1;
  pid_t pid = ::fork();
  if (pid == 0) {
    ::close(pipefd[0]);
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", hidden.c_str(), "tmpfs", 0, "size=1m") != 0) {
      ::_exit(255);
    }
    std::string got;
    int rc = op(&got);
    (void)!::write(pipefd[1], got.data(), got.size());
    ::_exit(rc < 0 || rc > 250 ? 250 : rc);
  }
  ::close(pipefd[1]);
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(pipefd[0], buf, sizeof buf)) > 0) got.append(buf, n);
  ::close(pipefd[0]);
  int status = 0;
  ::waitpid(pid, &status, 0);
  if (read_back) *read_back = got;
  if (!WIFEXITED(status) || WEXITSTATUS(status) == 255) return -1;
  return WEXITSTATUS(status);
}

// 0 when `rc` is 0, else errno.
int Err(int rc) { return rc == 0 ? 0 : errno; }

// Reads all of `path` into `out`.
int ReadAll(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return errno;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out->append(buf, n);
  int err = n < 0 ? errno : 0;
  ::close(fd);
  return err;
}

// One operation of a pod on the names under directory `d` of the mount.
struct Op {
  std::string name;
  std::function<int(const std::string& mnt, const std::string& d, std::string* read)> run;
};

std::vector<Op> Ops() {
  auto at = [](const std::string& mnt, const std::string& d, const std::string& n) {
    return absl::StrCat(mnt, "/", d, "/", n);
  };
  return {
      {"read", [=](auto& m, auto& d, std::string* r) { return ReadAll(at(m, d, "secret"), r); }},
      // The kernel may answer from what it cached: the volume's own file.
      {"stat",
       [=](auto& m, auto& d, std::string* r) {
         struct stat st;
         if (::stat(at(m, d, "secret").c_str(), &st) != 0) return errno;
         *r = absl::StrCat("size=", st.st_size);
         return 0;
       }},
      {"readdir",
       [=](auto& m, auto& d, std::string* r) {
         std::error_code ec;
         for (const auto& e : std::filesystem::directory_iterator(m + "/" + d, ec)) {
           *r += e.path().filename().string() + " ";
         }
         return ec ? ec.value() : 0;
       }},
      {"create",
       [=](auto& m, auto& d, std::string*) {
         int fd = ::open(at(m, d, "new").c_str(), O_CREAT | O_WRONLY, 0644);
         if (fd < 0) return errno;
         ::close(fd);
         return 0;
       }},
      {"write",
       [=](auto& m, auto& d, std::string*) {
         int fd = ::open(at(m, d, "secret").c_str(), O_WRONLY | O_APPEND);
         if (fd < 0) return errno;
         int rc = ::write(fd, "pwned", 5) == 5 ? 0 : errno;
         ::close(fd);
         return rc;
       }},
      {"mkdir",
       [=](auto& m, auto& d, std::string*) { return Err(::mkdir(at(m, d, "nd").c_str(), 0755)); }},
      {"rename-into",
       [=](auto& m, auto& d, std::string*) {
         return Err(::rename((m + "/" + d + ".file").c_str(), at(m, d, "moved").c_str()));
       }},
      {"rename-out",
       [=](auto& m, auto& d, std::string*) {
         return Err(::rename(at(m, d, "secret").c_str(), (m + "/" + d + ".stolen").c_str()));
       }},
      {"unlink",
       [=](auto& m, auto& d, std::string*) { return Err(::unlink(at(m, d, "secret").c_str())); }},
      {"rmdir",
       [=](auto& m, auto& d, std::string*) { return Err(::rmdir(at(m, d, "sub").c_str())); }},
      {"chmod", [=](auto& m, auto& d,
                    std::string*) { return Err(::chmod(at(m, d, "secret").c_str(), 04777)); }},
      {"chown", [=](auto& m, auto& d,
                    std::string*) { return Err(::chown(at(m, d, "secret").c_str(), 4242, 4242)); }},
      {"truncate", [=](auto& m, auto& d,
                       std::string*) { return Err(::truncate(at(m, d, "secret").c_str(), 1)); }},
      {"utimes", [=](auto& m, auto& d,
                     std::string*) { return Err(::utimes(at(m, d, "secret").c_str(), nullptr)); }},
      {"symlink",
       [=](auto& m, auto& d, std::string*) {
         return Err(::symlink("/etc/passwd", at(m, d, "ln").c_str()));
       }},
      {"link",
       [=](auto& m, auto& d, std::string*) {
         return Err(::link((m + "/" + d + ".file").c_str(), at(m, d, "hard").c_str()));
       }},
      {"setxattr",
       [=](auto& m, auto& d, std::string*) {
         return Err(::setxattr(at(m, d, "secret").c_str(), "user.x", "1", 1, 0));
       }},
  };
}

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
  const std::vector<Op> ops = Ops();
  for (size_t i = 0; i < ops.size(); ++i) MakeAndCache(mnt, absl::StrCat("d", i));
  for (size_t i = 0; i < ops.size(); ++i) {
    std::string d = origin_ + "/d" + std::to_string(i);
    std::filesystem::rename(d, d + ".old");
    std::filesystem::create_directory_symlink(host_, d);
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    std::string d = absl::StrCat("d", i), read;
    int rc = AsPod(
        host_, [&](std::string* r) { return ops[i].run(mnt, d, r); }, &read);
    SCOPED_TRACE(ops[i].name);
    ASSERT_NE(rc, -1) << "the pod could not set up its namespace";
    if (ops[i].name == "stat" && rc == 0) {
      EXPECT_EQ(read, "size=12") << "the volume's file as cached, not the host's";
      continue;
    }
    EXPECT_NE(rc, 0) << ops[i].name << " succeeded through a swapped directory";
    EXPECT_THAT(rc, ::testing::AnyOf(ELOOP, ENOTDIR, ENOENT, EPERM, EOPNOTSUPP))
        << ops[i].name << ": " << std::strerror(rc);
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
  int rc = AsPod(
      host_, [&](std::string* r) { return ReadAll(mnt + "/d/secret", r); }, &read);
  EXPECT_NE(rc, 0);
  EXPECT_EQ(read.find("host"), std::string::npos) << read;
  rc = AsPod(host_, [&](std::string*) { return Err(::chmod((mnt + "/d/secret").c_str(), 0666)); });
  EXPECT_NE(rc, 0);
  rc = AsPod(host_, [&](std::string*) { return Err(::truncate((mnt + "/d/secret").c_str(), 0)); });
  EXPECT_NE(rc, 0);
  // A file swapped for a directory: the open fails as on a local disk.
  std::filesystem::remove(origin_ + "/d.file");
  std::filesystem::create_directory(origin_ + "/d.file");
  rc = AsPod(host_, [&](std::string* r) { return ReadAll(mnt + "/d.file", r); });
  EXPECT_NE(rc, 0);
  ExpectHostUntouched();
}

// Two nodes: the swap is made through one mount, by a pod of that node, and
// the other node's mount, which cached the directory, is used next.
TEST_F(EscapeTest, ASwapThroughOneMountDoesNotSteerTheOther) {
  auto a = Mount("mnt-a");
  auto b = Mount("mnt-b");
  const std::string mnt_a = dir_.path() + "/mnt-a", mnt_b = dir_.path() + "/mnt-b";
  const std::vector<Op> ops = Ops();
  for (size_t i = 0; i < ops.size(); ++i) MakeAndCache(mnt_b, absl::StrCat("d", i));
  for (size_t i = 0; i < ops.size(); ++i) {
    std::string d = absl::StrCat(mnt_a, "/d", i);
    int rc = AsPod(host_, [&](std::string*) {
      if (::rename(d.c_str(), (d + ".old").c_str()) != 0) return errno;
      return Err(::symlink(host_.c_str(), d.c_str()));
    });
    ASSERT_EQ(rc, 0) << "swap through mount a: " << std::strerror(rc);
  }
  for (size_t i = 0; i < ops.size(); ++i) {
    std::string d = absl::StrCat("d", i), read;
    int rc = AsPod(
        host_, [&](std::string* r) { return ops[i].run(mnt_b, d, r); }, &read);
    SCOPED_TRACE(ops[i].name);
    if (ops[i].name != "stat") {
      EXPECT_NE(rc, 0) << ops[i].name;
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
  const std::vector<Op> ops = Ops();
  std::string seen;
  int rc = AsPod(
      host_,
      [&](std::string* r) {
        std::mt19937 rng(11);
        for (int i = 0; i < 600; ++i) {
          const Op& op = ops[rng() % ops.size()];
          std::string read;
          op.run(mnt, "d", &read);
          if (read.find("host") != std::string::npos) *r += op.name + " read the host; ";
          // Recreate what the operations remove, wherever "d" is now.
          WriteFile(mnt + "/d/secret", "volume data\n");
          ::mkdir((mnt + "/d/sub").c_str(), 0755);
          WriteFile(mnt + "/d.file", "a file\n");
        }
        return 0;
      },
      &seen);
  done = true;
  flipper.join();
  EXPECT_EQ(rc, 0);
  EXPECT_EQ(seen, "");
  ExpectHostUntouched();
}

}  // namespace
}  // namespace strata
