// A pod, for tests: a process of its own that works on a mount the way an
// application would, so that no test process forks a child that allocates
// (unsafe in a threaded, sanitized test) or holds a FUSE file open while it
// starts the next daemon (the file's flush at exec would wait for it).
//
//   pod HIDE op MNT D NAME        one operation on MNT/D/...; prints the
//                                 errno (0: done), then what it read
//   pod HIDE loop MNT D N SEED    N operations drawn from a seeded generator,
//                                 each followed by putting back what they
//                                 removed; prints what it read of the host
//   pod - reader FILE COPY STOP   reads FILE in 1 MiB pieces (page cache
//                                 dropped) against COPY until STOP exists
//   pod - meta DIR STOP           stats, reads and lists DIR until STOP exists
//
// With HIDE other than "-", the pod runs in a mount namespace of its own in
// which HIDE is covered by an empty tmpfs: the node's files as a pod sees
// them. reader and meta print "ok= wrong= aborted= other= errno=".
#include <dirent.h>
#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

int Err(int rc) { return rc == 0 ? 0 : errno; }

int ReadAll(const std::string& path, std::string* out) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(fd, buf, sizeof buf)) > 0) out->append(buf, n);
  int err = n < 0 ? errno : 0;
  ::close(fd);
  return err;
}

int List(const std::string& dir, std::string* out) {
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return errno;
  errno = 0;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] != '.') *out += std::string(e->d_name) + " ";
  }
  int err = errno;
  ::closedir(d);
  return err;
}

int WriteFile(const std::string& path, const std::string& data) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  int rc = ::write(fd, data.data(), data.size()) == static_cast<ssize_t>(data.size()) ? 0 : errno;
  ::close(fd);
  return rc;
}

// One operation on the names under directory `d` of mount `m`; the errno
// it ended with (0: done), and what it read in `r`.
int RunOp(const std::string& op, const std::string& m, const std::string& d, std::string* r) {
  auto at = [&](const char* n) { return m + "/" + d + "/" + n; };
  std::string side = m + "/" + d + ".file";
  if (op == "read") return ReadAll(at("secret"), r);
  if (op == "stat") {
    struct stat st;
    if (::stat(at("secret").c_str(), &st) != 0) return errno;
    *r = "size=" + std::to_string(st.st_size);
    return 0;
  }
  if (op == "readdir") return List(m + "/" + d, r);
  if (op == "create") {
    int fd = ::open(at("new").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) return errno;
    ::close(fd);
    return 0;
  }
  if (op == "write") {
    int fd = ::open(at("secret").c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
    if (fd < 0) return errno;
    int rc = ::write(fd, "pwned", 5) == 5 ? 0 : errno;
    ::close(fd);
    return rc;
  }
  if (op == "mkdir") return Err(::mkdir(at("nd").c_str(), 0755));
  if (op == "rename-into") return Err(::rename(side.c_str(), at("moved").c_str()));
  if (op == "rename-out") {
    return Err(::rename(at("secret").c_str(), (m + "/" + d + ".stolen").c_str()));
  }
  if (op == "unlink") return Err(::unlink(at("secret").c_str()));
  if (op == "rmdir") return Err(::rmdir(at("sub").c_str()));
  if (op == "chmod") return Err(::chmod(at("secret").c_str(), 04777));
  if (op == "chown") return Err(::chown(at("secret").c_str(), 4242, 4242));
  if (op == "truncate") return Err(::truncate(at("secret").c_str(), 1));
  if (op == "utimes") return Err(::utimes(at("secret").c_str(), nullptr));
  if (op == "symlink") return Err(::symlink("/etc/passwd", at("ln").c_str()));
  if (op == "link") return Err(::link(side.c_str(), at("hard").c_str()));
  if (op == "setxattr") return Err(::setxattr(at("secret").c_str(), "user.x", "1", 1, 0));
  if (op == "read-side") return ReadAll(side, r);
  // "swap-to=TARGET": D becomes a symlink to TARGET (its directory moved
  // aside), made through this mount.
  if (op.rfind("swap-to=", 0) == 0) {
    std::string dir = m + "/" + d;
    if (::rename(dir.c_str(), (dir + ".old").c_str()) != 0) return errno;
    return Err(::symlink(op.substr(8).c_str(), dir.c_str()));
  }
  std::fprintf(stderr, "pod: unknown operation %s\n", op.c_str());
  std::exit(2);
}

const char* const kOps[] = {"read",        "stat",       "readdir", "create", "write",   "mkdir",
                            "rename-into", "rename-out", "unlink",  "rmdir",  "chmod",   "chown",
                            "truncate",    "utimes",     "symlink", "link",   "setxattr"};

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

struct Counts {
  long ok = 0, wrong = 0, aborted = 0, other = 0;
  int last_errno = 0;
  void Failed() {
    if (errno == ECONNABORTED) {
      ++aborted;
    } else {
      ++other;
      last_errno = errno;
    }
  }
  void Print() const {
    std::printf("ok=%ld wrong=%ld aborted=%ld other=%ld errno=%d\n", ok, wrong, aborted, other,
                last_errno);
  }
};

int Reader(const std::string& file, const std::string& copy, const std::string& stop) {
  std::string want;
  if (ReadAll(copy, &want) != 0 || want.size() < (1 << 20)) return 2;
  Counts c;
  int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    c.Failed();
  } else {
    std::string buf(1 << 20, '\0');
    const size_t pieces = want.size() >> 20;
    for (long i = 0; i < 1000000 && !Exists(stop); ++i) {
      off_t off = static_cast<off_t>((i * 7 % pieces) << 20);
      ::posix_fadvise(fd, off, buf.size(), POSIX_FADV_DONTNEED);
      ssize_t got = ::pread(fd, buf.data(), buf.size(), off);
      if (got < 0) {
        c.Failed();
      } else if (got != static_cast<ssize_t>(buf.size()) ||
                 std::memcmp(buf.data(), want.data() + off, buf.size()) != 0) {
        ++c.wrong;
      } else {
        ++c.ok;
      }
    }
    ::close(fd);
  }
  c.Print();
  return 0;
}

