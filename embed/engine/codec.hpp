// Conversion between JSON values and Python objects, with depth and size limits.
#pragma once

#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "py.hpp"

namespace spr::embed::codec {

// New reference, or nullptr with a Python error set.
PyObject* to_python(const nlohmann::json& value);

// Why an encoding stopped; the engine turns each into its outcome (common/outcome.hpp).
enum class Status {
  ok,
  too_large,  // the JSON text would exceed max_bytes
  too_deep,   // nested deeper than max_depth
  cyclic,     // the value contains itself (a list appended to itself)
};
struct Encoded {
  nlohmann::json value;  // null unless status is ok
  Status status = Status::ok;
};
inline constexpr int kMaxDepth = 500;
// JSON form of `obj`: tuples become lists, what JSON cannot hold becomes str(value).
// Stops early once the text would exceed `max_bytes`.
Encoded from_python(PyObject* obj, std::uint64_t max_bytes, int max_depth = kMaxDepth);

}  // namespace spr::embed::codec
