// Sessions, streamed output and cancellation through the C++ API, checked from outside the runner.
#include <dirent.h>

#include <atomic>
#include <fstream>
#include <mutex>
#include <set>
#include <chrono>
#include <thread>

#include "blackbox/helpers.hpp"

using namespace spr_test;
using spr::ErrorKind;
using spr::json;

namespace {

// Our live child processes (pid -> state letter), read from /proc: what the runner left running.
std::map<int, char> children() {
  std::map<int, char> out;
  DIR* d = ::opendir("/proc");
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    const int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream in("/proc/" + std::string(e->d_name) + "/stat");
    std::string stat;
    std::getline(in, stat);
    const auto close = stat.rfind(')');
    if (close == std::string::npos || close + 4 >= stat.size()) continue;
    char state = stat[close + 2];
    const int ppid = std::atoi(stat.c_str() + close + 4);
    if (ppid == ::getpid()) out[pid] = state;
  }
  ::closedir(d);
  return out;
}

// The one live child of `parent` (-1 when none): a session's keeper has init as its child, and init the worker.
int child_of(int parent) {
  int found = -1;
  DIR* d = ::opendir("/proc");
  if (!d) return -1;
  while (dirent* e = ::readdir(d)) {
    const int pid = std::atoi(e->d_name);
    if (pid <= 0) continue;
    std::ifstream in("/proc/" + std::string(e->d_name) + "/stat");
    std::string stat;
    std::getline(in, stat);
    const auto close = stat.rfind(')');
    if (close == std::string::npos || close + 4 >= stat.size()) continue;
    if (std::atoi(stat.c_str() + close + 4) == parent && stat[close + 2] != 'Z') found = pid;
  }
  ::closedir(d);
  return found;
}

bool process_exists(int pid) {
  return fs::exists("/proc/" + std::to_string(pid));
}

// Waits (bounded) until `pred` holds; the bound is generous, no speed is asserted.
template <class F>
bool eventually(F pred, double seconds = 10) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

// SPR_CHECK_OK evaluates its argument more than once: a session call must run once.
void check_ok(const spr::RunResult& r) {
  SPR_CHECK_OK(r);
}

spr::RunnerOptions session_options() {
  spr::RunnerOptions o = runner_options();
  o.workers = 1;
  return o;
}

}  // namespace

TEST_CASE("session: state persists across 100 calls, functions and imports included") {
  spr::Session s = runner().open_session(policy());
  check_ok(s.run("import math\ncount = 0\ndef bump(n):\n    return n + 1\n"));
  for (int i = 1; i <= 100; ++i) {
    spr::RunResult r = s.run("count = bump(count)\nresult = [count, math.floor(2.5)]");
    SPR_CHECK_OK(r);
    REQUIRE(r.result == json::array({i, 2}));
  }
  spr::RunResult r = s.run("result = input_data['k'] + count", {{"k", 1}});
  SPR_CHECK_OK(r);
  CHECK(r.result == 101);
}

TEST_CASE("session: a call may rebind the streams; the next call has the real ones again") {
  spr::Session s = runner().open_session(policy());
  spr::RunResult a = s.run("import sys, io\nsys.stdin = io.StringIO('3\\n')\nprint(int(input()) * 2)\nsys.stdout = io.StringIO()\n"
                           "print('hidden')");
  SPR_CHECK_OK(a);
  CHECK(a.stdout_text == "6\n");
  spr::RunResult b = s.run("print('visible')\nsys.stdout.write('again\\n')\nresult = sys.stdin.read()");
  SPR_CHECK_OK(b);
  CHECK(b.stdout_text == "visible\nagain\n");
  CHECK(b.result == "");
}

TEST_CASE("session: a call that raises leaves the session usable") {
  spr::Session s = runner().open_session(policy());
  check_ok(s.run("x = 7"));
  spr::RunResult bad = s.run("x = 8\nraise ValueError('boom')");
  CHECK(bad.error_kind == ErrorKind::exception);
  CHECK(bad.error.value_or("") == "ValueError: boom");
  spr::RunResult syntax = s.run("def (");
  CHECK(syntax.error_kind == ErrorKind::syntax);
  spr::RunResult r = s.run("result = x");
  SPR_CHECK_OK(r);
  CHECK(r.result == 8);  // what ran before the raise stays, as in a REPL
  CHECK(s.alive());
}

