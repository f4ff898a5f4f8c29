// Frame I/O on raw fds with poll-based deadlines, and JSON helpers with a depth limit.
#include "common/frame.hpp"

#include "common/json_scan.hpp"
#include "common/outcome.hpp"

#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>
#include <vector>

namespace spr::detail {

const char* to_string(IoStatus s) {
  switch (s) {
    case IoStatus::ok: return "ok";
    case IoStatus::eof: return "end of stream";
    case IoStatus::timeout: return "timed out";
    case IoStatus::error: return "I/O error";
    case IoStatus::too_large: return "frame too large";
  }
  return "?";
}

namespace {

// Calls and empties `before_wait` when it is set (see read_frame).
void call_before_wait(std::function<void()>* before_wait) {
  if (before_wait && *before_wait) std::exchange(*before_wait, nullptr)();
}

// Waits until fd is readable or the deadline passes.
IoStatus wait_readable(int fd, Clock::time_point deadline, int spin_us, int exit_fd,
                       std::function<void()>* before_wait) {
  pollfd ps[2] = {{fd, POLLIN, 0}, {exit_fd, POLLIN, 0}};
  pollfd& p = ps[0];
  const nfds_t n = exit_fd >= 0 ? 2 : 1;
  if (before_wait && *before_wait) {
    // Only a wait that would block calls it: a look first, without waiting.
    const int r = ::poll(ps, n, 0);
    if (r > 0) return p.revents ? IoStatus::ok : IoStatus::eof;
    if (r < 0 && errno != EINTR) return IoStatus::error;
    call_before_wait(before_wait);
  }
  if (spin_us > 0) {
    const auto spin_end = Clock::now() + std::chrono::microseconds(spin_us);
    do {
      int r = ::poll(&p, 1, 0);
      if (r > 0) return IoStatus::ok;
      if (r < 0 && errno != EINTR) return IoStatus::error;
    } while (Clock::now() < spin_end);
  }
  for (;;) {
    int timeout_ms = -1;
    if (deadline != Clock::time_point::max()) {
      auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
      if (left <= 0) return IoStatus::timeout;
      timeout_ms = static_cast<int>((left + 999) / 1000);
    }
    int r = ::poll(ps, n, timeout_ms);
    if (r > 0 && p.revents) return IoStatus::ok;  // POLLHUP/POLLERR surface as EOF/error on read
    if (r > 0) return IoStatus::eof;               // the peer exited; nothing more will come
    if (r == 0) {
      if (deadline != Clock::time_point::max() && Clock::now() >= deadline) return IoStatus::timeout;
      continue;
    }
    if (errno != EINTR) return IoStatus::error;
  }
}

IoStatus read_exact(int fd, char* buf, std::size_t n, Clock::time_point deadline, int spin_us, int exit_fd,
                    std::function<void()>* before_wait) {
  std::size_t got = 0;
  while (got < n) {
    IoStatus w = wait_readable(fd, deadline, got == 0 ? spin_us : 0, exit_fd, before_wait);
    if (w != IoStatus::ok) return w;
    ssize_t r = ::read(fd, buf + got, n - got);
    if (r > 0) {
      got += static_cast<std::size_t>(r);
    } else if (r == 0) {
      return IoStatus::eof;
    } else if (errno != EINTR && errno != EAGAIN) {
      return IoStatus::error;
    }
  }
  return IoStatus::ok;
}

}  // namespace

namespace {

// resize() that wipes what it leaves behind: a reallocation would free the bytes read so far unwiped, and a
// fork worker's later children inherit its heap (a run's reply must not reach the next run's process).
void grow_wiped(std::string& s, std::size_t n) {
  if (n <= s.capacity()) {
    s.resize(n);
    return;
  }
  std::string bigger;
  bigger.reserve(std::max(n, 2 * s.capacity()));
  bigger.assign(s);
  explicit_bzero(s.data(), s.size());
  s.swap(bigger);
  s.resize(n);
}

}  // namespace

IoStatus read_frame(int fd, std::string& payload, Clock::time_point deadline, std::uint32_t max_bytes,
                    int spin_us, int exit_fd, bool trusted_peer, std::function<void()>* before_wait) {
  unsigned char hdr[4];
  IoStatus s = read_exact(fd, reinterpret_cast<char*>(hdr), 4, deadline, spin_us, exit_fd, before_wait);
  if (s != IoStatus::ok) return s;
  const std::uint32_t len = std::uint32_t(hdr[0]) | std::uint32_t(hdr[1]) << 8 | std::uint32_t(hdr[2]) << 16 |
                            std::uint32_t(hdr[3]) << 24;
  if (len > max_bytes) return IoStatus::too_large;
  if (trusted_peer) {
    // Reserved whole (no reallocation, no copy), then sized a step at a time: each step's fresh pages are
    // taken while the peer is already writing the next bytes, not all before the first byte is read.
    constexpr std::size_t kStep = 1 << 20;
    payload.clear();
    payload.reserve(len);
    for (std::size_t got = 0; got < len;) {
      const std::size_t want = std::min<std::size_t>(len - got, kStep);
      payload.resize(got + want);
      s = read_exact(fd, payload.data() + got, want, deadline, 0, exit_fd, before_wait);
      if (s != IoStatus::ok) return s;
      got += want;
    }
    return IoStatus::ok;
  }
  // Grown as bytes arrive, never to what the header claims up front: a peer that announces a large
  // frame and sends nothing costs one chunk.
  // Each step is at most what has arrived so far (and at least 64 KiB): doubling, so a large frame
  // takes few steps, and a peer's claim costs at most twice what it really sent.
  constexpr std::size_t kChunk = 64 << 10;
  payload.clear();
  std::size_t got = 0;
  while (got < len) {
    const std::size_t want = std::min<std::size_t>(len - got, std::max(kChunk, got));
    grow_wiped(payload, got + want);
    s = read_exact(fd, payload.data() + got, want, deadline, 0, exit_fd, before_wait);
    if (s != IoStatus::ok) return s;
    got += want;
  }
  return IoStatus::ok;
}

namespace {

// Waits until `fd` takes more bytes or the deadline passes; eof once `exit_fd` is readable first.
IoStatus wait_writable(int fd, Clock::time_point deadline, int exit_fd) {
  pollfd ps[2] = {{fd, POLLOUT, 0}, {exit_fd, POLLIN, 0}};
  const nfds_t n = exit_fd >= 0 ? 2 : 1;
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - Clock::now()).count();
    if (left <= 0) return IoStatus::timeout;
    const int r = ::poll(ps, n, static_cast<int>(std::min<long long>((left + 999) / 1000, 1 << 30)));
    if (r > 0 && ps[0].revents) return IoStatus::ok;  // POLLHUP/POLLERR surface as an error on send
    if (r > 0) return IoStatus::eof;
    if (r < 0 && errno != EINTR) return IoStatus::error;
  }
}

}  // namespace

