// Unit tests of the typed protocol: every message round-trips, and malformed frames are ProtocolError.
#include <doctest/doctest.h>

#include <string>

#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "common/run_files.hpp"

namespace pr = spr::protocol;

namespace {
template <class T>
T round_trip(const T& m) {
  const std::string text = pr::encode(m);
  T back = pr::decode_as<T>(text);
  CHECK(pr::encode(back) == text);
  return back;
}
}  // namespace

TEST_CASE("protocol: each message type round-trips with its fields") {
  pr::Hello h;
  h.pid = 42;
  h.isolation = spr::Isolation::subinterpreter;
  h.python = "3.11.2";
  h.hardening = spr::json::array({{{"name", "seccomp"}, {"active", true}}});
  auto h2 = round_trip(h);
  CHECK(h2.pid == 42);
  CHECK(h2.isolation == spr::Isolation::subinterpreter);
  CHECK(h2.protocol == pr::kVersion);

  pr::Request rq;
  rq.id = 9;
  rq.code = "result = x";
  rq.input_json = R"({"x":1})";
  rq.policy.timeout_seconds = 1.5;
  rq.policy.blocked_imports = {"os"};
  auto rq2 = round_trip(rq);
  CHECK(rq2.code == "result = x");
  CHECK(rq2.input_json == rq.input_json);
  CHECK(rq2.policy == rq.policy);

  pr::Reply rp;
  rp.id = 9;
  rp.result.ok = false;
  rp.result.error = "Execution timed out after 1.5s";
  rp.result.error_kind = spr::ErrorKind::timeout;
  rp.result.exit_code = 124;
  rp.result.timed_out = true;
  rp.result.stdout_text = "partial";
  auto rp2 = round_trip(rp);
  CHECK(rp2.id == 9);
  CHECK(rp2.result.error_kind == spr::ErrorKind::timeout);
  CHECK(rp2.result.stdout_text == "partial");

  CHECK(round_trip(pr::HostCall{3, 1, "lookup", spr::json::array({1, "a"})}).name == "lookup");
  CHECK(round_trip(pr::HostReturn{3, 1, spr::json(5), std::string("boom")}).error == std::string("boom"));
}

TEST_CASE("protocol: a hello that reports a start failure needs no other field") {
  auto h = pr::decode_as<pr::Hello>(R"({"type":"hello","protocol":1,"error":"no python"})");
  REQUIRE(h.error);
  CHECK(*h.error == "no python");
}

TEST_CASE("protocol: malformed frames are ProtocolError, never another exception") {
  const char* bad[] = {
      "",
      "not json",
      "[1,2]",
      R"({"id":1})",                                               // no type
      R"({"type":"nonsense"})",                                    // unknown type
      R"({"type":"request","id":-1,"code":"","policy":{}})",       // negative id
      R"({"type":"request","id":1,"code":5,"policy":{}})",         // code not a string
      R"({"type":"request","id":1,"code":"","policy":{"bogus":1}})",  // unknown policy field
      R"({"type":"request","id":1,"code":"","policy":{"isolation":"jail"}})",
      R"({"type":"reply","id":1,"ok":"yes"})",                      // wrong field type
      R"({"type":"output","id":1,"stream":"stdin","data":""})",
      R"({"type":"hello","protocol":1,"pid":1,"isolation":"fork","python":"3","hardening":{}})",
      R"({"type":"host_call","id":1,"call":1,"name":"f","args":{}})",
  };
  for (const char* text : bad) {
    CAPTURE(text);
    CHECK_THROWS_AS(pr::decode(text), pr::ProtocolError);
  }
  std::string deep(2000, '[');
  CHECK_THROWS_AS(pr::decode(deep), pr::ProtocolError);
}

