// spr-bench's measurements outside the Runner: this machine's floors (pipe round trip, bare fork,
// copy-on-write, sub-interpreter, fresh python3), the in-process engine, and the original's model.
// Every fork here happens while the bench is single-threaded (no Runner alive).
#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <thread>

#include "bench.hpp"
#include "engine/engine.hpp"
#include "engine/py.hpp"

namespace spr_bench {

namespace {

bool pin(pid_t pid, int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  return sched_setaffinity(pid, sizeof set, &set) == 0;
}


// fork + (the child writes one byte in each of `dirty_pages` pages) + _exit + waitpid, of this
// process holding `buf` resident. Returns the latencies; adds the CPU of both sides to `cpu_s`.
std::vector<double> forks(char* buf, std::size_t size, int runs, int dirty_pages, double& cpu_s) {
  const std::size_t page = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const std::size_t stride = dirty_pages > 0 ? std::max(page, size / static_cast<std::size_t>(dirty_pages)) : page;
  std::vector<double> us;
  const double cpu0 = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN);
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    const pid_t pid = fork();
    if (pid == 0) {
      for (int p = 0; p < dirty_pages; ++p) buf[static_cast<std::size_t>(p) * stride % size] = static_cast<char>(i);
      _exit(0);
    }
    if (pid < 0) break;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    us.push_back(us_since(t0));
  }
  cpu_s = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN) - cpu0;
  return us;
}

// Py_NewInterpreter + Py_EndInterpreter in a child that initialises a plain interpreter.
std::optional<Stats> subinterpreter_cost(int runs) {
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) return std::nullopt;
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    Py_InitializeEx(0);
    std::vector<double> us;
    PyThreadState* main = PyThreadState_Get();
    for (int i = 0; i < runs; ++i) {
      const auto t0 = Clock::now();
      PyThreadState* ts = Py_NewInterpreter();
      if (!ts) break;
      Py_EndInterpreter(ts);
      PyThreadState_Swap(main);
      us.push_back(us_since(t0));
    }
    write_all(fds[1], json(us).dump());
    _exit(0);
  }
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    return std::nullopt;
  }
  int status = 0;
  try {
    auto us = json::parse(drain_and_reap(fds[0], pid, status)).get<std::vector<double>>();
    if (!us.empty()) return stats(us);
  } catch (const std::exception&) {
  }
  return std::nullopt;
}

// Spawns argv with a minimal environment, stdin/stdout/stderr as given (-1: /dev/null).
pid_t spawn(const std::vector<std::string>& args, int in_fd, int out_fd) {
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  if (in_fd >= 0)
    posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
  else
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  if (out_fd >= 0)
    posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  else
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  std::vector<std::string> copy = args;
  std::vector<char*> argv;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string env_path = "PATH=/usr/bin:/bin", env_lang = "LANG=C.UTF-8";
  char* envp[] = {env_path.data(), env_lang.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, copy[0].c_str(), &fa, nullptr, argv.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    errno = rc;
    return -1;
  }
  return pid;
}

std::optional<Stats> python_pass(const Options& o, int runs) {
  std::vector<double> us;
  for (int i = 0; i < runs + 2; ++i) {  // two to warm the page cache
    const auto t0 = Clock::now();
    const pid_t pid = spawn({o.baseline_python, "-c", "pass"}, -1, -1);
    if (pid < 0) return std::nullopt;
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return std::nullopt;
    if (i >= 2) us.push_back(us_since(t0));
  }
  return stats(us);
}

void print_stats(const char* what, const std::optional<Stats>& s) {
  if (s)
    std::printf("  %-44s p50 %9.1f us  p99 %9.1f us\n", what, s->p50, s->p99);
  else
    std::printf("  %-44s not measured\n", what);
}

}  // namespace

