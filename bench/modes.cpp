// spr-bench's measurements through the product: each isolation mode through spr::Runner (back to
// back, paced, throughput, cold start, idle memory) and namespace mode through `safe-py-runner serve`.
#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <thread>

#include "bench.hpp"
#include "spr/runner.hpp"

namespace spr_bench {

namespace {

spr::RunnerOptions runner_options(const Options& o, const std::string& mode, std::size_t workers) {
  spr::RunnerOptions ro;
  ro.workers = workers;
  ro.policy = spr::RunnerPolicy::from_json({{"isolation", mode}});
  if (!o.worker_path.empty()) ro.worker_path = o.worker_path;
  return ro;
}

bool fatal_kind(spr::ErrorKind k) {
  return k == spr::ErrorKind::worker_unavailable || k == spr::ErrorKind::protocol_error;
}

std::string describe(const spr::RunResult& r) {
  if (r.ok) return "unexpected result " + r.result.dump();
  return spr::to_string(r.error_kind) + ": " + r.error.value_or("(no message)");
}

// `runs` requests, each `gap_ms` after the previous one started (0: as soon as the reply is in).
// Returns false when the mode stopped answering.
template <class RunOnce>
bool measure_pattern(RunOnce&& run_once, Pattern& p, int runs, double gap_ms, bool count_faults, std::string& first) {
  std::vector<double> lat;
  const ForkFaults faults0 = fork_faults();
  const double cpu0 = cpu_seconds_all();
  auto next = Clock::now();
  for (int i = 0; i < runs; ++i) {
    if (gap_ms > 0) {
      std::this_thread::sleep_until(next);
      next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(gap_ms));
    }
    const auto t0 = Clock::now();
    std::string err;
    const int outcome = run_once(err);  // 0 ok, 1 failed run, 2 mode gone
    const double us = us_since(t0);
    if (outcome == 2) {
      first = err;
      return false;
    }
    if (outcome == 1) {
      ++p.failures;
      if (first.empty()) first = err;
      continue;
    }
    lat.push_back(us);
  }
  if (runs > 0) p.cpu_us_per_run = (cpu_seconds_all() - cpu0) * 1e6 / runs;
  if (count_faults && runs > 0) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the last children get reaped
    const ForkFaults faults1 = fork_faults();
    p.faults_per_run = (faults1.children - faults0.children) / runs;
    p.parent_faults_per_run = (faults1.parent - faults0.parent) / runs;
  }
  p.lat = stats(lat);
  return true;
}

