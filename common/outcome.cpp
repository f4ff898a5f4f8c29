// The runner's own outcomes: each failed run's text, kind and exit code, spelled once.
#include "common/outcome.hpp"

#include <algorithm>
#include <cstdio>
#include <utility>

#include <cstdlib>

namespace spr::outcome {

RunResult failure(ErrorKind kind, std::string error, int exit_code) {
  RunResult r;
  r.ok = false;
  r.error = std::move(error);
  r.error_kind = kind;
  r.exit_code = exit_code;
  return r;
}

RunResult timeout(double timeout_seconds) {
  RunResult r = failure(ErrorKind::timeout, "Execution timed out after " + detail::format_seconds(timeout_seconds) + "s", 124);
  r.timed_out = true;
  return r;
}

RunResult cpu_time(double cpu_time_seconds) {
  RunResult r =
      failure(ErrorKind::cpu_time, "CPU time limit exceeded after " + detail::format_seconds(cpu_time_seconds) + "s", 124);
  r.resource_exceeded = true;
  return r;
}

RunResult memory() {
  RunResult r = failure(ErrorKind::memory, "Memory limit exceeded", 2);
  r.resource_exceeded = true;
  return r;
}

RunResult no_output_buffer() {
  RunResult r = failure(ErrorKind::memory, "cannot allocate the output buffer", 2);
  r.resource_exceeded = true;
  return r;
}

RunResult result_too_large(long long max_result_kb) {
  return failure(ErrorKind::result_too_large,
                 "Result too large: its JSON exceeds max_result_kb (" + std::to_string(max_result_kb) + " KB)");
}

RunResult result_unencodable(const std::string& why) {
  return failure(ErrorKind::result_too_large, "Result cannot be returned: " + why);
}

RunResult host_call_limit(const std::string& why) {
  return failure(ErrorKind::host_call_limit, "Host call limit: " + why);
}

std::string host_calls_exceeded(long long max_host_calls) {
  return "more than max_host_calls (" + std::to_string(max_host_calls) + ") calls";
}

std::string host_call_too_large(const std::string& what, long long max_host_call_kb) {
  return "a call's " + what + " exceed max_host_call_kb (" + std::to_string(max_host_call_kb) + " KB)";
}

RunResult bad_request(const std::string& why) { return failure(ErrorKind::bad_input, "bad request: " + why); }

RunResult stdin_too_large(std::size_t bytes, long long max_stdin_kb) {
  return failure(ErrorKind::bad_input, "stdin is " + std::to_string(bytes) + " bytes, more than max_stdin_kb allows (" +
                                           std::to_string(max_stdin_kb) + " KB)");
}

RunResult cancelled() { return failure(ErrorKind::cancelled, "Run cancelled"); }

RunResult session_lost(const std::string& why) { return failure(ErrorKind::session_lost, "Session lost: " + why); }

RunResult bad_input(const std::string& why) { return failure(ErrorKind::bad_input, "bad input: " + why); }

RunResult bad_files(const std::string& why) { return failure(ErrorKind::bad_input, "bad files: " + why); }

RunResult worker_stalled(double waited_seconds) {
  return failure(ErrorKind::worker_crashed, "worker did not take the request within " +
                                                detail::format_seconds(waited_seconds) + "s; it was killed and replaced");
}

RunResult ended_with_worker() {
  return failure(ErrorKind::worker_unavailable,
                 "the run's worker was ended while it ran (another run in it went over a limit, was cancelled or "
                 "crashed it); the run did not finish and may be run again");
}

RunResult setup_failed(const std::string& what, const std::string& why) {
  return failure(ErrorKind::worker_crashed, "cannot create the run's " + what + ": " + why);
}

}  // namespace spr::outcome

namespace spr::detail {
std::size_t utf8_sequence(std::string_view s, std::size_t i) {
  const auto b = [&](std::size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  std::size_t n;
  unsigned char lo = 0x80, hi = 0xBF;
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;
    if (c == 0xED) hi = 0x9F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;
    if (c == 0xF4) hi = 0x8F;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (std::size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

std::string utf8_within(std::string_view s, std::size_t max_bytes, bool& cut) {
  // Two passes: the size first, so the text is written into one allocation (a run's output is left in no
  // buffer freed on the way: the fork parent wipes its copy).
  const auto walk = [&](auto&& put) {
    std::size_t size = 0;
    for (std::size_t i = 0; i < s.size();) {
      const std::size_t n = utf8_sequence(s, i);
      const std::size_t width = n == 0 ? 3 : n;
      if (size + width > max_bytes) return std::make_pair(size, true);
      put(n == 0 ? std::string_view("\xef\xbf\xbd") : s.substr(i, n));
      size += width;
      i += n == 0 ? 1 : n;
    }
    return std::make_pair(size, false);
  };
  const auto [size, shorter] = walk([](std::string_view) {});
  std::string out;
  out.reserve(size);
  walk([&](std::string_view piece) { out.append(piece); });
  cut = cut || shorter;
  return out;
}
}  // namespace spr::detail

namespace spr::outcome {

std::optional<RunResult> non_utf8_code(const std::string& code) {
  std::size_t line = 1;
  for (std::size_t i = 0; i < code.size();) {
    const std::size_t n = detail::utf8_sequence(code, i);
    if (n == 0) {
      char byte[8];
      std::snprintf(byte, sizeof byte, "\\x%02x", static_cast<unsigned char>(code[i]));
      return failure(ErrorKind::syntax, std::string("SyntaxError: Non-UTF-8 code starting with '") + byte +
                                            "' on line " + std::to_string(line) + ", but no encoding declared");
    }
    if (code[i] == '\n') ++line;
    i += n;
  }
  return std::nullopt;
}

}  // namespace spr::outcome

namespace spr::detail {
bool valid_utf8(const std::string& s) {
  for (std::size_t i = 0; i < s.size();) {
    const std::size_t n = utf8_sequence(s, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string format_seconds(double s) {
  char buf[400];
  // Plain decimals, never an exponent ("20", not "2e+01"): the shortest that round-trips.
  for (int decimals = 0; decimals <= 17; ++decimals) {
    std::snprintf(buf, sizeof buf, "%.*f", decimals, s);
    if (std::strtod(buf, nullptr) == s) return buf;
  }
  std::snprintf(buf, sizeof buf, "%.17g", s);  // below 1e-17: no decimal spelling round-trips
  return buf;
}
}  // namespace spr::detail
