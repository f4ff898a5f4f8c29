// Public API: the outcome of a run (RunResult) and its stable error codes (ErrorKind).
#pragma once

#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "spr/policy.hpp"

namespace spr {

// Stable codes for how a run ended; match on these, not on `error` text.
enum class ErrorKind {
  none,
  exception,
  syntax,
  timeout,
  memory,
  cpu_time,
  blocked_import,
  denied,  // a sandbox layer refused an operation (PermissionError from the audit hook or the OS)
  system_exit,
  result_too_large,
  worker_crashed,
  worker_unavailable,
  protocol_error,
  bad_input,
  cancelled,     // stopped by a cancel request (RunHandle::cancel, CancelToken::cancel)
  session_lost,  // the session's process ended (timeout, memory, crash, cancel, close, idle expiry)
  host_call_limit,  // over max_host_calls, or a host call's arguments or answer over max_host_call_kb
};
std::string to_string(ErrorKind);

// Files into and out of a run's directory: a relative name ("plot.png", "data/in.csv") -> its bytes.
using Files = std::map<std::string, std::string>;

struct RunResult {
  bool ok = false;
  json result;  // the `result` variable, as JSON (null when unset or on failure)
  std::string stdout_text;
  std::string stderr_text;
  bool timed_out = false;
  bool resource_exceeded = false;
  std::optional<std::string> error;  // one line; empty optional on success
  int exit_code = 0;                 // 0 ok, 1 error, 2 memory, 124 timeout, n for SystemExit(n)
  ErrorKind error_kind = ErrorKind::none;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  std::chrono::microseconds duration{0};  // as seen by the caller, queueing included
  Isolation isolation = Isolation::fork;
  // Session calls that asked for it: repr() of a trailing expression, as a REPL shows it (capped).
  std::optional<std::string> repr;
  // The regular files the run left in its directory that match RunOptions::collect, at most
  // max_files_kb in all; `files_left_out` names the matching ones that did not fit (never a silent loss).
  Files files;
  std::vector<std::string> files_left_out;

  // All fields; `stdout`/`stderr` keys as in the original, `duration_ms` as a number. `files` (name ->
  // text when it is valid UTF-8, else {"base64": ...}) and `files_left_out` only when not empty.
  json to_json() const;
};

}  // namespace spr
