// `serve` with sessions, streamed output, cancel and close_session, through the real CLI binary.
#include <doctest/doctest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"

using nlohmann::json;
using spr_test::ProcResult;

namespace {

ProcResult serve(const std::string& mode, const std::string& input) {
  return spr_test::run_program({SPR_TEST_CLI, "serve", "--isolation", mode}, input, 120,
                               {std::string("SPR_WORKER=") + SPR_TEST_WORKER, "PATH=/usr/bin:/bin"});
}

std::vector<json> lines(const ProcResult& p) {
  std::vector<json> out;
  std::istringstream in(p.out);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// The result line of each request id (lines without "stream", "cancel" or "close_session").
std::map<std::string, json> results(const std::vector<json>& ls) {
  std::map<std::string, json> out;
  for (const auto& j : ls)
    if (!j.contains("stream") && !j.contains("cancel") && !j.contains("close_session")) out[j["id"].dump()] = j;
  return out;
}

}  // namespace

TEST_CASE("serve: a named session keeps state, streams, is closed by close_session and reopened fresh") {
  const std::string input =
      "{\"id\": 1, \"session\": \"s\", \"code\": \"x = 41\"}\n"
      "{\"id\": 2, \"session\": \"s\", \"code\": \"x += 1\\nprint('x is', x)\\nx\", \"repr\": true, \"stream\": true}\n"
      "{\"id\": 3, \"session\": \"other\", \"code\": \"result = 'x' in globals()\"}\n"
      "{\"id\": 4, \"close_session\": \"s\"}\n"
      "{\"id\": 5, \"session\": \"s\", \"code\": \"result = 'x' in globals()\"}\n"
      "{\"id\": 6, \"close_session\": \"never-opened\"}\n";
  const ProcResult p = serve("fork", input);
  INFO(p.out, p.err);
  CHECK(p.exit_code == 0);
  const auto ls = lines(p);
  auto rs = results(ls);
  REQUIRE(rs.count("2"));
  CHECK(rs["2"]["ok"] == true);
  CHECK(rs["2"]["repr"] == "42");
  CHECK(rs["3"]["result"] == false);
  CHECK(rs["5"]["ok"] == true);
  CHECK(rs["5"]["result"] == false);  // a new session under the old name
  std::string streamed;
  bool stream_before_result = false, result_seen = false;
  for (const auto& j : ls) {
    if (j["id"] == 2 && !j.contains("stream")) result_seen = true;
    if (j["id"] == 2 && j.contains("stream")) {
      CHECK(j["stream"] == "stdout");
      streamed += j["data"].get<std::string>();
      stream_before_result = !result_seen;
    }
    if (j.contains("close_session")) CHECK(j["ok"] == (j["close_session"] == "s"));
  }
  CHECK(stream_before_result);
  CHECK(streamed == rs["2"]["stdout"]);
  CHECK(streamed == "x is 42\n");
}

TEST_CASE("serve: cancel answers a queued or running request with cancelled, in every mode") {
  for (const char* mode : {"namespace", "subinterpreter", "fork", "process"}) {
    CAPTURE(mode);
    const std::string input =
        "{\"id\": \"spin\", \"code\": \"while True: pass\"}\n"  // the operator's 5 s: a ceiling
        "{\"id\": \"c\", \"cancel\": \"spin\"}\n"
        "{\"id\": \"after\", \"code\": \"result = 1\"}\n"
        "{\"id\": \"c2\", \"cancel\": \"no-such-id\"}\n";
    const ProcResult p = serve(mode, input);
    INFO(p.out, p.err);
    CHECK(p.exit_code == 0);
    CHECK_FALSE(p.timed_out);
    const auto ls = lines(p);
    auto rs = results(ls);
    REQUIRE(rs.count("\"spin\""));
    CHECK(rs["\"spin\""]["error_kind"] == "cancelled");
    CHECK(rs["\"after\""]["ok"] == true);
    for (const auto& j : ls)
      if (j.contains("cancel")) CHECK(j["ok"] == (j["cancel"] == "spin"));
  }
}
