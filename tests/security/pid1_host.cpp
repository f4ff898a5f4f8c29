// A host program for test_pid1.cpp: started as PID 1 of a PID namespace of its own (a container without an init),
// it has a child of its own, uses a Runner whose workers are killed in every way the supervisor kills them, and
// stops at each step until the test (outside the namespace) has counted the processes left.
//   pid1_host MODE     MODE is an isolation mode: prints "host-child <pid>", "ready", "stopped",
//                      "host-child-status <n>"
//   pid1_host noproc   the first run's answer, on one line (the namespace has no /proc of its own)
#include <spr/runner.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <iostream>
#include <string>

namespace {

double time_scale() {
  const char* s = std::getenv("SPR_TEST_TIME_SCALE");
  const double v = s ? std::atof(s) : 1.0;
  return v > 1 ? v : 1.0;
}

// Tells the test where we are and waits for its word to go on.
void step(const std::string& name) {
  std::cout << name << std::endl;
  std::string line;
  if (!std::getline(std::cin, line)) std::exit(4);
}

// A run that has started (its first output came): cancelling it, or stopping the runner, kills a busy worker.
struct StartedRun {
  std::promise<void> started;
  std::atomic<bool> once{false};
  spr::RunHandle handle;
  StartedRun(spr::Runner& runner, const spr::RunnerPolicy& policy) {
    spr::RunOptions o;
    o.on_output = [this](spr::OutputStream, const std::string&) {
      if (!once.exchange(true)) started.set_value();
    };
    auto f = started.get_future();
    handle = runner.submit("import time\nprint('started', flush=True)\ntime.sleep(600)\n", spr::json::object(), policy,
                           std::move(o));
    f.wait();
  }
};

int fail(const std::string& what, const spr::RunResult& r) {
  std::cout << "unexpected " << what << ": " << r.to_json().dump() << std::endl;
  return 5;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string mode = argv[1];
  if (::getpid() != 1) {
    std::cout << "not PID 1 (" << ::getpid() << ")" << std::endl;
    return 3;
  }
  spr::RunnerOptions options;
  options.workers = 1;
  if (mode == "noproc") {
    spr::Runner runner(options);
    const spr::RunResult r = runner.run("result = 1\n");
    std::cout << (r.ok ? std::string("ok") : r.error.value_or("")) << std::endl;
    return 0;
  }
  const pid_t child = ::fork();
  if (child < 0) return 6;
  if (child == 0) ::_exit(7);
  std::cout << "host-child " << child << std::endl;

  const auto iso = spr::parse_isolation(mode);
  if (!iso) return 2;
  options.policy.isolation = *iso;
  options.policy.timeout_seconds = 5 * time_scale();
  {
    spr::Runner runner(options);
    spr::RunnerPolicy p = options.policy;
    p.timeout_seconds = 0.5 * time_scale();
    if (auto r = runner.run("while True:\n    pass\n", spr::json::object(), p); r.error_kind != spr::ErrorKind::timeout)
      return fail("timeout", r);
    if (auto r = runner.run("x = bytearray(10**10)\n"); r.error_kind != spr::ErrorKind::memory)
      return fail("memory", r);
    if (auto r = runner.run("import signal\nsignal.raise_signal(signal.SIGSEGV)\n"); r.ok) return fail("crash", r);
    {
      StartedRun busy(runner, options.policy);
      busy.handle.cancel();
      if (auto r = busy.handle.get(); r.error_kind != spr::ErrorKind::cancelled) return fail("cancel", r);
    }
    // The cancelled run's worker is killed and reaped on the executor's thread: this run comes after it.
    if (auto r = runner.run("result = 1\n"); !r.ok) return fail("run after the kills", r);
    step("ready");
    // The runner stops with a run in flight: its worker is killed too.
    StartedRun busy(runner, options.policy);
    runner.shutdown();
    busy.handle.wait();
  }
  step("stopped");
  int status = 0;
  if (::waitpid(child, &status, 0) != child) {
    std::cout << "host-child-status lost" << std::endl;
    return 0;
  }
  std::cout << "host-child-status " << (WIFEXITED(status) ? WEXITSTATUS(status) : -1) << std::endl;
  return 0;
}
