// Unit tests of common/outcome: each failed run the runner reports itself, with the original's texts
// and exit codes (see the compatibility table: 124 timeout, 2 memory).
#include <doctest/doctest.h>

#include "common/outcome.hpp"

using spr::ErrorKind;
using spr::RunResult;
namespace outcome = spr::outcome;

TEST_CASE("outcome: over a time limit, with the limit as the original prints it") {
  const RunResult t = outcome::timeout(1.5);
  CHECK_FALSE(t.ok);
  CHECK(t.timed_out);
  CHECK_FALSE(t.resource_exceeded);
  CHECK(t.error == std::string("Execution timed out after 1.5s"));
  CHECK(t.exit_code == 124);
  CHECK(t.error_kind == ErrorKind::timeout);

  const RunResult c = outcome::cpu_time(2);
  CHECK_FALSE(c.ok);
  CHECK_FALSE(c.timed_out);
  CHECK(c.resource_exceeded);
  CHECK(c.error == std::string("CPU time limit exceeded after 2s"));
  CHECK(c.exit_code == 124);
  CHECK(c.error_kind == ErrorKind::cpu_time);
}

TEST_CASE("outcome: memory, the output buffer and the result's size") {
  const RunResult m = outcome::memory();
  CHECK(m.error == std::string("Memory limit exceeded"));
  CHECK(m.exit_code == 2);
  CHECK(m.resource_exceeded);
  CHECK(m.error_kind == ErrorKind::memory);

  const RunResult b = outcome::no_output_buffer();
  CHECK(b.error == std::string("cannot allocate the output buffer"));
  CHECK(b.exit_code == 2);
  CHECK(b.resource_exceeded);
  CHECK(b.error_kind == ErrorKind::memory);

  const RunResult big = outcome::result_too_large(64);
  CHECK(big.error == std::string("Result too large: its JSON exceeds max_result_kb (64 KB)"));
  CHECK(big.exit_code == 1);
  CHECK(big.error_kind == ErrorKind::result_too_large);
  CHECK_FALSE(big.resource_exceeded);

  const RunResult deep = outcome::result_unencodable("nested deeper than 500 levels");
  CHECK(deep.error == std::string("Result cannot be returned: nested deeper than 500 levels"));
  CHECK(deep.error_kind == ErrorKind::result_too_large);
}

TEST_CASE("outcome: refusals before any code ran") {
  const RunResult r = outcome::bad_request("not a JSON request object");
  CHECK(r.error == std::string("bad request: not a JSON request object"));
  CHECK(r.error_kind == ErrorKind::bad_input);
  CHECK(r.exit_code == 1);
  CHECK(outcome::bad_input("x").error == std::string("bad input: x"));
  const RunResult s = outcome::setup_failed("scratch directory", "No space left on device");
  CHECK(s.error == std::string("cannot create the run's scratch directory: No space left on device"));
  CHECK(s.error_kind == ErrorKind::worker_crashed);

  CHECK_FALSE(outcome::non_utf8_code("print('h\xc3\xa9')\n").has_value());
  const auto bad = outcome::non_utf8_code("x = 1\ny = '\xff'\n");
  REQUIRE(bad.has_value());
  CHECK(bad->error_kind == ErrorKind::syntax);
  CHECK(bad->error == std::string("SyntaxError: Non-UTF-8 code starting with '\\xff' on line 2, but no encoding declared"));
}

TEST_CASE("outcome: ended from outside, and stdin over its cap") {
  const RunResult c = outcome::cancelled();
  CHECK(c.error == std::string("Run cancelled"));
  CHECK(c.error_kind == ErrorKind::cancelled);
  CHECK(c.exit_code == 1);
  const RunResult l = outcome::session_lost("the runner shut down");
  CHECK(l.error == std::string("Session lost: the runner shut down"));
  CHECK(l.error_kind == ErrorKind::session_lost);
  const RunResult s = outcome::stdin_too_large(2048, 1);
  CHECK(s.error == std::string("stdin is 2048 bytes, more than max_stdin_kb allows (1 KB)"));
  CHECK(s.error_kind == ErrorKind::bad_input);
}

TEST_CASE("outcome: every constructor reports a failure with an error") {
  for (const RunResult& r : {outcome::timeout(1), outcome::cpu_time(1), outcome::memory(), outcome::no_output_buffer(),
                             outcome::result_too_large(1), outcome::result_unencodable("x"), outcome::bad_request("x"),
                             outcome::bad_input("x"), outcome::setup_failed("x", "y"),
                             outcome::cancelled(), outcome::session_lost("x"), outcome::stdin_too_large(2, 1)}) {
    CHECK_FALSE(r.ok);
    REQUIRE(r.error.has_value());
    CHECK_FALSE(r.error->empty());
    CHECK(r.error_kind != ErrorKind::none);
    CHECK(r.exit_code != 0);
  }
}

TEST_CASE("outcome: a worker that does not take its request is reported as crashed, with the wait") {
  const RunResult w = outcome::worker_stalled(5.3);
  CHECK_FALSE(w.ok);
  CHECK(w.error_kind == ErrorKind::worker_crashed);
  CHECK(w.error == std::string("worker did not take the request within 5.3s; it was killed and replaced"));
  CHECK(w.exit_code == 1);
}

TEST_CASE("utf8_within: invalid bytes become U+FFFD, and the text is cut at a character within the cap") {
  bool cut = false;
  CHECK(spr::detail::utf8_within("plain \xc3\xa9", 100, cut) == "plain \xc3\xa9");
  CHECK_FALSE(cut);
  CHECK(spr::detail::utf8_within("a\xff" "b", 100, cut) == "a\xef\xbf\xbd" "b");
  CHECK_FALSE(cut);
  // 10 invalid bytes under a 10-byte cap: three replacement characters fit, not the fourth.
  const std::string bad(10, '\xff');
  const std::string within = spr::detail::utf8_within(bad, 10, cut);
  CHECK(within.size() == 9);
  CHECK(cut);
  CHECK(spr::detail::valid_utf8(within));
  // Never inside a character: a two-byte one that would pass the cap is left out whole.
  cut = false;
  CHECK(spr::detail::utf8_within("ab\xc3\xa9", 3, cut) == "ab");
  CHECK(cut);
}
