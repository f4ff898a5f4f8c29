// File descriptors: only 0, 1, 2 and the fds the worker names survive, so user code inherits no stray handles.
#include <dirent.h>
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "mechanisms.hpp"

namespace spr::harden::fds {
namespace {

bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1 || errno != EBADF; }

// close_range over the gaps between kept fds: one syscall per gap, no /proc needed (Linux 5.9+).
int close_with_close_range(const std::vector<int>& keep) {
  unsigned first = 3;
  for (int fd : keep) {
    if (static_cast<unsigned>(fd) > first &&
        ::syscall(SYS_close_range, static_cast<long>(first), static_cast<long>(fd - 1), 0L) != 0) {
      return errno;
    }
    first = static_cast<unsigned>(fd) + 1;
  }
  const unsigned last = std::numeric_limits<unsigned>::max();
  return ::syscall(SYS_close_range, static_cast<long>(first), static_cast<long>(last), 0L) != 0 ? errno : 0;
}

// Collect first, close afterwards: closing while iterating would also close the DIR's own fd under it.
int close_with_proc_walk(const std::vector<int>& keep) {
  DIR* dir = ::opendir("/proc/self/fd");
  if (dir == nullptr) return errno;
  const int own = ::dirfd(dir);
  std::vector<int> doomed;
  while (const dirent* entry = ::readdir(dir)) {
    char* end = nullptr;
    const long fd = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || fd < 3 || fd == own) continue;
    if (!std::binary_search(keep.begin(), keep.end(), static_cast<int>(fd))) doomed.push_back(static_cast<int>(fd));
  }
  ::closedir(dir);
  for (int fd : doomed) ::close(fd);
  return 0;
}

void close_brute_force(const std::vector<int>& keep) {
  rlimit limit{};
  const rlim_t top = ::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY
                         ? std::min<rlim_t>(limit.rlim_cur, 1U << 20)
                         : 65536;
  for (int fd = 3; static_cast<rlim_t>(fd) < top; ++fd) {
    if (!std::binary_search(keep.begin(), keep.end(), fd)) ::close(fd);
  }
}

// Python and libc write to fd 1 and may read fd 0; a closed slot would let the next open() land there.
int reopen_null(int target) {
  if (is_open(target)) return 0;
  const int fd = ::open("/dev/null", O_RDWR);
  if (fd < 0) return errno;
  if (fd != target) {
    const int rc = ::dup2(fd, target);
    const int err = errno;
    ::close(fd);
    if (rc < 0) return err;
  }
  return 0;
}

}  // namespace

LayerStatus apply(const std::vector<int>& keep_in) {
  std::vector<int> keep;
  for (int fd : keep_in) {
    if (fd >= 3) keep.push_back(fd);
  }
  std::sort(keep.begin(), keep.end());
  keep.erase(std::unique(keep.begin(), keep.end()), keep.end());

  std::string how = "close_range";
  if (const int err = close_with_close_range(keep); err != 0) {
    log_errno("close_range", "", err);  // ENOSYS before 5.9, or a seccomp profile from the embedder
    how = "/proc/self/fd walk";
    if (const int walk_err = close_with_proc_walk(keep); walk_err != 0) {
      log_errno("opendir", "/proc/self/fd", walk_err);
      how = "brute force up to RLIMIT_NOFILE";
      close_brute_force(keep);
    }
  }
  // fd 2 is left as it is: it is the worker's diagnostics channel to the supervisor.
  for (int target : {0, 1}) {
    if (const int err = reopen_null(target); err != 0) {
      log_errno("open", "/dev/null", err);
      return inactive("fds", "closed via " + how + " but fd " + std::to_string(target) + " could not be reopened: " +
                                 errno_text("open(/dev/null)", err));
    }
  }
  std::string kept;
  for (int fd : keep) kept += (kept.empty() ? "" : ",") + std::to_string(fd);
  return active("fds", "closed via " + how + "; kept 0,1,2" + (kept.empty() ? "" : "," + kept));
}

}  // namespace spr::harden::fds
