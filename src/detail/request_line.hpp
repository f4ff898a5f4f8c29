// One JSON request line as serve and batch read it: bounded reading, parsing, the policy ceiling, the answer line.
#pragma once

#include <cstddef>
#include <istream>
#include <optional>
#include <string>
#include <string_view>

#include "spr/policy.hpp"
#include "spr/result.hpp"
#include "spr/run_control.hpp"

namespace spr::detail {

// The longest request line kept: one request's code, input and stdin. A longer line is read to its end
// without being held, and answered as malformed.
constexpr std::size_t kMaxRequestLineBytes = 64u << 20;

// One line of `in` into `line`, without the newline; false at the end of input. `too_long`: the line
// went past kMaxRequestLineBytes and only its first kMaxRequestLineBytes bytes are in `line`.
bool read_request_line(std::istream& in, std::string& line, bool& too_long);

// True for a line of spaces, tabs and carriage returns only (skipped, never a request).
bool blank_line(std::string_view line);

// The line as a JSON object, or nullopt with `error` set ("malformed request line: ...").
std::optional<json> parse_request_line(std::string_view line, std::string& error);

// Why a request's "id" would not come back as it was sent ("" when it would): a number JSON gives as an
// integer past 64 bits, or any number of magnitude 2^53 or more, is read as a double, which two different
// ids may share (18446744073709551617 and ...618 both became 1.8446744073709552e+19).
std::string id_error(const json& id);

// A request's "policy" field applied on top of `base` into `out`. "" on success, else why it is refused:
// an invalid policy, or (when `ceiling`) one that loosens `base` in some field.
std::string request_policy(const json& overrides, const RunnerPolicy& base, bool ceiling, RunnerPolicy& out);

// A request's "files" (name -> text | {"base64": ...}) and "collect" (glob patterns) into `options`.
// "" on success (either may be absent or null), else why they are refused.
std::string request_files(const json& req, RunOptions& options);

// The answer line to request `id`: every field of `r`, then `extra`'s fields, then "id"; ends with '\n'.
std::string result_line(const json& id, const RunResult& r, const json& extra = json::object());

}  // namespace spr::detail
