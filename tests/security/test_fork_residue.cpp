// Fork mode under "the snippet owns its process": no earlier run's bytes in the warm worker or in
// the child that will run the next request, no forged or oversized reply passed on, and no process
// that outlives its run, whatever it does to its session or its worker. Observed from outside: the
// memory of every process under this test (/proc/<pid>/mem), the process tree (this test is a child
// subreaper, so an escaped orphan comes back to it), and the worker's peak memory.
#include <doctest/doctest.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <future>
#include <mutex>
#include <spr/runner.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "escape_helpers.hpp"

namespace {

using spr::json;

// A sanitizer build maps terabytes of shadow memory in every process (one poison or race-detector
// byte per few bytes of memory, never program data): reading it would take hours. Other builds scan
// everything. The ranges are the x86-64 Linux layouts of GCC's ASan and TSan.
bool is_sanitizer_shadow([[maybe_unused]] unsigned long lo, [[maybe_unused]] unsigned long hi) {
#if defined(__x86_64__) && defined(__SANITIZE_ADDRESS__)
  return lo >= 0x7fff8000UL && hi <= 0x10007fff8000UL;
#elif defined(__x86_64__) && defined(__SANITIZE_THREAD__)
  return (lo >= 0x010000000000UL && hi <= 0x200000000000UL) || (lo >= 0x300000000000UL && hi <= 0x340000000000UL);
#else
  return false;
#endif
}

// Counts occurrences of `needle` in every readable mapping of `pid`; -1 when its memory cannot be read.
long count_in_memory(pid_t pid, const std::string& needle) {
  std::ifstream maps("/proc/" + std::to_string(pid) + "/maps");
  std::ifstream mem("/proc/" + std::to_string(pid) + "/mem", std::ios::binary);
  if (!maps || !mem) return -1;
  long hits = 0;
  bool read_any = false;
  std::string line;
  std::vector<char> buf(1 << 20);
  while (std::getline(maps, line)) {
    std::istringstream in(line);
    std::string range, perms;
    in >> range >> perms;
    if (perms.empty() || perms[0] != 'r' || line.find("[vvar]") != std::string::npos ||
        line.find("[vsyscall]") != std::string::npos)
      continue;
    const auto dash = range.find('-');
    unsigned long lo = std::stoul(range.substr(0, dash), nullptr, 16),
                  hi = std::stoul(range.substr(dash + 1), nullptr, 16);
    if (is_sanitizer_shadow(lo, hi)) continue;
    std::string carry;  // a needle split across two chunks is still found
    for (unsigned long at = lo; at < hi; at += buf.size()) {
      const std::size_t n = std::min<unsigned long>(buf.size(), hi - at);
      mem.clear();
      mem.seekg(static_cast<std::streamoff>(at));
      if (!mem.read(buf.data(), static_cast<std::streamsize>(n))) break;
      read_any = true;
      std::string chunk = carry + std::string(buf.data(), n);
      for (std::size_t p = chunk.find(needle); p != std::string::npos; p = chunk.find(needle, p + 1)) ++hits;
      carry = chunk.substr(chunk.size() >= needle.size() ? chunk.size() - needle.size() + 1 : 0);
    }
  }
  return read_any ? hits : -1;
}

struct Scan {
  long hits = 0;
  int processes = 0, unreadable = 0;
};

// True when `pid` is gone or a zombie (its state in /proc/<pid>/stat is Z or X).
bool ended(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(in, stat)) return true;
  const auto close = stat.rfind(')');  // comm may hold spaces and parentheses
  return close == std::string::npos || close + 2 >= stat.size() || stat[close + 2] == 'Z' || stat[close + 2] == 'X';
}

// This process's descendants that have not ended: a worker killed by a cancel stays in the list, dying, for a
// moment after the cancel answers, and a scan of it would find nothing for want of memory.
std::size_t live_descendants() {
  std::size_t n = 0;
  for (const auto& p : sec::descendants(getpid(), {})) n += ended(p.pid) ? 0 : 1;
  return n;
}

Scan scan_descendants(const std::string& needle) {
  Scan s;
  for (const auto& p : sec::descendants(getpid(), {})) {
    long h = count_in_memory(p.pid, needle);
    // A process on its way out (its memory already released, its state not yet Z: seen once at load 5) is read
    // again until it has ended; only one that stays unreadable counts. The bound is a hang guard.
    for (int tries = 0; h < 0 && !ended(p.pid) && tries < 100; ++tries) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      h = count_in_memory(p.pid, needle);
    }
    // A process that ended between the listing and the read, or is a zombie not yet reaped, holds no memory any
    // more (the worker kills a run's child after its reply and reaps it once idle): not a failed read.
    if (h < 0 && ended(p.pid)) continue;
    ++s.processes;
    if (h < 0)
      ++s.unreadable;
    else
      s.hits += h;
  }
  return s;
}

