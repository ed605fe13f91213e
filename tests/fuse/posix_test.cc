// POSIX semantics of a file:// mount, checked against the origin's own file
// system: each test does an operation through the mount and compares what it
// sees with the origin directory, or with the same operation done directly on
// a scratch directory of the same file system. Checks that must hold within
// the attribute TTL (1 s) are made at once, never after a sleep.
#include <dirent.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/util/mount.h"
#include "tests/util/test_util.h"

namespace strata {
namespace {

using strata::testing::Pattern;
using strata::testing::ReadPath;
using strata::testing::SameBytes;
using strata::testing::TempDir;
using strata::testing::WriteFile;
using testing::StrataMount;

void AppendFile(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary | std::ios::app) << data;
}

std::string Errno(int err) { return absl::StrCat(err, " (", std::strerror(err), ")"); }

std::string Octal(uint32_t mode) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0%o", mode);
  return buf;
}

std::string Time(const struct timespec& ts) {
  char ns[16];
  std::snprintf(ns, sizeof ns, "%09ld", static_cast<long>(ts.tv_nsec));
  return absl::StrCat(ts.tv_sec, ".", ns);
}

// lstat that reports a failure (and returns zeros) instead of stopping the test.
struct stat StatOf(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) ADD_FAILURE() << "lstat " << path << ": " << Errno(errno);
  return st;
}

struct stat FstatOf(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) ADD_FAILURE() << "fstat: " << Errno(errno);
  return st;
}

// Permission and special bits, in octal for readable failures.
std::string ModeOf(const std::string& path) { return Octal(StatOf(path).st_mode & 07777); }

// Everything readable from `fd` starting at `offset`.
std::string PreadFrom(int fd, off_t offset) {
  std::string out;
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::pread(fd, buf, sizeof buf, offset);
    if (n < 0) {
      ADD_FAILURE() << "pread at " << offset << ": " << Errno(errno);
      break;
    }
    if (n == 0) break;
    out.append(buf, n);
    offset += n;
  }
  return out;
}

// Compares the times that `what` says should agree, with names in the message.
void ExpectSameTimes(const struct stat& mount, const struct stat& origin, const std::string& what,
                     bool atime = true) {
  if (atime) {
    EXPECT_EQ(Time(mount.st_atim), Time(origin.st_atim)) << what << ": atime";
  }
  EXPECT_EQ(Time(mount.st_mtim), Time(origin.st_mtim)) << what << ": mtime";
  EXPECT_EQ(Time(mount.st_ctim), Time(origin.st_ctim)) << what << ": ctime";
}

// Removes `name` under `dir_fd` and everything in it, by descriptor, so that
// trees deeper than PATH_MAX go too.
void RemoveTreeAt(int dir_fd, const std::string& name) {
  int fd = ::openat(dir_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    DIR* d = ::fdopendir(fd);
    std::vector<std::string> names;
    while (struct dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(n);
    }
    for (const auto& n : names) RemoveTreeAt(::dirfd(d), n);
    ::closedir(d);
    ::unlinkat(dir_fd, name.c_str(), AT_REMOVEDIR);
  } else {
    ::unlinkat(dir_fd, name.c_str(), 0);
  }
}

// Runs `fn` when the scope ends, so that cleanup happens on ASSERT failures too.
class Cleanup {
 public:
  explicit Cleanup(std::function<void()> fn) : fn_(std::move(fn)) {}
  ~Cleanup() { fn_(); }

 private:
  std::function<void()> fn_;
};

class PosixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (::geteuid() != 0) GTEST_SKIP() << "mounting needs root";
    origin_ = dir_.path() + "/origin";
    scratch_ = dir_.path() + "/scratch";
    mnt_ = dir_.path() + "/mnt";
    std::filesystem::create_directories(origin_);
    std::filesystem::create_directories(scratch_);
    std::filesystem::create_directories(mnt_);
  }

  // The mount goes before the temp dir; on a failure its log says why.
  void TearDown() override {
    if (mount_ == nullptr) return;
    mount_->Stop();
    if (HasFailure()) {
      std::string log = mount_->output();
      if (log.size() > 4000) log = "..." + log.substr(log.size() - 4000);
      std::cout << "strata mount log:\n" << log << "\n";
    }
    mount_.reset();
  }

  // Mounts the origin with the default attribute TTL. Setup made in the
  // origin before this call is what the mount first sees.
  void Mount(std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {"--cache-dir", dir_.path() + "/cache", "--chunk-size", "1MiB"};
    args.insert(args.end(), extra.begin(), extra.end());
    mount_ = std::make_unique<StrataMount>(STRATA_PATH, "file://" + origin_, mnt_, args);
    ASSERT_TRUE(mount_->ok()) << mount_->output();
  }

  std::string M(const std::string& rel) const { return mnt_ + "/" + rel; }
  std::string O(const std::string& rel) const { return origin_ + "/" + rel; }
  std::string S(const std::string& rel) const { return scratch_ + "/" + rel; }

  TempDir dir_;
  std::string origin_, scratch_, mnt_;
  std::unique_ptr<StrataMount> mount_;  // destroyed before dir_
};

