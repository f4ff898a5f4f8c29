// Resets the process-wide state a run may leave behind in a worker that serves several runs.
#include "process_state.hpp"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

extern char** environ;

#include <algorithm>
#include <string>
#include <vector>

namespace spr::embed {

namespace {
constexpr int kScanFds = 1024;  // far above the worker's RLIMIT_NOFILE

// The file a stat describes: (device, inode).
std::pair<unsigned long long, unsigned long long> id_of(const struct stat& st) {
  return {static_cast<unsigned long long>(st.st_dev), static_cast<unsigned long long>(st.st_ino)};
}

// The file a descriptor refers to, or (0, 0) when it is not open.
std::pair<unsigned long long, unsigned long long> file_id(int fd) {
  struct stat st{};
  if (::fstat(fd, &st) != 0) return {0, 0};
  return id_of(st);
}
}  // namespace

void ProcessState::capture(bool thread_only) {
  if (captured_) return;
  captured_ = true;
  thread_only_ = thread_only;
  cwd_fd_ = ::open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
  const mode_t m = ::umask(077);
  ::umask(m);
  umask_ = m;
  rlimit rl{};
  scan_top_ = ::getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_max < static_cast<rlim_t>(kScanFds)
                  ? static_cast<int>(rl.rlim_max)
                  : kScanFds;
  for (int fd = 0; fd < kScanFds; ++fd) {
    if (::fcntl(fd, F_GETFD) < 0) continue;
    struct stat st{};
    const bool known = ::fstat(fd, &st) == 0;
    const std::pair<unsigned long long, unsigned long long> id = known ? id_of(st) : std::make_pair(0ull, 0ull);
    // A record lock is taken on a file through a descriptor open for reading or writing (not O_PATH), and any
    // close of the file ends the process's locks on it: one copy per file is closed after a run, and none for a
    // pipe, a socket or a file with no name (the output buffer's memfd), which no program outside can open to
    // wait on a lock.
    const int flags = ::fcntl(fd, F_GETFL);
    const bool lockable = known && !S_ISFIFO(st.st_mode) && !S_ISSOCK(st.st_mode) && st.st_nlink > 0 && flags >= 0 &&
                          (flags & O_PATH) == 0 && std::find(open_ids_.begin(), open_ids_.end(), id) == open_ids_.end();
    open_fds_.push_back(fd);
    open_ids_.push_back(id);
    if (lockable) lock_release_fds_.push_back(fd);
  }
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
  if (descriptors) close_descriptors();
}

void ProcessState::close_descriptors() const {
  if (!captured_ || thread_only_) return;
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

bool ProcessState::kept_descriptors_intact() const {
  if (!captured_ || thread_only_) return true;
  bool intact = true;
  for (std::size_t i = 0; i < open_fds_.size(); ++i) {
    if (file_id(open_fds_[i]) != open_ids_[i]) intact = false;
  }
  if (!intact) return false;  // the worker ends after its reply, and its locks with it
  for (const int fd : lock_release_fds_) {
    const int copy = ::dup(fd);
    if (copy >= 0) ::close(copy);
  }
  return true;
}

bool ProcessState::descriptors_left() const {
  if (!captured_ || thread_only_) return false;
  // Numbers above the limit at capture() cannot be open (it is also the hard limit, which a run cannot
  // raise); one poll() marks every number not open POLLNVAL, instead of one fcntl() per number.
  std::vector<pollfd> all(static_cast<std::size_t>(scan_top_));
  for (int fd = 0; fd < scan_top_; ++fd) all[static_cast<std::size_t>(fd)] = pollfd{fd, 0, 0};
  const bool polled = ::poll(all.data(), all.size(), 0) >= 0;  // EINVAL once a run lowered its soft limit
  for (int fd = 0; fd < scan_top_; ++fd) {
    if (std::binary_search(open_fds_.begin(), open_fds_.end(), fd)) continue;
    const bool open = polled ? (all[static_cast<std::size_t>(fd)].revents & POLLNVAL) == 0 : ::fcntl(fd, F_GETFD) >= 0;
    if (open) return true;
  }
  return false;
}

}  // namespace spr::embed
