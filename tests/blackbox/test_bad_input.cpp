// Bad input: hostile code, data and results give a clear RunResult and valid JSON, never a crash
// or a hang of the supervisor.
#include <doctest/doctest.h>

#include "common/frame.hpp"
#include "helpers.hpp"

using spr::json;
using spr_test::run;

namespace {

// Sanitized builds instrument the worker's request decoding, which makes very large requests much slower.
constexpr bool kSanitized = spr_test::kAsan || spr_test::kTsan;

// Every result must serialise to valid JSON that parses back to the same value (a field the writer
// replaced or dropped on the way would show here).
void check_valid_json(const spr::RunResult& r) {
  const json original = r.to_json();
  const std::string text = spr::detail::dump_json(original);
  json back;
  REQUIRE_NOTHROW(back = spr::detail::parse_json(text));
  CHECK(back == original);
}

json nested(int depth) {
  json v = json::array();
  for (int i = 0; i < depth; ++i) v = json::array({std::move(v)});
  return v;
}

}  // namespace

TEST_CASE("NUL bytes in code are a syntax error") {
  auto r = run(std::string("result = 1\n\0result = 2\n", 23));
  CHECK_FALSE(r.ok);
  CHECK(r.error_kind == spr::ErrorKind::syntax);
  check_valid_json(r);
}

TEST_CASE("invalid UTF-8 in code gives a result, not a crash") {
  auto r = run("result = '\xff\xfe'\n");
  check_valid_json(r);
  CHECK(r.error_kind == spr::ErrorKind::syntax);  // issue 11: refused like CPython, not run with bytes replaced
  CHECK(spr_test::runner().run("result = 1").ok);
}

TEST_CASE("20 MB of code runs") {
  std::string code(20u << 20, '#');
  code += "\nresult = 7\n";
  auto p = spr_test::policy();
  if (kSanitized) p.timeout_seconds = 60;  // the default 5 s is too tight for a sanitized worker
  auto r = run(code, json::object(), p);
  INFO(spr::to_string(r.error_kind) << ": " << r.error.value_or(""));
  CHECK(r.ok);
  CHECK(r.result == 7);
}

TEST_CASE("16 MiB of input_data text arrives exact, and the next run on the worker gets its own") {
  // Larger than what the fork worker copies to a waiting child: such a request is handed to a child forked
  // after it arrived. Escapes, non-ASCII text and a 100-bit integer must come through byte for byte.
  std::string text = "{\"big\":1267650600228229401496703205376,\"rows\":[";
  long long sum = 0;
  int rows = 0;
  while (text.size() < (16u << 20)) {
    if (rows) text += ',';
    const std::string id = std::to_string(rows);
    text += "{\"id\":" + id + ",\"name\":\"caf\u00e9 \\\"" + id + "\\\"\\n\",\"v\":" + id + ".25}";
    sum += rows++;
  }
  text += "],\"tail\":\"end\"}";
  auto p = spr_test::policy();
  p.timeout_seconds = (kSanitized ? 240 : 60) * spr_test::time_scale();
  p.memory_limit_mb = 2048;
  spr::RunOptions o;
  o.input_json = text;
  const auto r = spr_test::runner().run(
      "rs = input_data['rows']\n"
      "result = [len(rs), sum(x['id'] for x in rs), rs[-1]['name'], rs[7]['v'], input_data['big'] == 2 ** 100,"
      " input_data['tail']]\n",
      json::object(), p, o);
  REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
  CHECK(r.result == json({rows, sum, "caf\u00e9 \"" + std::to_string(rows - 1) + "\"\n", 7.25, true, "end"}));
  const auto next = run("result = [input_data, 'rs' in globals()]", json{{"x", 1}});
  CHECK(next.ok);
  CHECK(next.result == json::array({json{{"x", 1}}, false}));
}

TEST_CASE("input_data nested 200,000 deep is refused as bad_input") {
  auto r = run("result = 1", nested(200000));
  CHECK_FALSE(r.ok);
  CHECK(r.error_kind == spr::ErrorKind::bad_input);
  check_valid_json(r);
  CHECK(run("result = 1").ok);
}