// --- 1 ---------------------------------------------------------------------

TEST_F(PosixTest, FileGrownInTheOriginReadsInFullAtTheNextOpen) {
  std::string small = Pattern(1, 0, 1000), big = Pattern(2, 0, 8 << 20);
  WriteFile(O("small"), small);
  WriteFile(O("big"), big);
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_TRUE(SameBytes(ReadPath(M("small")), small));
  ASSERT_TRUE(SameBytes(ReadPath(M("big")), big));

  std::string more = Pattern(3, 0, 500), tail = Pattern(4, 0, 19);
  AppendFile(O("small"), more);
  AppendFile(O("big"), tail);
  small += more;
  big += tail;

  int fd = ::open(M("small").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << Errno(errno);
  std::string got = PreadFrom(fd, 0);
  EXPECT_EQ(got.size(), 1500u);
  EXPECT_TRUE(got == small) << "the bytes read after the append are not the origin's";
  EXPECT_EQ(FstatOf(fd).st_size, 1500);
  ::close(fd);

  got = ReadPath(M("big"));
  EXPECT_EQ(got.size(), big.size());
  EXPECT_TRUE(got == big) << "the 8 MiB file with 19 bytes appended reads wrong";
}

// --- 2 ---------------------------------------------------------------------

// Opens a file through the mount with `flags`, reads its head, unlinks it
// through the mount and goes on with the descriptor: for O_RDWR a write,
// then the whole file read back; otherwise the rest read.
void ExpectUnlinkedDescriptorWorks(const std::string& origin_path, const std::string& mnt_path,
                                   int flags) {
  std::string data = Pattern(5, 0, (5 << 20) + 333);
  WriteFile(origin_path, data);
  int fd = ::open(mnt_path.c_str(), flags);
  ASSERT_GE(fd, 0) << Errno(errno);
  std::string head(4096, '\0');
  ASSERT_EQ(::pread(fd, head.data(), head.size(), 0), 4096);
  ASSERT_EQ(::unlink(mnt_path.c_str()), 0) << Errno(errno);
  if ((flags & O_ACCMODE) == O_RDWR) {
    std::string patch = Pattern(6, 0, 10000);
    EXPECT_EQ(::pwrite(fd, patch.data(), patch.size(), 3 << 20), static_cast<ssize_t>(patch.size()))
        << Errno(errno);
    data.replace(3 << 20, patch.size(), patch);
    std::string all = PreadFrom(fd, 0);
    EXPECT_EQ(all.size(), data.size());
    EXPECT_TRUE(all == data) << "an unlinked file read back after a write reads wrong";
  } else {
    std::string rest = PreadFrom(fd, 4096);
    EXPECT_EQ(rest.size(), data.size() - 4096);
    EXPECT_TRUE(rest == data.substr(4096)) << "the rest of an unlinked file reads wrong";
  }
  struct stat st = FstatOf(fd);
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(st.st_size, static_cast<off_t>(data.size()));
  ::close(fd);
}

TEST_F(PosixTest, ReadOnlyDescriptorOfAFileUnlinkedThroughTheMountKeepsWorking) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ExpectUnlinkedDescriptorWorks(O("f"), M("f"), O_RDONLY);
}

TEST_F(PosixTest, ReadWriteDescriptorOfAFileUnlinkedThroughTheMountKeepsWorking) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ExpectUnlinkedDescriptorWorks(O("f"), M("f"), O_RDWR);
}

// --- 3 ---------------------------------------------------------------------

TEST_F(PosixTest, InPlaceEditWithRestoredMtimeIsSeenAtTheNextOpen) {
  std::string data = Pattern(7, 0, (2 << 20) + 77);
  WriteFile(O("f"), data);
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_TRUE(SameBytes(ReadPath(M("f")), data));  // now cached

  // Another writer of the origin edits the file in place and puts its times back.
  struct stat before = StatOf(O("f"));
  std::string patch = Pattern(8, 0, 4096);
  int fd = ::open(O("f").c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::pwrite(fd, patch.data(), patch.size(), 1 << 20), 4096);
  ::close(fd);
  struct timespec times[2] = {before.st_atim, before.st_mtim};
  ASSERT_EQ(::utimensat(AT_FDCWD, O("f").c_str(), times, 0), 0);
  data.replace(1 << 20, patch.size(), patch);
  struct stat after = StatOf(O("f"));
  ASSERT_EQ(after.st_size, before.st_size);
  ASSERT_EQ(Time(after.st_mtim), Time(before.st_mtim));
  ASSERT_NE(Time(after.st_ctim), Time(before.st_ctim)) << "(the test needs the ctime to change)";

  std::string got = ReadPath(M("f"));
  EXPECT_EQ(got.size(), data.size());
  EXPECT_TRUE(got == data) << "the edit (same size and mtime, new ctime) was not seen";
}

// --- 4 ---------------------------------------------------------------------

// A name of `len` bytes, distinct per `i`.
std::string LongName(int i, size_t len) {
  std::string n = absl::StrCat("d", i, "-");
  n.resize(len, 'x');
  return n;
}

