// Length-prefixed JSON frames over pipes: 4-byte little-endian length, then UTF-8 JSON.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace spr::detail {

using Clock = std::chrono::steady_clock;

constexpr std::uint32_t kMaxFrameBytes = 512u << 20;  // a reply never legitimately comes near this
constexpr int kMaxJsonDepth = 512;                    // nlohmann's dump() recurses; deeper input is refused

enum class IoStatus { ok, eof, timeout, error, too_large };
const char* to_string(IoStatus);

// Reads one frame. `deadline` = Clock::time_point::max() waits forever. `spin_us` > 0 polls
// without blocking for that long first (saves a cross-CPU wake-up on short runs).
// `exit_fd` (a pidfd, or -1): when it turns readable while `fd` has nothing to read, the peer
// process is gone and the read ends with eof, even if a descendant still holds the other end.
// `trusted_peer`: the peer is the supervisor that started this process (or the worker that forked it),
// whose header is believed: the payload is sized once, not grown in steps that each copy what came
// so far (a 100 MiB request took 26 steps and copied ~100 MiB more). An untrusted peer's claim costs
// at most twice what it really sent.
// `before_wait` (may be null or empty): called, and emptied, before the call first has to wait for the peer;
// a caller that holds something a peer could keep it holding that long lets go of it there (serve's reading
// role, detail::set_watch). Not called when the peer's bytes are there already.
IoStatus read_frame(int fd, std::string& payload, Clock::time_point deadline,
                    std::uint32_t max_bytes = kMaxFrameBytes, int spin_us = 0, int exit_fd = -1,
                    bool trusted_peer = false, std::function<void()>* before_wait = nullptr);
// Writes header and payload with one writev where possible; retries on EINTR and short writes.
// `nosignal`: fd is a socket and a vanished peer must yield an error, not SIGPIPE (the supervisor
// lives in someone else's process and cannot own its signal dispositions).
IoStatus write_frame(int fd, std::string_view payload, bool nosignal = false);
// A write that never blocks past `deadline` (a peer that stops reading fills the buffer; the write
// then ends with timeout), and ends with eof when `exit_fd` (a pidfd, or -1) turns readable while the
// fd takes nothing: the peer is gone. A socket is sent with MSG_DONTWAIT | MSG_NOSIGNAL and may stay
// blocking for other users; any other fd (a pipe) must be O_NONBLOCK already.
// `before_wait`: as read_frame's, called before the first wait for the peer to take more bytes.
IoStatus send_frame(int fd, std::string_view payload, Clock::time_point deadline, int exit_fd = -1,
                    bool socket = true, std::function<void()>* before_wait = nullptr);

// Parses JSON, refusing nesting deeper than `max_depth`. Throws nlohmann::json::exception.
nlohmann::json parse_json(std::string_view text, int max_depth = kMaxJsonDepth);
// Why `text` is not one JSON value nested at most `max_depth` deep ("" when it is), found without
// building it: invalid UTF-8, lone surrogates and NaN are refused as parse_json refuses them.
std::string json_text_error(std::string_view text, int max_depth = kMaxJsonDepth);
// Nesting depth of a value, computed without recursion (dump() recurses and would overflow).
int json_depth(const nlohmann::json& value);
// Serialises with invalid UTF-8 replaced by U+FFFD, never throwing for bad text.
std::string dump_json(const nlohmann::json& value);

}  // namespace spr::detail
