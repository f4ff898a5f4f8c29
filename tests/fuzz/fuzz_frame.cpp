// Fuzz target: the frame decoder. The input is the raw byte stream a peer would send; it goes into
// a pipe whose write end is then closed, and read_frame is called until it stops returning ok.
// Every payload is fed to parse_json; the ones that parse are re-encoded with dump_json and sent
// back through write_frame/read_frame, which must return them unchanged.
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <string>

#include "common/frame.hpp"
#include "fuzz_common.hpp"

namespace {

using spr::detail::Clock;
using spr::detail::IoStatus;

constexpr std::uint32_t kMaxFrame = 4096;    // small cap so the too_large path is reachable
constexpr std::size_t kMaxInput = std::size_t{60} * 1024; // stays below the default pipe capacity (64 KiB)

// Writes all of `data` to `fd` (non-blocking would only matter beyond the pipe capacity).
bool write_all(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t w = ::write(fd, data, size);
    if (w < 0) return false;
    data += w;
    size -= static_cast<std::size_t>(w);
  }
  return true;
}

// write_frame then read_frame through a fresh pipe or socketpair; the payload must survive.
void echo(const std::string& payload, bool use_socket) {
  int fds[2];
  int rd;
  int wr;
  if (use_socket) {
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return;
  } else {
    if (::pipe2(fds, O_CLOEXEC) != 0) return;
  }
  rd = fds[0];
  wr = fds[1];
  IoStatus ws = spr::detail::write_frame(wr, payload, use_socket);
  ::close(wr);
  if (ws != IoStatus::ok) spr_fuzz::bug("write_frame failed on a small payload:", spr::detail::to_string(ws));
  std::string back;
  IoStatus rs = spr::detail::read_frame(rd, back, Clock::now() + std::chrono::seconds(5));
  if (rs != IoStatus::ok) spr_fuzz::bug("read_frame of a written frame:", spr::detail::to_string(rs));
  if (back != payload) spr_fuzz::bug("frame echo changed the payload");
  std::string extra;
  rs = spr::detail::read_frame(rd, extra, Clock::now() + std::chrono::seconds(5));
  if (rs != IoStatus::eof) spr_fuzz::bug("no EOF after the echoed frame:", spr::detail::to_string(rs));
  ::close(rd);
}

void check_payload(const std::string& payload, bool use_socket) {
  nlohmann::json value;
  try {
    value = spr::detail::parse_json(payload);
  } catch (const nlohmann::json::exception&) {
    return;  // not JSON, too deep, bad UTF-8: refused, as documented
  }
  std::string text = spr::detail::dump_json(value);  // must not throw
  nlohmann::json again;
  try {
    again = spr::detail::parse_json(text);
  } catch (const nlohmann::json::exception& e) {
    spr_fuzz::bug("dump_json output does not parse back:", e.what());
  }
  if (again != value) spr_fuzz::bug("parse(dump(x)) != x");
  if (text.size() <= std::size_t{32} * 1024) echo(text, use_socket);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  size = std::min(size, kMaxInput);
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) return 0;
  if (!write_all(fds[1], reinterpret_cast<const char*>(data), size)) {
    ::close(fds[0]);
    ::close(fds[1]);
    return 0;
  }
  ::close(fds[1]);  // the peer is gone: the reader must see EOF, never wait

  // An already expired deadline must return at once (without reading), whatever is in the pipe.
  std::string payload;
  IoStatus s = spr::detail::read_frame(fds[0], payload, Clock::now() - std::chrono::milliseconds(1), kMaxFrame);
  if (s != IoStatus::timeout && s != IoStatus::ok && s != IoStatus::eof && s != IoStatus::too_large)
    spr_fuzz::bug("read_frame with an expired deadline:", spr::detail::to_string(s));
  if (s == IoStatus::ok) check_payload(payload, (size & 1) != 0);

  // Then decode the stream with a deadline that is effectively immediate: everything is already
  // buffered, so no call may wait for it. At most size / 4 + 1 frames exist.
  std::size_t frames = 0;
  for (;;) {
    const auto deadline = Clock::now() + std::chrono::seconds(2);
    s = spr::detail::read_frame(fds[0], payload, deadline, kMaxFrame);
    if (s != IoStatus::ok) break;
    if (payload.size() > kMaxFrame) spr_fuzz::bug("read_frame returned more than max_bytes");
    check_payload(payload, ((size + frames) & 1) != 0);
    if (++frames > size / 4 + 1) spr_fuzz::bug("read_frame returned more frames than the input holds");
  }
  if (s == IoStatus::timeout || s == IoStatus::error)
    spr_fuzz::bug("read_frame on a closed, fully buffered pipe:", spr::detail::to_string(s));
  ::close(fds[0]);
  return 0;
}