TEST_CASE("protocol: a request encoded from references is the text of the same request by value") {
  pr::Request rq;
  rq.id = 7;
  rq.code = "result = x";
  rq.input_json = R"({"x":[1,2.5,"é"]})";
  rq.stdin_text = "line\n";
  rq.want_repr = true;
  rq.kill_after_seconds = 1.25;
  rq.functions = {"lookup"};
  rq.files = {{"a.txt", "hi"}};
  rq.collect = {"*.txt"};
  const std::string by_value = pr::encode(rq);
  // By value: the caller's input as a JSON value; by text: its text spliced in as it is.
  const spr::json input = spr::json::parse(rq.input_json);
  CHECK(pr::encode(pr::RequestRef{rq.id, rq.code, input, rq.policy, rq.stdin_text, rq.want_repr,
                                  rq.kill_after_seconds, rq.functions, rq.files, rq.collect}) == by_value);
  CHECK(pr::encode(pr::RequestRef{rq.id, rq.code, spr::json(), rq.policy, rq.stdin_text, rq.want_repr,
                                  rq.kill_after_seconds, rq.functions, rq.files, rq.collect, rq.input_json}) == by_value);
  const auto back = pr::decode_as<pr::Request>(by_value);
  CHECK(spr::json::parse(back.input_json) == input);
  CHECK(back.files == rq.files);
}

TEST_CASE("protocol: decode_as names what came instead") {
  try {
    (void)pr::decode_as<pr::Reply>(R"({"type":"list_variables","id":1})");
    FAIL("expected ProtocolError");
  } catch (const pr::ProtocolError& e) {
    CHECK(std::string(e.what()) == "expected a reply message, got list_variables");
  }
}

TEST_CASE("protocol: the wire policy is not re-validated, but its form is checked") {
  // Values are validated where a policy enters the supervisor; the worker trusts its supervisor.
  auto rq = pr::decode_as<pr::Request>(R"({"type":"request","id":1,"code":"","policy":{"timeout_seconds":0}})");
  CHECK(rq.policy.timeout_seconds == 0);
  CHECK_THROWS_AS(pr::decode(R"({"type":"request","id":1,"code":"","policy":{"timeout_seconds":"x"}})"),
                  pr::ProtocolError);
}

TEST_CASE("parse_isolation: the one parser of isolation names") {
  CHECK(spr::parse_isolation("namespace") == spr::Isolation::namespace_);
  CHECK(spr::parse_isolation("process") == spr::Isolation::process);
  CHECK_FALSE(spr::parse_isolation("Fork"));
  CHECK_FALSE(spr::parse_isolation(""));
}

TEST_CASE("protocol: session fields and messages round-trip") {
  pr::Request rq;
  rq.id = 4;
  rq.code = "x";
  rq.want_repr = true;
  rq.kill_after_seconds = 2.25;
  rq.stdin_text = "line\n";
  auto rq2 = round_trip(rq);
  CHECK(rq2.want_repr);
  CHECK(rq2.kill_after_seconds == 2.25);
  CHECK(rq2.stdin_text == "line\n");
  // Left out when unset, and read back as unset.
  const std::string plain = pr::encode(pr::Request{});
  CHECK(plain.find("repr") == std::string::npos);
  CHECK(plain.find("kill_after_seconds") == std::string::npos);
  CHECK_FALSE(pr::decode_as<pr::Request>(plain).want_repr);

  CHECK(round_trip(pr::ListVariables{12}).id == 12);
  auto v = round_trip(pr::Variables{12, {{"n", {{"type", "int"}, {"value", 3}}}}});
  CHECK(v.variables["n"]["value"] == 3);

  for (const char* text : {R"({"type":"request","id":1,"code":"","policy":{},"repr":1})",
                           R"({"type":"request","id":1,"code":"","policy":{},"kill_after_seconds":-1})",
                           R"({"type":"request","id":1,"code":"","policy":{},"kill_after_seconds":"2"})",
                           R"({"type":"variables","id":1,"variables":[]})", R"({"type":"list_variables"})"}) {
    CAPTURE(text);
    CHECK_THROWS_AS(pr::decode(text), pr::ProtocolError);
  }
}

