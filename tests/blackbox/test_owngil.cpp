// subinterpreter_threads (issue 21, item 4): runs at once in one worker on CPython 3.12+, each on its own thread
// in own-GIL interpreters. Registered only when CMake found a 3.12+ shared build (SPR_TEST_OWNGIL_PYTHON).
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using spr::json;
using spr_test::describe;
namespace fs = std::filesystem;

namespace {

std::string owngil_python() {
  const char* p = std::getenv("SPR_TEST_OWNGIL_PYTHON");
  REQUIRE_MESSAGE(p != nullptr, "SPR_TEST_OWNGIL_PYTHON names a CPython 3.12+ (tests/CMakeLists.txt)");
  return p;
}

spr::RunnerPolicy owngil_policy(const std::string& python) {
  spr::RunnerPolicy p = spr_test::policy();
  p.isolation = spr::Isolation::subinterpreter;
  p.python_executable = python;
  return p;
}

// One worker process with two run threads: its two slots serve every run.
spr::RunnerOptions owngil_options() {
  spr::RunnerOptions o = spr_test::runner_options();
  o.workers = 1;
  o.subinterpreter_threads = 2;
  return o;
}

}  // namespace

TEST_CASE("owngil: runs at once in one worker each get their own result and output") {
  spr::Runner runner(owngil_options());
  const spr::RunnerPolicy p = owngil_policy(owngil_python());
  // Each prints its own marker many times (yielding between lines), so that two runs in flight write
  // at the same moments: a marker in another run's output is cross-talk.
  const std::string code =
      "for i in range(3000):\n"
      "    print(f'marker-{input_data[\"n\"]}-', i)\n"
      "    sum(range(200))\n"
      "result = {'n': input_data['n']}\n";
  std::vector<spr::RunHandle> handles;
  for (int n = 0; n < 8; ++n) handles.push_back(runner.submit(code, {{"n", n}}, p));
  for (int n = 0; n < 8; ++n) {
    const spr::RunResult r = handles[n].get();
    REQUIRE_MESSAGE(r.ok, describe(r));
    CHECK(r.result["n"] == n);
    CHECK(r.stdout_text.size() > 3000 * 10);
    for (int other = 0; other < 8; ++other) {
      const std::string marker = "marker-" + std::to_string(other) + "-";
      CHECK_MESSAGE(spr_test::contains(r.stdout_text, marker) == (other == n),
                    "run " << n << " and marker " << other);
    }
  }
}

TEST_CASE("owngil: a run over its timeout ends the run beside it with a stable outcome, and the pool recovers") {
  spr::Runner runner(owngil_options());
  spr::RunnerPolicy p = owngil_policy(owngil_python());
  spr::RunnerPolicy long_run = p;
  long_run.timeout_seconds = 120 * spr_test::time_scale();
  // In flight first: it would run for a minute, far past the other's timeout and grace.
  spr::RunHandle beside = runner.submit(
      "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 60: pass\nresult = 'finished'", json::object(),
      long_run);
  spr::RunnerPolicy short_run = p;
  short_run.timeout_seconds = 1;
  // Started once the first is running: its output says so.
  const spr::RunResult warm = runner.run("result = 1", json::object(), p);
  REQUIRE_MESSAGE(warm.ok, describe(warm));
  const spr::RunResult looping = runner.run("while True: pass", json::object(), short_run);
  CHECK(looping.error_kind == spr::ErrorKind::timeout);
  const spr::RunResult ended = beside.get();
  CHECK_MESSAGE(ended.error_kind == spr::ErrorKind::worker_unavailable, describe(ended));
  CHECK(spr_test::contains(ended.error.value_or(""), "ended while it ran"));
  CHECK(ended.result.is_null());
  // A new worker serves the next runs.
  for (int i = 0; i < 3; ++i) {
    const spr::RunResult again = runner.run("result = 6 * 7", json::object(), p);
    CHECK_MESSAGE(again.ok, describe(again));
    CHECK(again.result == 42);
  }
}

namespace {

// Submits `code` and returns once it has printed `marker` (it must not end before): it then holds one slot of the
// worker. `opts` may carry the caller's own options (their on_output is replaced).
spr::RunHandle submit_until_printed(spr::Runner& runner, const std::string& code, const spr::RunnerPolicy& p,
                                    const std::string& marker, spr::RunOptions opts = {}) {
  auto seen = std::make_shared<std::promise<void>>();
  auto said = std::make_shared<std::atomic<bool>>(false);
  opts.on_output = [seen, said, marker](spr::OutputStream, const std::string& data) {
    if (data.find(marker) != std::string::npos && !said->exchange(true)) seen->set_value();
  };
  spr::RunHandle h = runner.submit(code, json::object(), p, opts);
  std::future<void> printed = seen->get_future();
  while (printed.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready)
    REQUIRE(h.wait_for(std::chrono::seconds(0)) != std::future_status::ready);  // it ended before printing
  return h;
}

// Submits a run that prints HOLDING and then computes for a minute, and waits until it prints.
spr::RunHandle hold_a_slot(spr::Runner& runner, const spr::RunnerPolicy& p, spr::RunOptions opts = {}) {
  spr::RunnerPolicy long_run = p;
  long_run.timeout_seconds = 120 * spr_test::time_scale();
  return submit_until_printed(
      runner,
      "import time\nprint('HOLDING', flush=True)\nt = time.monotonic()\nwhile time.monotonic() - t < 60: pass\n"
      "result = 'finished'",
      long_run, "HOLDING", std::move(opts));
}

}  // namespace

