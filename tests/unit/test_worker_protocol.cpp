// Unit tests of the worker's one decode function and its reply encoding.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "common/json_scan.hpp"
#include "common/protocol.hpp"
#include "worker/worker_protocol.hpp"

namespace pr = spr::protocol;
using spr::embed::Incoming;

namespace {
std::string request_frame(bool allow_network) {
  pr::Request rq;
  rq.id = 17;
  rq.code = "result = 1";
  rq.input_json = R"({"x":2})";
  rq.stdin_text = "in";
  rq.want_repr = true;
  rq.policy.allow_network = allow_network;
  rq.policy.timeout_seconds = 3;
  return pr::encode(rq);
}
}  // namespace

TEST_CASE("worker protocol: a request is decoded and narrowed to the worker's scope") {
  spr::embed::PolicyText last;
  const Incoming in = spr::embed::decode_request(request_frame(true), {spr::Isolation::subinterpreter, false}, &last);
  REQUIRE(in.kind == Incoming::Kind::run);
  CHECK(in.id == 17);
  CHECK(in.run.code == "result = 1");
  // input_data goes to the engine as its text (decoded there by CPython's scanner), never as a tree.
  CHECK(in.run.input_text() == R"({"x":2})");
  CHECK(in.run.stdin_text == "in");
  CHECK(in.run.want_repr);
  CHECK(in.run.policy.timeout_seconds == 3);
  CHECK(in.run.policy.isolation == spr::Isolation::subinterpreter);  // the worker's mode, whatever was sent
  CHECK_FALSE(in.run.policy.allow_network);                          // a request can only narrow the worker's
  CHECK(
      spr::embed::decode_request(request_frame(true), {spr::Isolation::fork, true}, nullptr).run.policy.allow_network);
}

TEST_CASE("worker protocol: list_variables, and frames that are no request") {
  const Incoming l = spr::embed::decode_request(pr::encode(pr::ListVariables{5}), {}, nullptr);
  CHECK(l.kind == Incoming::Kind::list_variables);
  CHECK(l.id == 5);
  for (const std::string& frame : {std::string("not json"), pr::encode(pr::Hello{}),
                                   std::string(R"({"type":"request","id":1,"code":7,"policy":{}})")}) {
    CAPTURE(frame);
    const Incoming in = spr::embed::decode_request(frame, {}, nullptr);
    CHECK(in.kind == Incoming::Kind::bad);
    CHECK(in.refusal.error_kind == spr::ErrorKind::bad_input);
    CHECK(in.refusal.error.value_or("").rfind("bad request: ", 0) == 0);
  }
}

TEST_CASE("worker protocol: a reply encodes as a typed reply the supervisor decodes") {
  spr::RunResult r;
  r.ok = true;
  r.result = 42;
  r.stdout_text = "hi\n";
  const pr::Reply back = pr::decode_as<pr::Reply>(spr::embed::encode_reply(9, r));
  CHECK(back.id == 9);
  CHECK(back.result.result == 42);
  CHECK(back.result.stdout_text == "hi\n");
}

TEST_CASE("worker protocol: a refused request is answered under its own id") {
  // With id 0 the supervisor took the refusal for a stale reply and waited out the run's timeout.
  const Incoming in =
      spr::embed::decode_request(R"({"type":"request","id":9,"code":5,"policy":{}})", {}, nullptr);
  CHECK(in.kind == Incoming::Kind::bad);
  CHECK(in.id == 9);
}

TEST_CASE("worker protocol: a frame handed over (decode_request_owned) decodes as the same frame viewed") {
  // The fork child hands its frame over: input_data's text stays in place in it (input_at) instead of copied.
  // Whatever surrounds the text (members before and after it), the request is the same either way.
  pr::Request rq;
  rq.id = 9;
  rq.code = "result = input_data";
  rq.input_json = R"({"a":[1,2.5,"s"],"b":{"c":null}})";
  rq.stdin_text = "after";
  rq.policy.timeout_seconds = 2;
  const std::string frame = pr::encode(rq);
  const spr::embed::WorkerScope scope{spr::Isolation::fork, false};
  const Incoming viewed = spr::embed::decode_request(std::string_view(frame), scope, nullptr);
  std::string handed = frame;
  // Where the value lies in the handed-over bytes: the request's text must still be there, not moved (a fork
  // child writing a large input's pages would copy each from its parent).
  const char* const value_at = handed.data() + frame.find(R"("input_data":)") + std::strlen(R"("input_data":)");
  const Incoming moved = spr::embed::decode_request_owned(std::move(handed), scope, nullptr);
  REQUIRE(viewed.kind == Incoming::Kind::run);
  REQUIRE(moved.kind == Incoming::Kind::run);
  CHECK(moved.run.input_text() == R"({"a":[1,2.5,"s"],"b":{"c":null}})");
  CHECK(moved.run.input_text() == viewed.run.input_text());
  CHECK(moved.run.input_text().data() == value_at);
  CHECK(moved.id == 9);
  CHECK(moved.run.code == viewed.run.code);
  CHECK(moved.run.stdin_text == "after");
  CHECK(moved.run.policy.timeout_seconds == 2);
}

