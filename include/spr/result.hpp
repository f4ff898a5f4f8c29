// Public API: the outcome of a run (RunResult) and its stable error codes (ErrorKind).
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "spr/policy.hpp"

namespace spr {

/// Stable codes for how a run ended; match on these, not on `error` text.
enum class ErrorKind {
  none,
  exception,
  syntax,
  timeout,
  memory,
  cpu_time,
  blocked_import,
  denied,  ///< a sandbox layer refused an operation (PermissionError from the audit hook or the OS)
  system_exit,
  result_too_large,
  worker_crashed,
  worker_unavailable,
  protocol_error,
  bad_input,
  cancelled,     ///< stopped by a cancel request (RunHandle::cancel, CancelToken::cancel)
  session_lost,  ///< the session's process ended (timeout, memory, crash, cancel, close, idle expiry)
  host_call_limit,  ///< over max_host_calls, or a host call's arguments or answer over max_host_call_kb
};
std::string to_string(ErrorKind);

/// Files into and out of a run's directory: a relative name ("plot.png", "data/in.csv") -> its bytes.
using Files = std::map<std::string, std::string>;

/// How a run ended. Everything the code does is data here; nothing is thrown for it.
struct RunResult {
  bool ok = false;  ///< true when the code ran to its end without an exception
  json result;  ///< the `result` variable, as JSON (null when unset or on failure)
  std::string stdout_text;        ///< what the code printed, capped at max_output_kb
  std::string stderr_text;        ///< what the code wrote to stderr (tracebacks included), capped likewise
  bool timed_out = false;         ///< ended by timeout_seconds
  bool resource_exceeded = false;  ///< ended by a limit: time, memory or CPU
  std::optional<std::string> error;  ///< one line; empty optional on success
  int exit_code = 0;                 ///< 0 ok, 1 error, 2 memory, 124 timeout, n for SystemExit(n)
  ErrorKind error_kind = ErrorKind::none;  ///< how it ended, as a stable code
  bool stdout_truncated = false;           ///< stdout went past max_output_kb and was cut
  bool stderr_truncated = false;           ///< stderr went past max_output_kb and was cut
  /// The run's own time: from when a worker took it to its result.
  std::chrono::microseconds duration{0};
  /// Time the run waited before that: for a free (or, in process mode, a newly started) worker, behind
  /// earlier submitted runs, or behind the session's earlier calls. duration + queued is what the caller waited.
  std::chrono::microseconds queued{0};
  Isolation isolation = Isolation::fork;  ///< the mode the run had
  /// Session calls that asked for it: repr() of a trailing expression, as a REPL shows it (capped).
  std::optional<std::string> repr;
  /// The regular files the run left in its directory that match RunOptions::collect, at most
  /// max_files_kb in all.
  Files files;
  std::vector<std::string> files_left_out;  ///< the matching files that did not fit (never a silent loss)
  /// Some matching files are in neither `files` nor `files_left_out`: more than 256 of either, a name that
  /// is not UTF-8 or longer than 512 bytes, a directory the collector could not read, or a run directory of
  /// more than 65,536 entries.
  bool files_truncated = false;

  /// All fields; `stdout`/`stderr` keys as in the original, `duration_ms` and `queued_ms` as numbers. `files`
  /// (name -> text when it is valid UTF-8, else {"base64": ...}) and `files_left_out` only when not empty,
  /// `files_truncated` only when true.
  json to_json() const;
};

}  // namespace spr
