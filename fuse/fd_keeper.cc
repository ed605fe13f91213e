// FD keeper: a poll loop over a SOCK_SEQPACKET unix socket. Requests are
// "P key" (with a descriptor), "G key" and "D key"; answers are "OK" (with a
// descriptor for G) or "NO reason".
#include "fuse/fd_keeper.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/logging.h"

namespace strata::fuse {
namespace {

constexpr size_t kMaxMessage = 4096;

absl::Status Errno(const std::string& what) {
  return absl::UnavailableError(absl::StrCat(what, ": ", std::strerror(errno)));
}

// Receives one message; a descriptor that came with it lands in *fd. False
// at end of stream or on error. *truncated says the message or its control
// data did not fit: the key it carries is then not the one sent (two long
// keys could share a prefix), so it must not be acted on.
bool Receive(int sock, std::string* msg, int* fd, bool* truncated) {
  msg->assign(kMaxMessage, '\0');
  iovec iov{msg->data(), msg->size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  m.msg_control = control;
  m.msg_controllen = sizeof control;
  ssize_t n;
  do {
    n = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  *fd = -1;
  if (n <= 0) return false;
  msg->resize(static_cast<size_t>(n));
  *truncated = (m.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0;
  for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
    if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
      std::memcpy(fd, CMSG_DATA(c), sizeof(int));
  }
  return true;
}

// True for the character device of /dev/fuse (misc 10, 229), whatever the
// path it was opened by: the keeper holds nothing else.
bool IsFuseDevice(int fd) {
  struct stat st;
  return ::fstat(fd, &st) == 0 && S_ISCHR(st.st_mode) && st.st_rdev == makedev(10, 229);
}

// Removes a stale socket at `path`, and nothing else: the keeper runs as
// root, and the path may name a file it must not delete.
void UnlinkSocket(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) ::unlink(path.c_str());
}

}  // namespace

bool SendWithFd(int sock, const std::string& msg, int fd) {
  iovec iov{const_cast<char*>(msg.data()), msg.size()};
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
  if (fd >= 0) {
    m.msg_control = control;
    m.msg_controllen = sizeof control;
    cmsghdr* c = CMSG_FIRSTHDR(&m);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  ssize_t n;
  do {
    n = ::sendmsg(sock, &m, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  return n == static_cast<ssize_t>(msg.size());
}

absl::StatusOr<sockaddr_un> UnixAddress(const std::string& path) {
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  if (path.size() >= sizeof a.sun_path)
    return absl::InvalidArgumentError(absl::StrCat("socket path too long: ", path));
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  return a;
}

absl::StatusOr<std::unique_ptr<FdKeeperClient>> FdKeeperClient::Connect(const std::string& socket) {
  auto addr = UnixAddress(socket);
  if (!addr.ok()) return addr.status();
  int s = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (s < 0) return Errno("socket");
  if (::connect(s, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0) {
    absl::Status st = Errno(absl::StrCat("no FD keeper at ", socket));
    ::close(s);
    return st;
  }
  return std::unique_ptr<FdKeeperClient>(new FdKeeperClient(s));
}

FdKeeperClient::~FdKeeperClient() { ::close(sock_); }

absl::StatusOr<std::string> FdKeeperClient::Call(const std::string& request, int fd_in,
                                                 int* fd_out) {
  absl::MutexLock l(&mu_);
  if (!SendWithFd(sock_, request, fd_in)) return Errno("FD keeper request");
  std::string answer;
  int fd = -1;
  bool truncated = false;
  if (!Receive(sock_, &answer, &fd, &truncated)) {
    return absl::UnavailableError("the FD keeper went away");
  }
  if (truncated) {
    if (fd >= 0) ::close(fd);
    return absl::InternalError("FD keeper: the answer was cut short");
  }
  if (fd_out) {
    *fd_out = fd;
  } else if (fd >= 0) {
    ::close(fd);
  }
  return answer;
}

absl::Status FdKeeperClient::Put(const std::string& key, int fd) {
  if (key.size() + 2 > kMaxMessage) {
    return absl::InvalidArgumentError(
        absl::StrCat("FD keeper key of ", key.size(), " bytes is longer than ", kMaxMessage - 2));
  }
  auto a = Call("P " + key, fd, nullptr);
  if (!a.ok()) return a.status();
  if (*a != "OK") return absl::InternalError(absl::StrCat("FD keeper: ", *a));
  return absl::OkStatus();
}

absl::StatusOr<int> FdKeeperClient::Get(const std::string& key) {
  int fd = -1;
  auto a = Call("G " + key, -1, &fd);
  if (!a.ok()) return a.status();
  if (*a != "OK" || fd < 0) {
    if (fd >= 0) ::close(fd);
    return absl::NotFoundError(absl::StrCat("FD keeper has no ", key, ": ", *a));
  }
  return fd;
}

absl::Status FdKeeperClient::Delete(const std::string& key) {
  auto a = Call("D " + key, -1, nullptr);
  if (!a.ok()) return a.status();
  return absl::OkStatus();
}

absl::Status ServeFdKeeper(const FdKeeperOptions& options, const std::atomic<bool>& stop) {
  if (FdKeeperClient::Connect(options.socket).ok()) {
    return absl::AlreadyExistsError(absl::StrCat("another FD keeper answers on ", options.socket));
  }
  auto addr = UnixAddress(options.socket);
  if (!addr.ok()) return addr.status();
  int listener = ::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
  if (listener < 0) return Errno("socket");
  UnlinkSocket(options.socket);
  if (::bind(listener, reinterpret_cast<const sockaddr*>(&*addr), sizeof *addr) != 0 ||
      ::chmod(options.socket.c_str(), 0600) != 0 || ::listen(listener, 16) != 0) {
    absl::Status st = Errno(absl::StrCat("listen on ", options.socket));
    ::close(listener);
    return st;
  }
  spdlog::info("FD keeper on {} (grace {})", options.socket, absl::FormatDuration(options.grace));
  std::map<std::string, int> kept;
  std::vector<int> clients;
  absl::Time idle_since = absl::Now();
  while (!stop) {
    std::vector<pollfd> fds{{listener, POLLIN, 0}};
    for (int c : clients) fds.push_back({c, POLLIN, 0});
    int n = ::poll(fds.data(), fds.size(), 100);
    if (n < 0 && errno != EINTR) break;
    if (n > 0 && (fds[0].revents & POLLIN)) {
      int c = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      if (c >= 0) clients.push_back(c);
    }
    for (size_t i = 1; n > 0 && i < fds.size(); ++i) {
      if (fds[i].revents == 0) continue;
      int c = fds[i].fd;
      std::string msg;
      int fd = -1;
      bool truncated = false;
      if (!Receive(c, &msg, &fd, &truncated)) {
        ::close(c);
        std::erase(clients, c);
        continue;
      }
      std::string key = msg.size() > 2 ? msg.substr(2) : "";
      bool put = msg.rfind("P ", 0) == 0;
      // Only a whole P with a /dev/fuse descriptor keeps what came with it;
      // any other request closes it, or it would leak for the keeper's life.
      bool keep = put && !truncated && !key.empty() && fd >= 0 && IsFuseDevice(fd);
      if (fd >= 0 && !keep) ::close(fd);
      if (truncated) {
        SendWithFd(c, "NO request too long", -1);
      } else if (keep) {
        if (auto old = kept.find(key); old != kept.end()) ::close(old->second);
        kept[key] = fd;
        SendWithFd(c, "OK", -1);
      } else if (put && fd >= 0 && !key.empty()) {
        SendWithFd(c, "NO the descriptor is not /dev/fuse", -1);
      } else if (msg.rfind("G ", 0) == 0) {
        auto it = kept.find(key);
        SendWithFd(c, it == kept.end() ? "NO such key" : "OK", it == kept.end() ? -1 : it->second);
      } else if (msg.rfind("D ", 0) == 0) {
        if (auto it = kept.find(key); it != kept.end()) {
          ::close(it->second);
          kept.erase(it);
        }
        SendWithFd(c, "OK", -1);
      } else {
        SendWithFd(c, "NO bad request", -1);
      }
    }
    if (!clients.empty()) {
      idle_since = absl::Now();
      continue;
    }
    absl::Duration idle = absl::Now() - idle_since;
    if (!kept.empty() && idle > options.grace) {
      spdlog::warn("no daemon came back within {}: letting {} mounts go (they fail with ENOTCONN)",
                   absl::FormatDuration(options.grace), kept.size());
      for (auto& [key, fd] : kept) ::close(fd);
      kept.clear();
    }
    // Holding nothing, a keeper a daemon started has no reason to stay (a
    // moment's margin for the daemon that started it to connect).
    if (kept.empty() && options.exit_when_idle && idle > absl::Seconds(2)) break;
  }
  for (int c : clients) ::close(c);
  for (auto& [key, fd] : kept) ::close(fd);
  ::close(listener);
  UnlinkSocket(options.socket);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<FdKeeperClient>> SpawnFdKeeper(const std::string& exe,
                                                              const FdKeeperOptions& options,
                                                              const std::string& log_file) {
  std::string grace = absl::StrCat(absl::ToDoubleSeconds(options.grace));
  std::vector<std::string> argv_s = {exe,       "fd-keeper", "--socket",        options.socket,
                                     "--grace", grace,       "--exit-when-idle"};
  std::vector<char*> argv;
  for (auto& a : argv_s) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork");
  if (pid == 0) {
    // A session of its own, and a grandchild: not killed with the daemon,
    // not left a zombie of it.
    ::setsid();
    if (::fork() != 0) ::_exit(0);
    int null = ::open("/dev/null", O_RDONLY);
    int log = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    if (null >= 0) ::dup2(null, 0);
    if (log >= 0) {
      ::dup2(log, 1);
      ::dup2(log, 2);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  for (int i = 0; i < 100; ++i) {
    auto c = FdKeeperClient::Connect(options.socket);
    if (c.ok()) return c;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return absl::UnavailableError(absl::StrCat("started an FD keeper, but it does not answer on ",
                                             options.socket, " (see ", log_file, ")"));
}

}  // namespace strata::fuse
