// Resets the process-wide state a run may leave behind in a worker that serves several runs.
#include "process_state.hpp"

#include <fcntl.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char** environ;

#include <algorithm>
#include <string>

namespace spr::embed {

namespace {
constexpr int kScanFds = 1024;  // far above the worker's RLIMIT_NOFILE
}

void ProcessState::capture(bool thread_only) {
  if (captured_) return;
  captured_ = true;
  thread_only_ = thread_only;
  cwd_fd_ = ::open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  const mode_t m = ::umask(077);
  ::umask(m);
  umask_ = m;
  for (int fd = 0; fd < kScanFds; ++fd)
    if (::fcntl(fd, F_GETFD) >= 0) open_fds_.push_back(fd);
  for (char** e = environ; e && *e; ++e) {
    const std::string entry = *e;
    const std::size_t eq = entry.find('=');
    if (eq != std::string::npos && eq > 0) environment_.emplace_back(entry.substr(0, eq), entry.substr(eq + 1));
  }
}

void ProcessState::restore(bool descriptors) const {
  if (!captured_) return;
  if (thread_only_) {
    ::umask(static_cast<mode_t>(umask_));
    if (cwd_fd_ >= 0 && ::fchdir(cwd_fd_) != 0) {
      // As below: a later scratch_dir run fails cleanly.
    }
    return;
  }
  ::clearenv();  // putenv()/os.putenv of a run: back to the worker's own (normally empty) environment
  for (const auto& [name, value] : environment_) ::setenv(name.c_str(), value.c_str(), 1);
  ::umask(static_cast<mode_t>(umask_));
  if (cwd_fd_ >= 0 && ::fchdir(cwd_fd_) != 0) {
    // The scratch root is the worker's own; failing to return there leaves later scratch_dir runs
    // failing cleanly (Landlock refuses other directories), never writing elsewhere.
  }
  if (!descriptors) return;
  const int top = open_fds_.empty() ? 0 : open_fds_.back();
  for (int fd = 0; fd <= top; ++fd) {
    if (std::binary_search(open_fds_.begin(), open_fds_.end(), fd)) continue;
    if (fd != cwd_fd_) ::close(fd);  // EBADF for the ones not open: harmless
  }
  const unsigned first = static_cast<unsigned>(std::max(top, cwd_fd_) + 1);
  if (::syscall(SYS_close_range, first, ~0U, 0) != 0) {
    for (int fd = static_cast<int>(first); fd < kScanFds; ++fd) ::close(fd);
  }
}

bool ProcessState::descriptors_left() const {
  if (!captured_ || thread_only_) return false;
  int top = kScanFds;
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < static_cast<rlim_t>(kScanFds)) top = static_cast<int>(rl.rlim_cur);
  for (int fd = 0; fd < top; ++fd) {
    if (fd == cwd_fd_ || std::binary_search(open_fds_.begin(), open_fds_.end(), fd)) continue;
    if (::fcntl(fd, F_GETFD) >= 0) return true;
  }
  return false;
}

}  // namespace spr::embed
