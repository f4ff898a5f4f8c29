// Red-team attempts under the threat model "the snippet owns its process's memory": code objects
// from bytes, trusted-caller spoofing, forged and oversized replies, limits bypassed late,
// persistence through the scratch root, cross-domain residue, session and signal escapes, and a
// loosened operator policy. Each asserts the ABSENCE of the side effect, seen from outside the
// runner. Where only a memory primitive could act (write fd 3, call mkfifo from C, allocate
// behind the accounting), the test worker spr-worker-faulty does it in C on the run's behalf.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <future>
#include <mutex>
#include <set>
#include <sstream>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <spr/runner.hpp>

#include "common/run_deadline.hpp"
#include "common/outcome.hpp"
#include "escape_helpers.hpp"

namespace {

using spr::json;

const std::string kFaulty = std::string(SPR_TEST_WORKERS_DIR) + "/spr-worker-faulty";

spr::Isolation test_mode() {
  const char* m = std::getenv("SPR_TEST_ISOLATION");
  return spr::RunnerPolicy::from_json({{"isolation", m ? m : "fork"}}).isolation;
}

spr::RunnerOptions options(const std::string& worker = {}) {
  spr::RunnerOptions o;
  o.worker_path = worker;
  o.workers = 1;
  o.policy.isolation = test_mode();
  o.policy.timeout_seconds = 3;
  return o;
}

// Entries of every worker scratch root (/tmp/spr-*) of this host whose name contains `needle`,
// with whether each is a FIFO.
struct Found {
  int files = 0, fifos = 0;
};
Found scan_scratch_roots(const std::string& needle) {
  Found f;
  DIR* tmp = opendir("/tmp");
  if (!tmp) return f;
  while (dirent* e = readdir(tmp)) {
    const std::string root = std::string("/tmp/") + e->d_name;
    if (std::string(e->d_name).rfind("spr-", 0) != 0) continue;
    DIR* d = opendir(root.c_str());
    if (!d) continue;
    while (dirent* x = readdir(d)) {
      if (std::string(x->d_name).find(needle) == std::string::npos) continue;
      struct stat st {};
      if (lstat((root + "/" + x->d_name).c_str(), &st) != 0) continue;
      ++f.files;
      f.fifos += S_ISFIFO(st.st_mode) ? 1 : 0;
    }
    closedir(d);
  }
  closedir(tmp);
  return f;
}

// Largest VmHWM (kB) among this process's descendants now alive.
long largest_descendant_hwm_kb() {
  long best = 0;
  for (const auto& p : sec::descendants(getpid(), {})) {
    std::ifstream in("/proc/" + std::to_string(p.pid) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind("VmHWM:", 0) == 0) best = std::max(best, std::atol(line.c_str() + 6));
  }
  return best;
}

// A run that prints LOOK once it holds what is to be measured, then sleeps: the largest peak RSS among this
// process's descendants is read then, and the run cancelled.
struct Held {
  bool looked = false;
  long hwm_kb = 0;
  spr::RunResult result;
  std::string seen;  // what it printed
};
Held peak_while_held(spr::Runner& runner, const std::string& code, const spr::RunnerPolicy& policy) {
  sec::StdoutWatch watch;
  spr::RunHandle h = runner.submit(code, json::object(), policy, watch.options());
  Held held;
  held.looked = watch.wait_for("LOOK", h);
  held.hwm_kb = largest_descendant_hwm_kb();
  h.cancel();
  held.result = h.get();
  held.seen = watch.seen();
  return held;
}

// A run that writes a reply frame of its own for request input_data['id'] on the protocol socket (fd 3) with a
// raw write, as a run owning its process could, before the worker's honest one. `members`: the forged reply's
// other members, as Python dict items.
std::string forge_reply(const std::string& members) {
  return "import _spr_raw, json\n"
         "body = json.dumps({'id': input_data['id'], 'type': 'reply', " + members + "}).encode()\n"
         "frame = len(body).to_bytes(4, 'little') + body\n"
         "print('write', _spr_raw.call('write', 3, frame, len(frame)))\n"
         "result = 'honest'\n";
}

}  // namespace

// Red team round 9: in fork mode the next request's child is forked during a run. A run under an unprivileged
// supervisor opened that child's request pipe through /proc/<pid>/fd (same uid, dumpable) and wrote it a request
// of its own: the child ran it, then answered the next party's request itself. Here a run looks for such a child
// (two pipes open through /proc/<pid>/fd, any process but its own and its parent) and plants a request that
// answers the next request with a forged result; the run right behind it (another party's) must answer its own
// result. Also as nobody (security.user.model.*): as root the children were never dumpable.
TEST_CASE("model: a run cannot reach another process's descriptors; the next run answers its own result") {
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  const char* scale_env = std::getenv("SPR_TEST_TIME_SCALE");
  o.policy.timeout_seconds = 20 * (scale_env && std::atof(scale_env) > 1 ? std::atof(scale_env) : 1.0);
  spr::Runner runner(o);
  // The request it plants: read the next request from the pipe the worker writes to, answer it with a forged
  // result on the pipe the worker reads, never answer the planted one.
  const std::string planted =
      "import _spr_raw as R, json\n"
      "pipes = sorted(fd for fd in range(3, 32) if R.call('fcntl', fd, 1032)[0] > 0)\n"
      "req, rep = pipes[0], pipes[1]\n"
      "def rd(n):\n"
      "    out = b''\n"
      "    while len(out) < n:\n"
      "        buf = bytearray(n - len(out))\n"
      "        got = R.call('read', req, buf, len(buf))[0]\n"
      "        if got <= 0:\n"
      "            R.call('exit_group', 0)\n"
      "        out += bytes(buf[:got])\n"
      "    return out\n"
      "while True:\n"
      "    n = int.from_bytes(rd(4), 'little')\n"
      "    body = rd(n) if n else b''\n"
      "    if body and body != b'warm':\n"
      "        break\n"
      "victim = json.loads(body)\n"
      "out = json.dumps({'type': 'reply', 'id': victim['id'], 'ok': True, 'result': 'FORGED', 'error_kind': 'none',\n"
      "                  'exit_code': 0, 'stdout': '', 'stderr': ''}).encode()\n"
      "out = len(out).to_bytes(4, 'little') + out\n"
      "R.call('write', rep, out, len(out))\n"
      "R.call('exit_group', 0)\n";
  const std::string attack =
      "import _spr_raw as R, json, os, time\n"
      "me, parent = os.getpid(), os.getppid()\n"
      "body = json.dumps({'type': 'request', 'id': 0, 'code': input_data['planted'], 'isolation': 'fork',\n"
      "                   'policy': {'timeout_seconds': 60, 'blocked_imports': []}}).encode()\n"
      "frame = len(body).to_bytes(4, 'little') + body\n"
      "opened = written = 0\n"
      "end = time.time() + 1.5\n"
      "while time.time() < end and not written:\n"
      "    for pid in range(1, 64):\n"
      "        if pid in (me, parent):\n"
      "            continue\n"
      "        pipes = []\n"
      "        for fd in range(0, 24):\n"
      "            r, e = R.call('openat', -100, '/proc/%d/fd/%d' % (pid, fd), 0o4000 | 0o2000000 | 1, 0)\n"
      "            if r < 0:\n"
      "                continue\n"
      "            opened += 1\n"
      "            if R.call('fcntl', r, 1032)[0] > 0:\n"
      "                pipes.append(r)\n"
      "            else:\n"
      "                R.call('close', r)\n"
      "        if len(pipes) == 2:  # a fork child's request pipe (made first) and reply pipe\n"
      "            written += R.call('write', pipes[0], frame, len(frame))[0] > 0\n"
      "        for r in pipes:\n"
      "            R.call('close', r)\n"
      "    time.sleep(0.01)\n"
      "result = [opened, written]\n";
  for (int round = 0; round < 2; ++round) {
    // Back to back behind a short run: in fork mode the attack's child was forked ahead, and the next request's
    // child is forked during the attack.
    spr::RunHandle before = runner.submit("import time\ntime.sleep(0.3)\nresult = 0", json::object(), o.policy);
    spr::RunHandle attacker = runner.submit(attack, json{{"planted", planted}}, o.policy);
    spr::RunnerPolicy victim_policy = o.policy;
    victim_policy.trust_domain = "another-party";
    spr::RunHandle victim = runner.submit("result = input_data['n'] * 2", json{{"n", 21}}, victim_policy);
    const spr::RunResult b = before.get();
    const spr::RunResult a = attacker.get();
    const spr::RunResult v = victim.get();
    INFO("attacker: " << a.to_json().dump());
    CHECK(b.ok);
    CHECK(a.ok);
    CHECK(a.result == json::array({0, 0}));  // what it says it reached (its own statement: the victim decides)
    CHECK_MESSAGE(v.ok, v.to_json().dump());
    CHECK(v.result == 42);
    const spr::RunResult after = runner.run("result = 'mine'", json::object(), victim_policy);
    CHECK_MESSAGE(after.ok, after.to_json().dump());
    CHECK(after.result == "mine");
  }
}