using sec::time_scale;

spr::RunnerOptions fork_options() {
  spr::RunnerOptions o;
  o.workers = 1;
  o.policy.isolation = spr::Isolation::fork;
  o.policy.timeout_seconds *= time_scale();
  return o;
}

// What a snippet that has the run of its process may do: os and fcntl importable.
spr::RunnerPolicy open_policy(double timeout) {
  spr::RunnerPolicy p = fork_options().policy;
  p = spr::RunnerPolicy::from_json({{"blocked_imports", json::array()}, {"timeout_seconds", timeout}}, p);
  return p;
}

pid_t only_worker() {
  for (const auto& p : sec::descendants(getpid(), {}))
    if (p.comm.find("spr-worker") != std::string::npos) return p.pid;
  return -1;
}

long vm_hwm_kb(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  return -1;
}

// Reaps orphans adopted as subreaper, then lists what still runs under this test.
std::vector<sec::ProcInfo> survivors() {
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  while (waitpid(-1, nullptr, WNOHANG) > 0) {
  }
  auto left = sec::descendants(getpid(), {});
  for (const auto& p : left) kill(p.pid, SIGKILL);  // a failed check leaves nothing running either
  for (const auto& p : left) waitpid(p.pid, nullptr, 0);
  return left;
}

}  // namespace

TEST_CASE("fork residue: no byte of a run's input, code, output or extra_globals stays in the worker or the next child") {
  spr::Runner runner(fork_options());
  REQUIRE(runner.run("result = 0", json::object()).ok);
  const std::string code_token = "SPRCODE" + sec::random_hex(12);
  const std::string hex = sec::random_hex(12);
  const std::string input_token = "SPRIN" + hex;
  const std::string out_token = "SPROUT" + std::string(hex.rbegin(), hex.rend());  // only ever in the output
  // The tokens exist in the running child as plain bytes (input, a code constant, printed text).
  const std::string code =
      "s = input_data['secret']\nc = '" + code_token + "'\nprint('SPROUT' + s[5:][::-1])\nresult = [s, c]\n";

  // Control: while a run holds the secret, the scan sees it (the observer works on this machine). The run
  // says when it holds it; the host scans then and cancels the run (no fixed wait).
  Scan during;
  {
    sec::StdoutWatch watch;
    spr::RunnerPolicy p = fork_options().policy;
    p.timeout_seconds = 60 * time_scale();
    spr::RunHandle h = runner.submit(code + "print('HOLDING', flush=True)\nimport time\ntime.sleep(3600)\n",
                                     {{"secret", input_token}}, p, watch.options());
    const bool holding = watch.wait_for("HOLDING", h);
    during = scan_descendants(input_token);
    h.cancel();
    const spr::RunResult held = h.get();
    REQUIRE_MESSAGE(holding, held.error.value_or(""));
  }
  REQUIRE_MESSAGE(during.hits > 0, "the memory scan found nothing even in the running child (", during.processes,
                  " processes, ", during.unreadable, " unreadable)");

  spr::RunResult a = runner.run(code, {{"secret", input_token}});
  REQUIRE(a.ok);
  CHECK(a.stdout_text.find(out_token) != std::string::npos);
  spr::RunResult b = runner.run("result = 1", json::object());
  REQUIRE(b.ok);
  // A caller's own policy is that caller's too (its lists, paths, trust domain): the parent keeps only the
  // operator's decoded for its children (red team round 20: the next party's run read the last one's).
  const std::string policy_token = "sprpolicy" + sec::random_hex(12);
  spr::RunnerPolicy marked = fork_options().policy;
  marked.blocked_imports.push_back(policy_token);
  spr::RunResult m = runner.run("result = 2", json::object(), marked);
  REQUIRE_MESSAGE(m.ok, m.error.value_or(""));
  // A policy's extra_globals are a caller's data too: the parent keeps the last policy it decoded, never
  // one with them (this run is the last before the scan, so its policy would be the one kept).
  const std::string globals_token = "SPRGLOB" + sec::random_hex(12);
  spr::RunnerPolicy with_globals = fork_options().policy;
  with_globals.extra_globals = {{"g", globals_token}};
  spr::RunResult g = runner.run("result = g", json::object(), with_globals);
  REQUIRE(g.ok);
  CHECK(g.result == globals_token);
  // The idle worker forks and warms its spare: waited for (the limit is a hang guard), so the scan covers it.
  const auto guard = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * time_scale());
  while (live_descendants() < 2 && std::chrono::steady_clock::now() < guard)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (const std::string& token : {input_token, code_token, out_token, globals_token, policy_token}) {
    const Scan after = scan_descendants(token);
    CHECK(after.unreadable == 0);
    CHECK_MESSAGE(after.hits == 0, token, " found ", after.hits, " times in ", after.processes, " processes");
  }
}