// The error a 256-byte name gives to mkdirat, openat(O_CREAT) and fstatat
// in `dir_fd`: "" if each fails with ENAMETOOLONG.
std::string NameTooLongProblems(int dir_fd) {
  std::string name(256, 'n'), out;
  struct stat st;
  errno = 0;
  if (::mkdirat(dir_fd, name.c_str(), 0755) == 0 || errno != ENAMETOOLONG)
    absl::StrAppend(&out, "mkdirat: ", Errno(errno), "; ");
  errno = 0;
  int fd = ::openat(dir_fd, name.c_str(), O_CREAT | O_RDWR, 0644);
  if (fd >= 0) ::close(fd);
  if (fd >= 0 || errno != ENAMETOOLONG) absl::StrAppend(&out, "openat: ", Errno(errno), "; ");
  errno = 0;
  if (::fstatat(dir_fd, name.c_str(), &st, 0) == 0 || errno != ENAMETOOLONG)
    absl::StrAppend(&out, "fstatat: ", Errno(errno), "; ");
  return out;
}

// Builds a chain of directories under `root` whose total path is longer than
// PATH_MAX, works with a file at its bottom and removes it all, each step
// relative to a directory descriptor. Returns "" or the first step that failed.
std::string LongPathProblems(const std::string& root) {
  constexpr int kDepth = 22;  // 22 names of 200 bytes: over 4400 bytes
  std::vector<int> fds;
  auto close_all = [&] {
    for (int fd : fds) ::close(fd);
  };
  fds.push_back(::open(root.c_str(), O_RDONLY | O_DIRECTORY));
  if (fds.back() < 0) return "open " + root + ": " + Errno(errno);
  size_t total = root.size();
  for (int i = 0; i < kDepth; ++i) {
    std::string name = LongName(i, 200);
    total += 1 + name.size();
    if (::mkdirat(fds.back(), name.c_str(), 0755) != 0) {
      std::string e =
          absl::StrCat("mkdirat at depth ", i, " (path ", total, " bytes): ", Errno(errno));
      close_all();
      return e;
    }
    int fd = ::openat(fds.back(), name.c_str(), O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
      std::string e = absl::StrCat("openat dir at depth ", i, ": ", Errno(errno));
      close_all();
      return e;
    }
    fds.push_back(fd);
  }
  std::string out;
  const int bottom = fds.back();
  std::string file = LongName(99, 200), data = Pattern(9, 0, 70000);
  int fd = ::openat(bottom, file.c_str(), O_CREAT | O_EXCL | O_RDWR, 0644);
  if (fd < 0) {
    out = absl::StrCat("create file (path ", total + 201, " bytes): ", Errno(errno));
  } else {
    if (::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size()))
      absl::StrAppend(&out, "pwrite: ", Errno(errno), "; ");
    ::close(fd);
    fd = ::openat(bottom, file.c_str(), O_RDONLY);
    if (fd < 0) {
      absl::StrAppend(&out, "reopen: ", Errno(errno), "; ");
    } else {
      if (PreadFrom(fd, 0) != data) absl::StrAppend(&out, "read back wrong bytes; ");
      ::close(fd);
    }
    struct stat st;
    if (::fstatat(bottom, file.c_str(), &st, 0) != 0) {
      absl::StrAppend(&out, "fstatat: ", Errno(errno), "; ");
    } else if (st.st_size != static_cast<off_t>(data.size())) {
      absl::StrAppend(&out, "fstatat size ", st.st_size, "; ");
    }
    absl::StrAppend(&out, NameTooLongProblems(bottom));
    if (::unlinkat(bottom, file.c_str(), 0) != 0)
      absl::StrAppend(&out, "unlinkat: ", Errno(errno), "; ");
  }
  for (int i = kDepth - 1; i >= 0; --i) {
    ::close(fds.back());
    fds.pop_back();
    if (::unlinkat(fds.back(), LongName(i, 200).c_str(), AT_REMOVEDIR) != 0) {
      absl::StrAppend(&out, "rmdir at depth ", i, ": ", Errno(errno), "; ");
      break;
    }
  }
  close_all();
  return out;
}

TEST_F(PosixTest, PathsLongerThanPathMaxWorkRelativeToDirectoryDescriptors) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  Cleanup cleanup([&] {
    for (const std::string& root : {origin_, scratch_}) {
      int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY);
      RemoveTreeAt(fd, LongName(0, 200));
      ::close(fd);
    }
  });
  ASSERT_EQ(LongPathProblems(scratch_), "") << "(the origin's own file system)";
  EXPECT_EQ(LongPathProblems(mnt_), "");
  int fd = ::open(mnt_.c_str(), O_RDONLY | O_DIRECTORY);
  ASSERT_GE(fd, 0);
  EXPECT_EQ(NameTooLongProblems(fd), "") << "at the root of the mount";
  ::close(fd);
}

// --- 5 ---------------------------------------------------------------------