std::optional<Stats> pipe_round_trip(int runs, int child_cpu, double gap_ms) {
  cpu_set_t saved;
  if (sched_getaffinity(0, sizeof saved, &saved) != 0) return std::nullopt;
  int to[2], from[2];
  if (pipe2(to, O_CLOEXEC) != 0) return std::nullopt;
  if (pipe2(from, O_CLOEXEC) != 0) {
    close(to[0]);
    close(to[1]);
    return std::nullopt;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    close(to[1]);
    close(from[0]);
    pin(0, child_cpu);
    char b[4];
    while (read(to[0], b, 4) == 4 && write(from[1], b, 4) == 4) {
    }
    _exit(0);
  }
  close(to[0]);
  close(from[1]);
  std::vector<double> us;
  if (pid > 0 && pin(0, 0)) {
    char b[4] = {1, 2, 3, 4};
    const int warm = gap_ms > 0 ? 3 : 50;
    for (int i = 0; i < runs + warm; ++i) {
      // Paced: both sides sleep through the gap, as a worker and its supervisor thread do between paced runs.
      if (gap_ms > 0) std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(gap_ms));
      const auto t0 = Clock::now();
      if (write(to[1], b, 4) != 4 || read(from[0], b, 4) != 4) break;
      if (i >= warm) us.push_back(us_since(t0));
    }
  }
  close(to[1]);
  close(from[0]);
  if (pid > 0) waitpid(pid, nullptr, 0);
  sched_setaffinity(0, sizeof saved, &saved);
  if (us.empty()) return std::nullopt;
  return stats(us);
}

Floors measure_floors(const Options& o, double rss_mb) {
  Floors f;
  std::printf("[floors]\n");
  f.pipe_same_cpu = pipe_round_trip(o.floor_runs * 5, 0);
  print_stats("pipe round trip, same CPU", f.pipe_same_cpu);
  if (std::thread::hardware_concurrency() > 1) f.pipe_cross_cpu = pipe_round_trip(o.floor_runs * 5, 1);
  print_stats("pipe round trip, across CPUs", f.pipe_cross_cpu);
  const int paced = std::max(o.paced_runs, 10);
  f.pipe_paced_same_cpu = pipe_round_trip(paced, 0, kPacedGapMs);
  print_stats("pipe round trip after 50 ms idle, same CPU", f.pipe_paced_same_cpu);
  if (std::thread::hardware_concurrency() > 1) f.pipe_paced_cross_cpu = pipe_round_trip(paced, 1, kPacedGapMs);
  print_stats("pipe round trip after 50 ms idle, across CPUs", f.pipe_paced_cross_cpu);

  // Two sizes: a small C program's (what a paced fork-mode run is held to) and the idle fork-mode
  // worker's resident size (what the kernel must copy the page tables of for each run).
  auto bare = [&](double mb, std::optional<Stats>& lat, std::optional<double>& cpu_us, bool with_cow) {
    const auto size = static_cast<std::size_t>(mb * 1024 * 1024);
    void* m = mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) return;
    char* buf = static_cast<char*>(m);
    std::memset(buf, 1, size);  // resident, like the warm worker's heap
    double cpu_bare = 0, cpu_cow = 0;
    auto us = forks(buf, size, o.floor_runs, 0, cpu_bare);
    constexpr int kDirty = 256;
    if (!us.empty()) {
      lat = stats(us);
      cpu_us = cpu_bare * 1e6 / static_cast<double>(us.size());
      if (with_cow) {
        auto cow = forks(buf, size, std::max(o.floor_runs / 4, 20), kDirty, cpu_cow);
        if (!cow.empty()) f.cow_us_per_page = (stats(cow).p50 - lat->p50) / kDirty;
      }
    }
    munmap(m, size);
  };
  char label[80];
  bare(f.small_fork_rss_mb, f.small_fork, f.small_fork_cpu_us, false);
  std::snprintf(label, sizeof label, "bare fork, C process of %.0f MB", f.small_fork_rss_mb);
  print_stats(label, f.small_fork);
  f.fork_rss_mb = rss_mb > 0 ? rss_mb : 14;
  bare(f.fork_rss_mb, f.bare_fork, f.bare_fork_cpu_us, true);
  std::snprintf(label, sizeof label, "bare fork, C process of %.1f MB (worker's)", f.fork_rss_mb);
  print_stats(label, f.bare_fork);
  if (f.cow_us_per_page)
    std::printf("  %-44s %9.2f us per page\n", "copy-on-write (256 pages written)", *f.cow_us_per_page);

  f.subinterp = subinterpreter_cost(o.quick ? 10 : 20);
  print_stats("Py_NewInterpreter + Py_EndInterpreter", f.subinterp);
  f.python_pass = python_pass(o, std::max(o.floor_runs / 20, 5));
  print_stats("fresh `python3 -c pass`", f.python_pass);
  return f;
}

// ---------------------------------------------------------------------------------------------
// The in-process engine, in a forked child so the embedded interpreter stays out of the bench.

