// Files in and out of a run: which names and patterns are allowed, and their JSON form (text or base64).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "spr/result.hpp"

namespace spr::detail::run_files {

constexpr std::size_t kMaxFiles = 256;       // files in a request, files (and names left out) in a result
constexpr std::size_t kMaxPatterns = 64;     // collect patterns in a request
constexpr std::size_t kMaxNameBytes = 512;   // one name or pattern
constexpr std::size_t kMaxComponentBytes = 255;  // one path component (NAME_MAX)
constexpr std::size_t kMaxDepth = 16;        // components in a name or pattern
// The names of a result (files and files left out) with their JSON punctuation, at most.
constexpr std::size_t kNamesBytes = 2 * kMaxFiles * (kMaxNameBytes + 16);

// "" when `name` is a relative path inside the run directory, else why not. Refused: empty, absolute,
// NUL, an empty, "." or ".." component, too long or too deep. Nothing is resolved: the check is on text.
std::string check_name(std::string_view name);
// The same rules for a glob pattern (its components may hold *, ? and [...]).
std::string check_pattern(std::string_view pattern);
// "" when the request's files and patterns are all acceptable, else the first reason ("file 'x': ...").
std::string check_request(const Files& files, const std::vector<std::string>& collect, std::size_t max_total_bytes);
// True when `name` matches one of `patterns` (fnmatch with FNM_PATHNAME and FNM_PERIOD: '*' never crosses
// a '/' nor matches a component's leading '.').
bool matches(const std::vector<std::string>& patterns, const std::string& name);
// Components in the deepest pattern: a walk of the run directory never goes deeper.
std::size_t depth(const std::vector<std::string>& patterns);

// Writes each file under `dir_fd`, making the directories its name needs. Every component is opened
// relative to the one before with O_NOFOLLOW, so nothing is written through a link: a name is checked
// again here, as this side acts on it. `replace`: an existing file is overwritten (else it is an error).
// "" or why a file could not be written (`where` names the directory in the message); `err`, when given,
// receives the failed call's errno (EEXIST: a file was already there and `replace` was off).
std::string write_files(int dir_fd, const Files& files, bool replace, const std::string& where, int* err = nullptr);

// JSON form: name -> string when the bytes are valid UTF-8, else {"base64": "..."}.
json to_json(const Files& files);
// The inverse; throws std::invalid_argument naming what is wrong (a bad name, value or base64 text).
Files from_json(const json& j, std::string_view what);

std::string base64_encode(std::string_view bytes);
// False (and `out` unspecified) for anything but canonical padded base64.
bool base64_decode(std::string_view text, std::string& out);

}  // namespace spr::detail::run_files