TEST_F(PosixTest, ModesAreKeptAsRequestedUnderAZeroUmask) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  mode_t old_umask = ::umask(0);
  Cleanup restore([old_umask] { ::umask(old_umask); });
  // Each step on the scratch directory and through the mount, then compared.
  auto make = [](const std::string& dir) {
    std::string out;
    for (auto [name, mode] : std::vector<std::pair<std::string, mode_t>>{
             {"f0777", 0777}, {"f0666", 0666}, {"f04755", 04755}}) {
      int fd = ::open((dir + "/" + name).c_str(), O_CREAT | O_EXCL | O_WRONLY, mode);
      if (fd < 0) absl::StrAppend(&out, "create ", name, ": ", Errno(errno), "; ");
      ::close(fd);
    }
    for (auto [name, mode] :
         std::vector<std::pair<std::string, mode_t>>{{"d0777", 0777}, {"d02755", 02755}}) {
      if (::mkdir((dir + "/" + name).c_str(), mode) != 0)
        absl::StrAppend(&out, "mkdir ", name, ": ", Errno(errno), "; ");
    }
    if (::mkdir((dir + "/dchmod").c_str(), 0755) != 0 ||
        ::chmod((dir + "/dchmod").c_str(), 02755) != 0)
      absl::StrAppend(&out, "mkdir+chmod dchmod: ", Errno(errno), "; ");
    return out;
  };
  ASSERT_EQ(make(scratch_), "");
  EXPECT_EQ(make(mnt_), "");
  const std::vector<std::pair<std::string, uint32_t>> expected = {
      {"f0777", 0777}, {"f0666", 0666}, {"f04755", 04755}, {"d0777", 0777}, {"dchmod", 02755}};
  for (const auto& [name, mode] : expected) {
    ASSERT_EQ(ModeOf(S(name)), Octal(mode)) << name << " (the origin's own file system)";
  }
  for (const std::string name : {"f0777", "f0666", "f04755", "d0777", "d02755", "dchmod"}) {
    EXPECT_EQ(ModeOf(M(name)), ModeOf(S(name))) << name << " through the mount";
    EXPECT_EQ(ModeOf(O(name)), ModeOf(S(name))) << name << " in the origin";
  }
}

// --- 6 ---------------------------------------------------------------------

TEST_F(PosixTest, SetgidDirectoryPassesItsGroupOnAsTheOriginDoes) {
  for (const std::string& root : {origin_, scratch_}) {
    std::string d = root + "/shared";
    ASSERT_EQ(::mkdir(d.c_str(), 0775), 0);
    ASSERT_EQ(::chown(d.c_str(), 0, 1234), 0);
    ASSERT_EQ(::chmod(d.c_str(), 02775), 0);
  }
  ASSERT_NO_FATAL_FAILURE(Mount());
  for (const std::string& root : {scratch_, mnt_}) {
    SCOPED_TRACE(root);
    int fd = ::open((root + "/shared/file").c_str(), O_CREAT | O_EXCL | O_WRONLY, 0644);
    EXPECT_GE(fd, 0) << Errno(errno);
    ::close(fd);
    EXPECT_EQ(::mkdir((root + "/shared/sub").c_str(), 0755), 0) << Errno(errno);
  }
  ASSERT_EQ(StatOf(S("shared/file")).st_gid, 1234u) << "(the origin's own file system)";
  ASSERT_EQ(StatOf(S("shared/sub")).st_gid, 1234u) << "(the origin's own file system)";
  for (const std::string name : {"shared/file", "shared/sub"}) {
    struct stat want = StatOf(S(name)), mnt = StatOf(M(name)), org = StatOf(O(name));
    EXPECT_EQ(mnt.st_gid, want.st_gid) << name << " through the mount";
    EXPECT_EQ(org.st_gid, want.st_gid) << name << " in the origin";
    EXPECT_EQ(Octal(mnt.st_mode & 07777), Octal(want.st_mode & 07777))
        << name << " through the mount";
    EXPECT_EQ(Octal(org.st_mode & 07777), Octal(want.st_mode & 07777)) << name << " in the origin";
  }
  EXPECT_TRUE(StatOf(M("shared/sub")).st_mode & S_ISGID) << "the subdirectory lost S_ISGID";
}

// --- 7 ---------------------------------------------------------------------