// DIR holds config.json ({"layers": 4}\n) and dir/ with 20 files.
int Meta(const std::string& dir, const std::string& stop) {
  Counts c;
  const std::string config = dir + "/config.json", want = "{\"layers\": 4}\n";
  for (long i = 0; i < 1000000 && !Exists(stop); ++i) {
    struct stat st;
    if (::stat(config.c_str(), &st) != 0) {
      c.Failed();
    } else if (st.st_size != static_cast<off_t>(want.size())) {
      ++c.wrong;
    }
    std::string body;
    if (ReadAll(config, &body) != 0) {
      c.Failed();
    } else if (body != want) {
      ++c.wrong;
    }
    std::string names;
    if ((errno = List(dir + "/dir", &names)) != 0) {
      c.Failed();
    } else if (std::count(names.begin(), names.end(), ' ') != 20) {
      ++c.wrong;
    }
    ++c.ok;
  }
  c.Print();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> a(argv, argv + argc);
  if (a.size() < 3) {
    std::fprintf(stderr, "usage: see the head of tests/util/pod.cc\n");
    return 2;
  }
  const std::string& hide = a[1];
  if (hide != "-") {
    if (::unshare(CLONE_NEWNS) != 0 ||
        ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0 ||
        ::mount("tmpfs", hide.c_str(), "tmpfs", 0, "size=1m") != 0) {
      std::perror("pod: cannot make its mount namespace");
      return 3;
    }
  }
  const std::string& cmd = a[2];
  if (cmd == "op" && a.size() == 6) {
    std::string read;
    int rc = RunOp(a[5], a[3], a[4], &read);
    std::printf("%d\n%s", rc, read.c_str());
    return 0;
  }
  if (cmd == "loop" && a.size() == 7) {
    const std::string& m = a[3];
    const std::string& d = a[4];
    std::mt19937 rng(static_cast<unsigned>(std::atoi(a[6].c_str())));
    for (int i = 0; i < std::atoi(a[5].c_str()); ++i) {
      const char* op = kOps[rng() % (sizeof kOps / sizeof kOps[0])];
      std::string read;
      RunOp(op, m, d, &read);
      if (read.find("host") != std::string::npos) std::printf("%s read the host; ", op);
      // Put back what the operations remove, wherever "d" leads now.
      WriteFile(m + "/" + d + "/secret", "volume data\n");
      ::mkdir((m + "/" + d + "/sub").c_str(), 0755);
      WriteFile(m + "/" + d + ".file", "a file\n");
    }
    return 0;
  }
  if (cmd == "reader" && a.size() == 6) return Reader(a[3], a[4], a[5]);
  if (cmd == "meta" && a.size() == 5) return Meta(a[3], a[4]);
  std::fprintf(stderr, "pod: bad arguments (see the head of tests/util/pod.cc)\n");
  return 2;
}
