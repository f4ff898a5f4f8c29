// Fd, a move-only owner of a file descriptor, and the one EINTR-retry helper; used by both programs.
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstddef>

namespace spr::detail {

// Move-only owner of a file descriptor; close is noexcept. (close() is not retried on EINTR: on Linux
// the descriptor is released even when close reports EINTR, and a retry could close someone else's.)
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) noexcept : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.release();
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd = -1) noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }
  explicit operator bool() const noexcept { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

// Reads exactly `n` bytes into `buf` (retrying EINTR and short reads); false at an error or the end of the file
// before `n` (a file that shrank since its size was taken).
inline bool read_full(int fd, char* buf, std::size_t n) {
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::read(fd, buf + got, n - got);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) return false;
    got += static_cast<std::size_t>(r);
  }
  return true;
}

// Calls f() again while it fails with EINTR (nsjail's TEMP_FAILURE_RETRY, fmt's FMT_RETRY).
template <typename F>
auto retry_eintr(F&& f) -> decltype(f()) {
  decltype(f()) r;
  do {
    r = f();
  } while (r == -1 && errno == EINTR);
  return r;
}

}  // namespace spr::detail