TEST_F(PosixTest, TimesAreTheOriginsIncludingCtimeAndDirectoryTimes) {
  WriteFile(O("f"), "some bytes");
  // Directories whose times are old, so that each operation visibly moves them.
  for (const std::string d : {"c", "u", "r1", "r2"}) std::filesystem::create_directory(O(d));
  WriteFile(O("u/gone"), "x");
  WriteFile(O("r1/moved"), "y");
  struct timespec old[2] = {{1000000000, 111}, {1000000000, 222}};
  for (const std::string d : {"c", "u", "r1", "r2"})
    ASSERT_EQ(::utimensat(AT_FDCWD, O(d).c_str(), old, 0), 0);
  ASSERT_NO_FATAL_FAILURE(Mount());

  // Explicit times, to the nanosecond.
  struct timespec ts[2] = {{1000000000, 123456789}, {1234567890, 987654321}};
  ASSERT_EQ(::utimensat(AT_FDCWD, M("f").c_str(), ts, 0), 0) << Errno(errno);
  struct stat m = StatOf(M("f")), o = StatOf(O("f"));
  EXPECT_EQ(Time(o.st_atim), Time(ts[0])) << "(the origin)";
  EXPECT_EQ(Time(o.st_mtim), Time(ts[1])) << "(the origin)";
  EXPECT_EQ(Time(m.st_atim), Time(ts[0]));
  EXPECT_EQ(Time(m.st_mtim), Time(ts[1]));
  EXPECT_EQ(Time(m.st_ctim), Time(o.st_ctim)) << "ctime is not the origin's";

  // chmod moves ctime only.
  ASSERT_EQ(::chmod(M("f").c_str(), 0600), 0) << Errno(errno);
  ExpectSameTimes(StatOf(M("f")), StatOf(O("f")), "after chmod");

  // A directory's times right after a change through the mount.
  for (const std::string d : {"c", "u", "r1", "r2"}) StatOf(M(d));  // cached by the kernel now
  WriteFile(M("c/new"), "z");
  ExpectSameTimes(StatOf(M("c")), StatOf(O("c")), "directory after create", false);
  ASSERT_EQ(::unlink(M("u/gone").c_str()), 0) << Errno(errno);
  ExpectSameTimes(StatOf(M("u")), StatOf(O("u")), "directory after unlink", false);
  ASSERT_EQ(::rename(M("r1/moved").c_str(), M("r2/moved").c_str()), 0) << Errno(errno);
  ExpectSameTimes(StatOf(M("r1")), StatOf(O("r1")), "source directory after rename", false);
  ExpectSameTimes(StatOf(M("r2")), StatOf(O("r2")), "target directory after rename", false);
}

// --- 8 ---------------------------------------------------------------------

TEST_F(PosixTest, HardLinksAreOneInodeAndDirectoriesCountTheirLinks) {
  std::string data = Pattern(10, 0, 100000);
  WriteFile(O("a"), data);
  for (const std::string d : {"old", "old/x", "old/y", "old/z"})
    std::filesystem::create_directory(O(d));
  ASSERT_NO_FATAL_FAILURE(Mount());

  ASSERT_EQ(::link(M("a").c_str(), M("b").c_str()), 0) << Errno(errno);
  struct stat a = StatOf(M("a")), b = StatOf(M("b"));
  EXPECT_EQ(a.st_ino, b.st_ino) << "two names of one file, two inodes";
  EXPECT_EQ(a.st_nlink, 2u);
  EXPECT_EQ(b.st_nlink, 2u);
  EXPECT_EQ(StatOf(O("a")).st_ino, StatOf(O("b")).st_ino) << "(the origin)";
  ASSERT_TRUE(SameBytes(ReadPath(M("b")), data));  // cached under the second name

  std::string next = Pattern(11, 0, data.size());
  {
    int fd = ::open(M("a").c_str(), O_WRONLY);
    ASSERT_GE(fd, 0) << Errno(errno);
    EXPECT_EQ(::pwrite(fd, next.data(), next.size(), 0), static_cast<ssize_t>(next.size()));
    ::close(fd);
  }
  EXPECT_TRUE(ReadPath(M("b")) == next) << "a write through one name is not seen through the other";

  ASSERT_EQ(::unlink(M("a").c_str()), 0) << Errno(errno);
  EXPECT_EQ(StatOf(M("b")).st_nlink, 1u);
  EXPECT_EQ(StatOf(O("b")).st_nlink, 1u) << "(the origin)";

  // Directory link counts, for one made in the origin and one made through the mount.
  for (const std::string d : {"new", "new/x", "new/y", "new/z"})
    ASSERT_EQ(::mkdir(M(d).c_str(), 0755), 0) << d << ": " << Errno(errno);
  for (const std::string d : {"old", "new"}) {
    ASSERT_EQ(StatOf(O(d)).st_nlink, 5u) << d << " (the origin)";
    EXPECT_EQ(StatOf(M(d)).st_nlink, StatOf(O(d)).st_nlink) << d;
  }
}

// --- 9 ---------------------------------------------------------------------

// The inode number that a listing of `dir` gives `name` (0 if not listed).
ino_t ListedIno(const std::string& dir, const std::string& name) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return 0;
  ino_t ino = 0;
  while (struct dirent* e = ::readdir(d)) {
    if (name == e->d_name) ino = e->d_ino;
  }
  ::closedir(d);
  return ino;
}