// A run cancelled on one slot after the other slot's run came back: the cancel ends the shared process, which the
// pool then replaces (its idle slot included). The runner is shut down while the cancelled run may still be on its
// way back to the pool.
TEST_CASE("owngil: a run cancelled beside a finished run answers cancelled, and the pool serves again") {
  const spr::RunnerPolicy p = owngil_policy(owngil_python());
  for (int round = 0; round < 2; ++round) {
    spr::Runner runner(owngil_options());
    spr::RunHandle held = hold_a_slot(runner, p);
    const spr::RunResult beside = runner.run("result = 6 * 7", json::object(), p);
    REQUIRE_MESSAGE(beside.ok, describe(beside));
    CHECK(beside.result == 42);
    CHECK(held.cancel());
    const spr::RunResult cancelled = held.get();
    CHECK_MESSAGE((cancelled.error_kind == spr::ErrorKind::cancelled ||
                   cancelled.error_kind == spr::ErrorKind::worker_unavailable),
                  describe(cancelled));
    CHECK(cancelled.result.is_null());
    if (round == 1) continue;  // the runner goes at once, the cancelled run's worker perhaps not yet back
    // The cancel's kill may still be under way when it answers: the cancel marks the process as ending before it
    // kills it, so a run started now is not leased the other slot of the dying process (it was: that run then
    // answered that it ended with its worker). It gets a new process.
    for (int i = 0; i < 4; ++i) {
      const spr::RunResult again = runner.run("result = 6 * 7", json::object(), p);
      CHECK_MESSAGE(again.ok, describe(again));
      CHECK(again.result == 42);
    }
  }
}

// The runner shuts down while one slot runs and the other idles: the idle slot is ended first, the running one comes
// back to the pool after (its process killed by the shutdown).
TEST_CASE("owngil: a runner shut down while one slot runs and the other idles ends the run as unavailable") {
  spr::Runner runner(owngil_options());
  const spr::RunnerPolicy p = owngil_policy(owngil_python());
  spr::RunHandle held = hold_a_slot(runner, p);
  const spr::RunResult beside = runner.run("result = 1", json::object(), p);
  REQUIRE_MESSAGE(beside.ok, describe(beside));
  runner.shutdown();
  const spr::RunResult ended = held.get();
  CHECK_MESSAGE(ended.error_kind == spr::ErrorKind::worker_unavailable, describe(ended));
  CHECK(ended.result.is_null());
}

TEST_CASE("owngil: a thread a run starts is still refused in a worker with run threads") {
  spr::Runner runner(owngil_options());
  const spr::RunnerPolicy p = owngil_policy(owngil_python());
  const spr::RunResult r = runner.run(
      "import threading\n"
      "t = threading.Thread(target=lambda: print('THREAD RAN'))\n"
      "t.start()\n"
      "t.join()\n"
      "result = 'started'\n",
      json::object(), p);
  CHECK_FALSE(r.ok);
  CHECK_FALSE(spr_test::contains(spr_test::all_output(r), "THREAD RAN"));
  CHECK(r.result.is_null());
}

TEST_CASE("owngil: each run thread counts its own run's memory") {
  spr::Runner runner(owngil_options());
  spr::RunnerPolicy p = owngil_policy(owngil_python());
  p.memory_limit_mb = 64;
  spr::RunnerPolicy holding = p;
  holding.timeout_seconds = 120 * spr_test::time_scale();
  // One run holds 40 MiB on one slot for a while; once it says so, the other takes 40 MiB on the other slot
  // (counted together they would pass 64 MiB), and then the first asks for 30 MiB more, which its own limit
  // refuses (a count shared with the other slot would have lost it when that run ended). Were the holder
  // done first, both would pass anyway: the test can miss the fault, never invent one.
  spr::RunHandle holder = submit_until_printed(runner,
                                               "import time\nheld = bytearray(40 << 20)\nprint('HELD', flush=True)\n"
                                               "time.sleep(15)\n"
                                               "try:\n    more = bytearray(30 << 20)\n    result = 'allocated'\n"
                                               "except MemoryError:\n    result = 'refused'\n",
                                               holding, "HELD");
  const spr::RunResult beside = runner.run("b = bytearray(40 << 20)\nresult = len(b)", json::object(), p);
  CHECK_MESSAGE(beside.ok, describe(beside));
  CHECK(beside.result == 40 << 20);
  // The holder's own limit outlived the other run's start and end on the other slot.
  const spr::RunResult first = holder.get();
  CHECK_MESSAGE(first.ok, describe(first));
  CHECK(first.result == "refused");
}