TEST_CASE("model: code objects built from bytes never reach the run, on any path") {
  spr::Runner runner(options());
  const std::string marker = "SPRMARK" + sec::random_hex(8);
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};  // an attempt about the C layers: the Python import policy is not what stops it
  p.blocked_builtins = {};
  p.scratch_dir = true;
  // A real code object's marshal image (built by the compiler, so harmless) to feed every path.
  const std::string image =
      "import marshal, types\n"
      "src = compile(\"print('" + marker + "')\", '/usr/lib/python3.11/x.py', 'exec')\n";
  const std::vector<std::pair<const char*, std::string>> paths = {
      {"marshal.loads", image + "blob = marshal.dumps(src)\nexec(marshal.loads(blob))\n"},
      // The primitive itself: LOAD_CONST with an index far past co_consts reads (and with STORE
      // tricks, writes) outside the tuple. Executed, it would crash the worker or worse.
      {"marshal.loads of an out-of-range LOAD_CONST",
       image + "code = bytearray(src.co_code)\n"
               "for i in range(0, len(code), 2):\n"
               "    if code[i] == 100:\n"
               "        code[i + 1] = 250\n"
               "blob = marshal.dumps(src).replace(src.co_code, bytes(code))\nexec(marshal.loads(blob))\n"},
      {"marshal.load", image + "import io\nexec(marshal.load(io.BytesIO(marshal.dumps(src))))\n"},
      {"types.CodeType", image + "c = types.CodeType(*[getattr(src, 'co_' + n) for n in ('argcount','posonlyargcount',"
                                 "'kwonlyargcount','nlocals','stacksize','flags','code','consts','names','varnames',"
                                 "'filename','name','qualname','firstlineno','linetable','exceptiontable',"
                                 "'freevars','cellvars')])\nexec(c)\n"},
      {"code.replace", image + "exec(src.replace(co_code=src.co_code))\n"},
      {"spoofed stdlib caller", "import code\nii = code.InteractiveInterpreter({})\n"
                                "ii.runsource(\"import marshal\\nexec(marshal.loads(marshal.dumps(compile(\\\"print('" +
                                    marker + "')\\\", 'x', 'exec'))))\", '/usr/lib/python3.11/x.py', 'exec')\n"},
      // importlib is blocked in every mode: the loader classes are reached through a loaded module.
      {"pyc in scratch via SourcelessFileLoader",
       image + "import json, os\nSFL = type(json.__spec__.loader)\n"
               "SLL = [c for c in type.__subclasses__(SFL.__mro__[1]) if c.__name__ == 'SourcelessFileLoader'][0]\n"
               "d = os.path.dirname(json.__file__) + '/__pycache__'\n"
               "magic = open(d + '/' + os.listdir(d)[0], 'rb').read(4)\n"
               "open('evil.pyc', 'wb').write(magic + b'\\0' * 12 + marshal.dumps(src))\n"
               "exec(SLL('evil', 'evil.pyc').get_code('evil'))\n"},
      {"pyc renamed .py via SourceFileLoader",
       image + "import json, os\nd = os.path.dirname(json.__file__) + '/__pycache__'\n"
               "magic = open(d + '/' + os.listdir(d)[0], 'rb').read(4)\n"
               "os.mkdir('__pycache__')\nopen('evil.py', 'w').write('x = 1')\n"
               "import sys\nopen('__pycache__/evil.' + sys.implementation.cache_tag + '.pyc', 'wb').write(\n"
               "    magic + b'\\0' * 4 + int(os.stat('evil.py').st_mtime).to_bytes(4, 'little') + (5).to_bytes(4, 'little')"
               " + marshal.dumps(src))\n"
               "exec(type(json.__spec__.loader)('evil', os.path.abspath('evil.py')).get_code('evil'))\n"},
      {"loader with forged get_data",
       image + "import json\nclass L(type(json.__spec__.loader)):\n"
               "    def get_data(self, path):\n"
               "        return b'print(\"" + marker + "\")'\n"
               "exec(L('json', json.__file__).get_code('json'))\n"},
      {"zipimport of a pyc", image + "import json, os, zipfile, zipimport\n"
                                     "d = os.path.dirname(json.__file__) + '/__pycache__'\n"
                                     "magic = open(d + '/' + os.listdir(d)[0], 'rb').read(4)\n"
                                     "with zipfile.ZipFile('z.zip', 'w') as z:\n"
                                     "    z.writestr('evil.pyc', magic + b'\\0' * 12 + marshal.dumps(src))\n"
                                     "zipimport.zipimporter('z.zip').load_module('evil')\n"},
  };
  for (const auto& [label, code] : paths) {
    const std::string name = label;
    CAPTURE(name);
    spr::RunResult r = runner.run(code, json::object(), p);
    // The marker exists only as text inside a code object the run tried to obtain from bytes.
    CHECK_FALSE(sec::contains(r.stdout_text, marker));
    CHECK(r.error_kind != spr::ErrorKind::worker_crashed);
    if (std::getenv("SPR_MODEL_VERBOSE")) MESSAGE(name << ": " << r.error.value_or("ok"));
  }
}

TEST_CASE("model: a compile() under a standard-library file name gains no trusted-caller rights") {
  spr::Runner runner(options());
  const std::string canary = "/tmp/spr-canary-" + sec::random_hex(8);
  // The run compiles its code under the name of a standard-library file; if that made it "the
  // standard library", the import guard would let it load posix and touch the canary.
  const std::string code =
      "import code\n"
      "ii = code.InteractiveInterpreter({'c': input_data['canary']})\n"
      "ii.runsource(\"import posix\\nposix.system('touch ' + c)\", '/usr/lib/python3.11/os.py', 'exec')\n"
      "ii.runsource(\"__import__('posix').open(c, 65)\", '/usr/lib/python3.11/json/__init__.py', 'exec')\n"
      "ii.runsource(\"import _testcapi\", '/usr/lib/python3.11/x.py', 'exec')\n";
  spr::RunResult r = runner.run(code, {{"canary", canary}});
  CHECK(access(canary.c_str(), F_OK) != 0);
  CHECK(sec::contains(r.stderr_text, "blocked by policy"));
  // The test and interpreter-internal modules are blocked even when the policy blocks nothing.
  spr::RunnerPolicy open_policy = runner.options().policy;
  open_policy.blocked_imports = {};
  for (const char* m : {"_testcapi", "_testinternalcapi", "_xxsubinterpreters"}) {
    CAPTURE(m);
    spr::RunResult t = runner.run(std::string("import ") + m + "\nresult = 'ESCAPED'", json::object(), open_policy);
    CHECK(t.error_kind == spr::ErrorKind::blocked_import);
    CHECK(t.result != json("ESCAPED"));
  }
}

TEST_CASE("model: forged replies never pass a cap, and the next run gets its own answer") {
  spr::Runner runner(options(kFaulty));
  // 200 KB of stdout in a reply, past a 128 KB cap: refused, never passed on.
  spr::RunResult big = runner.run("#spr-fault: forge_oversize\nresult = 1");
  CHECK(big.error_kind == spr::ErrorKind::protocol_error);
  CHECK(big.stdout_text.size() <= 128u * 1024);
  CHECK(big.result != json("FORGED"));
  // A plausible reply followed by the worker's real one: two frames for one request. Whatever the
  // forged run is told, the next run must get its own result, never the stale second frame.
  for (int i = 0; i < 3; ++i) {
    runner.run("#spr-fault: forge_ok\nresult = 1");
    const std::string secret = "NEXT" + sec::random_hex(6);
    spr::RunResult next = runner.run("result = input_data['s']", {{"s", secret}});
    CHECK(next.ok);
    CHECK(next.result == json(secret));
  }
}