TEST_F(PosixTest, RenameKeepsTheInodeNumber) {
  WriteFile(O("f"), "file");
  std::filesystem::create_directories(O("d/sub"));
  WriteFile(O("d/sub/child"), "child");
  ASSERT_NO_FATAL_FAILURE(Mount());
  ino_t f = StatOf(M("f")).st_ino, d = StatOf(M("d")).st_ino,
        child = StatOf(M("d/sub/child")).st_ino;
  ASSERT_EQ(::rename(M("f").c_str(), M("g").c_str()), 0) << Errno(errno);
  ASSERT_EQ(::rename(M("d").c_str(), M("e").c_str()), 0) << Errno(errno);
  EXPECT_EQ(StatOf(M("g")).st_ino, f);
  EXPECT_EQ(StatOf(M("e")).st_ino, d);
  EXPECT_EQ(StatOf(M("e/sub/child")).st_ino, child);
  // What the daemon itself says of the new names: a listing, and lookups
  // after the kernel has dropped the names it had.
  EXPECT_EQ(ListedIno(mnt_, "g"), f) << "listing";
  EXPECT_EQ(ListedIno(mnt_, "e"), d) << "listing";
  EXPECT_EQ(ListedIno(M("e/sub"), "child"), child) << "listing";
  std::ofstream("/proc/sys/vm/drop_caches") << "2";
  EXPECT_EQ(StatOf(M("g")).st_ino, f) << "fresh lookup";
  EXPECT_EQ(StatOf(M("e")).st_ino, d) << "fresh lookup";
  EXPECT_EQ(StatOf(M("e/sub/child")).st_ino, child) << "fresh lookup";
}

// --- 10 --------------------------------------------------------------------

// Device nodes other than overlayfs's whiteout (0, 0) are refused: a pod's
// root may hold CAP_MKNOD, and a node for this machine's disk left in a
// shared origin would open it for anyone reading the origin without nodev.
TEST_F(PosixTest, MknodMakesFifosSocketsAndWhiteoutsButNoDevices) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  const dev_t whiteout = makedev(0, 0);
  auto make = [&](const std::string& dir) {
    std::string out;
    if (::mkfifo((dir + "/fifo").c_str(), 0644) != 0)
      absl::StrAppend(&out, "mkfifo: ", Errno(errno), "; ");
    if (::mknod((dir + "/sock").c_str(), S_IFSOCK | 0644, 0) != 0)
      absl::StrAppend(&out, "mknod S_IFSOCK: ", Errno(errno), "; ");
    if (::mknod((dir + "/wh").c_str(), S_IFCHR | 0666, whiteout) != 0)
      absl::StrAppend(&out, "mknod S_IFCHR 0/0: ", Errno(errno), "; ");
    return out;
  };
  ASSERT_EQ(make(scratch_), "") << "(the origin's own file system)";
  EXPECT_EQ(make(mnt_), "");
  EXPECT_EQ(::mknod(M("null").c_str(), S_IFCHR | 0666, makedev(1, 3)), -1);
  EXPECT_EQ(errno, EPERM) << Errno(errno);
  EXPECT_EQ(::mknod(M("disk").c_str(), S_IFBLK | 0600, makedev(8, 0)), -1);
  EXPECT_EQ(errno, EPERM) << Errno(errno);
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(O("null"))));
  EXPECT_FALSE(std::filesystem::exists(std::filesystem::symlink_status(O("disk"))));
  for (const std::string name : {"fifo", "sock", "wh"}) {
    struct stat want = StatOf(S(name));
    for (const std::string& path : {M(name), O(name)}) {
      struct stat st = StatOf(path);
      EXPECT_EQ(Octal(st.st_mode & S_IFMT), Octal(want.st_mode & S_IFMT)) << path;
      EXPECT_EQ(st.st_rdev, want.st_rdev) << path;
    }
  }
  // The mount is nodev: even the device nodes found there do not open.
  errno = 0;
  int fd = ::open(M("wh").c_str(), O_RDONLY | O_NONBLOCK);
  if (fd >= 0) ::close(fd);
  EXPECT_LT(fd, 0) << "a device node opened through a nodev mount";
  EXPECT_EQ(errno, EACCES) << Errno(errno);

  // A fifo made through the mount passes bytes (only tried when it is one:
  // a fifo served as a regular file would be opened by the daemon and block).
  ASSERT_TRUE(S_ISFIFO(StatOf(M("fifo")).st_mode));
  int r = ::open(M("fifo").c_str(), O_RDONLY | O_NONBLOCK);
  ASSERT_GE(r, 0) << Errno(errno);
  int w = ::open(M("fifo").c_str(), O_WRONLY | O_NONBLOCK);
  EXPECT_GE(w, 0) << Errno(errno);
  if (w >= 0) {
    EXPECT_EQ(::write(w, "through", 7), 7);
    char buf[16] = {};
    EXPECT_EQ(::read(r, buf, sizeof buf), 7);
    EXPECT_STREQ(buf, "through");
    ::close(w);
  }
  ::close(r);
}

// --- 11 --------------------------------------------------------------------

// Allocates 1 MiB, fills it, punches a hole with KEEP_SIZE; returns the
// steps that failed, and the size and bytes after.
std::string FallocateProblems(const std::string& path, off_t* size, std::string* bytes) {
  std::string out;
  int fd = ::open(path.c_str(), O_CREAT | O_EXCL | O_RDWR, 0644);
  if (fd < 0) return "create: " + Errno(errno);
  if (::fallocate(fd, 0, 0, 1 << 20) != 0)
    absl::StrAppend(&out, "fallocate 1 MiB: ", Errno(errno), "; ");
  struct stat st = FstatOf(fd);
  if (st.st_size != (1 << 20)) absl::StrAppend(&out, "size after fallocate ", st.st_size, "; ");
  std::string data = Pattern(12, 0, 1 << 20);
  if (::pwrite(fd, data.data(), data.size(), 0) != static_cast<ssize_t>(data.size()))
    absl::StrAppend(&out, "pwrite: ", Errno(errno), "; ");
  if (::fallocate(fd, FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE, 128 << 10, 64 << 10) != 0)
    absl::StrAppend(&out, "punch hole: ", Errno(errno), "; ");
  *size = FstatOf(fd).st_size;
  *bytes = PreadFrom(fd, 0);
  ::close(fd);
  return out;
}

