// Reads JSON text in place, allocating nothing: the fork parent checks replies and picks request limits
// this way (no run's data is ever copied into its long-lived heap), and the supervisor checks a run's
// input_data text without building it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace spr::json_scan {

constexpr int kMaxDepth = 1024;  // above detail::kMaxJsonDepth: the child's parser is the one that refuses

// True when `text` is exactly one valid JSON value (surrounding whitespace allowed), nested at most
// kMaxDepth deep. UTF-8 is not checked here (the supervisor's parser does that).
bool valid(std::string_view text);

// Calls `f(key, value)` for every member of the object `object` (the text of a valid object), in
// order, duplicates included. `key` is the raw text between the quotes (escapes not decoded).
// Returns false when `object` is not an object.
template <class F>
bool for_each_member(std::string_view object, F&& f);

// The raw text of the last member named `key` of `object` (keys compared without decoding), or nothing.
std::optional<std::string_view> member(std::string_view object, std::string_view key);

// Whether `object` is an object of at most kMaxPlainMembers members whose names are written without
// escapes and none twice. Every protocol message our encoders write is; a forged one must be, or a raw
// scan (member(), the checks above) and a parser that decodes names and keeps the last duplicate
// would each see another value.
constexpr std::size_t kMaxPlainMembers = 64;
bool plain_members(std::string_view object);

// Bytes of the UTF-8 text a JSON string token (quotes included) decodes to.
std::uint64_t decoded_size(std::string_view string_token);

// What codec::from_python charges for the value whose JSON text is `value`, or less: decoded string
// bytes, literal text, container punctuation, and for a number the engine's charge (20 for an integer,
// 24 for a float) or its text when longer. An honest result never measures above its max_result_kb budget.
std::uint64_t result_charge(std::string_view value);

// A number member's value, or nothing when absent or not a number.
std::optional<double> number(std::string_view value);

// In the text of a valid value: whether every \u escape of a surrogate is a high one followed by a low
// one (a lone surrogate is no UTF-8 text; nlohmann's parser refuses it).
bool surrogates_paired(std::string_view text);

// A request id as our encoder writes it (decimal digits that fit 64 bits), or nothing.
std::optional<std::uint64_t> id_number(std::string_view value);

// Internal: the index just past the value starting at `i` (after whitespace), or npos.
std::size_t skip_value(std::string_view s, std::size_t i);
std::size_t skip_ws(std::string_view s, std::size_t i);

template <class F>
bool for_each_member(std::string_view o, F&& f) {
  std::size_t i = skip_ws(o, 0);
  if (i >= o.size() || o[i] != '{') return false;
  i = skip_ws(o, i + 1);
  if (i < o.size() && o[i] == '}') return true;
  while (i < o.size()) {
    const std::size_t key_end = skip_value(o, i);
    if (key_end == std::string_view::npos || o[i] != '"') return false;
    const std::string_view key = o.substr(i + 1, key_end - i - 2);
    i = skip_ws(o, key_end);
    if (i >= o.size() || o[i] != ':') return false;
    const std::size_t v = skip_ws(o, i + 1);
    const std::size_t v_end = skip_value(o, v);
    if (v_end == std::string_view::npos) return false;
    f(key, o.substr(v, v_end - v));
    i = skip_ws(o, v_end);
    if (i < o.size() && o[i] == '}') return true;
    if (i >= o.size() || o[i] != ',') return false;
    i = skip_ws(o, i + 1);
  }
  return false;
}

}  // namespace spr::json_scan