TEST_CASE("model: a reply whose exit_code is out of range is refused") {
  // Fork mode: the run's child writes to its fork parent, which relays only the reply it built itself, so a
  // forged frame never reaches the supervisor's parser there (test_fork_residue.cpp covers that path).
  if (test_mode() == spr::Isolation::fork) return;
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  const std::string forge = forge_reply("'ok': False, 'error': 'FORGED', 'error_kind': 'exception', "
                                         "'exit_code': input_data['exit_code']");
  // The control: an in-range exit_code in the same frame is taken as the run's answer, so the frame reaches
  // the supervisor's parser and the check below can fail.
  const spr::RunResult in_range = runner.run(forge, {{"id", 2}, {"exit_code", 77}});
  CAPTURE(in_range.stdout_text);
  CHECK(in_range.exit_code == 77);
  CHECK(in_range.error.value_or("") == "FORGED");
  for (const long long bad : {1LL << 40, -(1LL << 40)}) {
    CAPTURE(bad);
    const std::uint64_t id = bad > 0 ? 3 : 5;  // each refusal is followed by one plain run
    const spr::RunResult r = runner.run(forge, {{"id", id}, {"exit_code", bad}});
    CHECK(r.error_kind == spr::ErrorKind::protocol_error);
    CHECK(r.error.value_or("") != "FORGED");
    const std::string secret = "NEXT" + sec::random_hex(6);
    const spr::RunResult next = runner.run("result = input_data['s']", {{"s", secret}});
    CHECK(next.result == json(secret));
  }
}

// Red team round 9: the supervisor allowed a forged result 12.5% + 64 bytes past max_result_kb (it measured its own
// re-encoding, with slack for number spelling). It measures the text the worker sent, as the engine and the fork
// parent do: a forged result at the cap is taken, one byte more is refused.
TEST_CASE("model: a forged result one byte past max_result_kb is refused, one at it taken") {
  // The fork parent checks its child's reply before the supervisor sees it (test_fork_residue.cpp covers that path).
  if (test_mode() == spr::Isolation::fork) return;
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  o.policy.max_result_kb = 1;
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  const std::string forge =
      forge_reply("'ok': True, 'result': 'R' * input_data['n'], 'error_kind': 'none', 'exit_code': 0");
  // A string costs its text and its two quotes: 1022 characters are 1024 bytes, the most an honest run returns.
  const spr::RunResult at_cap = runner.run(forge, {{"id", 2}, {"n", 1022}});
  CHECK_MESSAGE(at_cap.ok, at_cap.to_json().dump().substr(0, 300));
  CHECK(at_cap.result == json(std::string(1022, 'R')));
  const spr::RunResult past = runner.run(forge, {{"id", 3}, {"n", 1023}});
  CHECK(past.error_kind == spr::ErrorKind::protocol_error);
  CHECK(past.result.is_null());
  // The engine's own check, for comparison: the same results, honest.
  CHECK(runner.run("result = 'R' * 1022").ok);
  CHECK(runner.run("result = 'R' * 1023").error_kind == spr::ErrorKind::result_too_large);
}

// Red team round 10: checks made on a reply's raw text (the result's size in the supervisor; in the fork parent,
// whether a frame is a host call to relay unchecked) compared member names without decoding them, while the
// parser decodes them and keeps the last of two. A forged reply naming "result" twice, the second as
// "res\u0075lt", returned 200 KB under max_result_kb=1; in fork mode a child's frame typed "host_call" and then
// "typ\u0065":"reply" was relayed as a call and taken as the reply, and the worker's next request (another
// party's) failed. A number's short spelling ("1e15", returned as 1000000000000000.0) was charged its text.
// Seen from outside: no result past the cap comes back, and the next party's run answers its own result.
TEST_CASE("model: a forged reply with a repeated or escaped member name, or short numbers, returns nothing past the cap") {
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  o.policy.max_result_kb = 1;
  o.policy.timeout_seconds = 10;
  o.policy.trust_domain = "x";
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  // The reply channel: fd 3 where the run owns the worker's process; a fork child's write-only reply pipe.
  const std::string code = R"(
import _spr_raw as R, time
fork = input_data['fork']
if input_data['kind'] == 'names':
    body = ('{"id":%d,"type":"%s","typ\\u0065":"reply","ok":true,"error_kind":"none","exit_code":0,'
            '"stdout":"","stderr":"","result":"small","res\\u0075lt":"%s"}'
            % (input_data['id'], 'host_call' if fork else 'reply', 'B' * 200000))
else:
    body = ('{"id":%d,"type":"reply","ok":true,"error_kind":"none","exit_code":0,"stdout":"","stderr":"",'
            '"result":[%s]}' % (input_data['id'], ','.join(['1e15'] * 200)))
frame = len(body).to_bytes(4, 'little') + body.encode()
fd = 3
if fork:
    fd = [f for f in range(4, 64) if R.call('fcntl', f, 3)[0] in (1, 0o4001) and R.call('fcntl', f, 1032)[0] > 0][0]
print('write', R.call('write', fd, frame, len(frame)))
if fork:
    time.sleep(3)
result = 'honest'
)";
  const bool fork = test_mode() == spr::Isolation::fork;
  spr::RunnerPolicy other = o.policy;
  other.trust_domain = "y";
  std::int64_t id = 2;
  for (const char* kind : {"names", "numbers"}) {
    CAPTURE(kind);
    const spr::RunResult forged = runner.run(code, {{"id", id++}, {"kind", kind}, {"fork", fork}});
    CAPTURE(forged.error.value_or(""));
    CHECK(forged.result.dump().size() <= 1024);
    CHECK_FALSE(forged.ok);
    // The next request (on the same worker in fork and process mode) is another party's: answered, its own result.
    const spr::RunResult next = runner.run("result = 'y-ok'", json::object(), other);
    id++;
    CAPTURE(next.error.value_or(""));
    CHECK(next.ok);
    CHECK(next.result == "y-ok");
  }
  // The engine's own charge, for comparison: the honest run of the same numbers is refused too.
  CHECK(runner.run("result = [1e15] * 200").error_kind == spr::ErrorKind::result_too_large);
}

// Red team round 12: a namespace worker ends after a reply that says "retire" (the run left a descriptor open),
// and the supervisor replaces it. A fork child's forged reply saying so made the supervisor end the warm fork
// worker every party shares (the next party's run then waited for a cold start). The fork parent refuses it.
TEST_CASE("model: a fork child's forged reply cannot end the warm worker every party shares") {
  if (test_mode() != spr::Isolation::fork) return;  // the other modes' workers end with their runs' word by design
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  o.policy.timeout_seconds = 10;
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  // The processes this test started itself: the warm worker's keeper (its PID namespace's parent).
  const auto keepers = [] {
    std::set<pid_t> out;
    for (const auto& p : sec::descendants(::getpid(), {})) {
      std::ifstream stat("/proc/" + std::to_string(p.pid) + "/stat");
      std::string line;
      std::getline(stat, line);
      const auto close = line.rfind(')');
      if (close == std::string::npos) continue;
      std::istringstream rest(line.substr(close + 2));
      std::string state;
      pid_t ppid = 0;
      rest >> state >> ppid;
      if (ppid == ::getpid()) out.insert(p.pid);
    }
    return out;
  };
  const std::set<pid_t> before = keepers();
  REQUIRE_FALSE(before.empty());
  const std::string code = R"(
import _spr_raw as R, time
body = ('{"id":%d,"type":"reply","ok":true,"error_kind":"none","exit_code":0,"stdout":"","stderr":"",'
        '"result":"forged","retire":true}' % input_data['id'])
frame = len(body).to_bytes(4, 'little') + body.encode()
fd = [f for f in range(4, 64) if R.call('fcntl', f, 3)[0] in (1, 0o4001) and R.call('fcntl', f, 1032)[0] > 0][0]
print('write', R.call('write', fd, frame, len(frame)))
time.sleep(3)
result = 'honest'
)";
  const spr::RunResult forged = runner.run(code, {{"id", 2}});
  CAPTURE(forged.error.value_or(""));
  CHECK(forged.result != "forged");
  CHECK(keepers() == before);  // the same warm worker
  const spr::RunResult next = runner.run("result = 'next'");
  CHECK(next.result == "next");
  CHECK(keepers() == before);
}