namespace {

std::string describe(const spr::RunResult& r) {
  if (r.ok) return "unexpected result " + r.result.dump();
  return spr::to_string(r.error_kind) + ": " + r.error.value_or("(no message)");
}

// A run in a child forked from the warm engine: latency to the child's answer, and the minor faults
// the child took per phase: Python's after-fork hooks and the run (the child's own getrusage, sent back with
// the answer), and its exit (the rest of what wait4 reports for it).
void fork_runs(spr::protocol::Request& req, std::uint64_t& id, int runs, json& out, const std::string& key = "fork_run") {
  std::vector<double> us;
  double faults = 0, hook_faults = 0, exit_faults = 0;
  const double cpu0 = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN);
  for (int i = 0; i < runs; ++i) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) return;
    req.id = id++;
    const auto t0 = Clock::now();
    PyOS_BeforeFork();
    const pid_t pid = fork();
    if (pid == 0) {
      PyOS_AfterFork_Child();
      struct rusage a {
      }, b{};
      getrusage(RUSAGE_SELF, &a);
      spr::RunResult r = spr::embed::run(req);
      getrusage(RUSAGE_SELF, &b);
      const long n[3] = {r.ok ? b.ru_minflt - a.ru_minflt : -1, a.ru_minflt, b.ru_minflt};
      ssize_t w = write(fds[1], n, sizeof n);
      (void)w;
      _exit(0);
    }
    PyOS_AfterFork_Parent();
    close(fds[1]);
    long n[3] = {-1, 0, 0};
    const bool got = pid > 0 && read(fds[0], n, sizeof n) == static_cast<ssize_t>(sizeof n);
    const double t = us_since(t0);
    close(fds[0]);
    struct rusage ru {};
    if (pid > 0) wait4(pid, nullptr, 0, &ru);
    if (!got || n[0] < 0) return;
    us.push_back(t);
    faults += static_cast<double>(n[0]);
    hook_faults += static_cast<double>(n[1]);
    exit_faults += static_cast<double>(ru.ru_minflt - n[2]);
  }
  if (us.empty()) return;
  const Stats s = stats(us);
  const double k = static_cast<double>(us.size());
  out[key] = {{"n", s.n}, {"p50", s.p50}, {"p99", s.p99}};
  out[key + "_faults"] = faults / k;
  out[key + "_phase_faults"] = {{"after_fork_hooks", hook_faults / k}, {"run", faults / k}, {"exit", exit_faults / k}};
  out[key + "_cpu_us"] =
      (rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN) - cpu0) * 1e6 / k;
}

// The warm engine forking as os.fork() does (PyOS_BeforeFork, fork, PyOS_AfterFork_Child in the
// child, PyOS_AfterFork_Parent), the child exiting at once: the floor under a fork-mode run. CPU of
// both sides per fork. With `hooks` false, the same process forks with no Python hook on either side
// (the kernel's fork and exit of a process this size and this many mappings): the difference is the
// hooks' own cost, and `after_fork_us` (the child's own clock around PyOS_AfterFork_Child) its child side.
void warm_forks(int runs, json& out, bool hooks) {
  std::vector<double> us;
  double after_fork_us = 0;
  const double cpu0 = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN);
  for (int i = 0; i < runs; ++i) {
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0) break;
    const auto t0 = Clock::now();
    if (hooks) PyOS_BeforeFork();
    const pid_t pid = fork();
    if (pid == 0) {
      if (hooks) {
        struct timespec a {}, b{};
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
        PyOS_AfterFork_Child();
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
        const double d = static_cast<double>(b.tv_sec - a.tv_sec) * 1e6 + static_cast<double>(b.tv_nsec - a.tv_nsec) / 1e3;
        ssize_t w = write(fds[1], &d, sizeof d);
        (void)w;
      }
      _exit(0);
    }
    if (hooks) PyOS_AfterFork_Parent();
    close(fds[1]);
    if (pid < 0) {
      close(fds[0]);
      break;
    }
    double d = 0;
    if (hooks && read(fds[0], &d, sizeof d) == static_cast<ssize_t>(sizeof d)) after_fork_us += d;
    close(fds[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    us.push_back(us_since(t0));
  }
  if (us.empty()) return;
  const Stats s = stats(us);
  const std::string key = hooks ? "warm_fork" : "warm_fork_raw";
  out[key] = {{"n", s.n}, {"p50", s.p50}, {"p99", s.p99}};
  const double n = static_cast<double>(us.size());
  out[key + "_cpu_us"] = (rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN) - cpu0) * 1e6 / n;
  if (hooks) out["after_fork_child_cpu_us"] = after_fork_us / n;
}

