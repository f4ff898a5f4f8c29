// One JSON request line as serve and batch read it: bounded reading, parsing, the policy ceiling, the answer line.
#include "detail/request_line.hpp"

#include <cmath>

#include "common/frame.hpp"
#include "common/run_files.hpp"
#include "detail/json_cost.hpp"

namespace spr::detail {

bool read_request_line(std::istream& in, std::string& line, bool& too_long) {
  line.clear();
  too_long = false;
  std::streambuf* sb = in.rdbuf();
  for (;;) {
    const int c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) return !line.empty() || too_long;
    if (c == '\n') return true;
    if (line.size() < kMaxRequestLineBytes)
      line.push_back(static_cast<char>(c));
    else
      too_long = true;
  }
}

bool blank_line(std::string_view line) {
  return line.find_first_not_of(" \t\r") == std::string_view::npos;
}

std::string id_error(const json& id) {
  constexpr double kExact = 9007199254740992.0;  // 2^53: every integer up to it is a distinct double
  if (id.is_number_float() && !(std::fabs(id.get<double>()) < kExact))
    return "an 'id' that is a number must be an integer of at most 64 bits or under 2^53 in magnitude (this one "
           "would not come back as sent): send it as a string";
  return std::string();
}

std::optional<json> parse_request_line(std::string_view line, std::string& error) {
  // A line's tree is bounded before it is built, for every caller (batch cases, serve, HTTP bodies).
  if (std::string why = parse_cost_refusal(line, cost_budget(line.size())); !why.empty()) {
    error = "request too large once parsed: " + why;
    return std::nullopt;
  }
  json req;
  try {
    req = parse_json(line);
  } catch (const std::exception& e) {
    error = std::string("malformed request line: ") + e.what();
    return std::nullopt;
  }
  if (!req.is_object()) {
    error = "malformed request line: expected a JSON object";
    return std::nullopt;
  }
  return req;
}

std::string request_policy(const json& overrides, const RunnerPolicy& base, bool ceiling, RunnerPolicy& out) {
  try {
    out = RunnerPolicy::from_json(overrides, base);
  } catch (const PolicyError& e) {
    return std::string("invalid policy: ") + e.what();
  }
  if (ceiling)
    if (std::string why = out.looser_than(base); !why.empty()) return "policy loosens the operator's: " + why;
  return {};
}

std::string request_files(const json& req, RunOptions& options) {
  if (auto f = req.find("files"); f != req.end() && !f->is_null()) {
    try {
      options.files = run_files::from_json(*f, "files");
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
  }
  if (auto c = req.find("collect"); c != req.end() && !c->is_null()) {
    if (!c->is_array()) return "'collect' must be a list of glob patterns";
    for (const auto& p : *c) {
      if (!p.is_string()) return "'collect' must hold strings";
      options.collect.push_back(p.get<std::string>());
    }
  }
  return {};
}

std::string result_line(const json& id, const RunResult& r, const json& extra) {
  json body = r.to_json();
  for (auto it = extra.begin(); it != extra.end(); ++it) body[it.key()] = it.value();
  body["id"] = id;
  std::string line = dump_json(body);
  line.push_back('\n');
  return line;
}

}  // namespace spr::detail