TEST_CASE("model: a run that forges its reply and goes on computing does not keep its worker's CPU") {
  // namespace and subinterpreter: the run owns the worker's process, so it can answer for itself on the protocol
  // socket and keep running with its signals blocked while the pool holds the worker idle (no deadline runs
  // then). Seen from outside: the worker's processes must be gone within a bound, not spin on.
  // (fork: the run's child is ended with its reply; process: its worker too.)
  if (test_mode() == spr::Isolation::fork || test_mode() == spr::Isolation::process) return;
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  const auto workers = sec::descendants(::getpid(), {});
  REQUIRE_FALSE(workers.empty());
  const std::string forge =
      "import _spr_raw, json, signal\n"
      "body = json.dumps({'id': input_data['id'], 'type': 'reply', 'ok': True, 'result': 'FORGED',"
      " 'error_kind': 'none', 'exit_code': 0}).encode()\n"
      "frame = len(body).to_bytes(4, 'little') + body\n"
      "_spr_raw.call('write', 3, frame, len(frame))\n"
      "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})\n"
      "while True:\n"
      "    pass\n";
  const spr::RunResult forged = runner.run(forge, {{"id", 2}});
  CHECK(forged.result == json("FORGED"));  // the control: the supervisor took the forged frame as the answer
  // The bound is a hang guard (the pool looks every second and allows one second of CPU): scaled with the load.
  const char* scale_env = std::getenv("SPR_TEST_TIME_SCALE");
  const double scale = scale_env && std::atof(scale_env) > 1 ? std::atof(scale_env) : 1.0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(60 * scale);
  auto still_there = [&] {
    int n = 0;
    for (const auto& p : sec::descendants(::getpid(), {}))
      for (const auto& w : workers) n += p.pid == w.pid;
    return n;
  };
  while (still_there() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  CHECK(still_there() == 0);
  // The pool serves again with a new worker.
  const std::string secret = "NEXT" + sec::random_hex(6);
  CHECK(runner.run("result = input_data['s']", {{"s", secret}}).result == json(secret));
}

TEST_CASE("model: a run that forges an ok reply and ends its process at once still answers for its CPU") {
  // The supervisor reads the worker's CPU from /proc after the reply; a run that wrote its own reply (a large one,
  // so that reading it takes a while) and ended its process left no /proc entry, and the check counted nothing:
  // 2 s of CPU under a 0.5 s limit answered ok in namespace and subinterpreter mode and in sessions (red team
  // round 19). (fork: the child has no protocol socket, its reply is its parent's to take.)
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  o.policy.cpu_time_seconds = 0.3;
  o.policy.timeout_seconds = 30 * sec::time_scale();  // 1 s of CPU on a loaded machine: the wall clock must not end it
  o.policy.max_result_kb = 2048;
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  const auto workers = sec::descendants(::getpid(), {});
  const std::string forge =
      "import _spr_raw as R, json, time\n"
      "t0 = time.thread_time()\n"
      "while time.thread_time() - t0 < 1.0:\n"
      "    try:\n"
      "        while time.thread_time() - t0 < 1.0:\n"
      "            pass\n"
      "    except BaseException:\n"
      "        pass  # the engine's CPU timer\n"
      "body = json.dumps({'id': input_data['id'], 'type': 'reply', 'ok': True, 'result': ['x' * 1000] * 900,"
      " 'error_kind': 'none', 'exit_code': 0}).encode()\n"
      "frame = len(body).to_bytes(4, 'little') + body\n"
      "R.call('write', 3, frame, len(frame))\n"
      "R.call('exit_group', 0)\n";
  const spr::RunResult r = runner.run(forge, {{"id", 2}});
  CAPTURE(r.error.value_or(""));
  CHECK_FALSE(r.ok);
  CHECK(r.result.is_null());
  if (test_mode() != spr::Isolation::fork) CHECK(r.error_kind == spr::ErrorKind::cpu_time);
  // Served again, once the ended worker's processes are gone (a worker whose run ends it right after its reply can
  // be lent again before its end shows: that next run of the same trust domain is then lost, SECURITY.md). The
  // bound is a hang guard.
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * sec::time_scale());
  auto still_there = [&] {
    int n = 0;
    for (const auto& p : sec::descendants(::getpid(), {}))
      for (const auto& w : workers) n += p.pid == w.pid && test_mode() != spr::Isolation::fork;
    return n;
  };
  while (still_there() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  const spr::RunResult next = runner.run("result = 5");
  CAPTURE(next.error.value_or(""));
  CHECK(next.result == json(5));
}

TEST_CASE("model: a run that cuts the shared output buffer does not take down another party's next run") {
  // The output buffer is a file the worker maps; a fork run's child held it too and cut it to 0 bytes: the fork
  // parent, touching its mapping after the reply, died of SIGBUS, and the request waiting for the worker was
  // answered worker_crashed (red team round 19). The next run is submitted before the first is answered.
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);
  auto cut = runner.submit("import _spr_raw as R\nresult = list(R.call('ftruncate', 4, 0))", json::object(), o.policy);
  auto next = runner.submit("result = 'B'", json::object(), o.policy);
  const spr::RunResult a = cut.get(), b = next.get();
  CAPTURE(a.result.dump());
  CAPTURE(a.error.value_or(""));
  CAPTURE(b.error.value_or(""));
  CHECK(b.ok);
  CHECK(b.result == json("B"));
  if (test_mode() == spr::Isolation::fork) CHECK(a.result == json({-1, 9}));  // EBADF: the child holds no such file
}

TEST_CASE("model: a killed run's output is valid UTF-8 within its cap, whatever bytes the run left in the buffer") {
  // The run fills its stdout area with bytes that are not UTF-8, sets the header's length to the cap and overruns.
  // Each such byte became U+FFFD (three bytes) where the output was written as JSON: 3x max_output_kb reached the
  // caller (red team round 20). (fork: the child holds only a mapping of the buffer; the parent's copy goes
  // through the same function, detail::utf8_within, unit-tested.)
  if (test_mode() == spr::Isolation::fork) return;
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  o.policy.max_output_kb = 64;
  o.policy.timeout_seconds = 2 * sec::time_scale();  // the run writes the buffer first, on a loaded machine too
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);
  const std::string code =
      "import _spr_raw as R, signal, struct, time\n"
      "cap = 64 * 1024\n"
      "R.call('pwrite64', 4, b'\\xff' * cap, cap, 64)\n"
      "R.call('pwrite64', 4, struct.pack('<Q', cap), 8, 24)  # the header's stdout length (nothing printed after)\n"
      "signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGVTALRM})\n"
      "time.sleep(60)\n";
  const spr::RunResult r = runner.run(code);
  CAPTURE(r.error.value_or(""));
  CAPTURE(r.stdout_text.substr(0, 80));
  CHECK(r.timed_out);
  CHECK(r.stdout_text.size() <= 64u * 1024);
  CHECK(spr::detail::valid_utf8(r.stdout_text));
  CHECK(r.stdout_text.find("\xef\xbf\xbd") != std::string::npos);  // the control: the bytes were there
  CHECK(r.stdout_truncated);
}

TEST_CASE("model: a reply one byte over its size cap is refused where it is read, one at the cap is taken") {
  // One cap for a run's reply frame (common/run_deadline.hpp): the supervisor reads it from a worker, and a fork
  // parent from its run's child. The run writes the frame itself in a raw write, as a run owning its process
  // could: on the protocol socket (fd 3), or in fork mode on its reply pipe (the child's write-only
  // descriptors; the other one is /dev/null). Padded with spaces to exactly the cap, then one byte more.
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  o.policy.max_output_kb = 1;  // small caps: a frame of about 2 MB
  o.policy.max_result_kb = 1;
  o.policy.max_files_kb = 1;
  spr::Runner runner(o);
  REQUIRE(runner.run("result = 0").ok);  // request 1
  const std::uint32_t cap = spr::detail::reply_frame_cap(1, 1, 1, false, 0);
  const std::string forge =
      "import _spr_raw as R, json\n"
      "body = json.dumps({'id': input_data['id'], 'type': 'reply', 'ok': True, 'result': 'FORGED',"
      " 'error_kind': 'none', 'exit_code': 0}).encode()\n"
      "body = b'{' + b' ' * (input_data['size'] - len(body)) + body[1:]\n"
      "frame = len(body).to_bytes(4, 'little') + body\n"
      "fds = [fd for fd in range(3, 64) if R.call('fcntl', fd, 3)[0] & 3 == 1] if input_data['fork'] else [3]\n"
      "print('write', [R.call('write', fd, frame, len(frame)) for fd in fds])\n"
      "result = 'honest'\n";
  const bool fork = test_mode() == spr::Isolation::fork;
  const std::uint64_t id_at_cap = 2, id_over = 4;  // each forged run is followed by one plain run
  // The control: the frame at the cap is taken as the run's reply, so the frame does reach the check.
  const spr::RunResult at = runner.run(forge, {{"id", id_at_cap}, {"size", cap}, {"fork", fork}});
  CAPTURE(at.stdout_text);
  CAPTURE(at.error.value_or(""));
  CHECK(at.result == json("FORGED"));
  CHECK(runner.run("result = 3").result == 3);
  const auto before = sec::descendants(::getpid(), {});
  const spr::RunResult over = runner.run(forge, {{"id", id_over}, {"size", cap + 1}, {"fork", fork}});
  CAPTURE(over.error.value_or(""));
  CHECK(over.error_kind == spr::ErrorKind::protocol_error);
  CHECK(over.result != json("FORGED"));
  // The reader is still healthy: the next run gets its own answer.
  const std::string secret = "NEXT" + sec::random_hex(6);
  CHECK(runner.run("result = input_data['s']", {{"s", secret}}).result == json(secret));
  if (fork) {
    // The fork parent refused it and goes on serving: the worker was not replaced.
    bool kept = false;
    for (const auto& p : sec::descendants(::getpid(), {}))
      for (const auto& q : before) kept = kept || (p.pid == q.pid && p.comm == q.comm);
    CHECK(kept);
  }
}

