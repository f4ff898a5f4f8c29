// Public API: streamed output, cancellation and per-call options of a run or a session call.
#pragma once

#include <cstdint>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "spr/host.hpp"
#include "spr/result.hpp"

namespace spr {

enum class OutputStream { out, err };
std::string to_string(OutputStream);  ///< "stdout", "stderr"

/// Receives output while the code runs: chunks of one stream arrive in order, never split inside a
/// UTF-8 character, and concatenate to the result's (capped) stdout / stderr. Called on the thread
/// that waits for the run; it should return quickly.
using OutputCallback = std::function<void(OutputStream, const std::string& data)>;

namespace detail {
struct CancelState;
}

/// Shared handle to stop one run or session call, from any thread. Copies share the same state.
class CancelToken {
 public:
  CancelToken();
  /// Stops the run: a queued one never starts; a running one has its process killed (the pool
  /// replaces the worker; a session ends). The run answers error_kind `cancelled`. True the first time.
  bool cancel();
  /// Whether cancel() was called on this token or a copy.
  bool cancelled() const;
  /// The shared state (the library's own use).
  const std::shared_ptr<detail::CancelState>& state() const { return state_; }

 private:
  std::shared_ptr<detail::CancelState> state_;
};

/// Per-run options of Runner::run, Runner::submit and the Session calls.
struct RunOptions {
  OutputCallback on_output;  ///< empty: output only in the result
  CancelToken cancel;        ///< keep a copy to cancel the run
  std::string stdin_text;    ///< what sys.stdin and input() read (at most max_stdin_kb); empty: EOF
  /// input_data as JSON text; when not empty it is what the run gets and the input_data argument is
  /// ignored. It is checked (one JSON value, UTF-8, at most 512 levels deep; else bad_input) without being
  /// built into a tree, and the run decodes it with CPython's own JSON scanner: the fast way for large inputs.
  std::string input_json;
  /// Written into the run's private directory (its working directory) before its code starts. Names are
  /// relative paths inside it: no "..", no absolute path, no empty component, no NUL (else bad_input).
  Files files;
  /// Glob patterns (fnmatch, '*' stays within one directory: "*.png", "out/*.csv"): the regular files
  /// the run leaves in its directory that match come back in RunResult::files. Either field gives the
  /// run its directory, as the policy's scratch_dir does (a ceiling must allow scratch_dir). A session
  /// call refuses both (bad_input): it has no run directory of its own.
  std::vector<std::string> collect;
  /// Host functions of this run (or session call) besides the runner's; a name in both takes this one.
  HostFunctions functions;
  // Session calls only (a one-off run takes all of these from its policy):
  bool want_repr = false;                      ///< session calls: fill RunResult::repr from a trailing expression
  std::optional<double> timeout_seconds;       ///< session calls: this call's timeout instead of the session's
  std::optional<std::int64_t> max_output_kb;   ///< session calls: this call's output cap instead of the session's
  std::optional<std::int64_t> max_result_kb;   ///< session calls: this call's result cap instead of the session's
};

/// What submit() returns: a future of the result that can also cancel the run. A cancelled run's
/// future is ready at once with error_kind `cancelled`.
class RunHandle : public std::future<RunResult> {
 public:
  RunHandle() = default;
  /// The future of a run and the token that cancels it.
  RunHandle(std::future<RunResult> f, CancelToken token)
      : std::future<RunResult>(std::move(f)), token_(std::move(token)) {}
  /// Cancels the run (CancelToken::cancel); true the first time.
  bool cancel() { return token_.cancel(); }
  /// The run's cancel token.
  const CancelToken& token() const { return token_; }

 private:
  CancelToken token_;
};

}  // namespace spr
