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
  while (numbers.size() < (4u << 20)) numbers += "1,";
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

TEST_CASE("request cost: malformed JSON is reported, not counted as over") {
  const auto c = measure_request("{\"id\": 1, \"code\": ", 1 << 20);
  CHECK(c.malformed);
  CHECK_FALSE(c.over);
}