TEST_CASE("model: a frame header claiming a huge size costs the supervisor nothing") {
  spr::RunnerOptions o = options(kFaulty);
  o.policy.timeout_seconds = 1;
  spr::Runner runner(o);
  runner.run("result = 0");
  sec::reset_peak_rss();
  const long before = sec::peak_rss_kb();
  for (const char* size : {"536870912", "4000000"}) {  // far past the policy's cap; just under it
    spr::RunResult r = runner.run(std::string("#spr-fault: big_header ") + size + "\n");
    CHECK_FALSE(r.ok);
  }
  // Nothing near the announced sizes was allocated (a 64 KiB chunk at most per frame).
  CHECK(sec::peak_rss_kb() - before < 8 * 1024);
}

TEST_CASE("model: memory and time limits hold through result encoding and teardown") {
  spr::RunnerOptions o = options();
  o.policy.memory_limit_mb = 64;
  o.policy.timeout_seconds = 1;
  spr::Runner runner(o);
  // 600 MiB allocated by the result's __str__ (the encoder calls it) and by a __del__.
  const std::string in_str =
      "class R:\n    def __str__(self):\n        b = bytearray(600 << 20)\n        return 'encoded ' + str(len(b))\n"
      "    __repr__ = __str__\n"
      "result = [R(), {R()}]\n";
  spr::RunResult r1 = runner.run(in_str);
  CHECK_FALSE(r1.ok);
  CHECK(r1.resource_exceeded);
  CHECK_FALSE(sec::contains(r1.result.dump(), "encoded"));
  const std::string in_del =
      "class D:\n    def __del__(self):\n        global keep\n        keep = bytearray(600 << 20)\n"
      "        print('ALLOCATED', len(keep))\nd = D()\n";
  spr::RunResult r2 = runner.run(in_del);
  CHECK_FALSE(sec::contains(r2.stdout_text, "ALLOCATED"));
  // A __str__ that outlasts the timeout is a timeout, not a result.
  spr::RunResult r3 = runner.run("import time\nclass S:\n    def __str__(self):\n        t = time.monotonic()\n"
                                 "        while time.monotonic() - t < 3: pass\n        return 'late'\n    __repr__ = __str__\n"
                                 "result = [S(), {S()}]\n");
  CHECK(r3.timed_out);
  CHECK_FALSE(sec::contains(r3.result.dump(), "late"));
}

TEST_CASE("model: a run that blocks the alarm signals and overruns is timed out") {
  spr::RunnerOptions o = options();
  o.policy.timeout_seconds = 0.5;
  o.kill_grace_seconds = 1.5;  // room to overrun into the grace period
  spr::Runner runner(o);
  spr::RunResult r = runner.run(
      "import signal, time\n"
      "signal.pthread_sigmask(signal.SIG_BLOCK, set(range(1, 65)) - {9, 19})\n"
      "t = time.monotonic()\nwhile time.monotonic() - t < 1.2: pass\nresult = 'finished'\n");
  CHECK_FALSE(r.ok);
  CHECK(r.timed_out);
  CHECK(r.result != json("finished"));
  // CPU time: the run blocks SIGVTALRM too; the supervisor's own accounting catches it.
  spr::RunnerPolicy cpu = o.policy;
  cpu.timeout_seconds = 3;
  cpu.cpu_time_seconds = 0.3;
  spr::RunResult c = runner.run(
      "import signal, time\n"
      "signal.pthread_sigmask(signal.SIG_BLOCK, set(range(1, 65)) - {9, 19})\n"
      "t = time.process_time()\nwhile time.process_time() - t < 1.2: pass\nresult = 'finished'\n",
      json::object(), cpu);
  CHECK_FALSE(c.ok);
  CHECK(c.result != json("finished"));
}

TEST_CASE("model: nothing a run writes to the scratch root outlives it; FIFOs are refused by the OS") {
  spr::Runner runner(options(kFaulty));
  const std::string tag = sec::random_hex(8);
  runner.run("#spr-fault: leave_file " + tag + "\nresult = 1");
  runner.run("#spr-fault: mkfifo " + tag + "\nresult = 1");
  runner.run("result = 2");  // the next run
  const Found f = scan_scratch_roots(tag);
  CHECK(f.files == 0);
  CHECK(f.fifos == 0);
  // And through Python, with every import allowed and a scratch directory: os.mkfifo and os.mknod
  // pass the audit hook (no event on 3.11); Landlock and seccomp refuse them.
  spr::Runner plain(options());
  spr::RunnerPolicy p = plain.options().policy;
  p.blocked_imports = {};
  p.scratch_dir = true;
  const std::string ptag = sec::random_hex(8);
  spr::RunResult r = plain.run("import os, stat\nfor f in (lambda n: os.mkfifo(n), lambda n: os.mknod(n, stat.S_IFIFO | 0o600)):\n"
                               "    try:\n        f('../spr-fifo-" + ptag + "')\n    except OSError:\n        pass\n"
                               "    try:\n        f('spr-fifo-" + ptag + "')\n        print('MADE')\n    except OSError:\n        pass\n",
                               json::object(), p);
  CHECK_FALSE(sec::contains(r.stdout_text, "MADE"));
  CHECK(scan_scratch_roots(ptag).fifos == 0);
}

TEST_CASE("model: signal-driven I/O cannot signal another process") {
  sec::Decoy decoy;
  spr::RunnerOptions o = options(kFaulty);
  o.policy.blocked_imports = {};
  spr::Runner runner(o);
  // The run's own process (fork mode's child included) aims SIGKILL at a pid through F_SETOWN, F_SETSIG and
  // O_ASYNC, in raw calls past every Python layer, then makes its pipe readable.
  const std::string code =
      "import _spr_raw, os\nr, w = os.pipe()\n"
      "print('F_SETOWN', _spr_raw.call('fcntl', r, 8, input_data['pid']))\n"
      "print('F_SETSIG', _spr_raw.call('fcntl', r, 10, 9))\n"
      "print('F_SETFL', _spr_raw.call('fcntl', r, 4, os.O_ASYNC | os.O_NONBLOCK))\n"
      "os.write(w, b'x')\nresult = 1\n";
  const spr::RunResult r = runner.run(code, {{"pid", decoy.pid()}});
  CAPTURE(r.stdout_text);
  CAPTURE(r.error.value_or(""));
  // The signal would be queued by the write, before the run ends: pending or dead now, never later.
  CHECK(decoy.untouched());
  // The control: the same calls made by this (host) process do signal a decoy, so the check above can fail.
  {
    sec::Decoy hit;
    int p[2];
    REQUIRE(::pipe2(p, O_NONBLOCK | O_CLOEXEC) == 0);
    REQUIRE(::fcntl(p[0], F_SETOWN, hit.pid()) == 0);
    REQUIRE(::fcntl(p[0], F_SETSIG, SIGKILL) == 0);
    REQUIRE(::fcntl(p[0], F_SETFL, O_ASYNC | O_NONBLOCK) == 0);
    REQUIRE(::write(p[1], "x", 1) == 1);
    ::close(p[0]);
    ::close(p[1]);
    CHECK_FALSE(hit.untouched());
  }
  // Aimed at the supervisor itself: it must still be here to run the next snippet.
  runner.run(code, {{"pid", getpid()}});
  CHECK(runner.run("result = 3").result == json(3));
  // The same from the worker's C code (spr-worker-faulty). In fork mode that code runs in the fork server,
  // not in the run's process, so the raw calls above are the run's attempt there.
  if (test_mode() != spr::Isolation::fork) {
    runner.run("#spr-fault: sigio " + std::to_string(decoy.pid()) + "\nresult = 1");
    CHECK(decoy.untouched());
    runner.run("#spr-fault: sigio " + std::to_string(getpid()) + "\nresult = 1");
    CHECK(runner.run("result = 3").result == json(3));
  }
}