void measure_throughput(spr::Runner& runner, ModeResult& m, double seconds) {
  std::atomic<bool> stop{false};
  std::atomic<long> ok{0}, failed{0};
  std::mutex mu;
  std::string first;
  std::vector<std::thread> feeders;
  const auto t0 = Clock::now();
  for (int t = 0; t < 4; ++t) {
    feeders.emplace_back([&] {
      while (!stop.load(std::memory_order_relaxed)) {
        spr::RunResult r = runner.run(kSnippet, kInput);
        if (r.ok && expected_result(r.result)) {
          ok.fetch_add(1, std::memory_order_relaxed);
        } else {
          failed.fetch_add(1, std::memory_order_relaxed);
          std::lock_guard<std::mutex> lk(mu);
          if (first.empty()) first = describe(r);
        }
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (auto& t : feeders) t.join();
  m.runs_per_s = static_cast<double>(ok.load()) / (us_since(t0) / 1e6);
  m.tput_failures = failed.load();
  if (m.first_failure.empty()) m.first_failure = first;
}

void measure_cold_start(const Options& o, ModeResult& m) {
  std::vector<double> ms;
  for (int i = 0; i < o.cold_starts; ++i) {
    const auto t0 = Clock::now();
    spr::Runner runner(runner_options(o, m.name, 1));
    spr::RunResult r = runner.run(kSnippet, kInput);
    const double elapsed = us_since(t0) / 1e3;
    if (r.ok && expected_result(r.result))
      ms.push_back(elapsed);
    else if (m.first_failure.empty())
      m.first_failure = "cold start: " + describe(r);
  }  // each Runner is stopped (workers killed and reaped) before the next one starts
  if (!ms.empty()) m.cold_start_ms = stats(ms).p50;
}

void idle_memory(ModeResult& m) {
  double rss = 0, pss = 0;
  int n = 0;
  bool pss_ok = true;
  for (pid_t pid : worker_tree().warm) {  // the warm worker, not the keeper the supervisor started
    auto roll = kb_fields("/proc/" + std::to_string(pid) + "/smaps_rollup");
    if (!roll.count("Rss")) continue;
    rss += roll["Rss"];
    if (roll.count("Pss"))
      pss += roll["Pss"];
    else
      pss_ok = false;
    ++n;
  }
  if (n == 0) return;
  m.idle_rss_mb = rss / 1024.0 / n;
  if (pss_ok) m.idle_pss_mb = pss / 1024.0 / n;
}

}  // namespace

ModeResult measure_mode(const Options& o, const std::string& mode, std::string& python_version) {
  ModeResult m;
  m.name = mode;
  const bool process = mode == "process";
  std::printf("[%s] ", mode.c_str());
  std::fflush(stdout);
  try {
    spr::Runner runner(runner_options(o, mode, 2));
    auto run_once = [&](std::string& err) {
      spr::RunResult r = runner.run(kSnippet, kInput);
      if (r.ok && expected_result(r.result)) return 0;
      err = describe(r);
      return fatal_kind(r.error_kind) ? 2 : 1;
    };
    std::string err;
    if (run_once(err) != 0) {
      m.error = err;
      std::printf("not available: %s\n", m.error.c_str());
      return m;
    }
    for (int i = 0; i < (process ? 5 : 50); ++i) run_once(err);
    // Modes that build an interpreter per back-to-back run get the smaller count.
    const bool slow = process || mode == "subinterpreter";
    m.available =
        measure_pattern(run_once, m.b2b, slow ? o.process_runs : o.seq_runs, 0, mode == "fork", m.first_failure);
    if (m.available) {
      std::printf("back to back p50 %.1f us ... ", m.b2b.lat.p50);
      std::fflush(stdout);
      m.available = measure_pattern(run_once, m.paced, o.paced_runs, kPacedGapMs, mode == "fork", m.first_failure);
    }
    if (!m.available) {
      m.error = m.first_failure;
      std::printf("not available: %s\n", m.error.c_str());
      return m;
    }
    std::printf("paced p50 %.1f us ... ", m.paced.lat.p50);
    std::fflush(stdout);
    if (!process) {
      // Warm and idle: let the last run's garbage settle, then read the workers' memory.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      idle_memory(m);
      if (python_version.empty()) python_version = runner.python_version();
    }
    measure_throughput(runner, m, process ? o.tput_seconds / 2 : o.tput_seconds);
    std::printf("%.0f runs/s ... ", m.runs_per_s);
    std::fflush(stdout);
  } catch (const std::exception& e) {
    m.available = false;
    m.error = e.what();
    std::printf("not available: %s\n", m.error.c_str());
    return m;
  }
  try {
    measure_cold_start(o, m);
  } catch (const std::exception& e) {
    if (m.first_failure.empty()) m.first_failure = std::string("cold start: ") + e.what();
  }
  if (m.cold_start_ms)
    std::printf("cold start %.1f ms\n", *m.cold_start_ms);
  else
    std::printf("cold start failed\n");
  return m;
}

ServeResult measure_serve(const Options& o) {
  ServeResult s;
  std::printf("[serve] ");
  std::fflush(stdout);
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
    s.error = std::string("pipe2: ") + std::strerror(errno);
    std::printf("not available: %s\n", s.error.c_str());
    return s;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::vector<std::string> args = {o.cli_path, "serve", "--workers", "2", "--isolation", "namespace"};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string env_worker = "SPR_WORKER=" + o.worker_path;
  char* envp[] = {o.worker_path.empty() ? nullptr : env_worker.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0].c_str(), &fa, nullptr, argv.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (rc != 0) {
    close(in[1]);
    close(out[0]);
    s.error = "posix_spawn " + o.cli_path + ": " + std::strerror(rc);
    std::printf("not available: %s\n", s.error.c_str());
    return s;
  }
  FILE* replies = fdopen(out[0], "r");
  long id = 0;
  auto run_once = [&](std::string& err) {
    const std::string line = json{{"id", ++id}, {"code", kSnippet}, {"input_data", kInput}}.dump() + "\n";
    if (!write_all(in[1], line)) {
      err = "serve closed its input";
      return 2;
    }
    char* buf = nullptr;
    std::size_t cap = 0;
    const ssize_t n = getline(&buf, &cap, replies);
    std::string text = n > 0 ? std::string(buf, static_cast<std::size_t>(n)) : std::string();
    free(buf);
    if (n <= 0) {
      err = "serve closed its output";
      return 2;
    }
    try {
      const json j = json::parse(text);
      if (j.value("ok", false) && expected_result(j.value("result", json()))) return 0;
      err = "serve answered " + text;
    } catch (const std::exception&) {
      err = "serve sent no JSON: " + text;
    }
    return 1;
  };
  std::string first, err;
  s.available = run_once(err) == 0;
  if (!s.available) s.error = err;
  for (int i = 0; s.available && i < 50; ++i) run_once(err);
  if (s.available) s.available = measure_pattern(run_once, s.b2b, o.seq_runs / 2, 0, false, first);
  if (s.available) s.available = measure_pattern(run_once, s.paced, o.paced_runs, kPacedGapMs, false, first);
  if (!s.available && s.error.empty()) s.error = first;
  close(in[1]);
  fclose(replies);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (s.available)
    std::printf("namespace: back to back p50 %.1f us, paced p50 %.1f us\n", s.b2b.lat.p50, s.paced.lat.p50);
  else
    std::printf("not available: %s\n", s.error.c_str());
  return s;
}

}  // namespace spr_bench