TEST_CASE("session: a timeout ends the session cleanly: that call and later ones answer session_lost") {
  spr::Session s = runner().open_session(policy());
  check_ok(s.run("x = 1"));
  const int pid = s.pid();
  REQUIRE(pid > 0);
  REQUIRE(children().count(pid));
  spr::RunOptions o;
  o.timeout_seconds = 0.3;
  spr::RunResult r = s.run("print('going')\nwhile True: pass", json::object(), o);
  INFO(describe(r));
  CHECK(r.error_kind == ErrorKind::session_lost);
  CHECK(r.timed_out);
  CHECK(r.stdout_text == "going\n");
  CHECK_FALSE(s.alive());
  spr::RunResult later = s.run("result = x");
  CHECK(later.error_kind == ErrorKind::session_lost);
  CHECK_FALSE(later.ok);
  CHECK(s.variables().is_null());
  CHECK_FALSE(process_exists(pid));  // killed and reaped, not a zombie
}

TEST_CASE("session: two sessions never see each other's variables") {
  spr::Session a = runner().open_session(policy());
  spr::Session b = runner().open_session(policy());
  check_ok(a.run("secret = 'only-in-a'\nimport json"));
  spr::RunResult r = b.run(
      "try:\n    secret\n    result = 'seen'\nexcept NameError:\n    result = 'unseen'\n"
      "result = [result, 'json' in globals()]");
  SPR_CHECK_OK(r);
  CHECK(r.result == json::array({"unseen", false}));
  CHECK_FALSE(b.variables().contains("secret"));
  CHECK(a.variables().contains("secret"));
}

TEST_CASE("session: a closed session and an expired one leave no process") {
  spr::RunnerOptions o = session_options();
  o.session_idle_seconds = 0.3;
  spr::Runner runner(o);
  spr::Session closed = runner.open_session(policy());
  check_ok(closed.run("x = 1"));
  const int closed_pid = closed.pid();
  REQUIRE(children().count(closed_pid));
  closed.close();
  CHECK_FALSE(process_exists(closed_pid));
  CHECK(closed.run("result = 1").error_kind == ErrorKind::session_lost);

  spr::Session idle = runner.open_session(policy());
  check_ok(idle.run("x = 1"));
  const int idle_pid = idle.pid();
  REQUIRE(children().count(idle_pid));
  CHECK(eventually([&] { return !process_exists(idle_pid); }));
  spr::RunResult r = idle.run("result = x");
  CHECK(r.error_kind == ErrorKind::session_lost);
  CHECK(spr_test::contains(r.error.value_or(""), "idle"));
}

TEST_CASE("session: the memory limit spans calls and a memory overrun ends the session") {
  spr::RunnerPolicy p = policy();
  p.memory_limit_mb = 64;
  spr::Session s = runner().open_session(p);
  check_ok(s.run("a = bytearray(40 * 2**20)"));
  spr::RunResult r = s.run("b = bytearray(40 * 2**20)");
  INFO(describe(r));
  CHECK(r.error_kind == ErrorKind::session_lost);
  CHECK(r.resource_exceeded);
  CHECK(s.run("result = 1").error_kind == ErrorKind::session_lost);
}

TEST_CASE("session: repr of a trailing expression, beside result, only when asked") {
  spr::Session s = runner().open_session(policy());
  spr::RunOptions o;
  o.want_repr = true;
  spr::RunResult r = s.run("x = 21\nresult = 'r'\nx * 2", json::object(), o);
  SPR_CHECK_OK(r);
  REQUIRE(r.repr.has_value());
  CHECK(*r.repr == "42");
  CHECK(r.result == "r");
  CHECK_FALSE(s.run("x * 2").repr.has_value());
  CHECK_FALSE(s.run("y = x", json::object(), o).repr.has_value());
  o.max_result_kb = 1;
  r = s.run("'a' * 5000", json::object(), o);
  SPR_CHECK_OK(r);
  REQUIRE(r.repr.has_value());
  CHECK(r.repr->size() <= 1024 + 3);
}

