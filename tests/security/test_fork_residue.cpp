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

Scan scan_descendants(const std::string& needle) {
  Scan s;
  for (const auto& p : sec::descendants(getpid(), {})) {
    const long h = count_in_memory(p.pid, needle);
    ++s.processes;
    if (h < 0)
      ++s.unreadable;
    else
      s.hits += h;
  }
  return s;
}

// Sanitizer builds run slower: SPR_TEST_TIME_SCALE (set by tests/CMakeLists.txt) stretches waits.
double time_scale() {
  const char* s = std::getenv("SPR_TEST_TIME_SCALE");
  return s && std::atof(s) > 1 ? std::atof(s) : 1.0;
}

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
  while (sec::descendants(getpid(), {}).size() < 2 && std::chrono::steady_clock::now() < guard)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  for (const std::string& token : {input_token, code_token, out_token, globals_token}) {
    const Scan after = scan_descendants(token);
    CHECK(after.unreadable == 0);
    CHECK_MESSAGE(after.hits == 0, token, " found ", after.hits, " times in ", after.processes, " processes");
  }
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
  while (sec::descendants(getpid(), {}).size() < 2 && std::chrono::steady_clock::now() < guard)
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  const Scan after = scan_descendants(token);
  CHECK(after.processes >= 2);
  CHECK(after.unreadable == 0);
  CHECK_MESSAGE(after.hits == 0, token, " found ", after.hits, " times in ", after.processes, " processes");
  CHECK(runner.run("result = 2", json::object()).result == 2);
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
