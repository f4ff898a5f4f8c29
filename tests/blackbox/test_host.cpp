// Host functions through the public API, in the isolation mode under test: values both ways, errors, limits, timeouts, sessions, concurrency.
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "blackbox/helpers.hpp"

using spr::json;
using namespace spr_test;

namespace {

spr::RunnerOptions host_options() {
  spr::RunnerOptions o = runner_options();
  o.functions["echo"] = [](const spr::HostCall& c) { return json{{"args", c.args}, {"kwargs", c.kwargs}}; };
  o.functions["identity"] = [](const spr::HostCall& c) { return c.args.empty() ? json() : c.args[0]; };
  o.functions["fail"] = [](const spr::HostCall& c) -> json {
    throw std::runtime_error("no price for " + c.args.at(0).get<std::string>());
  };
  return o;
}

spr::Runner& host_runner() {
  static spr::Runner r(host_options());
  return r;
}

spr::RunResult hrun(const std::string& code, const spr::RunnerPolicy& p = policy(), const spr::RunOptions& o = {}) {
  return host_runner().run(code, json::object(), p, o);
}

}  // namespace

TEST_CASE("host: every JSON type crosses both ways, positional and keyword") {
  const json values = json::array({nullptr, true, false, 0, -7, 9007199254740993LL, 18446744073709551615ULL, 1.5,
                                   -0.25, "", "text ü ☃ 𝄞", json::array(), json::array({1, "a", nullptr}),
                                   json::object(), json{{"k", json{{"nested", json::array({1, 2})}}}}});
  spr::RunResult r = host_runner().run(
      "out = []\n"
      "for v in input_data['values']:\n"
      "    out.append(identity(v))\n"
      "e = echo(*input_data['values'], a=input_data['values'], b={'x': (1, 2)})\n"
      "result = {'each': out, 'echo': e, 'same': out == input_data['values']}\n",
      {{"values", values}}, policy());
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(r.result["each"] == values);
  CHECK(r.result["same"] == json(true));
  CHECK(r.result["echo"]["args"] == values);
  CHECK(r.result["echo"]["kwargs"]["a"] == values);
  CHECK(r.result["echo"]["kwargs"]["b"] == json{{"x", json::array({1, 2})}});
}

TEST_CASE("host: the call carries the run's id and numbers its calls") {
  std::vector<spr::HostCall> seen;
  std::mutex mu;
  spr::RunOptions o;
  o.functions["note"] = [&](const spr::HostCall& c) {
    std::lock_guard<std::mutex> lk(mu);
    seen.push_back(c);
    return json(c.call_id);
  };
  spr::RunResult r = hrun("result = [note(), note(1), note(x=2)]", policy(), o);
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(r.result == json::array({1, 2, 3}));
  REQUIRE(seen.size() == 3);
  CHECK(seen[0].name == "note");
  CHECK(seen[0].run_id != 0);
  CHECK(seen[1].run_id == seen[0].run_id);
  CHECK(seen[1].args == json::array({1}));
  CHECK(seen[2].kwargs == json{{"x", 2}});
}

TEST_CASE("host: a host exception is HostFunctionError, a RuntimeError the code can catch") {
  spr::RunResult r = hrun(
      "from host import HostFunctionError\n"
      "import host\n"
      "try:\n"
      "    fail('ACME')\n"
      "except HostFunctionError as e:\n"
      "    result = [str(e), isinstance(e, RuntimeError), host.HostFunctionError is HostFunctionError]\n");
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(r.result == json::array({"no price for ACME", true, true}));
  spr::RunResult u = hrun("fail('X')");
  CHECK(u.error_kind == spr::ErrorKind::exception);
  CHECK(contains(u.error.value_or(""), "HostFunctionError: no price for X"));
}

TEST_CASE("host: names shadowed by the code stay reachable as host.<name>; undeclared names are NameError") {
  spr::RunResult r = hrun("identity = None\nimport host\nresult = host.identity(5)");
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(r.result == json(5));
  spr::RunResult u = hrun("result = get_price('ACME')");
  CHECK(u.error_kind == spr::ErrorKind::exception);
  CHECK(contains(u.error.value_or(""), "NameError"));
  spr::RunResult a = hrun("import host\nresult = host.get_price('ACME')");
  CHECK_FALSE(a.ok);
  CHECK(contains(a.error.value_or(""), "AttributeError"));
  // Allow mode with an empty import list: `host` is the engine's module, still importable.
  spr::RunnerPolicy allow = policy();
  allow.mode = spr::Mode::allow;
  allow.allowed_builtins = {"isinstance"};
  spr::RunResult m = hrun("import host\nresult = host.identity('ok')", allow);
  CHECK_MESSAGE(m.result == json("ok"), describe(m));
}