TEST_F(PosixTest, FallocateAndPunchHoleWorkAsOnTheOrigin) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  off_t want_size = 0, size = 0;
  std::string want, got;
  ASSERT_EQ(FallocateProblems(S("f"), &want_size, &want), "") << "(the origin's own file system)";
  ASSERT_EQ(want.substr(128 << 10, 64 << 10), std::string(64 << 10, '\0'));
  EXPECT_EQ(FallocateProblems(M("f"), &size, &got), "");
  EXPECT_EQ(size, want_size);
  EXPECT_TRUE(got == want) << "bytes read through the open descriptor differ";
  EXPECT_TRUE(ReadPath(M("f")) == want) << "bytes read at a fresh open differ";
  EXPECT_TRUE(ReadPath(O("f")) == want) << "the origin's bytes differ";
  struct stat o = StatOf(O("f")), s = StatOf(S("f"));
  EXPECT_EQ(o.st_size, s.st_size) << "the origin's size";
  EXPECT_EQ(o.st_blocks, s.st_blocks) << "the origin's allocated blocks (a real hole?)";
}

// --- 12 --------------------------------------------------------------------

TEST_F(PosixTest, ChownClearsSetuidAndSetgidAsTheOriginDoes) {
  struct Case {
    std::string name;
    bool dir;
    mode_t mode;
    uid_t uid;
    gid_t gid;
  };
  const std::vector<Case> cases = {
      {"suid_sgid", false, 06755, 1000, 1000},       {"sgid_noexec", false, 02644, 1000, 1000},
      {"group_only", false, 06755, uid_t(-1), 1000}, {"same_owner", false, 06755, 0, 0},
      {"sgid_dir", true, 02775, 1000, 1000},
  };
  // The same files in the origin and in the scratch directory, made directly.
  for (const std::string& root : {origin_, scratch_}) {
    for (const auto& c : cases) {
      std::string p = root + "/" + c.name;
      if (c.dir) {
        ASSERT_EQ(::mkdir(p.c_str(), 0755), 0);
      } else {
        WriteFile(p, "#!/bin/sh\n");
      }
      ASSERT_EQ(::chmod(p.c_str(), c.mode), 0);
    }
  }
  ASSERT_NO_FATAL_FAILURE(Mount());
  for (const auto& c : cases) {
    SCOPED_TRACE(c.name);
    ASSERT_EQ(::chown(S(c.name).c_str(), c.uid, c.gid), 0);
    EXPECT_EQ(::chown(M(c.name).c_str(), c.uid, c.gid), 0) << Errno(errno);
    struct stat want = StatOf(S(c.name)), mnt = StatOf(M(c.name)), org = StatOf(O(c.name));
    EXPECT_EQ(Octal(mnt.st_mode & 07777), Octal(want.st_mode & 07777)) << "through the mount";
    EXPECT_EQ(Octal(org.st_mode & 07777), Octal(want.st_mode & 07777)) << "in the origin";
    EXPECT_EQ(mnt.st_uid, want.st_uid);
    EXPECT_EQ(mnt.st_gid, want.st_gid);
  }
}

// --- 13 --------------------------------------------------------------------