TEST_CASE("protocol: a reply head plus its output fields is the reply encode() makes") {
  pr::Reply r;
  r.id = 31;
  r.result = spr::outcome::timeout(2);
  r.result.isolation = spr::Isolation::fork;
  std::string text = pr::encode_reply_head(r);
  CHECK(text.find("\"stdout\"") == std::string::npos);
  text += R"(,"stdout":"out\n","stderr":"","stdout_truncated":true,"stderr_truncated":false})";
  const pr::Reply back = pr::decode_as<pr::Reply>(text);
  CHECK(back.id == 31);
  CHECK(back.result.error_kind == spr::ErrorKind::timeout);
  CHECK(back.result.stdout_text == "out\n");
  CHECK(back.result.stdout_truncated);
  r.result.stdout_text = "out\n";
  r.result.stdout_truncated = true;
  CHECK(pr::encode(back) == pr::encode(r));
}

TEST_CASE("protocol: policies that differ only in number types are written apart") {
  // nlohmann's == takes 1 and 1.0 as equal; the cached text of a request's policy must still be its own.
  pr::Request one, onef;
  one.policy.extra_globals = spr::json{{"v", 1}};
  onef.policy.extra_globals = spr::json{{"v", 1.0}};
  CHECK(pr::encode(one).find("\"v\":1}") != std::string::npos);
  CHECK(pr::encode(onef).find("\"v\":1.0}") != std::string::npos);
}

TEST_CASE("protocol: a request's files and collect patterns round-trip; bad names are ProtocolError") {
  pr::Request rq;
  rq.id = 7;
  rq.code = "pass";
  rq.files = {{"a.txt", "h\xc3\xa9"}, {"d/b.bin", std::string("\x00\xff\x89", 3)}};
  rq.collect = {"*.png", "out/*.csv"};
  const pr::Request back = round_trip(rq);
  CHECK(back.files == rq.files);
  CHECK(back.collect == rq.collect);
  CHECK(pr::encode(rq).find("{\"base64\":\"AP+J\"}") != std::string::npos);
  const std::string head = "{\"type\":\"request\",\"id\":1,\"code\":\"\",\"policy\":{},";
  for (const char* bad : {"\"files\":{\"../x\":\"a\"}}", "\"files\":{\"/x\":\"a\"}}", "\"files\":{\"x\":{\"base64\":\"A\"}}}",
                          "\"files\":{\"x\":3}}", "\"files\":[]}", "\"collect\":[\"../*\"]}", "\"collect\":\"*\"}"}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(pr::decode(head + bad), pr::ProtocolError);
  }
}

TEST_CASE("run_files: base64 is canonical and round-trips every length") {
  namespace rf = spr::detail::run_files;
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (std::size_t n = 0; n < 70; ++n) {
    std::string out;
    REQUIRE(rf::base64_decode(rf::base64_encode(all.substr(n)), out));
    CHECK(out == all.substr(n));
  }
  std::string out;
  CHECK(rf::base64_decode("AP8=", out));
  CHECK(out == std::string("\x00\xff", 2));
  for (const char* bad : {"AP9=", "A", "AP8", "A=P8", "AP*=", "=AAA"}) CHECK_FALSE(rf::base64_decode(bad, out));
  CHECK(rf::check_name("a/b.txt").empty());
  for (const char* bad : {"", "/a", "a//b", "a/", "..", "a/../b", "./a"}) CHECK_FALSE(rf::check_name(bad).empty());
  CHECK(rf::matches({"*.png"}, "plot.png"));
  CHECK_FALSE(rf::matches({"*.png"}, "d/plot.png"));  // '*' stays within one folder
  CHECK(rf::depth({"*.png", "a/b/*"}) == 3);
}

TEST_CASE("protocol: a request says whether its policy is the operator's, and only when it is") {
  pr::Request rq;
  rq.id = 3;
  rq.code = "pass";
  CHECK(pr::encode(rq).find("operator_policy") == std::string::npos);
  rq.operator_policy = true;
  const std::string text = pr::encode(rq);
  CHECK(text.find("\"operator_policy\":true") != std::string::npos);
  CHECK(pr::decode_as<pr::Request>(text).operator_policy);
  CHECK_THROWS_AS(pr::decode(R"({"type":"request","id":1,"code":"","policy":{},"operator_policy":1})"),
                  pr::ProtocolError);
}