IoStatus send_frame(int fd, std::string_view payload, Clock::time_point deadline, int exit_fd, bool socket,
                    std::function<void()>* before_wait) {
  if (payload.size() > kMaxFrameBytes) return IoStatus::too_large;
  const auto len = static_cast<std::uint32_t>(payload.size());
  const unsigned char hdr[4] = {static_cast<unsigned char>(len), static_cast<unsigned char>(len >> 8),
                                static_cast<unsigned char>(len >> 16), static_cast<unsigned char>(len >> 24)};
  iovec iov[2] = {{const_cast<unsigned char*>(hdr), 4}, {const_cast<char*>(payload.data()), payload.size()}};
  int idx = 0;
  while (idx < 2) {
    ssize_t w;
    if (socket) {
      msghdr msg{};
      msg.msg_iov = iov + idx;
      msg.msg_iovlen = static_cast<size_t>(2 - idx);
      // MSG_DONTWAIT: the socket stays blocking for everyone else; this send never waits in the kernel.
      w = ::sendmsg(fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
    } else {
      w = ::writev(fd, iov + idx, 2 - idx);
    }
    if (w < 0) {
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) return IoStatus::error;
      call_before_wait(before_wait);
      if (const IoStatus s = wait_writable(fd, deadline, exit_fd); s != IoStatus::ok) return s;
      continue;
    }
    auto left = static_cast<std::size_t>(w);
    while (idx < 2 && left >= iov[idx].iov_len) {
      left -= iov[idx].iov_len;
      ++idx;
    }
    if (idx < 2) {
      iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
      iov[idx].iov_len -= left;
    }
  }
  return IoStatus::ok;
}

