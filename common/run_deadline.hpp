// The one place the deadlines of a run are computed from its timeout and the kill grace, for both sides.
#pragma once

#include <chrono>

#include "spr/policy.hpp"

namespace spr::detail {

// The grace a worker uses when a request names no kill time (RunnerOptions::kill_grace_seconds' default).
constexpr double kDefaultGraceSeconds = 0.25;
// Added to every supervisor wait: the reply's own way back under load.
constexpr double kReplySlackSeconds = 0.05;

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

}  // namespace spr::detail