TEST_CASE("worker protocol: a prebuilt policy serves only the request whose policy text is its own") {
  // The fork parent decodes the last policy once; each child compares the text and takes it, or decodes.
  pr::Request rq;
  rq.id = 4;
  rq.code = "result = input_data";
  rq.input_json = R"({"x":1})";
  rq.policy.timeout_seconds = 2;
  rq.policy.blocked_imports = {"os"};
  rq.policy.allow_network = true;
  const std::string frame = pr::encode(rq);
  const std::string text(spr::json_scan::member(frame, "policy").value());
  const spr::embed::WorkerScope scope{spr::Isolation::fork, false};

  spr::embed::PolicyText same;
  same.remember(text);
  REQUIRE(same.set);
  // Policy before and after input_data in the frame: both cuts land where they belong.
  const std::string policy_last = std::string(R"({"type":"request","id":4,"code":"result = input_data",)") +
                                  R"("input_data":{"x":1},"policy":)" + text + "}";
  for (const std::string& f : {frame, policy_last}) {
    CAPTURE(f);
    spr::embed::PolicyText p = same;
    std::string handed = f;
    const Incoming in = spr::embed::decode_request_owned(std::move(handed), scope, &p);
    REQUIRE(in.kind == Incoming::Kind::run);
    CHECK(in.run.input_text() == R"({"x":1})");
    CHECK(in.run.policy.timeout_seconds == 2);
    CHECK(in.run.policy.blocked_imports == std::vector<std::string>{"os"});
    CHECK_FALSE(in.run.policy.allow_network);  // narrowed to the worker's scope as a decoded one is
  }

  // Another policy (one field differs): decoded from the request, the prebuilt one left alone.
  pr::Request other = rq;
  other.policy.timeout_seconds = 3;
  other.policy.blocked_imports = {"os", "sys"};
  spr::embed::PolicyText p = same;
  const Incoming in = spr::embed::decode_request_owned(pr::encode(other), scope, &p);
  REQUIRE(in.kind == Incoming::Kind::run);
  CHECK(in.run.policy.timeout_seconds == 3);
  CHECK(in.run.policy.blocked_imports == std::vector<std::string>{"os", "sys"});
  CHECK(p.policy.timeout_seconds == 2);
}

TEST_CASE("worker protocol: a policy carrying extra_globals is never kept prebuilt") {
  // extra_globals are a caller's data: the fork parent must not hold them for later runs to find.
  pr::Request rq;
  rq.id = 5;
  rq.code = "result = 1";
  rq.policy.extra_globals = {{"key", "secret-4f1c"}};
  const std::string frame = pr::encode(rq);
  spr::embed::PolicyText p;
  p.remember(spr::json_scan::member(frame, "policy").value());
  CHECK_FALSE(p.set);
  CHECK(p.text.empty());
  CHECK(p.policy.extra_globals.empty());
  // A malformed policy is not kept either: the run's own decode refuses it with the reason.
  p.remember(R"({"timeout_seconds":"soon"})");
  CHECK_FALSE(p.set);
}

TEST_CASE("worker protocol: a long-lived runner keeps the last policy and follows a change") {
  pr::Request rq;
  rq.id = 6;
  rq.code = "result = 1";
  rq.policy.timeout_seconds = 2;
  rq.policy.blocked_imports = {"os"};
  const spr::embed::WorkerScope scope{spr::Isolation::namespace_, false};
  spr::embed::PolicyText last;
  const std::string a = pr::encode(rq);
  Incoming in = spr::embed::decode_request(a, scope, &last);
  REQUIRE(in.kind == Incoming::Kind::run);
  REQUIRE(last.set);
  CHECK(last.text == spr::json_scan::member(a, "policy").value());
  // The same text again: a copy of the kept policy (it stays kept), narrowed to the scope like a decoded one.
  last.policy.timeout_seconds = 9;  // marks the kept form: a decode would give 2
  in = spr::embed::decode_request(a, scope, &last);
  CHECK(in.run.policy.timeout_seconds == 9);
  CHECK(in.run.policy.isolation == spr::Isolation::namespace_);
  CHECK(last.set);
  CHECK(last.policy.timeout_seconds == 9);
  // Another policy: decoded, and kept in its place.
  rq.policy.timeout_seconds = 3;
  const std::string b = pr::encode(rq);
  in = spr::embed::decode_request(b, scope, &last);
  CHECK(in.run.policy.timeout_seconds == 3);
  CHECK(last.policy.timeout_seconds == 3);
  CHECK(last.text == spr::json_scan::member(b, "policy").value());
  // One with extra_globals is decoded and never kept: the last one stays.
  rq.policy.extra_globals = {{"key", "secret-77a0"}};
  in = spr::embed::decode_request(pr::encode(rq), scope, &last);
  CHECK(in.run.policy.extra_globals["key"] == "secret-77a0");
  CHECK(last.policy.extra_globals.empty());
  CHECK(last.text == spr::json_scan::member(b, "policy").value());
}