TEST_CASE("owngil: frozen standard-library modules (pathlib's ntpath) load on every run thread") {
  spr::Runner runner(owngil_options());
  spr::RunnerPolicy p = owngil_policy(owngil_python());
  p.blocked_imports = {};
  // Four at once on two slots: each slot's own-GIL interpreters unmarshal the frozen modules themselves.
  std::vector<spr::RunHandle> handles;
  for (int n = 0; n < 4; ++n)
    handles.push_back(runner.submit("import pathlib, runpy\n"
                                    "result = [str(pathlib.PurePosixPath('a') / str(input_data['n'])), callable(runpy.run_path)]\n",
                                    {{"n", n}}, p));
  for (int n = 0; n < 4; ++n) {
    const spr::RunResult r = handles[n].get();
    CHECK_MESSAGE(r.ok, describe(r));
    CHECK(r.result == json::array({"a/" + std::to_string(n), true}));
  }
}

TEST_CASE("owngil: the option on a worker that embeds 3.10/3.11 refuses to start, and says why") {
  spr::RunnerOptions o = owngil_options();
  o.start_timeout_seconds = 10 * spr_test::time_scale();
  spr::Runner runner(o);
  // The default worker embeds the build's own python3: 3.11 here and in CI.
  spr::RunnerPolicy p = owngil_policy("");
  const spr::RunResult r = runner.run("result = 1", json::object(), p);
  CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
  CHECK_MESSAGE(spr_test::contains(r.error.value_or(""), "needs CPython 3.12 or newer"), describe(r));
}

// Red team round 13: with run threads, a descriptor a run left open (a raw number, no object to close it) and its
// record lock on a host file it may read stayed until the Runner closed. Judged from the host: its own lockf on
// the file succeeds again once the worker is idle.
TEST_CASE("owngil: a descriptor a run leaves open, and its lock on a host file, end once the worker is idle") {
  const fs::path dir = spr_test::unique_path("owngil-lock");
  fs::create_directories(dir);
  fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec | fs::perms::others_read |
                           fs::perms::others_exec);
  const std::string file = (dir / "data").string();
  {
    std::ofstream(file) << "host data\n";
  }
  fs::permissions(file, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read | fs::perms::others_read);
  const auto host_can_lock = [&] {
    const int fd = ::open(file.c_str(), O_RDWR | O_CLOEXEC);
    const bool ok = fd >= 0 && ::lockf(fd, F_TLOCK, 0) == 0;
    if (fd >= 0) ::close(fd);  // ends our own lock
    return ok;
  };
  REQUIRE(host_can_lock());
  {
    spr::Runner runner(owngil_options());
    spr::RunnerPolicy p = owngil_policy(owngil_python());
    p.allowed_read_paths = {dir.string()};
    const std::string code =
        "import fcntl, pathlib\n"
        "os = getattr(pathlib, 'os', None) or pathlib._local.os\n"
        "fd = os.open(input_data, os.O_RDONLY)\n"
        "fcntl.lockf(fd, fcntl.LOCK_SH)\n"
        "result = fd\n";
    const spr::RunResult r = runner.run(code, file, p);
    REQUIRE_MESSAGE(r.ok, describe(r));
    // The control: the lock was taken (the host cannot lock while the run's descriptor may still be open), or
    // already ended; either way it must end while the Runner still lives.
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * spr_test::time_scale());
    bool freed = host_can_lock();
    while (!freed && std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      freed = host_can_lock();
    }
    CHECK(freed);
    const spr::RunResult next = runner.run("result = 'next'", nullptr, p);
    CHECK_MESSAGE(next.ok, describe(next));
  }
  fs::remove_all(dir);
}

// Red team round 15: pools past workers x 8 slots evict an idle worker of another pool; a slot of a worker with
// run threads was evicted while its process's other slot ran another party's run, which then answered
// worker_unavailable. Only a process whose every slot is idle may be ended.
TEST_CASE("owngil: a new pool's eviction never ends a process whose other slot is running") {
  spr::Runner runner(owngil_options());
  spr::RunnerPolicy victim = owngil_policy(owngil_python());
  victim.trust_domain = "a-victim";  // first in the pools' order: the first place an eviction looks
  victim.timeout_seconds = 60 * spr_test::time_scale();
  const double hold = 4 * spr_test::time_scale();
  spr::RunHandle running = runner.submit("import time\ntime.sleep(input_data)\nresult = 'victim-done'\n", json(hold), victim);
  // New trust domains, one after another: each a pool of its own, until the slots past the bound are taken.
  for (int d = 0; d < 6; ++d) {
    spr::RunnerPolicy other = owngil_policy(owngil_python());
    other.trust_domain = "z-" + std::to_string(d);
    const spr::RunResult r = runner.run("result = 1", nullptr, other);
    CHECK_MESSAGE(r.ok, describe(r));
  }
  const spr::RunResult v = running.get();
  CHECK_MESSAGE(v.ok, describe(v));
  CHECK(v.result == "victim-done");
}
