// Every failed run the runner reports itself, built in one place: its error text, kind and exit code.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "spr/result.hpp"

namespace spr::outcome {

// A failed run of `kind` with a one-line `error` (the generic form the named ones below build on).
RunResult failure(ErrorKind kind, std::string error, int exit_code = 1);

// Over its limits. Texts and exit codes are the original's (tests and clients match them).
RunResult timeout(double timeout_seconds);  // "Execution timed out after 5s", 124, timed_out
RunResult cpu_time(double cpu_time_seconds);  // "CPU time limit exceeded after 2s", 124, resource_exceeded
RunResult memory();  // "Memory limit exceeded", 2, resource_exceeded
RunResult no_output_buffer();  // the run's output buffer could not be allocated (memory, 2)
RunResult result_too_large(long long max_result_kb);  // the result's JSON is over max_result_kb
RunResult result_unencodable(const std::string& why);  // the result has no JSON form (nested too deep)
// Host functions: the run made more than max_host_calls calls, or one call's arguments or answer
// were over max_host_call_kb. `why` names which ("Host call limit: <why>").
RunResult host_call_limit(const std::string& why);
std::string host_calls_exceeded(long long max_host_calls);  // the `why` of the first kind
std::string host_call_too_large(const std::string& what, long long max_host_call_kb);  // "arguments"/"answer"

// Refused before any code ran.
RunResult bad_request(const std::string& why);  // the worker could not read the request
RunResult stdin_too_large(std::size_t bytes, long long max_stdin_kb);  // stdin over its cap
RunResult bad_input(const std::string& why);    // the run's input could not become its globals
RunResult bad_files(const std::string& why);    // a request's files or collect patterns are refused
// The SyntaxError CPython gives a source file that is not valid UTF-8; nullopt when `code` is valid.
std::optional<RunResult> non_utf8_code(const std::string& code);

// Ended from outside: a cancel, or the session the call ran in ended ("Session lost: <why>").
RunResult cancelled();
RunResult session_lost(const std::string& why);

// The worker did not take its request within the run's deadline (stopped, or not reading): it was
// killed and is replaced. worker_crashed.
RunResult worker_stalled(double waited_seconds);
// A worker with run threads (subinterpreter_threads) was ended while this run was in flight in it, by another
// run's limit, a cancel or a fault of the worker: the run did not finish and is not re-run here (it may have
// called host functions or streamed output). worker_unavailable: running it again is safe.
RunResult ended_with_worker();

// The engine could not set the run up (its scratch directory, its streams): worker_crashed.
RunResult setup_failed(const std::string& what, const std::string& why);

}  // namespace spr::outcome

namespace spr::detail {
// "5", "1.9", "0.25": the shortest spelling that round-trips, as the original prints timeouts.
std::string format_seconds(double s);
// True when `s` is valid UTF-8 as CPython's decoder has it (no surrogates, no overlong forms).
bool valid_utf8(const std::string& s);
// Length of the valid UTF-8 sequence at s[i], or 0 (overlong forms, surrogates and values beyond
// U+10FFFF are invalid, as CPython's decoder has them).
std::size_t utf8_sequence(std::string_view s, std::size_t i);
// `s` as valid UTF-8 of at most `max_bytes`: each byte that starts no valid sequence becomes U+FFFD (3 bytes, as
// CPython's "replace" and every JSON writer here spell it), and the text is cut at a character boundary where
// the next character would pass `max_bytes`. `cut` is set when something was left out. A run's output is
// measured against its cap in these bytes: raw bytes under the cap could triple once replaced.
std::string utf8_within(std::string_view s, std::size_t max_bytes, bool& cut);
}  // namespace spr::detail