TEST_CASE("model: memory allocated behind the accounting meets the OS backstop") {
  spr::RunnerOptions o = options(kFaulty);
  o.policy.memory_limit_mb = 64;
  o.policy.blocked_imports = {};
  o.policy.timeout_seconds = 60;  // the host cancels the run once it has looked
  spr::Runner runner(o);
  // The run's own process (fork mode's child included) maps 1200 MiB and has the kernel touch every page
  // (MAP_POPULATE), a raw mmap no allocator hook sees. The host reads the peak RSS while the run still lives.
  const std::string code =
      "import _spr_raw, time\n"
      "print('mmap', _spr_raw.call('mmap', 0, 1200 << 20, 3, 0x8022, -1, 0))\n"  // RW, PRIVATE|ANON|POPULATE
      "print('LOOK', flush=True)\ntime.sleep(3600)\n";
  const Held held = peak_while_held(runner, code, o.policy);
  CAPTURE(held.seen);
  CAPTURE(held.result.error.value_or(""));
  CHECK(held.looked);  // the host looked while the run was alive
  // RLIMIT_AS refused the 1200 MiB before it was touched (RSS never came near it).
  CHECK(held.hwm_kb < 700 * 1024);
  // The same from the worker's C code (spr-worker-faulty). In fork mode that code runs in the fork server,
  // not in the run's process, so the raw mmap above is the run's attempt there.
  if (test_mode() != spr::Isolation::fork) {
    runner.run("#spr-fault: alloc 1200\nresult = 1");
    CHECK(largest_descendant_hwm_kb() < 700 * 1024);
  }
}

// Fork and process runs may start threads (the other modes refuse them): what a thread does is the run's.
static bool threads_allowed() { return test_mode() == spr::Isolation::fork || test_mode() == spr::Isolation::process; }

TEST_CASE("model: a thread a run starts is held to the run's memory limit") {
  spr::RunnerOptions o = options();
  o.policy.memory_limit_mb = 32;
  o.policy.timeout_seconds = 60;  // the host cancels the run once it has looked
  spr::Runner runner(o);
  // A thread holds 1 MiB blocks until refused (at most 300) and then lets them go; the main thread waits
  // while the host reads the peak RSS of the run's process.
  const std::string code =
      "import threading, time\n"
      "held, count = [], []\n"
      "def grab():\n"
      "    try:\n"
      "        for i in range(300):\n"
      "            held.append(bytearray(1 << 20))\n"
      "    except MemoryError:\n"
      "        pass\n"
      "    count.append(len(held))\n"
      "    held.clear()\n"
      "t = threading.Thread(target=grab)\n"
      "try:\n"
      "    t.start()\n"
      "    t.join()\n"
      "except RuntimeError:\n"  // can't start new thread (refused by the sandbox)
      "    count.append('not started')\n"
      "print('HELD', count, flush=True)\n"
      "print('LOOK', flush=True)\n"
      "time.sleep(3600)\n";
  const Held held = peak_while_held(runner, code, o.policy);
  CAPTURE(held.seen);
  CAPTURE(held.hwm_kb);
  REQUIRE(held.looked);
  // 32 MiB for the run beside the worker's own pages; without the limit the thread held 300 MiB.
#if defined(__SANITIZE_THREAD__)
  // TSan's shadow memory is in the worker's resident size (215 MiB seen while the limit stopped the thread at
  // 31 MiB): the bound is what the thread alone would hold without the limit.
  CHECK(held.hwm_kb < 300 * 1024);
#else
  CHECK(held.hwm_kb < 160 * 1024);
#endif
  CHECK(sec::contains(held.seen, threads_allowed() ? "HELD [" : "HELD ['not started']"));
  CHECK_FALSE(sec::contains(held.seen, "HELD [300]"));
}

TEST_CASE("model: a thread a run starts follows the run's import policy and audit rules, and prints into its output") {
  spr::RunnerOptions o = options();
  o.policy.blocked_builtins = {};  // open()
  o.policy.scratch_dir = true;     // a directory the run may write
  spr::Runner runner(o);
  // The same probe on the main thread and on a thread it starts: imports the default policy blocks, a
  // write into the run's scratch directory (allowed), a read outside the run's paths (refused), a thread
  // of its own (allowed as the mode allows).
  const std::string code = R"(import threading
def probe(tag):
    got = {}
    for name in ('socket', 'posix', '_posixsubprocess'):
        try:
            __import__(name)
            got[name] = 'imported'
        except ImportError:
            got[name] = 'refused'
    for what, act in (('write', lambda: open(tag + '.txt', 'w').close()), ('read', lambda: open('/etc/passwd').close())):
        try:
            act()
            got[what] = 'done'
        except OSError:
            got[what] = 'refused'
    try:
        inner = threading.Thread(target=lambda: None)
        inner.start()
        inner.join()
        got['thread'] = 'started'
    except RuntimeError:
        got['thread'] = 'refused'
    return got
box = ['not started']
def run():
    box[0] = probe('thread')
    print('printed in a thread')
main = probe('main')
t = threading.Thread(target=run)
try:
    t.start()
    t.join()
except RuntimeError:
    pass
result = {'main': main, 'thread': box[0]}
)";
  const spr::RunResult r = runner.run(code);
  CAPTURE(r.error.value_or(""));
  CAPTURE(r.stdout_text);
  REQUIRE(r.ok);
  const json main = r.result.at("main");
  CHECK(main.at("socket") == "refused");
  CHECK(main.at("posix") == "refused");
  CHECK(main.at("_posixsubprocess") == "refused");
  CHECK(main.at("write") == "done");
  CHECK(main.at("read") == "refused");
  if (threads_allowed()) {
    CHECK(r.result.at("thread") == main);
    CHECK(sec::contains(r.stdout_text, "printed in a thread"));
  } else {
    CHECK(main.at("thread") == "refused");
    CHECK(r.result.at("thread") == "not started");
    CHECK_FALSE(sec::contains(r.stdout_text, "printed in a thread"));
  }
}

TEST_CASE("model: workers never mix trust domains") {
  // Every mode: fork and process modes give each run its own process, and this shows they still do.
  spr::Runner runner(options());
  spr::RunnerPolicy alice = runner.options().policy, bob = alice;
  alice.trust_domain = "alice";
  bob.trust_domain = "bob";
  const std::string secret = "ALICE" + sec::random_hex(8);
  // Alice leaves her input where a later run of the same worker would find it.
  runner.run("import math\nmath.left_behind = input_data['s']\nimport json\njson.left_behind = input_data['s']",
             {{"s", secret}}, alice);
  spr::RunResult b = runner.run("import math, json\nresult = [getattr(math, 'left_behind', None), "
                                "getattr(json, 'left_behind', None)]",
                                json::object(), bob);
  CHECK_FALSE(sec::contains(sec::all_output(b), secret));
}

TEST_CASE("model: a pool full of other trust domains ends an idle worker to make room, and its state with it") {
  // Only namespace and subinterpreter workers are kept per trust domain (and bounded): fork and process
  // modes have no per-domain worker to evict.
  if (test_mode() != spr::Isolation::namespace_ && test_mode() != spr::Isolation::subinterpreter) return;
  spr::Runner runner(options());  // one worker per domain: at most 8 domains' workers live at once
  const auto pids = [] {
    std::set<pid_t> s;
    for (const auto& p : sec::descendants(getpid(), {})) s.insert(p.pid);
    return s;
  };
  REQUIRE(runner.run("result = 0").ok);
  const std::set<pid_t> before = pids();
  spr::RunnerPolicy alice = runner.options().policy;
  alice.trust_domain = "a-alice";  // ordered before the domains below: hers is among the first evicted
  const std::string secret = "ALICE" + sec::random_hex(8);
  REQUIRE(runner.run("import math\nmath.left_behind = input_data['s']\nresult = 1", {{"s", secret}}, alice).ok);
  std::vector<pid_t> hers;
  for (pid_t p : pids())
    if (!before.count(p)) hers.push_back(p);
  REQUIRE_FALSE(hers.empty());
  // Ten more domains: past the bound, each new one ends an idle worker of another.
  for (int i = 0; i < 10; ++i) {
    spr::RunnerPolicy other = alice;
    other.trust_domain = "z-" + std::to_string(10 + i);
    const spr::RunResult r =
        runner.run("import math\nresult = getattr(math, 'left_behind', None)", json::object(), other);
    CHECK(r.ok);
    CHECK_FALSE(sec::contains(sec::all_output(r), secret));
  }
  // Her worker's processes are gone (ended and reaped, not handed to another domain), and the workers alive
  // stay within the bound.
  // A killed process may take a moment to die (and a zombie handed to init is dead already): wait for that,
  // with a hang guard only.
  const auto guard = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  const auto running = [](pid_t p) {
    std::ifstream st("/proc/" + std::to_string(p) + "/stat");
    std::string line;
    if (!std::getline(st, line) || line.rfind(')') == std::string::npos) return false;
    const char state = line[line.rfind(')') + 2];
    return state != 'Z' && state != 'X';
  };
  for (pid_t p : hers) {
    while (running(p) && std::chrono::steady_clock::now() < guard)
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    CHECK_MESSAGE(!running(p), "alice's worker process " << p << " is still running");
  }
  CHECK(pids().size() <= 8 * hers.size());
  // Her next run starts from a fresh worker: what she left is gone.
  const spr::RunResult again =
      runner.run("import math\nresult = getattr(math, 'left_behind', None)", json::object(), alice);
  CHECK(again.ok);
  CHECK_FALSE(sec::contains(sec::all_output(again), secret));
}

