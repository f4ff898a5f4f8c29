// Public API: a Session, whose calls share one Python namespace in a process of its own.
#pragma once

#include <memory>
#include <string>

#include "spr/policy.hpp"
#include "spr/result.hpp"
#include "spr/run_control.hpp"

namespace spr {

namespace detail {
struct SessionState;
}

/// Opened by Runner::open_session. Variables, functions and imported modules persist from call to
/// call. A call that raises leaves the session usable; a timeout, memory or CPU overrun, crash or
/// cancel ends it: that call and every later one answer error_kind `session_lost`. Calls on one
/// session run one at a time. Closed by close(), by the destructor, after the runner's idle
/// time-to-live, or when the Runner shuts down; a Session must not outlive its Runner's scope of use.
class Session {
 public:
  Session() = default;
  ~Session();  ///< closes
  Session(Session&&) noexcept;             ///< takes the other's session; it is left empty
  Session& operator=(Session&&) noexcept;  ///< closes this one's session, then takes the other's
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  /// Thread-safe; never throws for what the code does.
  RunResult run(const std::string& code, const json& input_data = json::object(), const RunOptions& options = {});
  /// Queues a call after the session's earlier ones; the handle can cancel it (a running call ends the session).
  RunHandle submit(std::string code, json input_data = json::object(), RunOptions options = {});

  /// The namespace's names (dunder names left out) -> {"type": ..., "value": JSON} or, where JSON
  /// cannot hold the value, {"type": ..., "repr": "<...>"} built without calling any user code.
  /// Null once the session has ended.
  json variables();

  /// Ends the session and kills its process. Idempotent.
  void close();
  /// False once closed or lost.
  bool alive() const;
  /// The session's process id, for monitoring from outside; -1 once it has ended.
  int pid() const;
  /// The policy the session was opened with.
  const RunnerPolicy& policy() const;

 private:
  friend class Runner;
  explicit Session(std::shared_ptr<detail::SessionState> s) : state_(std::move(s)) {}
  std::shared_ptr<detail::SessionState> state_;
};

}  // namespace spr