// The children `parent` has now, from the kernel's list (/proc/<pid>/task/<pid>/children).
std::vector<pid_t> children_of(pid_t parent) {
  std::ifstream in("/proc/" + std::to_string(parent) + "/task/" + std::to_string(parent) + "/children");
  std::vector<pid_t> out;
  for (long pid; in >> pid;) out.push_back(static_cast<pid_t>(pid));
  return out;
}

// The pipes `pid` holds, by inode ("pipe:[123]"): both ends of one pipe have the same.
std::vector<std::string> pipes_of(pid_t pid) {
  std::vector<std::string> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  for (int fd = 0; fd < 1024; ++fd) {
    char target[256];
    const ssize_t n = readlink((dir + "/" + std::to_string(fd)).c_str(), target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (std::strncmp(target, "pipe:", 5) == 0) out.emplace_back(target);
  }
  return out;
}

TEST_CASE("fork ahead: the child forked during a run holds none of its code or input, and none of its pipes") {
  // The worker forks the next request's child while a run is in progress. That child must be as clean as one
  // forked while idle: the worker has wiped the request by then, and the running child's pipes (its request and
  // its reply) are closed in it, so the next run cannot read this run's reply or write into this run.
  // The next child is forked during a run whose child was not warmed ahead (a warmed child's run is short:
  // its reply would wait for the fork). A request of 1 MiB or more always gets a child forked for it.
  spr::Runner runner(fork_options());
  REQUIRE(runner.run("result = 0", json::object()).ok);
  const std::string code_token = "SPRCODE" + sec::random_hex(12);
  const std::string input_token = "SPRIN" + sec::random_hex(12);
  sec::StdoutWatch watch;
  spr::RunOptions& o = watch.options();
  o.input_json = "{\"pad\":\"" + std::string(3u << 19, 'x') + "\",\"secret\":\"" + input_token + "\"}";
  spr::RunnerPolicy p = fork_options().policy;
  p.timeout_seconds = 60 * time_scale();
  spr::RunHandle h = runner.submit("s = input_data['secret']\nc = '" + code_token +
                                       "'\nprint('HOLDING', flush=True)\nimport time\ntime.sleep(3600)\n",
                                   json::object(), p, o);
  const bool holding = watch.wait_for("HOLDING", h);
  // The running child holds the input; its parent is the worker, whose other child is the next one (a hang
  // guard, not a timing: that one is forked before the run starts).
  pid_t running = -1, ahead = -1, worker = -1;
  const auto guard = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * time_scale());
  while (holding && (running < 0 || ahead < 0) && std::chrono::steady_clock::now() < guard) {
    running = ahead = worker = -1;
    for (const auto& d : sec::descendants(getpid(), {}))
      if (count_in_memory(d.pid, input_token) > 0) running = d.pid;
    for (const auto& d : sec::descendants(getpid(), {}))
      for (const pid_t c : children_of(d.pid))
        if (c == running) worker = d.pid;
    if (worker > 0)
      for (const pid_t c : children_of(worker))
        if (c != running) ahead = c;
    if (running < 0 || ahead < 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::vector<std::string> running_pipes, ahead_pipes;
  long ahead_hits = -1, worker_hits = -1;
  if (running > 0 && ahead > 0) {
    running_pipes = pipes_of(running);
    ahead_pipes = pipes_of(ahead);
    ahead_hits = count_in_memory(ahead, input_token) + count_in_memory(ahead, code_token);
    worker_hits = count_in_memory(worker, input_token) + count_in_memory(worker, code_token);
  }
  h.cancel();
  const spr::RunResult held = h.get();
  REQUIRE_MESSAGE(holding, held.error.value_or(""));
  REQUIRE_MESSAGE(running > 0, "no child of the worker holds the running request");
  REQUIRE_MESSAGE(ahead > 0, "the worker forked no child for the next request during the run");
  CHECK(running_pipes.size() >= 2);  // the control: its request and its reply
  CHECK(ahead_hits == 0);
  CHECK(worker_hits == 0);
  for (const auto& pipe : running_pipes)
    CHECK_MESSAGE(std::find(ahead_pipes.begin(), ahead_pipes.end(), pipe) == ahead_pipes.end(),
                  "the next run's child holds ", pipe, " of the running child");
  // And it serves the next request.
  CHECK(runner.run("result = 3", json::object()).result == 3);
}

TEST_CASE("fork residue: a request handed to a child forked after it arrived leaves no byte in the worker") {
  // Larger than the pipe to a waiting child: the worker forks a child that already holds the request and drops its
  // own pages of it, without writing them (so without copying what the child shares).
  spr::Runner runner(fork_options());
  REQUIRE(runner.run("result = 0", json::object()).ok);
  const std::string token = "SPRBIG" + sec::random_hex(12);
  spr::RunOptions o;
  o.input_json = "{\"pad\":\"" + std::string(3u << 20, 'x') + "\",\"secret\":\"" + token + "\"}";
  spr::RunnerPolicy p = fork_options().policy;
  p.timeout_seconds = 60 * time_scale();
  const spr::RunResult a =
      runner.run("result = [len(input_data['pad']), input_data['secret'][:6]]", json::object(), p, o);
  REQUIRE_MESSAGE(a.ok, a.error.value_or(""));
  CHECK(a.result == json::array({3u << 20, "SPRBIG"}));
  // The idle worker forks and warms its spare: waited for (the limit is a hang guard), so the scan covers it.
  const auto guard = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * time_scale());
  while (live_descendants() < 2 && std::chrono::steady_clock::now() < guard)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const Scan after = scan_descendants(token);
  CHECK(after.processes >= 2);
  CHECK(after.unreadable == 0);
  CHECK_MESSAGE(after.hits == 0, token, " found ", after.hits, " times in ", after.processes, " processes");
  CHECK(runner.run("result = 2", json::object()).result == 2);
}

TEST_CASE("fork residue: a large reply and a large host answer leave no byte in the worker or the next child") {
  // The worker reads a child's reply and the supervisor's host answers in frames of any size; a buffer
  // grown in steps frees the bytes of each earlier step (seen: a 100 KB output found in the next run's
  // child). Both travel through the fork parent, whose heap every later child inherits.
  spr::RunnerOptions ro = fork_options();
  const std::string answer_token = "SPRANS" + sec::random_hex(12);
  ro.functions["big"] = [answer_token](const spr::HostCall&) { return json(answer_token + std::string(300000, 'a')); };
  spr::Runner runner(ro);
  spr::RunnerPolicy p = open_policy(60 * time_scale());
  p.max_output_kb = 1024;
  p.max_result_kb = 1024;
  p.max_host_call_kb = 1024;
  REQUIRE(runner.run("result = 0", json::object(), p).ok);
  const std::string hex = sec::random_hex(12);
  const std::string out_token = "SPRBIGOUT" + hex, result_token = "SPRBIGRES" + hex;
  const spr::RunResult a = runner.run(
      "t = input_data['t']\nprint('SPRBIGOUT' + t + 'o' * 100000)\nresult = ['SPRBIGRES' + t + 'r' * 100000, "
      "len(big())]\n",
      {{"t", hex}}, p);
  REQUIRE_MESSAGE(a.ok, a.error.value_or(""));
  CHECK(a.result[1] == answer_token.size() + 300000);
  CHECK(a.stdout_text.find(out_token) != std::string::npos);
  const std::vector<std::string> tokens = {out_token, result_token, answer_token};
  // While the next run holds its child (the one forked from the parent that carried those frames)... It ends by
  // itself: a cancel would end the worker too, and the scan below would find a new one, which never saw them.
  {
    sec::StdoutWatch watch;
    spr::RunHandle h = runner.submit("print('HOLDING', flush=True)\nimport time\ntime.sleep(input_data['s'])\n",
                                     {{"s", 5 * time_scale()}}, p, watch.options());
    const bool holding = watch.wait_for("HOLDING", h);
    for (const std::string& token : tokens) {
      const Scan during = scan_descendants(token);
      CHECK(during.unreadable == 0);
      CHECK_MESSAGE(during.hits == 0, token.substr(0, 9), " found ", during.hits, " times in ", during.processes,
                    " processes during the next run");
    }
    const spr::RunResult held = h.get();
    REQUIRE_MESSAGE(holding, held.error.value_or(""));
    CHECK_MESSAGE(held.ok, held.error.value_or(""));
  }
  // ...and once the worker is idle again with its spare forked.
  const auto guard = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * time_scale());
  while (live_descendants() < 2 && std::chrono::steady_clock::now() < guard)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (const std::string& token : tokens) {
    const Scan after = scan_descendants(token);
    CHECK(after.processes >= 2);
    CHECK_MESSAGE(after.hits == 0, token.substr(0, 9), " found ", after.hits, " times in ", after.processes, " processes");
  }
}

