// What a JSON text (a serve or batch line, an HTTP body, a worker reply) costs once parsed, measured with a SAX pass before any value is built.
#pragma once

#include <cstddef>
#include <string_view>

#include <nlohmann/json.hpp>

namespace spr::detail {

struct RequestCost {
  std::size_t bytes = 0;    // estimated heap of the parsed value (nlohmann's tree), up to where the pass stopped
  bool over = false;        // the pass stopped at `budget`: the line is refused unparsed
  bool malformed = false;   // not JSON (the real parse says where)
  nlohmann::json id;        // the top-level "id" when it is a scalar seen before the pass stopped, else null
};

// A parsed value takes at most this many bytes per byte of its line: `[]` (3 bytes with its comma)
// becomes a 16-byte value and a vector; an object member a map node and its key.
constexpr std::size_t kMaxCostPerByte = 32;
// What a request's parsed form may take: kCostFactor times its line plus kCostFloorBytes. A 10 MiB line
// of `[],` (about 190 MiB parsed) is over it; 10 MiB of numbers or text is not.
constexpr std::size_t kCostFactor = 8;
constexpr std::size_t kCostFloorBytes = 16u << 20;

inline std::size_t cost_budget(std::size_t line_bytes) { return kCostFactor * line_bytes + kCostFloorBytes; }

// Walks `line` once without building anything, adding up what each value will cost, and stops as soon
// as the sum passes `budget`.
RequestCost measure_request(std::string_view line, std::size_t budget);

// "" when `text` may be parsed (its tree would take at most `budget` bytes), else why not, for an error
// message ("its N bytes would take more than M MiB once parsed ..."). Texts too short to pass the budget
// are not walked.
std::string parse_cost_refusal(std::string_view text, std::size_t budget);

}  // namespace spr::detail
