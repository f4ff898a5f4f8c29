// The one place the deadlines of a run (from its timeout and the kill grace) and the size caps of its
// reply are computed, for both sides: the supervisor and the fork parent.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>

#include "common/frame.hpp"
#include "common/run_files.hpp"
#include "spr/policy.hpp"

namespace spr::detail {

// The grace a worker uses when a request names no kill time (RunnerOptions::kill_grace_seconds' default).
constexpr double kDefaultGraceSeconds = 0.25;
// Added to every supervisor wait: the reply's own way back under load.
constexpr double kReplySlackSeconds = 0.05;
// CPU a run may use past cpu_time_seconds, by the measure of its supervisor or fork parent, and still succeed:
// the engine's own timer stops it at the limit, and its reply and teardown take a moment more.
constexpr double kCpuOverrunSlackSeconds = 0.05;

// The original waits max(1, timeout) seconds: a timeout of 0 runs with 1 (its error says "after 1s").
inline double floored_timeout(double timeout_seconds) { return timeout_seconds == 0 ? 1.0 : timeout_seconds; }

// Seconds as a duration of the steady clock every wait and deadline of the supervisor uses.
inline std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

// When a fork worker kills the run's process, counted from the request: the engine's own timer
// fires at the timeout; the grace lets it report (partial output, a clean timeout) first.
inline double kill_after(double timeout_seconds, double grace_seconds) {
  return timeout_seconds + grace_seconds;
}

// How much longer than the timeout the supervisor waits for a reply. Fork mode: the worker kills its
// child at kill_after() and needs one more grace for its own reply.
inline double reply_slack(double grace_seconds, Isolation isolation) {
  return grace_seconds * (isolation == Isolation::fork ? 2 : 1) + kReplySlackSeconds;
}

// A reply's `error` is one line, cut to this by whoever writes it (the engine, a fork child).
constexpr std::uint64_t kMaxReplyErrorBytes = 64u << 10;
// "..." after a repr the engine cut to max_result_kb.
constexpr std::uint64_t kReprEllipsisBytes = 3;
// What no cap counts: the other fields' names and values, the id, the flags.
constexpr std::uint64_t kReplyRestBytes = 64u << 10;

// The largest frame a worker may honestly send for one run, checked before a byte of it is allocated.
// JSON escaping grows text at most six-fold (\u00XX); each field is cut to its cap before it is encoded:
// stdout and stderr (output_kb each), the error line, `result` (result_kb), `repr` when the request asked
// for one (a session's call: cut to result_kb too), the files (files_kb) and their names. A run with host
// functions (host_call_kb > 0) may send call frames too, whose arguments are cut to host_call_kb.
// The supervisor checks every frame of a worker against it; a fork parent every frame of its child,
// which never serves a session (repr false).
inline std::uint32_t reply_frame_cap(std::uint64_t output_kb, std::uint64_t result_kb, std::uint64_t files_kb,
                                     bool repr, std::uint64_t host_call_kb) {
  const std::uint64_t out = output_kb << 10, res = result_kb << 10, files = files_kb << 10;
  const std::uint64_t reply = 6 * (2 * out + kMaxReplyErrorBytes + res + (repr ? res + kReprEllipsisBytes : 0) +
                                   files + run_files::kNamesBytes) +
                              kReplyRestBytes;
  const std::uint64_t call = host_call_kb > 0 ? (host_call_kb << 10) + kReplyRestBytes : 0;
  return static_cast<std::uint32_t>(std::min<std::uint64_t>(std::max(reply, call), kMaxFrameBytes));
}

}  // namespace spr::detail
