// subinterpreter_threads (issue 21, item 4): runs at once in one worker on CPython 3.12+, each on its own thread
// in own-GIL interpreters. Registered only when CMake found a 3.12+ shared build (SPR_TEST_OWNGIL_PYTHON).
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "helpers.hpp"

using spr::json;
using spr_test::describe;

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