TEST_CASE("fork reply checks: a forged or oversized reply written by the run never reaches the caller") {
  spr::Runner runner(fork_options());
  REQUIRE(runner.run("result = 0", json::object()).ok);
  const pid_t worker = only_worker();
  REQUIRE(worker > 0);
  const long hwm_before = vm_hwm_kb(worker);
  // Every pipe the run holds gets a forged reply with 200 KB of stdout past the 128 KB cap, then a
  // header claiming 512 MiB.
  const std::string forge =
      "import os, stat, json\n"
      "body = json.dumps({'ok': True, 'result': 'FORGED', 'stdout': 'A' * 200000, 'stderr': '', 'timed_out': False,"
      " 'resource_exceeded': False, 'error': None, 'exit_code': 0, 'error_kind': 'none', 'stdout_truncated': False,"
      " 'stderr_truncated': False, 'id': input_data['id'], 'nonce': 'guess'}).encode()\n"
      "for fd in range(64):\n"
      "    try:\n"
      "        if stat.S_ISFIFO(os.fstat(fd).st_mode):\n"
      "            os.write(fd, (HEADER).to_bytes(4, 'little') + (body if HEADER == len(body) else b''))\n"
      "    except OSError:\n"
      "        pass\n"
      "result = 'honest'\n";
  for (const std::string header : {"len(body)", "512 << 20"}) {
    std::string code = forge;
    for (std::size_t p; (p = code.find("HEADER")) != std::string::npos;) code.replace(p, 6, header);
    spr::RunResult r = runner.run(code, {{"id", 2}}, open_policy(5));
    CHECK(r.result != json("FORGED"));
    CHECK(r.stdout_text.size() <= 128u * 1024);
    CHECK(r.stdout_text.find("AAAA") == std::string::npos);
  }
  const pid_t after = only_worker();
  if (after == worker) CHECK(vm_hwm_kb(worker) - hwm_before < 64 * 1024);  // no 512 MiB buffer allocated
}