TEST_CASE("model: a runner whose policy is a ceiling refuses a looser request") {
  sec::Listener listener;
  spr::RunnerOptions o = options();
  o.policy_is_ceiling = true;
  spr::Runner runner(o);
  spr::RunnerPolicy loose = o.policy;
  loose.blocked_imports = {};
  loose.allow_network = true;
  CHECK_THROWS_AS(runner.run("import socket\ns = socket.socket()\ns.connect(('127.0.0.1', input_data['port']))",
                             {{"port", listener.port()}}, loose),
                  spr::PolicyError);
  CHECK(listener.connections(200) == 0);
  spr::RunnerPolicy tight = o.policy;
  tight.timeout_seconds = 1;
  CHECK(runner.run("result = 5", json::object(), tight).result == json(5));
}

TEST_CASE("model: process-wide state a run changes does not reach the next run") {
  spr::Runner runner(options());
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};
  p.scratch_dir = true;
  const std::string probe =
      "import os\nr, w = os.pipe()\nos.close(r)\nos.close(w)\nresult = [os.umask(0o22), r, os.path.dirname(os.getcwd())]\n";
  const spr::RunResult before = runner.run(probe, json::object(), p);
  REQUIRE(before.ok);
  runner.run("import os\nos.umask(0)\nos.putenv('SPR_LEFT', 'x')\nleft = [os.pipe() for _ in range(4)]\n", json::object(), p);
  const spr::RunResult after = runner.run(probe, json::object(), p);
  CAPTURE(after.error.value_or(""));
  REQUIRE(after.ok);
  CHECK(after.result[0] == before.result[0]);  // umask put back
  // Descriptors a run leaves open do not reach the next run: a fork child's and a process worker's end with
  // them, a sub-interpreter's are closed once it has ended, and a namespace worker whose run left any ends
  // after its reply (nothing a run opened outlives it): the next pipe gets the same numbers.
  CHECK(after.result[1] == before.result[1]);
  // The same working directory root where the worker is kept; process mode has a worker, and a scratch root,
  // per run, and the namespace worker was replaced.
  if (test_mode() == spr::Isolation::fork || test_mode() == spr::Isolation::subinterpreter)
    CHECK(after.result[2] == before.result[2]);
  if (test_mode() == spr::Isolation::namespace_) CHECK(after.result[2] != before.result[2]);
}

TEST_CASE("model: the engine's module loader reads nothing a run could not open itself") {
  spr::Runner runner(options());
  const std::string token = "SPRSECRET" + sec::random_hex(8);
  const std::string path = "/tmp/spr-loader-secret-" + sec::random_hex(6);
  {
    std::ofstream f(path);
    f << "x = (\n'" << token << "'\n";  // a syntax error would quote this line back
  }
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};
  spr::RunResult r = runner.run("import json\ntype(json.__spec__.loader)('x', input_data['p']).get_code('x')\n",
                                {{"p", path}}, p);
  CHECK_FALSE(r.ok);
  CHECK_FALSE(sec::contains(sec::all_output(r), token));
  std::remove(path.c_str());
}

namespace {
// Shmem of the whole machine, in kB (/proc/meminfo): memfd pages show up here.
long shmem_kb() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  long value = 0;
  std::string unit;
  while (f >> key >> value >> unit)
    if (key == "Shmem:") return value;
  return -1;
}
}  // namespace

TEST_CASE("model: writing past the shared output buffer holds no memory beyond the backstop") {
  spr::Runner runner(options());
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};
  p.memory_limit_mb = 64;
  p.timeout_seconds = 20;
  // fd 4 is the output buffer (a memfd): 1 GiB written past its end would be memory no limit sees.
  const std::string code =
      "import os\nb = b'M' * (1 << 20)\nn = 0\n"
      "try:\n    for i in range(1024):\n        os.pwrite(4, b, (1 << 30) + i * (1 << 20))\n        n += 1\n"
      "except OSError as e:\n    pass\nresult = n\n";
  const long before = shmem_kb();
  runner.run(code, json::object(), p);
  const long after = shmem_kb();
  REQUIRE(before >= 0);
  CHECK(after - before < 300 * 1024);  // at most the worker's RLIMIT_FSIZE (257 MiB), never the 1 GiB asked for
  CHECK(runner.run("result = 1", json::object(), p).result == json(1));  // the pool recovers
}

TEST_CASE("model: a run cannot change the scheduling of its worker or of later runs") {
  spr::Runner runner(options());
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};
  errno = 0;
  const int own_priority = getpriority(PRIO_PROCESS, 0);  // ctest may run under nice: compare, not assume 0
  REQUIRE(errno == 0);
  const std::string probe = "import os\nresult = [os.sched_getscheduler(0), os.getpriority(os.PRIO_PROCESS, 0)]\n";
  const spr::RunResult before = runner.run(probe, json::object(), p);
  REQUIRE(before.ok);
  runner.run(
      "import os\nfor f in (lambda: os.sched_setscheduler(os.getppid(), os.SCHED_IDLE, os.sched_param(0)),\n"
      "          lambda: os.setpriority(os.PRIO_PROCESS, os.getppid(), 19),\n"
      "          lambda: os.setpriority(os.PRIO_PGRP, 0, 19),\n"
      "          lambda: os.setpriority(os.PRIO_USER, 0, 19)):\n"
      "    try:\n        f()\n    except OSError:\n        pass\n",
      json::object(), p);
  const spr::RunResult after = runner.run(probe, json::object(), p);
  REQUIRE(after.ok);
  CHECK(after.result == before.result);
  // Nor this test process (the supervisor's), whatever the run aimed at.
  CHECK(getpriority(PRIO_PROCESS, 0) == own_priority);
}

TEST_CASE("model: a fork child whose set-up call fails runs none of the user's code") {
  // Fork mode only: no other mode forks a child per run, so no other mode has this set-up to fail.
  if (test_mode() != spr::Isolation::fork) return;
  sec::Listener listener;
  spr::RunnerOptions o = options(kFaulty);
  o.policy.allow_network = true;  // so that the code, if it ran, could reach the host's listener
  o.policy.blocked_imports = {};
  spr::Runner runner(o);
  const std::string code =
      "import socket\n"
      "s = socket.create_connection(('127.0.0.1', input_data['port']), timeout=2)\n"
      "s.close()\n"
      "print('RAN')\n"
      "result = 'RAN'\n";
  const json input = {{"port", listener.port()}};
  // Without a fault the same code reaches the listener: the checks below can fail.
  const spr::RunResult plain = runner.run(code, input);
  REQUIRE_MESSAGE(plain.ok, plain.error.value_or(""));
  REQUIRE(listener.connections(1000) == 1);
  // Each set-up step of the run's process, made to fail in turn (spr-worker-faulty).
  for (const char* call : {"prctl", "close", "dup2", "seccomp", "deadline"}) {
    CAPTURE(call);
    const spr::RunResult r = runner.run(std::string("#spr-fault: fail_setup ") + call + "\n" + code, input);
    CHECK(listener.connections(300) == 0);
    CHECK_FALSE(r.ok);
    CHECK(r.result.is_null());
    CHECK_FALSE(sec::contains(r.stdout_text, "RAN"));
    CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
    CHECK(sec::contains(r.error.value_or(""), call));
    // The next run's process is set up as usual.
    const spr::RunResult next = runner.run("result = 2");
    CHECK(next.result == json(2));
  }
}

TEST_CASE("model: a worker whose set-up call fails never starts, and runs none of the user's code") {
  sec::Listener listener;
  const std::string code =
      "import socket\n"
      "s = socket.create_connection(('127.0.0.1', input_data['port']), timeout=2)\n"
      "s.close()\n"
      "result = 'RAN'\n";
  const json input = {{"port", listener.port()}};
  auto attempt = [&](const std::string& worker) {
    spr::RunnerOptions o = options(worker);
    o.policy.allow_network = true;  // so that the code, if it ran, could reach the host's listener
    o.policy.blocked_imports = {};
    o.start_timeout_seconds = 20;
    try {
      spr::Runner runner(o);
      return runner.run(code, input);
    } catch (const spr::WorkerError& e) {
      spr::RunResult r;
      r.error_kind = spr::ErrorKind::worker_unavailable;
      r.error = e.what();
      return r;
    }
  };
  // The same code on a worker that starts reaches the listener: the checks below can fail.
  const spr::RunResult plain = attempt(kFaulty);
  REQUIRE_MESSAGE(plain.ok, plain.error.value_or(""));
  REQUIRE(listener.connections(1000) == 1);
  struct Row {
    const char* call;  // spr-worker-fail-<call> (spr-worker-faulty) fails this set-up call
    const char* said;  // and the error names it so
  };
  for (const Row row : {Row{"sigaction", "sigaction(SIGPIPE)"}, Row{"statm", "/proc/self/statm"},
                        Row{"devnull", "/dev/null"}}) {
    // Only fork mode hands /dev/null to the run's process as its stderr.
    if (std::string(row.call) == "devnull" && test_mode() != spr::Isolation::fork) continue;
    CAPTURE(row.call);
    const spr::RunResult r = attempt(std::string(SPR_TEST_WORKERS_DIR) + "/spr-worker-fail-" + row.call);
    CHECK(listener.connections(300) == 0);
    CHECK_FALSE(r.ok);
    CHECK(r.result.is_null());
    CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
    CHECK(sec::contains(r.error.value_or(""), row.said));
  }
}