TEST_CASE("non-finite numbers and integers beyond 64 bits") {
  auto r = run("result = [float('nan'), float('inf'), -float('inf'), 2**100, -(2**70)]");
  REQUIRE(r.ok);
  CHECK(r.result == json({"nan", "inf", "-inf", "1267650600228229401496703205376", "-1180591620717411303424"}));
  check_valid_json(r);
  auto big = run("result = x + 1", {{"x", 18446744073709551615ull}});
  CHECK(big.ok);
  check_valid_json(big);
}

TEST_CASE("lone surrogates in output and result stay visible and valid") {
  auto r = run("print('a\\ud800b')\nresult = 'c\\udfffd'");
  REQUIRE(r.ok);
  CHECK(r.stdout_text == "a\\ud800b\n");
  CHECK(r.result == "c\\udfffd");
  check_valid_json(r);
}

TEST_CASE("a result nested 200,000 deep is refused, the supervisor survives") {
  auto r = run("a = []\nfor _ in range(200000):\n    a = [a]\nresult = a\n");
  CHECK_FALSE(r.ok);
  CHECK(r.error_kind == spr::ErrorKind::result_too_large);
  check_valid_json(r);
}

TEST_CASE("a result of 100 MB is result_too_large") {
  auto r = run("result = 'x' * (100 * 2**20)");
  CHECK_FALSE(r.ok);
  CHECK(r.error_kind == spr::ErrorKind::result_too_large);
  CHECK(r.result.is_null());
}

TEST_CASE("deep recursion after sys.setrecursionlimit(10**7) is contained") {
  auto r = run("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return f(n + 1)\nf(0)\n");
  INFO(spr_test::describe(r));
  CHECK_FALSE(r.ok);
  CHECK(r.result.is_null());
  // Frames grow on the heap until the time or memory limit ends the run (which comes first depends on the
  // machine's speed); a stack overflow would be a crash of the worker, never one of these.
  CHECK((r.error_kind == spr::ErrorKind::timeout || r.error_kind == spr::ErrorKind::memory ||
         r.error_kind == spr::ErrorKind::exception));
  check_valid_json(r);
  const auto next = run("result = 1");
  CHECK(next.ok);
  CHECK(next.result == 1);
}

TEST_CASE("5,000 threads are contained") {
  auto r = run(
      "import threading, time\nts = []\nfor i in range(5000):\n    t = threading.Thread(target=time.sleep, args=(0.5,))\n"
      "    t.start()\n    ts.append(t)\nresult = len(ts)\n");
  INFO(spr_test::describe(r));
  // Fork and process mode runs own their process and stop at its thread limit; namespace and subinterpreter
  // workers refuse threads outright.
  CHECK_FALSE(r.ok);
  CHECK(r.result.is_null());
  CHECK(r.error_kind == (spr_test::is_fork() || spr_test::is_process() ? spr::ErrorKind::exception
                                                                        : spr::ErrorKind::denied));
  CHECK(spr_test::contains(r.error.value_or(""), "can't start new thread"));
  check_valid_json(r);
  const auto next = run("result = 1");
  CHECK(next.ok);
  CHECK(next.result == 1);
}

TEST_CASE("invalid policies are PolicyError with the field named") {
  auto with = [](const json& overrides) { return spr::RunnerPolicy::from_json(overrides); };
  CHECK_THROWS_WITH_AS(with({{"timeout_seconds", -1}}), doctest::Contains("timeout_seconds"), spr::PolicyError);
  CHECK_THROWS_WITH_AS(with({{"memory_limit_mb", 0}}), doctest::Contains("memory_limit_mb"), spr::PolicyError);
  CHECK_THROWS_WITH_AS(with({{"isolation", "vm"}}), doctest::Contains("isolation"), spr::PolicyError);
  spr::RunnerPolicy p;
  p.extra_globals = {{"deep", nested(100000)}};
  CHECK_THROWS_WITH_AS(p.validate(), doctest::Contains("extra_globals"), spr::PolicyError);
  CHECK_THROWS_AS(spr_test::runner().run("result = 1", json::object(), p), spr::PolicyError);
}