TEST_CASE("fork kills: a run that leaves its session and signals its worker ends with its run") {
  REQUIRE(prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  const std::string escape =
      "import os, fcntl\n"
      "os.setsid()\n"
      "r, w = os.pipe()\n"
      "try:\n"
      "    fcntl.fcntl(r, fcntl.F_SETOWN, os.getppid())\n"
      "    fcntl.fcntl(r, 10, 9)\n"  // F_SETSIG: SIGKILL instead of SIGIO
      "    fcntl.fcntl(r, fcntl.F_SETFL, os.O_ASYNC | os.O_NONBLOCK)\n"
      "    os.write(w, b'x')\n"
      "except OSError:\n"
      "    pass\n"
      "while True:\n"
      "    pass\n";
  {
    spr::Runner runner(fork_options());
    spr::RunResult r = runner.run(escape, json::object(), open_policy(1));
    CHECK_FALSE(r.ok);
  }
  auto left = survivors();
  CHECK_MESSAGE(left.empty(), left.size(), " processes outlived the run (first: ", left.empty() ? "" : left[0].comm,
                ")");

  // The worker itself is killed while its child, in a session of its own, spins: the child dies too.
  {
    spr::Runner runner(fork_options());
    REQUIRE(runner.run("result = 0", json::object()).ok);
    const pid_t worker = only_worker();
    REQUIRE(worker > 0);
    std::thread killer([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      kill(worker, SIGKILL);
    });
    spr::RunResult r = runner.run("import os\nos.setsid()\nwhile True:\n    pass\n", json::object(), open_policy(3));
    killer.join();
    CHECK_FALSE(r.ok);
  }
  left = survivors();
  CHECK_MESSAGE(left.empty(), left.size(),
                " processes outlived their worker (first: ", left.empty() ? "" : left[0].comm, ")");
  prctl(PR_SET_CHILD_SUBREAPER, 0);
}