IoStatus write_frame(int fd, std::string_view payload, bool nosignal) {
  if (payload.size() > kMaxFrameBytes) return IoStatus::too_large;
  const auto len = static_cast<std::uint32_t>(payload.size());
  unsigned char hdr[4] = {static_cast<unsigned char>(len), static_cast<unsigned char>(len >> 8),
                          static_cast<unsigned char>(len >> 16), static_cast<unsigned char>(len >> 24)};
  iovec iov[2] = {{hdr, 4}, {const_cast<char*>(payload.data()), payload.size()}};
  int idx = 0;
  while (idx < 2) {
    ssize_t w;
    if (nosignal) {
      msghdr msg{};
      msg.msg_iov = iov + idx;
      msg.msg_iovlen = static_cast<size_t>(2 - idx);
      w = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
    } else {
      w = ::writev(fd, iov + idx, 2 - idx);
    }
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      return IoStatus::error;
    }
    auto left = static_cast<std::size_t>(w);
    while (idx < 2 && left >= iov[idx].iov_len) {
      left -= iov[idx].iov_len;
      ++idx;
    }
    if (idx < 2) {
      iov[idx].iov_base = static_cast<char*>(iov[idx].iov_base) + left;
      iov[idx].iov_len -= left;
    }
  }
  return IoStatus::ok;
}

namespace {
// Deepest nesting of arrays/objects in `text`, brackets inside strings ignored. A linear pre-scan
// is much cheaper than nlohmann's per-event callback, and nlohmann's recursive dump() would crash
// on what it lets through.
int nesting_depth(std::string_view text) {
  int depth = 0, deepest = 0;
  bool in_string = false;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') ++i;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      deepest = std::max(deepest, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return deepest;
}
}  // namespace

nlohmann::json parse_json(std::string_view text, int max_depth) {
  using json = nlohmann::json;
  if (nesting_depth(text) > max_depth)
    throw json::out_of_range::create(406, "JSON nesting deeper than " + std::to_string(max_depth) + " levels",
                                     static_cast<const json*>(nullptr));
  return json::parse(text.begin(), text.end());
}

namespace {
// Index of the first byte of `s` that does not start a valid UTF-8 sequence (overlong forms, encoded
// surrogates and values past U+10FFFF are invalid), or npos.
std::size_t bad_utf8_at(std::string_view s) {
  for (std::size_t i = 0; i < s.size();) {
    if (static_cast<unsigned char>(s[i]) < 0x80) {  // most JSON is ASCII
      ++i;
      continue;
    }
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) return i;
    i += n;
  }
  return std::string_view::npos;
}

}  // namespace

std::string json_text_error(std::string_view text, int max_depth) {
  if (nesting_depth(text) > max_depth) return "JSON nesting deeper than " + std::to_string(max_depth) + " levels";
  if (const std::size_t at = bad_utf8_at(text); at != std::string_view::npos)
    return "invalid UTF-8 at byte " + std::to_string(at);
  if (!json_scan::valid(text)) return "not valid JSON (one value; NaN and Infinity are not JSON)";
  if (!json_scan::surrogates_paired(text)) return "a \\u escape of a lone surrogate (not UTF-8 text)";
  return {};
}

int json_depth(const nlohmann::json& value) {
  int deepest = 0;
  std::vector<std::pair<const nlohmann::json*, int>> stack{{&value, 1}};
  while (!stack.empty()) {
    auto [v, d] = stack.back();
    stack.pop_back();
    if (!v->is_structured()) continue;
    deepest = std::max(deepest, d);
    for (const auto& child : *v) stack.emplace_back(&child, d + 1);
  }
  return deepest;
}

std::string dump_json(const nlohmann::json& value) {
  return value.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace spr::detail
