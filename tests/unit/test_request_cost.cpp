// Unit tests of serve's request cost pass: dense lines are stopped early, ordinary ones are measured.
#include <doctest/doctest.h>

#include <string>

#include "detail/json_cost.hpp"

using spr::detail::cost_budget;
using spr::detail::measure_request;

TEST_CASE("request cost: a dense line of '[],' passes its budget and the pass stops there, id kept") {
  std::string line = "{\"id\": 7, \"code\": \"x\", \"input_data\": [";
  while (line.size() < (4u << 20)) line += "[],";
  line += "[]]}";
  const auto c = measure_request(line, cost_budget(line.size()));
  CHECK(c.over);
  CHECK_FALSE(c.malformed);
  CHECK(c.id == 7);
  CHECK(c.bytes > cost_budget(line.size()));
  CHECK(c.bytes < cost_budget(line.size()) + 1024);  // stopped at once
}

TEST_CASE("request cost: numbers and text of the same length are within the budget") {
  std::string numbers = "{\"id\": \"n\", \"code\": \"x\", \"input_data\": [";
  while (numbers.size() < (4u << 20)) numbers += "123456,";
  numbers += "1]}";
  auto c = measure_request(numbers, cost_budget(numbers.size()));
  CHECK_FALSE(c.over);
  CHECK(c.id == "n");
  const std::string text = "{\"code\": \"" + std::string(4u << 20, 'a') + "\"}";
  c = measure_request(text, cost_budget(text.size()));
  CHECK_FALSE(c.over);
  CHECK(c.bytes >= text.size() - 16);
  CHECK(c.id.is_null());
}

TEST_CASE("request cost: an array's elements count twice their size (its vector grows by doubling)") {
  // 4 MiB of `1,` is 2 M elements: 32 MiB of values, up to 64 MiB of vector; 16 MiB of it took 628 MB.
  std::string ones = "{\"id\": 1, \"code\": \"x\", \"input_data\": [";
  while (ones.size() < (4u << 20)) ones += "1,";
  ones += "1]}";
  CHECK(measure_request(ones, cost_budget(ones.size())).over);
  // The same values as an object's members are map nodes, counted as such.
  const auto c = measure_request("{\"a\": [1, 2, 3], \"b\": 1}", 1 << 20);
  CHECK(c.bytes == 2 * 64 + (16 + 48) + 3 * 32 + 16 + 16 + 48);
}

TEST_CASE("request cost: malformed JSON is reported, not counted as over") {
  const auto c = measure_request("{\"id\": 1, \"code\": ", 1 << 20);
  CHECK(c.malformed);
  CHECK_FALSE(c.over);
}
