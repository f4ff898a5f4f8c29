// Unit tests of RunResult's JSON form, ErrorKind's stable names and the reply mapping of the wire protocol.
#include <doctest/doctest.h>

#include <set>
#include <string>

#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "spr/runner.hpp"

using spr::ErrorKind;
using spr::json;
using spr::RunResult;

namespace {

const ErrorKind kAllKinds[] = {
    ErrorKind::none,           ErrorKind::exception,   ErrorKind::syntax,         ErrorKind::timeout,
    ErrorKind::memory,         ErrorKind::cpu_time,    ErrorKind::blocked_import, ErrorKind::denied,
    ErrorKind::system_exit,    ErrorKind::result_too_large, ErrorKind::worker_crashed, ErrorKind::worker_unavailable,
    ErrorKind::protocol_error, ErrorKind::bad_input,     ErrorKind::cancelled,      ErrorKind::session_lost,
};

RunResult sample() {
  RunResult r;
  r.ok = false;
  r.result = json{{"a", {1, 2}}};
  r.stdout_text = "out\n";
  r.stderr_text = "err\n";
  r.timed_out = true;
  r.resource_exceeded = true;
  r.error = "Execution timed out after 0.3s";
  r.exit_code = 124;
  r.error_kind = ErrorKind::timeout;
  r.stdout_truncated = true;
  r.stderr_truncated = true;
  r.duration = std::chrono::microseconds(1500);
  r.queued = std::chrono::microseconds(250);
  r.isolation = spr::Isolation::process;
  return r;
}

}  // namespace

TEST_CASE("result: to_json has every field, with the original's key names") {
  const json j = sample().to_json();
  const std::set<std::string> expected = {"ok",        "result",       "stdout",           "stderr",
                                          "timed_out", "resource_exceeded", "error",        "exit_code",
                                          "error_kind", "stdout_truncated", "stderr_truncated", "duration_ms", "queued_ms",
                                          "isolation"};
  std::set<std::string> keys;
  for (auto it = j.begin(); it != j.end(); ++it) keys.insert(it.key());
  CHECK(keys == expected);
  CHECK(j["ok"] == false);
  CHECK(j["result"] == json{{"a", {1, 2}}});
  CHECK(j["stdout"] == "out\n");
  CHECK(j["stderr"] == "err\n");
  CHECK(j["timed_out"] == true);
  CHECK(j["resource_exceeded"] == true);
  CHECK(j["error"] == "Execution timed out after 0.3s");
  CHECK(j["exit_code"] == 124);
  CHECK(j["error_kind"] == "timeout");
  CHECK(j["stdout_truncated"] == true);
  CHECK(j["stderr_truncated"] == true);
  REQUIRE(j["duration_ms"].is_number());
  CHECK(j["duration_ms"].get<double>() == doctest::Approx(1.5));
  REQUIRE(j["queued_ms"].is_number());
  CHECK(j["queued_ms"].get<double>() == doctest::Approx(0.25));
  CHECK(j["isolation"] == "process");
}

TEST_CASE("result: a default result serialises error as null and kind as none") {
  RunResult r;
  r.ok = true;
  const json j = r.to_json();
  CHECK(j["error"].is_null());
  CHECK(j["result"].is_null());
  CHECK(j["error_kind"] == "none");
  CHECK(j["exit_code"] == 0);
  CHECK(j["isolation"] == "fork");
}

TEST_CASE("result: every ErrorKind name round-trips and names are distinct") {
  std::set<std::string> names;
  for (ErrorKind k : kAllKinds) {
    const std::string name = spr::to_string(k);
    CAPTURE(name);
    CHECK_FALSE(name.empty());
    CHECK(spr::protocol::error_kind_from_string(name) == k);
    names.insert(name);
  }
  CHECK(names.size() == std::size(kAllKinds));
  CHECK(spr::to_string(ErrorKind::blocked_import) == "blocked_import");
  CHECK(spr::to_string(ErrorKind::worker_crashed) == "worker_crashed");
  CHECK(spr::to_string(ErrorKind::result_too_large) == "result_too_large");
  CHECK(spr::protocol::error_kind_from_string("no such kind") == ErrorKind::protocol_error);
}

TEST_CASE("result: reply_from_result and result_from_reply are inverse") {
  const RunResult r = sample();
  const RunResult back = spr::protocol::result_from_reply(spr::protocol::reply_from_result(r));
  CHECK(back.ok == r.ok);
  CHECK(back.result == r.result);
  CHECK(back.stdout_text == r.stdout_text);
  CHECK(back.stderr_text == r.stderr_text);
  CHECK(back.timed_out == r.timed_out);
  CHECK(back.resource_exceeded == r.resource_exceeded);
  CHECK(back.error == r.error);
  CHECK(back.exit_code == r.exit_code);
  CHECK(back.error_kind == r.error_kind);
  CHECK(back.stdout_truncated == r.stdout_truncated);
  CHECK(back.stderr_truncated == r.stderr_truncated);
}

TEST_CASE("result: a failed reply without an error still carries one") {
  const RunResult r = spr::protocol::result_from_reply(json{{"ok", false}});
  CHECK_FALSE(r.ok);
  REQUIRE(r.error.has_value());
  CHECK_FALSE(r.error->empty());
  CHECK(r.error_kind != ErrorKind::none);
}

TEST_CASE("result: the supervisor's own timeout result reads like the original's") {
  const RunResult r = spr::outcome::timeout(0.3);
  CHECK_FALSE(r.ok);
  CHECK(r.timed_out);
  CHECK(r.error == std::string("Execution timed out after 0.3s"));
  CHECK(r.exit_code == 124);
  CHECK(r.error_kind == ErrorKind::timeout);
  CHECK(spr::outcome::timeout(5).error == std::string("Execution timed out after 5s"));
  CHECK(spr::detail::format_seconds(1.9) == "1.9");
  CHECK(spr::detail::format_seconds(0.25) == "0.25");
  CHECK(spr::detail::format_seconds(5) == "5");
  CHECK(spr::detail::format_seconds(20) == "20");  // never "2e+01"
  CHECK(spr::detail::format_seconds(300) == "300");
  CHECK(spr::detail::format_seconds(0.001) == "0.001");
}

TEST_CASE("result: failure() builds a one-line error of the given kind") {
  const RunResult r = spr::outcome::failure(ErrorKind::bad_input, "bad", 1);
  CHECK_FALSE(r.ok);
  CHECK(r.error == std::string("bad"));
  CHECK(r.error_kind == ErrorKind::bad_input);
  CHECK(r.exit_code == 1);
}