TEST_CASE("session: variables() lists values and safe descriptions without running user code") {
  spr::Session s = runner().open_session(policy());
  check_ok(
      s.run("import math\nn = 3\nitems = [1, 'two', None]\ndef f(): pass\n"
            "class Loud:\n    def __repr__(self):\n        print('repr ran')\n        raise SystemExit(9)\n"
            "loud = Loud()\n"));
  json v = s.variables();
  INFO(v.dump());
  CHECK(v["n"] == json({{"type", "int"}, {"value", 3}}));
  CHECK(v["items"]["value"] == json::array({1, "two", nullptr}));
  CHECK(v["math"]["repr"] == "<module 'math'>");
  CHECK(v["f"]["repr"] == "<function f>");
  CHECK(v["loud"]["repr"] == "<Loud object>");
  CHECK_FALSE(v.contains("__builtins__"));
  spr::RunResult r = s.run("result = n");  // the session did not notice
  SPR_CHECK_OK(r);
  CHECK(r.stdout_text.empty());
}

TEST_CASE("session: the runner's session limit gives a clear error") {
  spr::RunnerOptions o = session_options();
  o.max_sessions = 2;
  spr::Runner runner(o);
  spr::Session a = runner.open_session(policy());
  spr::Session b = runner.open_session(policy());
  CHECK_THROWS_AS(runner.open_session(policy()), spr::SessionLimitError);
  a.close();
  spr::Session c = runner.open_session(policy());
  check_ok(c.run("result = 1"));
}

namespace {

struct Collected {
  std::mutex mu;
  std::string out, err;
  int chunks = 0;
  spr::OutputCallback callback() {
    return [this](spr::OutputStream s, const std::string& data) {
      std::lock_guard<std::mutex> lk(mu);
      (s == spr::OutputStream::out ? out : err) += data;
      ++chunks;
    };
  }
};

const char* kChatty =
    "import sys, time\n"
    "for i in range(6):\n"
    "    print('line', i, 'é€😀')\n"
    "    sys.stderr.write('err %d\\n' % i)\n"
    "    time.sleep(0.02)\n"
    "result = 'done'\n";

}  // namespace

TEST_CASE("streaming: chunks of a one-off run concatenate to the final output, within the cap") {
  Collected c;
  spr::RunOptions o;
  o.on_output = c.callback();
  spr::RunResult r = runner().run(kChatty, json::object(), policy(), o);
  SPR_CHECK_OK(r);
  CHECK(c.chunks >= 2);
  CHECK(c.out == r.stdout_text);
  CHECK(c.err == r.stderr_text);
  CHECK(spr_test::contains(r.stdout_text, "line 5"));

  Collected capped;
  spr::RunnerPolicy p = policy();
  p.max_output_kb = 1;
  o.on_output = capped.callback();
  r = runner().run("print('é' * 3000)", json::object(), p, o);
  SPR_CHECK_OK(r);
  CHECK(r.stdout_truncated);
  CHECK(r.stdout_text.size() <= 1024);
  CHECK(capped.out == r.stdout_text);
}

TEST_CASE("streaming: chunks carry only what the run wrote, while the worker wipes its buffer after each run") {
  // The worker zeroes a run's output area right after its reply, while the supervisor may still be
  // reading the last chunk: fork-mode runs ending in a traceback streamed NUL bytes ~3% of the time.
  int mismatched = 0;
  for (int i = 0; i < 150; ++i) {
    Collected c;
    spr::RunOptions o;
    o.on_output = c.callback();
    const spr::RunResult r = runner().run("import sys\nprint(sys.argv[1:])\n1/0\n", json::object(), policy(), o);
    REQUIRE(r.error_kind == ErrorKind::exception);
    if (c.out != r.stdout_text || c.err != r.stderr_text || c.err.find('\0') != std::string::npos) ++mismatched;
  }
  CHECK(mismatched == 0);
}

