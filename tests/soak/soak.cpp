// spr-soak: many runs from many threads with timeouts, memory overruns, crashes and exceptions
// mixed in; checks every run is answered once with the right outcome and that nothing grows.
#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "proc_stats.hpp"
#include "spr/runner.hpp"

using spr_test::open_fds;

namespace {

// Supervisor RSS may grow this much over a mode's runs. Sanitized builds keep freed memory resident (ASan's
// quarantine, TSan's shadow and metadata), so the bound is wider there; LSan checks for real leaks at exit.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr long kRssSlackKb = 128L * 1024;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr long kRssSlackKb = 128L * 1024;
#else
constexpr long kRssSlackKb = 8L * 1024;
#endif
#else
constexpr long kRssSlackKb = 8L * 1024;
#endif

struct Kind {
  const char* name;
  int percent;
  const char* code;
  spr::ErrorKind expect;
};

// The mix of the soak: 10% timeouts, 10% memory overruns, 5% crashes, 5% exceptions, the rest fine.
const Kind kKinds[] = {
    {"timeout", 10, "print('start')\nwhile True: pass", spr::ErrorKind::timeout},
    {"memory", 10, "x = bytearray(400 * 2**20)", spr::ErrorKind::memory},
    {"crash", 5, "import signal\nsignal.raise_signal(signal.SIGSEGV)", spr::ErrorKind::worker_crashed},
    {"exception", 5, "raise ValueError('soak')", spr::ErrorKind::exception},
    {"ok", 70, "result = sum(range(input_data['n']))", spr::ErrorKind::none},
};

long rss_kb() {
  std::ifstream f("/proc/self/status");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

int children() { return spr_test::children_of(getpid()); }

const Kind& pick(int i) {
  int slot = (i * 37) % 100;  // a fixed interleaving, the same every run
  for (const auto& k : kKinds) {
    if (slot < k.percent) return k;
    slot -= k.percent;
  }
  return kKinds[4];
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 50000, threads = 8;
  std::vector<std::string> modes = {"namespace", "subinterpreter", "fork", "process"};
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--runs" && i + 1 < argc) runs = std::stoi(argv[++i]);
    else if (a == "--threads" && i + 1 < argc) threads = std::stoi(argv[++i]);
    else if (a == "--modes" && i + 1 < argc) {
      modes.clear();
      std::stringstream ss(argv[++i]);
      for (std::string m; std::getline(ss, m, ',');) modes.push_back(m);
    } else {
      std::cerr << "usage: spr-soak [--runs N] [--threads N] [--modes a,b]\n";
      return 64;
    }
  }
  // `make test` scales time limits with the load (SPR_TEST_TIME_SCALE): the timeout kind must still print
  // 'start' before its limit, and the others must never meet theirs, on a loaded machine.
  const char* scale_env = std::getenv("SPR_TEST_TIME_SCALE");
  const double scale = scale_env && std::atof(scale_env) > 1 ? std::atof(scale_env) : 1.0;
  int failures = 0;
  for (const auto& mode : modes) {
    spr::RunnerOptions o;
    o.workers = 2;
    // A lease waits at most twice this for a worker, also while both are busy with the other threads' runs:
    // those runs' limits scale, so this does too (unscaled, 5 of 100 sub-interpreter runs under ASan at
    // load 7 were answered worker_unavailable).
    o.start_timeout_seconds = 10 * scale;
    // The timeout kind must print before its limit: a sub-interpreter or a process is built inside the run's
    // time (tens of ms quiet, far more loaded), so those modes get a limit that leaves room for that. 0.1 s (times
    // the load scale taken at the start) was once too short for a fork child to print when the load rose to 6+
    // on 2 CPUs during the soak.
    const double limit = mode == "process" || mode == "subinterpreter" ? 1.0 : 0.2;
    o.policy = spr::RunnerPolicy::from_json(
        {{"isolation", mode}, {"timeout_seconds", limit * scale}, {"memory_limit_mb", 256}});
    spr::Runner runner(o);
    // The subinterpreter mode builds an interpreter per run and the process mode starts one: fewer runs.
    const int n = mode == "process" || mode == "subinterpreter" ? std::max(1, runs / 20) : runs;
    // Both workers up and idle before each reading.
    auto settle = [&] {
      auto a = runner.submit("result = 1", spr::json::object(), o.policy);
      auto b = runner.submit("result = 1", spr::json::object(), o.policy);
      a.get();
      b.get();
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    };
    settle();
    spr::RunnerPolicy relaxed = o.policy;
    relaxed.timeout_seconds = 10 * scale;
    const long rss0 = rss_kb();
    const int fds0 = open_fds(), kids0 = children();
    std::atomic<int> next{0}, answered{0}, wrong{0};
    std::mutex log_mu;
    int counts[5] = {};
    std::vector<std::thread> pool;
    pool.reserve(static_cast<std::size_t>(threads));
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&] {
        for (int i; (i = next++) < n;) {
          const Kind& k = pick(i);
          // Only the timeout kind gets the short limit: a loaded machine must not turn the others into timeouts.
          spr::RunResult r = runner.run(k.code, {{"n", i}}, k.expect == spr::ErrorKind::timeout ? o.policy : relaxed);
          ++answered;
          // In sub-interpreter mode a crash takes the whole worker; that is the same error kind.
          const bool right = r.error_kind == k.expect && (k.expect != spr::ErrorKind::none || r.result == spr::json(static_cast<long long>(i) * (i - 1) / 2)) &&
                             (k.expect != spr::ErrorKind::timeout || r.stdout_text == "start\n");
          std::lock_guard<std::mutex> lk(log_mu);
          counts[&k - kKinds]++;
          if (!right) {
            if (++wrong <= 5)
              std::cerr << mode << ": run " << i << " (" << k.name << ") got " << spr::to_string(r.error_kind) << ": "
                        << r.error.value_or("") << "\n";
          }
        }
      });
    }
    for (auto& t : pool) t.join();
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    settle();
    const long rss1 = rss_kb();
    int fds1 = open_fds(), kids1 = children();
    // A replacement worker may still be starting in the background (after a crash run near the end: seen once as
    // 16 -> 17 descriptors in subinterpreter mode at load 5): looked at again until it is up, within a bound. A
    // leak stays.
    for (int look = 0; look < 20 && (fds1 > fds0 || kids1 > kids0); ++look) {
      std::this_thread::sleep_for(std::chrono::duration<double>(0.25 * scale));
      fds1 = open_fds();
      kids1 = children();
    }
    std::printf("%-15s runs %6d answered %6d wrong %4d  (timeout %d, memory %d, crash %d, exception %d, ok %d)  %.1f s\n",
                mode.c_str(), n, answered.load(), wrong.load(), counts[0], counts[1], counts[2], counts[3], counts[4],
                secs);
    std::printf("%-15s supervisor RSS %ld -> %ld kB, open fds %d -> %d, child processes %d -> %d\n", "", rss0, rss1,
                fds0, fds1, kids0, kids1);
    // A leak shows as more after than before; fewer after is a reading taken while a worker was starting in
    // the background (a start holds a descriptor or two for its length), not something lost.
    const bool flat = fds1 <= fds0 && kids1 <= kids0 && rss1 - rss0 < kRssSlackKb;
    if (answered != n || wrong != 0 || !flat) ++failures;
  }
  std::printf("%d passed, %d failed\n", static_cast<int>(modes.size()) - failures, failures);
  return failures == 0 ? 0 : 1;
}