[[noreturn]] void engine_child(int fd, int runs, int fork_count) {
  json out;
  std::string err = spr::embed::initialize(spr::embed::EngineOptions{});
  if (!err.empty()) {
    out = {{"error", "initialize failed: " + err}};
  } else {
    spr::protocol::Request req;
    req.code = kSnippet;
    req.input_json = kInput.dump();
    req.policy.isolation = spr::Isolation::namespace_;  // a fresh namespace in this process
    std::uint64_t id = 1;
    long failures = 0;
    std::string first;
    for (int i = 0; i < 200; ++i) {
      req.id = id++;
      spr::RunResult r = spr::embed::run(req);
      if (!r.ok && first.empty()) first = describe(r);
    }
    std::vector<double> lat;
    const double cpu0 = rusage_seconds(RUSAGE_SELF);
    for (int i = 0; i < runs; ++i) {
      req.id = id++;
      const auto t0 = Clock::now();
      spr::RunResult r = spr::embed::run(req);
      const double us = us_since(t0);
      if (r.ok && expected_result(r.result)) {
        lat.push_back(us);
      } else {
        ++failures;
        if (first.empty()) first = describe(r);
      }
    }
    if (lat.empty()) {
      out = {{"error", "every run failed: " + first}};
    } else {
      const Stats s = stats(lat);
      out = {{"n", s.n},
             {"p50", s.p50},
             {"p99", s.p99},
             {"failures", failures},
             {"python", spr::embed::python_version()},
             {"cpu_us_per_run", (rusage_seconds(RUSAGE_SELF) - cpu0) * 1e6 / runs}};
      warm_forks(fork_count, out, false);
      warm_forks(fork_count, out, true);
      req.policy.isolation = spr::Isolation::fork;
      fork_runs(req, id, fork_count, out);
      // As the fork worker does: the default policy's builtins and the streams built once in the parent.
      if (spr::embed::prebuild_run_objects(spr::RunnerPolicy{}, true)) fork_runs(req, id, fork_count, out, "fork_run_prebuilt");
    }
  }
  write_all(fd, out.dump());
  _exit(0);
}

Stats stats_of(const json& j) {
  return Stats{j.at("n").get<int>(), j.at("p50").get<double>(), j.at("p99").get<double>()};
}

}  // namespace