TEST_CASE("host: a non-JSON argument is a TypeError naming the function; the host is not called") {
  std::atomic<int> calls{0};
  spr::RunOptions o;
  o.functions["count"] = [&](const spr::HostCall&) { return json(++calls); };
  for (const char* arg : {"{1, 2}", "object()", "b'x'", "float('nan')", "10**30", "{1: 2}", "[[{'a': {3}}]]"}) {
    CAPTURE(arg);
    spr::RunResult r = hrun(std::string("try:\n    count(") + arg +
                                ")\nexcept TypeError as e:\n    result = str(e)\n",
                            policy(), o);
    REQUIRE_MESSAGE(r.ok, describe(r));
    CHECK(contains(r.result.get<std::string>(), "host function 'count'"));
  }
  spr::RunResult k = hrun("try:\n    count(x={2})\nexcept TypeError as e:\n    result = str(e)\n", policy(), o);
  CHECK(contains(k.result.dump(), "keyword argument 'x'"));
  spr::RunResult c = hrun("a = []\na.append(a)\ntry:\n    count(a)\nexcept ValueError as e:\n    result = str(e)\n",
                          policy(), o);
  CHECK(contains(c.result.dump(), "contains itself"));
  CHECK(calls == 0);
}

TEST_CASE("host: 1,000 calls in one run") {
  std::atomic<int> calls{0};
  spr::RunOptions o;
  o.functions["inc"] = [&](const spr::HostCall& c) {
    ++calls;
    return json(c.args.at(0).get<int>() + 1);
  };
  spr::RunResult r = hrun("n = 0\nfor _ in range(1000):\n    n = inc(n)\nresult = n", policy(), o);
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(r.result == json(1000));
  CHECK(calls == 1000);
}

TEST_CASE("host: a run's own function of a name replaces the runner's") {
  spr::RunOptions o;
  o.functions["identity"] = [](const spr::HostCall&) { return json("run's own"); };
  spr::RunResult r = hrun("result = [identity(1), echo(2)['args']]", policy(), o);
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(r.result == json::array({"run's own", json::array({2})}));
}

TEST_CASE("host: a host function busy past the timeout: timed_out on time, its late answer dropped") {
  std::mutex mu;
  std::condition_variable cv;
  bool release = false, returned = false, started = false;
  spr::RunOptions o;
  o.functions["slow"] = [&](const spr::HostCall&) {
    std::unique_lock<std::mutex> lk(mu);
    started = true;
    cv.notify_all();
    cv.wait_for(lk, std::chrono::seconds(120), [&] { return release; });
    returned = true;
    cv.notify_all();
    return json("LATE");
  };
  spr::RunnerPolicy p = policy();
  p.timeout_seconds = 1;
  spr::RunResult r = hrun("print('before')\nresult = slow()\n", p, o);
  {
    // The run answered while the host function was still waiting to be released: not after it.
    std::unique_lock<std::mutex> lk(mu);
    CHECK(started);
    CHECK_FALSE(returned);
    release = true;
    cv.notify_all();
    cv.wait_for(lk, std::chrono::seconds(60), [&] { return returned; });
  }
  CHECK(r.timed_out);
  CHECK(r.error_kind == spr::ErrorKind::timeout);
  CHECK(r.result != json("LATE"));
  // The runner goes on; the late answer reached nobody.
  spr::RunResult next = hrun("result = identity('next')");
  CHECK_MESSAGE(next.result == json("next"), describe(next));
}