TEST_F(PosixTest, WithoutTheOptionXattrsAreNotSupported) {
  WriteFile(O("f"), "x");
  ASSERT_NO_FATAL_FAILURE(Mount());
  char buf[16];
  EXPECT_EQ(::setxattr(M("f").c_str(), "user.k", "v", 1, 0), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  EXPECT_EQ(::getxattr(M("f").c_str(), "user.k", buf, sizeof buf), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
}

TEST_F(PosixTest, UserXattrsAreTheOriginsAndOthersAreRefused) {
  WriteFile(O("f"), "x");
  ASSERT_NO_FATAL_FAILURE(Mount({"--xattrs"}));
  ASSERT_EQ(::setxattr(M("f").c_str(), "user.k", "v1", 2, 0), 0) << Errno(errno);
  char buf[64];
  ssize_t n = ::getxattr(O("f").c_str(), "user.k", buf, sizeof buf);
  EXPECT_EQ(std::string(buf, std::max<ssize_t>(n, 0)), "v1");  // kept by the origin
  n = ::getxattr(M("f").c_str(), "user.k", buf, sizeof buf);
  EXPECT_EQ(std::string(buf, std::max<ssize_t>(n, 0)), "v1");
  EXPECT_EQ(::getxattr(M("f").c_str(), "user.k", nullptr, 0), 2);  // the size asked first
  EXPECT_EQ(::getxattr(M("f").c_str(), "user.k", buf, 1), -1);
  EXPECT_EQ(errno, ERANGE);
  n = ::listxattr(M("f").c_str(), buf, sizeof buf);
  EXPECT_EQ(std::string(buf, std::max<ssize_t>(n, 0)), std::string("user.k\0", 7));
  EXPECT_EQ(::setxattr(M("f").c_str(), "user.k", "v2", 2, XATTR_CREATE), -1);
  EXPECT_EQ(errno, EEXIST);
  // Attributes that mean something to the node are neither set nor shown.
  EXPECT_EQ(::setxattr(M("f").c_str(), "trusted.k", "1", 1, 0), -1);
  EXPECT_EQ(errno, EOPNOTSUPP);
  EXPECT_EQ(::getxattr(M("f").c_str(), "security.selinux", buf, sizeof buf), -1);
  EXPECT_EQ(errno, ENODATA);
  ASSERT_EQ(::removexattr(M("f").c_str(), "user.k"), 0) << Errno(errno);
  EXPECT_EQ(::getxattr(O("f").c_str(), "user.k", buf, sizeof buf), -1);
  EXPECT_EQ(::removexattr(M("f").c_str(), "user.k"), -1);
  EXPECT_EQ(errno, ENODATA);
}

// --- 14 --------------------------------------------------------------------

TEST_F(PosixTest, AnUnlinkedOpenFileCanStillBeTruncatedAndChmodded) {
  WriteFile(O("f"), Pattern(9, 0, 100000));
  ASSERT_NO_FATAL_FAILURE(Mount());
  int fd = ::open(M("f").c_str(), O_RDWR);
  ASSERT_GE(fd, 0) << Errno(errno);
  ASSERT_EQ(::unlink(M("f").c_str()), 0) << Errno(errno);
  EXPECT_EQ(::ftruncate(fd, 10), 0) << Errno(errno);
  EXPECT_EQ(::fchmod(fd, 0600), 0) << Errno(errno);
  struct stat st = FstatOf(fd);
  EXPECT_EQ(st.st_size, 10);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(st.st_nlink, 0u);
  EXPECT_EQ(PreadFrom(fd, 0), Pattern(9, 0, 10));
  ::close(fd);
}

// --- 15 --------------------------------------------------------------------

TEST_F(PosixTest, SymlinksAndDirectoriesHaveTheOriginsSizes) {
  ASSERT_EQ(::symlink("some/where/else", O("link").c_str()), 0);
  std::filesystem::create_directories(O("dir"));
  for (int i = 0; i < 200; ++i) WriteFile(O(absl::StrCat("dir/a-rather-long-file-name-", i)), "");
  ASSERT_NO_FATAL_FAILURE(Mount());
  EXPECT_EQ(StatOf(M("link")).st_size, 15);
  EXPECT_EQ(StatOf(M("dir")).st_size, StatOf(O("dir")).st_size);
  EXPECT_EQ(StatOf(M("dir")).st_nlink, StatOf(O("dir")).st_nlink);
}

// --- 16 --------------------------------------------------------------------

// Editors and writers of checkpoints save by renaming a new file over the
// old one. Done at the origin while the kernel still holds the old name,
// the next open through the mount must get the new file, all of it.
TEST_F(PosixTest, AFileRenamedOverAtTheOriginIsTheNewFileAtTheNextOpen) {
  WriteFile(O("x"), Pattern(10, 0, 100));
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_TRUE(SameBytes(ReadPath(M("x")), Pattern(10, 0, 100)));
  ino_t old_ino = StatOf(M("x")).st_ino;
  WriteFile(O("x.tmp"), Pattern(11, 0, 300000));
  ASSERT_EQ(::rename(O("x.tmp").c_str(), O("x").c_str()), 0);
  int fd = ::open(M("x").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << Errno(errno);
  EXPECT_EQ(PreadFrom(fd, 0), Pattern(11, 0, 300000));
  EXPECT_EQ(FstatOf(fd).st_size, 300000);
  EXPECT_NE(FstatOf(fd).st_ino, old_ino);
  ::close(fd);
}

// /proc/PID/fd/N of an unlinked file opens the file itself, as on ext4.
TEST_F(PosixTest, AnUnlinkedOpenFileReopensThroughProc) {
  WriteFile(O("f"), Pattern(12, 0, 5000));
  ASSERT_NO_FATAL_FAILURE(Mount());
  int fd = ::open(M("f").c_str(), O_RDONLY);
  ASSERT_GE(fd, 0) << Errno(errno);
  ASSERT_EQ(::unlink(M("f").c_str()), 0);
  int again = ::open(absl::StrCat("/proc/self/fd/", fd).c_str(), O_RDONLY);
  EXPECT_GE(again, 0) << Errno(errno);
  if (again >= 0) {
    EXPECT_EQ(PreadFrom(again, 0), Pattern(12, 0, 5000));
    EXPECT_EQ(FstatOf(again).st_nlink, 0u);
    ::close(again);
  }
  ::close(fd);
}

}  // namespace
}  // namespace strata