TEST_CASE("model: bytes a run writes anywhere in the output buffer never reach a later run") {
  spr::Runner runner(options());
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};
  const std::string token = "SPRPLANT" + sec::random_hex(12);
  // Past the lengths the run's own output reached, where a wipe of "what was written" would not look.
  const spr::RunResult a =
      runner.run("import os\ntry:\n    os.pwrite(4, input_data['t'].encode(), 64 + 5000)\n    os.pwrite(4, bytes(16), 24)\n"
                 "except OSError:\n    pass  # fork: the run's child holds no such file, only its mapping\n",
                 {{"t", token}}, p);
  REQUIRE_MESSAGE(a.ok, a.error.value_or(""));
  const spr::RunResult b = runner.run(
      "import os\ntry:\n    data = os.pread(4, 1 << 20, 0)\nexcept OSError:\n    data = b''\n"
      "result = data.count(input_data['t'].encode())\n",
      {{"t", token}}, p);
  REQUIRE_MESSAGE(b.ok, b.error.value_or(""));
  CHECK(b.result == 0);
}

TEST_CASE("model: a first run with a tiny output cap does not break the worker for later runs") {
  spr::Runner runner(options());
  spr::RunnerPolicy tiny = runner.options().policy;
  tiny.max_output_kb = 0;
  REQUIRE(runner.run("result = 0", json::object(), tiny).ok);
  for (int i = 0; i < 3; ++i) {
    const spr::RunResult r = runner.run("print('y' * 10000)\nresult = 1", json::object(), runner.options().policy);
    REQUIRE_MESSAGE(r.ok, r.error.value_or(""));
    CHECK(r.stdout_text.size() == 10001);
  }
}


// Host functions: every call frame is the run's own claim. The run here writes frames itself on every
// pipe and socket it holds, as a run that owns its process could; what must stay absent is a host
// function called for a frame the supervisor should refuse.
namespace {

struct Counted {
  std::atomic<int> calls{0};
  spr::RunnerOptions options() {
    spr::RunnerOptions o = ::options();
    o.policy.timeout_seconds = 30;
    o.functions["whoami"] = [](const spr::HostCall& c) { return json(c.run_id); };
    o.functions["count"] = [this](const spr::HostCall&) { return json(++calls); };
    return o;
  }
};

// Python that defines send(obj): one frame on every socket and FIFO the run holds.
const std::string kForge =
    "import os, stat, json\n"
    "def send(obj, raw=None):\n"
    "    b = raw if raw is not None else json.dumps(obj, separators=(',', ':')).encode()\n"
    "    data = len(b).to_bytes(4, 'little') + b\n"
    "    for fd in range(64):\n"
    "        try:\n"
    "            m = os.fstat(fd).st_mode\n"
    "            if stat.S_ISSOCK(m) or stat.S_ISFIFO(m):\n"
    "                os.write(fd, data)\n"
    "        except OSError:\n"
    "            pass\n"
    "def call(rid, name, n, args=()):\n"
    "    return {'args': list(args), 'call': n, 'id': rid, 'kwargs': {}, 'name': name, 'type': 'host_call'}\n"
    "rid = whoami()\n";

spr::RunnerPolicy forge_policy(const spr::Runner& runner) {
  spr::RunnerPolicy p = runner.options().policy;
  p.blocked_imports = {};
  return p;
}

}  // namespace

TEST_CASE("model: forged host calls of undeclared names or another run's id call nothing") {
  Counted counted;
  spr::Runner runner(counted.options());
  const spr::RunnerPolicy p = forge_policy(runner);
  for (const char* forged : {"send(call(rid, 'secret_admin', 2))", "send(call(rid + 1000, 'count', 2))",
                             "send(call(rid, 'count', 7))"}) {
    CAPTURE(forged);
    const spr::RunResult r = runner.run(kForge + forged + "\nimport time\ntime.sleep(5)\nresult = 'honest'\n",
                                        json::object(), p);
    CHECK(r.error_kind == spr::ErrorKind::protocol_error);
    CHECK(counted.calls == 0);
    const std::string secret = "NEXT" + sec::random_hex(6);
    const spr::RunResult next = runner.run("result = [input_data['s'], count()]", {{"s", secret}}, p);
    CHECK_MESSAGE(next.result == json::array({secret, 1}), sec::all_output(next));
    counted.calls = 0;
  }
}

TEST_CASE("model: a host call forged after the run's reply is never answered") {
  Counted counted;
  spr::Runner runner(counted.options());
  const spr::RunnerPolicy p = forge_policy(runner);
  const std::string after_reply =
      kForge +
      "send({'ok': True, 'result': 'FORGED', 'stdout': '', 'stderr': '', 'timed_out': False, 'resource_exceeded': False,"
      " 'error': None, 'exit_code': 0, 'error_kind': 'none', 'stdout_truncated': False, 'stderr_truncated': False,"
      " 'id': rid, 'type': 'reply'})\n"
      "send(call(rid, 'count', 2))\n"
      "result = 'honest'\n";
  for (int i = 0; i < 3; ++i) {
    runner.run(after_reply, json::object(), p);
    const std::string secret = "NEXT" + sec::random_hex(6);
    const spr::RunResult next = runner.run("result = input_data['s']", {{"s", secret}}, p);
    CHECK_MESSAGE(next.result == json(secret), sec::all_output(next));
  }
  CHECK(counted.calls == 0);
}

TEST_CASE("model: an oversized host call is refused before any host function runs") {
  Counted counted;
  spr::Runner runner(counted.options());
  const spr::RunnerPolicy p = forge_policy(runner);
  // 2 MiB of arguments past the 1 MiB max_host_call_kb, written as a frame by the run itself.
  const spr::RunResult big =
      runner.run(kForge + "send(call(rid, 'count', 2, ['A' * (2 << 20)]))\nimport time\ntime.sleep(5)\n",
                 json::object(), p);
  CHECK(big.error_kind == spr::ErrorKind::host_call_limit);
  CHECK(counted.calls == 0);
  // A header announcing 400 MiB: refused from the header, nothing near it allocated.
  runner.run("result = whoami()", json::object(), p);
  sec::reset_peak_rss();
  const long before = sec::peak_rss_kb();
  const spr::RunResult huge =
      runner.run(kForge +
                     "for fd in range(64):\n    try:\n        os.write(fd, (400 << 20).to_bytes(4, 'little') + "
                     "b'{\"args\":[')\n    except OSError:\n        pass\nimport time\ntime.sleep(5)\n",
                 json::object(), p);
  CHECK_FALSE(huge.ok);
  CHECK(sec::peak_rss_kb() - before < 16 * 1024);
  CHECK(counted.calls == 0);
}

TEST_CASE("model: 100,000 calls in a loop stop at max_host_calls") {
  Counted counted;
  spr::Runner runner(counted.options());
  const spr::RunResult r = runner.run(
      "for i in range(100000):\n"
      "    try:\n"
      "        count()\n"
      "    except RuntimeError:\n"
      "        pass\n"
      "result = 'finished'\n");
  CHECK(r.error_kind == spr::ErrorKind::host_call_limit);
  CHECK(r.result != json("finished"));
  CHECK(counted.calls == 10000);
}

TEST_CASE("model: a call storm from many workers at once: every call counted, every run answered") {
  Counted counted;
  spr::RunnerOptions o = counted.options();
  o.workers = 4;
  o.policy.max_host_calls = 1500;
  spr::Runner runner(o);
  std::vector<spr::RunHandle> handles;
  for (int i = 0; i < 8; ++i)
    handles.push_back(runner.submit("for i in range(3000):\n    count()\n", json::object(), o.policy));
  for (auto& h : handles) {
    const spr::RunResult r = h.get();
    CHECK_MESSAGE(r.error_kind == spr::ErrorKind::host_call_limit, sec::all_output(r));
  }
  CHECK(counted.calls == 8 * 1500);
  CHECK(runner.run("result = count()").ok);
}