TEST_CASE("host: limits end the run with host_call_limit, even when the code catches the error") {
  std::atomic<int> calls{0};
  spr::RunOptions o;
  o.functions["count"] = [&](const spr::HostCall&) { return json(++calls); };
  o.functions["big"] = [](const spr::HostCall& c) { return json(std::string(c.args.at(0).get<std::size_t>(), 'x')); };
  spr::RunnerPolicy p = policy();
  p.max_host_calls = 5;
  spr::RunResult r = hrun(
      "for i in range(10):\n"
      "    try:\n"
      "        count()\n"
      "    except RuntimeError:\n"
      "        pass\n"
      "result = 'finished'\n",
      p, o);
  CHECK(r.error_kind == spr::ErrorKind::host_call_limit);
  CHECK(contains(r.error.value_or(""), "max_host_calls (5)"));
  CHECK(r.result != json("finished"));
  CHECK(calls == 5);
  spr::RunnerPolicy small = policy();
  small.max_host_call_kb = 1;
  spr::RunResult args = hrun("try:\n    count('a' * 2000)\nexcept RuntimeError:\n    pass\nresult = 1", small, o);
  CHECK(args.error_kind == spr::ErrorKind::host_call_limit);
  CHECK(contains(args.error.value_or(""), "arguments"));
  CHECK(calls == 5);
  spr::RunResult answer = hrun("print('kept')\nresult = big(5000)", small, o);
  CHECK(answer.error_kind == spr::ErrorKind::host_call_limit);
  CHECK(contains(answer.error.value_or(""), "answer"));
  CHECK(contains(answer.stdout_text, "kept"));
  spr::RunResult fits = hrun("result = len(big(500))", small, o);
  CHECK_MESSAGE(fits.result == json(500), describe(fits));
}

TEST_CASE("host: concurrent runs call the same host function from every worker") {
  std::atomic<int> calls{0};
  spr::RunnerOptions ro = host_options();
  ro.workers = 3;
  ro.functions["add"] = [&](const spr::HostCall& c) {
    ++calls;
    return json(c.args.at(0).get<long long>() + c.args.at(1).get<long long>());
  };
  spr::Runner runner(ro);
  std::vector<spr::RunHandle> handles;
  for (int i = 0; i < 6; ++i)
    handles.push_back(runner.submit("t = 0\nfor i in range(200):\n    t = add(t, i)\nresult = [input_data['n'], t]",
                                    {{"n", i}}, policy()));
  for (int i = 0; i < 6; ++i) {
    spr::RunResult r = handles[static_cast<std::size_t>(i)].get();
    REQUIRE_MESSAGE(r.ok, describe(r));
    CHECK(r.result == json::array({i, 19900}));
  }
  CHECK(calls == 1200);
}

TEST_CASE("host: sessions call the runner's and the call's functions") {
  spr::Session s = host_runner().open_session(policy());
  spr::RunResult a = s.run("x = identity(41)");
  REQUIRE_MESSAGE(a.ok, describe(a));
  spr::RunOptions o;
  o.functions["plus_one"] = [](const spr::HostCall& c) { return json(c.args.at(0).get<int>() + 1); };
  spr::RunResult b = s.run("result = plus_one(x)", json::object(), o);
  REQUIRE_MESSAGE(b.ok, describe(b));
  CHECK(b.result == json(42));
  // A call that did not declare it finds the earlier call's callable unusable, not calling the host.
  spr::RunResult c = s.run("try:\n    plus_one(1)\nexcept RuntimeError as e:\n    result = str(e)");
  CHECK(contains(c.result.dump(), "only available during its run"));
  CHECK(s.run("result = identity('still')").result == json("still"));
}

TEST_CASE("host: a function name that is not an identifier is refused") {
  spr::RunOptions o;
  o.functions["not valid"] = [](const spr::HostCall&) { return json(); };
  CHECK_THROWS_AS(hrun("result = 1", policy(), o), spr::PolicyError);
  spr::RunOptions u;
  u.functions["_private"] = [](const spr::HostCall&) { return json(); };
  CHECK_THROWS_AS(hrun("result = 1", policy(), u), spr::PolicyError);
}

TEST_CASE("host: output streams on across host calls") {
  std::string streamed;
  std::mutex mu;
  spr::RunOptions o;
  o.on_output = [&](spr::OutputStream, const std::string& data) {
    std::lock_guard<std::mutex> lk(mu);
    streamed += data;
  };
  std::vector<std::string> seen_at_call;  // what had been streamed when each call came
  o.functions["pause"] = [&](const spr::HostCall&) {
    std::lock_guard<std::mutex> lk(mu);
    seen_at_call.push_back(streamed);
    return json();
  };
  spr::RunResult r = hrun("for i in range(3):\n    print('line', i, flush=True)\n    pause()\n", policy(), o);
  REQUIRE_MESSAGE(r.ok, describe(r));
  CHECK(streamed == r.stdout_text);
  REQUIRE(seen_at_call.size() == 3);
  // Output printed before a call is streamed before the call reaches the host, not at the end.
  CHECK(contains(seen_at_call[2], "line 1"));
}
