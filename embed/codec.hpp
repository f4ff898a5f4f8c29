// Conversion between JSON values and Python objects, with depth and size limits.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "py.hpp"

namespace spr::embed::codec {

// New reference, or nullptr with a Python error set.
PyObject* to_python(const nlohmann::json& value);

struct Encoded {
  nlohmann::json value;
  std::string error;  // non-empty: too large or too deep; `value` is null
};
// JSON form of `obj`: tuples become lists, what JSON cannot hold becomes str(value).
// Stops early once the text would exceed `max_bytes`.
// Encoded::error when the value contains itself (a list appended to itself).
inline constexpr const char* kCyclic = "the value contains itself";
Encoded from_python(PyObject* obj, std::uint64_t max_bytes, int max_depth = 500);

}  // namespace spr::embed::codec