EngineResult measure_engine(const Options& o) {
  EngineResult e;
  std::printf("[engine] ");
  std::fflush(stdout);
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0) {
    e.error = std::string("pipe2: ") + std::strerror(errno);
    std::printf("not available: %s\n", e.error.c_str());
    return e;
  }
  const pid_t pid = fork();
  if (pid == 0) {
    close(fds[0]);
    engine_child(fds[1], o.engine_runs, o.floor_runs / 2);
  }
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    e.error = std::string("fork: ") + std::strerror(errno);
    std::printf("not available: %s\n", e.error.c_str());
    return e;
  }
  int status = 0;
  const std::string text = drain_and_reap(fds[0], pid, status);
  try {
    json j = json::parse(text);
    if (j.contains("error")) {
      e.error = j["error"].get<std::string>();
    } else {
      e.available = true;
      e.lat = stats_of(j);
      e.failures = j.at("failures").get<long>();
      e.python = j.value("python", "");
      e.cpu_us_per_run = j.at("cpu_us_per_run").get<double>();
      if (j.contains("fork_run")) {
        e.fork_run = stats_of(j["fork_run"]);
        e.fork_run_faults = j.at("fork_run_faults").get<double>();
        e.fork_run_cpu_us = j.at("fork_run_cpu_us").get<double>();
      }
      if (j.contains("fork_run_prebuilt")) {
        e.fork_run_prebuilt = stats_of(j["fork_run_prebuilt"]);
        e.fork_run_prebuilt_faults = j.at("fork_run_prebuilt_faults").get<double>();
        e.fork_run_prebuilt_cpu_us = j.at("fork_run_prebuilt_cpu_us").get<double>();
        e.fork_run_phase_faults = j.at("fork_run_prebuilt_phase_faults").get<std::map<std::string, double>>();
      }
      if (j.contains("warm_fork")) {
        e.warm_fork = stats_of(j["warm_fork"]);
        e.warm_fork_cpu_us = j.at("warm_fork_cpu_us").get<double>();
        e.after_fork_child_cpu_us = j.at("after_fork_child_cpu_us").get<double>();
      }
      if (j.contains("warm_fork_raw")) {
        e.warm_fork_raw = stats_of(j["warm_fork_raw"]);
        e.warm_fork_raw_cpu_us = j.at("warm_fork_raw_cpu_us").get<double>();
      }
    }
  } catch (const std::exception&) {
    e.error = "the engine child sent no figures (" +
              (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                   : "exit status " + std::to_string(WEXITSTATUS(status))) +
              ")";
  }
  if (e.available) {
    std::printf("p50 %.2f us, p99 %.2f us over %d runs", e.lat.p50, e.lat.p99, e.lat.n);
    if (e.fork_run)
      std::printf("; forked run p50 %.0f us, %.0f us of CPU, %.0f minor faults", e.fork_run->p50, e.fork_run_cpu_us,
                  *e.fork_run_faults);
    if (e.fork_run_prebuilt)
      std::printf("; with prebuilt builtins and streams p50 %.0f us, %.0f us of CPU, %.0f minor faults",
                  e.fork_run_prebuilt->p50, e.fork_run_prebuilt_cpu_us, e.fork_run_prebuilt_faults);
    if (e.warm_fork)
      std::printf("; warm CPython forking p50 %.0f us, %.0f us of CPU (PyOS_AfterFork_Child %.0f us)", e.warm_fork->p50,
                  *e.warm_fork_cpu_us, e.after_fork_child_cpu_us.value_or(0));
    if (e.warm_fork_raw)
      std::printf("; without Python's fork hooks p50 %.0f us, %.0f us of CPU", e.warm_fork_raw->p50,
                  *e.warm_fork_raw_cpu_us);
    std::printf("\n");
  } else {
    std::printf("not available: %s\n", e.error.c_str());
  }
  return e;
}

// ---------------------------------------------------------------------------------------------
// The original's model: a fresh python3 per run, JSON over stdin/stdout.

namespace {

bool baseline_once(const Options& o, const std::string& request, std::string& error) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
    error = std::string("pipe2: ") + std::strerror(errno);
    return false;
  }
  const pid_t pid = spawn({o.baseline_python, o.baseline_script}, in[0], out[1]);
  close(in[0]);
  close(out[1]);
  if (pid < 0) {
    error = "posix_spawn " + o.baseline_python + ": " + std::strerror(errno);
    close(in[1]);
    close(out[0]);
    return false;
  }
  write_all(in[1], request);
  close(in[1]);
  int status = 0;
  const std::string reply = drain_and_reap(out[0], pid, status);
  try {
    json j = json::parse(reply);
    if (j.value("ok", false) && expected_result(j.value("result", json()))) return true;
    error = "child answered " + j.dump();
  } catch (const std::exception&) {
    error = "child sent no JSON (" +
            (WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                                 : "exit status " + std::to_string(WEXITSTATUS(status))) +
            ")";
  }
  return false;
}

}  // namespace

BaselineResult measure_baseline(const Options& o) {
  BaselineResult b;
  std::printf("[baseline] ");
  std::fflush(stdout);
  const std::string request = json{{"code", kSnippet}, {"input_data", kInput}}.dump();
  std::string error;
  for (int i = 0; i < 3; ++i) {  // warm the page cache
    if (!baseline_once(o, request, error)) {
      b.error = error;
      std::printf("not available: %s\n", b.error.c_str());
      return b;
    }
  }
  std::vector<double> lat;
  const double cpu0 = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN);
  for (int i = 0; i < o.baseline_runs; ++i) {
    const auto t0 = Clock::now();
    if (baseline_once(o, request, error))
      lat.push_back(us_since(t0));
    else
      ++b.failures;
  }
  if (lat.empty()) {
    b.error = error;
    std::printf("not available: %s\n", b.error.c_str());
    return b;
  }
  b.available = true;
  b.cpu_us_per_run = (rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN) - cpu0) * 1e6 / o.baseline_runs;
  b.lat = stats(lat);
  std::printf("p50 %.0f us, p99 %.0f us over %d runs\n", b.lat.p50, b.lat.p99, b.lat.n);
  return b;
}

}  // namespace spr_bench