TEST_CASE("streaming: a session call streams too, and a failed call's chunks still add up") {
  spr::Session s = runner().open_session(policy());
  Collected c;
  spr::RunOptions o;
  o.on_output = c.callback();
  spr::RunResult r = s.run(kChatty, json::object(), o);
  SPR_CHECK_OK(r);
  CHECK(c.out == r.stdout_text);
  CHECK(c.err == r.stderr_text);
  Collected t;
  o.on_output = t.callback();
  o.timeout_seconds = 0.3;
  r = s.run("print('before')\nwhile True: pass", json::object(), o);
  CHECK(r.error_kind == ErrorKind::session_lost);
  CHECK(t.out == r.stdout_text);
  CHECK(t.out == "before\n");
}

TEST_CASE("submit: RunOptions::stdin_text reaches the run, as with run()") {
  spr::Runner runner(session_options());
  spr::RunOptions o;
  o.stdin_text = "from stdin\n";
  spr::RunHandle h = runner.submit("result = input()", json::object(), policy(), o);
  REQUIRE(h.wait_for(std::chrono::seconds(60)) == std::future_status::ready);
  spr::RunResult r = h.get();
  check_ok(r);
  CHECK(r.result == "from stdin");
}

TEST_CASE("cancel: a running run answers cancelled, its worker is reaped and the pool recovers") {
  spr::Runner runner(session_options());
  std::atomic<bool> started{false};
  spr::RunOptions o;
  o.on_output = [&](spr::OutputStream, const std::string&) { started = true; };
  spr::RunnerPolicy p = policy();
  p.timeout_seconds = 60;
  spr::RunHandle h = runner.submit("print('spinning', flush=True)\nwhile True: pass", json::object(), p, o);
  REQUIRE(eventually([&] { return started.load(); }, 30));
  CHECK(h.cancel());
  CHECK_FALSE(h.cancel());  // once
  REQUIRE(h.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  spr::RunResult r = h.get();
  CHECK(r.error_kind == ErrorKind::cancelled);
  CHECK_FALSE(r.ok);
  CHECK(eventually([] {
    for (const auto& [pid, state] : children())
      if (state == 'Z') return false;
    return true;
  }));
  check_ok(runner.run("result = 2", json::object(), policy()));
}

TEST_CASE("cancel: a queued run never starts and answers cancelled; the running ones go on") {
  spr::Runner runner(session_options());  // one warm worker, two executor threads
  spr::RunnerPolicy p = policy();
  p.timeout_seconds = 60;
  std::vector<spr::RunHandle> busy;
  for (int i = 0; i < 2; ++i) busy.push_back(runner.submit("while True: pass", json::object(), p));
  spr::RunHandle queued = runner.submit("print('ran')\nresult = 'ran'", json::object(), policy());
  CHECK(queued.cancel());
  REQUIRE(queued.wait_for(std::chrono::seconds(10)) == std::future_status::ready);
  spr::RunResult r = queued.get();
  CHECK(r.error_kind == ErrorKind::cancelled);
  CHECK(r.stdout_text.empty());
  for (auto& h : busy) CHECK(h.wait_for(std::chrono::milliseconds(0)) == std::future_status::timeout);
  for (auto& h : busy) {
    h.cancel();
    CHECK(h.get().error_kind == ErrorKind::cancelled);
  }
  check_ok(runner.run("result = 3", json::object(), policy()));
}

TEST_CASE("cancel: a running session call ends the session; a queued one does not") {
  spr::Session s = runner().open_session(policy());
  check_ok(s.run("x = 5"));
  const int pid = s.pid();
  REQUIRE(children().count(pid));
  std::atomic<bool> started{false};
  spr::RunOptions o;
  o.timeout_seconds = 60;
  o.on_output = [&](spr::OutputStream, const std::string&) { started = true; };
  spr::RunHandle running = s.submit("print('go', flush=True)\nwhile True: pass", json::object(), o);
  REQUIRE(eventually([&] { return started.load(); }, 30));
  spr::RunHandle queued = s.submit("result = x");
  CHECK(queued.cancel());
  CHECK(queued.get().error_kind == ErrorKind::cancelled);
  CHECK(running.cancel());
  CHECK(running.get().error_kind == ErrorKind::cancelled);
  CHECK(eventually([&] { return !s.alive(); }));
  CHECK(s.run("result = x").error_kind == ErrorKind::session_lost);
  CHECK(eventually([&] { return pid > 0 && !process_exists(pid); }));
}

TEST_CASE("cancel: a token cancelled before the run starts stops a synchronous run") {
  spr::RunOptions o;
  o.cancel.cancel();
  spr::RunResult r = runner().run("result = 1", json::object(), policy(), o);
  CHECK(r.error_kind == ErrorKind::cancelled);
}

TEST_CASE("session: a runner's shutdown leaves none of its session processes (nor its spare) behind") {
  const auto before = children();
  int pid = -1;
  {
    spr::Runner runner(session_options());
    spr::Session a = runner.open_session(policy());
    check_ok(a.run("x = 1"));
    a.close();
    spr::Session b = runner.open_session(policy());  // may take the spare; another spare follows
    check_ok(b.run("x = 2"));
    pid = b.pid();
    REQUIRE(pid > 0);
  }
  CHECK_FALSE(process_exists(pid));
  std::vector<int> left;
  for (const auto& [p, state] : children())
    if (!before.count(p)) left.push_back(p);
  CHECK(left.empty());
}

TEST_CASE("session: its process has the hardening of a pool worker, seen from /proc") {
  spr::Session s = runner().open_session(policy());
  check_ok(s.run("x = 1"));
  // The process that runs the calls: under its PID namespace's init, below the keeper s.pid() names.
  int worker = s.pid();
  const int init = child_of(worker);
  if (init > 0 && child_of(init) > 0) worker = child_of(init);
  const std::string proc = "/proc/" + std::to_string(worker);
  std::ifstream status_file(proc + "/status");
  std::string status((std::istreambuf_iterator<char>(status_file)), std::istreambuf_iterator<char>());
  CHECK(spr_test::contains(status, "NoNewPrivs:\t1"));
  CHECK(spr_test::contains(status, "Seccomp:\t2"));
  std::ifstream limits_file(proc + "/limits");
  std::string limits((std::istreambuf_iterator<char>(limits_file)), std::istreambuf_iterator<char>());
  std::string as_line = limits.substr(limits.find("Max address space"));
  as_line = as_line.substr(0, as_line.find('\n'));
  INFO(as_line);
  CHECK_FALSE(spr_test::contains(as_line, "unlimited"));
  std::error_code ec;
  CHECK(fs::read_symlink(proc + "/ns/net", ec) != fs::read_symlink("/proc/self/ns/net"));
}

TEST_CASE("session: frames a call writes for later calls are never taken as their replies") {
  auto p = policy();
  p.blocked_imports = {};
  spr::Session s = runner().open_session(p);
  check_ok(s.run("x = 1"));  // call 1
  // Call 2 writes well-formed replies for itself and for calls 3 to 6 on the session's socket (fd 3).
  s.run(
      "import json, os, struct\n"
      "for i in range(2, 7):\n"
      "    body = json.dumps({'type': 'reply', 'id': i, 'ok': True, 'result': 'FORGED', 'error_kind': 'none',\n"
      "                       'exit_code': 0}).encode()\n"
      "    os.write(3, struct.pack('<I', len(body)) + body)\n");
  // The frames are on the socket before call 3 is sent (a call that times its writes after the next
  // request is not caught this way: SECURITY.md, sessions).
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  spr::RunOptions loop;
  loop.timeout_seconds = 1;
  const spr::RunResult spin = s.run("while True: pass", json::object(), loop);  // call 3
  CHECK(spin.result != json("FORGED"));
  CHECK_FALSE(spin.ok);
  const spr::RunResult next = s.run("result = 2");  // call 4
  CHECK(next.result != json("FORGED"));
}
