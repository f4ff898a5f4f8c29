// spr-bench: latency, throughput, cold start and idle memory of each isolation mode through the
// public API, the in-process engine (in a forked child), and the original's model as the baseline.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <dirent.h>
#include <fstream>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine.hpp"
#include "pandas_case.hpp"
#include "plot.hpp"
#include "spr/runner.hpp"

#ifndef SPR_BENCH_BASELINE_SCRIPT
#define SPR_BENCH_BASELINE_SCRIPT "bench/baseline_runner.py"
#endif

namespace {

// Reads `fd` to end of stream, closes it, and reaps `pid` (its exit status goes to `status`).
std::string drain_and_reap(int fd, pid_t pid, int& status) {
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return text;
}


using spr::json;
using Clock = std::chrono::steady_clock;

const char* const kSnippet = "import math\nresult = math.sqrt(input_data['x'])";
const json kInput = {{"x", 81}};

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

bool expected_result(const json& r) { return r.is_number() && r.get<double>() == 9.0; }

// Nearest-rank percentile of an unsorted sample.
double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  auto rank = static_cast<std::size_t>(std::ceil(q * static_cast<double>(v.size())));
  if (rank == 0) rank = 1;
  return v[std::min(rank, v.size()) - 1];
}

double median(std::vector<double> v) { return percentile(std::move(v), 0.5); }

// ---------------------------------------------------------------------------------------------
// Options

struct Options {
  bool quick = false;
  std::string json_path, plot_path;
  std::vector<std::string> modes{"namespace", "subinterpreter", "fork", "process"};
  std::string worker_path;
  std::string baseline_python = "/usr/bin/python3";
  std::string baseline_script = SPR_BENCH_BASELINE_SCRIPT;
  bool engine = true, baseline = true;
  bool pandas = true, only_pandas = false;  // the pandas case (pandas_case.cpp)
  // Sizes; filled from --quick unless given explicitly.
  int seq_runs = -1, process_runs = -1, baseline_runs = -1, cold_starts = -1, engine_runs = -1;
  double tput_seconds = -1, process_tput_seconds = -1;
};

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: %s [--quick] [--json FILE] [--plot FILE.svg] [--modes a,b,...]\n"
               "          [--runs N] [--process-runs N] [--seconds S] [--baseline-runs N] [--cold-starts N]\n"
               "          [--engine-runs N] [--no-engine] [--no-baseline] [--no-pandas] [--only-pandas] [--worker PATH]\n"
               "          [--baseline-python PATH] [--baseline-script PATH]\n"
               "modes: namespace, subinterpreter, fork, process (default: all)\n",
               argv0);
  std::exit(code);
}

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "missing value for %s\n", a.c_str());
        usage(argv[0], 2);
      }
      return argv[++i];
    };
    try {
      if (a == "--quick") o.quick = true;
      else if (a == "--json") o.json_path = value();
      else if (a == "--plot") o.plot_path = value();
      else if (a == "--worker") o.worker_path = value();
      else if (a == "--baseline-python") o.baseline_python = value();
      else if (a == "--baseline-script") o.baseline_script = value();
      else if (a == "--no-engine") o.engine = false;
      else if (a == "--no-baseline") o.baseline = false;
      else if (a == "--no-pandas") o.pandas = false;
      else if (a == "--only-pandas") o.only_pandas = true;
      else if (a == "--runs") o.seq_runs = std::stoi(value());
      else if (a == "--process-runs") o.process_runs = std::stoi(value());
      else if (a == "--baseline-runs") o.baseline_runs = std::stoi(value());
      else if (a == "--cold-starts") o.cold_starts = std::stoi(value());
      else if (a == "--engine-runs") o.engine_runs = std::stoi(value());
      else if (a == "--seconds") o.tput_seconds = std::stod(value());
      else if (a == "--modes") {
        o.modes.clear();
        std::stringstream ss(value());
        std::string m;
        while (std::getline(ss, m, ',')) {
          if (m.empty()) continue;
          if (m != "namespace" && m != "subinterpreter" && m != "fork" && m != "process") {
            std::fprintf(stderr, "unknown mode '%s'\n", m.c_str());
            usage(argv[0], 2);
          }
          if (std::find(o.modes.begin(), o.modes.end(), m) == o.modes.end()) o.modes.push_back(m);
        }
      } else if (a == "-h" || a == "--help") usage(argv[0], 0);
      else {
        std::fprintf(stderr, "unknown argument '%s'\n", a.c_str());
        usage(argv[0], 2);
      }
    } catch (const std::logic_error&) {
      std::fprintf(stderr, "bad number for %s\n", a.c_str());
      usage(argv[0], 2);
    }
  }
  auto dflt = [&](auto& field, auto full, auto quick) {
    if (field < 0) field = o.quick ? quick : full;
  };
  dflt(o.seq_runs, 2000, 300);
  dflt(o.process_runs, 100, 30);
  dflt(o.baseline_runs, 100, 30);
  dflt(o.cold_starts, 5, 3);
  dflt(o.engine_runs, 10000, 2000);
  dflt(o.tput_seconds, 3.0, 1.0);
  dflt(o.process_tput_seconds, o.tput_seconds / 2, o.tput_seconds / 2);
  return o;
}

spr::Isolation isolation_of(const std::string& m) {
  if (m == "namespace") return spr::Isolation::namespace_;
  if (m == "subinterpreter") return spr::Isolation::subinterpreter;
  if (m == "process") return spr::Isolation::process;
  return spr::Isolation::fork;
}

spr::RunnerOptions runner_options(const Options& o, const std::string& mode, std::size_t workers) {
  spr::RunnerOptions ro;
  ro.workers = workers;
  ro.policy.isolation = isolation_of(mode);
  if (!o.worker_path.empty()) ro.worker_path = o.worker_path;
  return ro;
}

// ---------------------------------------------------------------------------------------------
// Idle worker memory: our spr-worker children, read from /proc.

struct WorkerMemory {
  int workers = 0;
  double rss_mb = 0;                // per-worker average
  std::optional<double> pss_mb;     // absent when smaps_rollup cannot be read
};

std::optional<std::pair<pid_t, std::string>> ppid_and_comm(const std::string& pid) {
  std::ifstream f("/proc/" + pid + "/stat");
  std::string line;
  if (!std::getline(f, line)) return std::nullopt;
  const auto open = line.find('('), close = line.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return std::nullopt;
  std::string comm = line.substr(open + 1, close - open - 1);
  std::istringstream rest(line.substr(close + 1));
  std::string state;
  long ppid = -1;
  if (!(rest >> state >> ppid)) return std::nullopt;
  return std::make_pair(static_cast<pid_t>(ppid), comm);
}

// kB figures from a /proc file of "Key:   123 kB" lines.
std::map<std::string, double> kb_fields(const std::string& path) {
  std::map<std::string, double> out;
  std::ifstream f(path);
  std::string key;
  double v = 0;
  std::string line;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    if (ls >> key >> v && !key.empty() && key.back() == ':') out[key.substr(0, key.size() - 1)] = v;
  }
  return out;
}

// Our direct children named spr-worker (the Runner's spawner thread is part of this process).
std::vector<std::string> worker_children() {
  std::vector<std::string> out;
  const pid_t self = getpid();
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (!std::all_of(e->d_name, e->d_name + std::strlen(e->d_name), [](char c) { return c >= '0' && c <= '9'; }))
      continue;
    auto pc = ppid_and_comm(e->d_name);
    if (pc && pc->first == self && pc->second == "spr-worker") out.emplace_back(e->d_name);
  }
  closedir(d);
  return out;
}

// utime + stime + cutime + cstime of one process, in seconds (cutime: its reaped children, e.g. fork-mode runs).
double proc_cpu_seconds(const std::string& pid) {
  std::ifstream f("/proc/" + pid + "/stat");
  std::string line;
  if (!std::getline(f, line)) return 0;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(line.substr(close + 1));
  std::string field;
  double sum = 0;
  // Fields after comm start at 3 (state); utime..cstime are fields 14..17.
  for (int i = 3; i <= 17 && (rest >> field); ++i)
    if (i >= 14) sum += std::strtod(field.c_str(), nullptr);
  return sum / static_cast<double>(sysconf(_SC_CLK_TCK));
}

double rusage_seconds(int who) {
  struct rusage ru{};
  getrusage(who, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

// CPU seconds consumed so far by this process, its reaped children and its live workers (with theirs).
double cpu_seconds_all() {
  double s = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN);
  for (const auto& pid : worker_children()) s += proc_cpu_seconds(pid);
  return s;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

WorkerMemory idle_worker_memory() {
  WorkerMemory m;
  double rss = 0, pss = 0;
  bool pss_ok = true;
  for (const auto& pid : worker_children()) {
    const std::string dir = "/proc/" + pid;
    auto roll = kb_fields(dir + "/smaps_rollup");
    if (roll.count("Rss")) {
      rss += roll["Rss"];
      if (roll.count("Pss")) pss += roll["Pss"];
      else pss_ok = false;
    } else {
      auto st = kb_fields(dir + "/status");
      if (!st.count("VmRSS")) continue;
      rss += st["VmRSS"];
      pss_ok = false;
    }
    ++m.workers;
  }
  if (m.workers > 0) {
    m.rss_mb = rss / 1024.0 / m.workers;
    if (pss_ok) m.pss_mb = pss / 1024.0 / m.workers;
  }
  return m;
}

// ---------------------------------------------------------------------------------------------
// One isolation mode through spr::Runner.

struct ModeResult {
  std::string name;
  bool available = false;
  std::string error;
  int runs = 0;
  double p50_us = 0, p99_us = 0;
  long seq_failures = 0;
  double runs_per_s = 0;
  long tput_runs = 0, tput_failures = 0;
  double tput_seconds = 0;
  std::string first_failure;
  std::optional<double> cold_start_ms;
  WorkerMemory memory;
  bool memory_measured = false;
  std::optional<double> ratio;
  std::optional<double> cpu_us_per_run;  // supervisor + worker (+ fork child) CPU per sequential run
};

bool fatal_kind(spr::ErrorKind k) {
  return k == spr::ErrorKind::worker_unavailable || k == spr::ErrorKind::protocol_error;
}

std::string describe(const spr::RunResult& r) {
  if (r.ok) return "unexpected result " + r.result.dump();
  return spr::to_string(r.error_kind) + ": " + r.error.value_or("(no message)");
}

void measure_latency(spr::Runner& runner, ModeResult& m, int warmup, int runs) {
  for (int i = 0; i < warmup; ++i) {
    spr::RunResult r = runner.run(kSnippet, kInput);
    if (!r.ok || !expected_result(r.result)) {
      if (fatal_kind(r.error_kind)) {
        m.available = false;
        m.error = describe(r);
        return;
      }
      ++m.seq_failures;
      if (m.first_failure.empty()) m.first_failure = describe(r);
    }
  }
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(runs));
  const double cpu0 = cpu_seconds_all();
  for (int i = 0; i < runs; ++i) {
    const auto t0 = Clock::now();
    spr::RunResult r = runner.run(kSnippet, kInput);
    const double us = us_since(t0);
    if (!r.ok || !expected_result(r.result)) {
      if (fatal_kind(r.error_kind)) {
        m.available = false;
        m.error = describe(r);
        return;
      }
      ++m.seq_failures;
      if (m.first_failure.empty()) m.first_failure = describe(r);
      continue;
    }
    lat.push_back(us);
  }
  if (runs > 0) m.cpu_us_per_run = (cpu_seconds_all() - cpu0) * 1e6 / runs;
  m.runs = static_cast<int>(lat.size());
  m.p50_us = percentile(lat, 0.50);
  m.p99_us = percentile(lat, 0.99);
}

void measure_throughput(spr::Runner& runner, ModeResult& m, double seconds) {
  std::atomic<bool> stop{false};
  std::atomic<long> ok{0}, failed{0};
  std::mutex mu;
  std::string first;
  std::vector<std::thread> feeders;
  feeders.reserve(4);
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
  const double elapsed = us_since(t0) / 1e6;
  m.tput_seconds = elapsed;
  m.tput_runs = ok.load();
  m.tput_failures = failed.load();
  m.runs_per_s = static_cast<double>(m.tput_runs) / elapsed;
  if (m.first_failure.empty()) m.first_failure = first;
}

void measure_cold_start(const Options& o, ModeResult& m) {
  std::vector<double> ms;
  for (int i = 0; i < o.cold_starts; ++i) {
    const auto t0 = Clock::now();
    spr::Runner runner(runner_options(o, m.name, 1));
    spr::RunResult r = runner.run(kSnippet, kInput);
    const double elapsed = us_since(t0) / 1e3;
    if (r.ok && expected_result(r.result)) {
      ms.push_back(elapsed);
    } else if (m.first_failure.empty()) {
      m.first_failure = "cold start: " + describe(r);
    }
  }  // each Runner is stopped (workers killed and reaped) before the next one starts
  if (!ms.empty()) m.cold_start_ms = median(ms);
}

ModeResult measure_mode(const Options& o, const std::string& mode, std::string& python_version) {
  ModeResult m;
  m.name = mode;
  const bool process = mode == "process";
  std::printf("[%s] ", mode.c_str());
  std::fflush(stdout);
  try {
    spr::Runner runner(runner_options(o, mode, 2));
    spr::RunResult first = runner.run(kSnippet, kInput);
    if (!first.ok || !expected_result(first.result)) {
      m.error = describe(first);
      std::printf("not available: %s\n", m.error.c_str());
      return m;
    }
    m.available = true;
    measure_latency(runner, m, process ? 10 : 50, process ? o.process_runs : o.seq_runs);
    if (!m.available) {
      std::printf("not available: %s\n", m.error.c_str());
      return m;
    }
    std::printf("p50 %.1f us ... ", m.p50_us);
    std::fflush(stdout);
    if (!process) {
      // Warm and idle: let the last run's garbage settle, then read the workers' memory.
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      m.memory = idle_worker_memory();
      m.memory_measured = m.memory.workers > 0;
      if (python_version.empty()) python_version = runner.python_version();
    }
    measure_throughput(runner, m, process ? o.process_tput_seconds : o.tput_seconds);
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
  if (m.cold_start_ms) std::printf("cold start %.1f ms\n", *m.cold_start_ms);
  else std::printf("cold start failed\n");
  return m;
}

// ---------------------------------------------------------------------------------------------
// In-process engine, measured in a forked child so the embedded interpreter stays out of the
// bench process (the parent is single-threaded here: no Runner is alive).

struct EngineResult {
  bool available = false;
  std::string error;
  int runs = 0;
  double p50_us = 0, p99_us = 0;
  long failures = 0;
  std::string python;
  std::optional<double> ratio;
  std::optional<double> cpu_us_per_run;
};

[[noreturn]] void engine_child(int fd, int runs) {
  json out;
  std::string err = spr::embed::initialize(spr::embed::EngineOptions{});
  if (!err.empty()) {
    out = {{"error", "initialize failed: " + err}};
  } else {
    spr::embed::Request req;
    req.code = kSnippet;
    req.input_data = kInput;
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
    lat.reserve(static_cast<std::size_t>(runs));
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
      out = {{"runs", lat.size()}, {"p50_us", percentile(lat, 0.5)}, {"p99_us", percentile(lat, 0.99)},
             {"failures", failures}, {"python", spr::embed::python_version()},
             {"cpu_us_per_run", (rusage_seconds(RUSAGE_SELF) - cpu0) * 1e6 / runs}};
      if (!first.empty()) out["first_failure"] = first;
    }
  }
  const std::string text = out.dump();
  std::size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
  _exit(0);
}

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
    engine_child(fds[1], o.engine_runs);
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
      e.runs = j.at("runs").get<int>();
      e.p50_us = j.at("p50_us").get<double>();
      e.p99_us = j.at("p99_us").get<double>();
      e.failures = j.at("failures").get<long>();
      e.python = j.value("python", "");
      if (j.contains("cpu_us_per_run")) e.cpu_us_per_run = j["cpu_us_per_run"].get<double>();
    }
  } catch (const std::exception&) {
    e.error = "the engine child sent no figures (" +
              (WIFSIGNALED(status) ? "killed by signal " + std::to_string(WTERMSIG(status))
                                   : "exit status " + std::to_string(WEXITSTATUS(status))) +
              ")";
  }
  if (e.available) std::printf("p50 %.2f us, p99 %.2f us over %d runs\n", e.p50_us, e.p99_us, e.runs);
  else std::printf("not available: %s\n", e.error.c_str());
  return e;
}

// ---------------------------------------------------------------------------------------------
// Baseline: the original's model, a fresh python3 per run, JSON over stdin/stdout.

struct BaselineResult {
  bool available = false;
  std::string error;
  int runs = 0;
  long failures = 0;
  double p50_us = 0, p99_us = 0;
  std::optional<double> cpu_us_per_run;
};

// One run; returns false with `error` set when the child did not answer {"ok": true, "result": 9.0}.
bool baseline_once(const Options& o, const std::string& request, std::string& error) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0) {
    error = std::string("pipe2: ") + std::strerror(errno);
    return false;
  }
  if (pipe2(out, O_CLOEXEC) != 0) {
    error = std::string("pipe2: ") + std::strerror(errno);
    close(in[0]);
    close(in[1]);
    return false;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  std::string py = o.baseline_python, script = o.baseline_script;
  char* argv[] = {py.data(), script.data(), nullptr};
  std::string env_path = "PATH=/usr/bin:/bin", env_lang = "LANG=C.UTF-8";
  char* envp[] = {env_path.data(), env_lang.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, py.c_str(), &fa, nullptr, argv, envp);
  posix_spawn_file_actions_destroy(&fa);
  close(in[0]);
  close(out[1]);
  if (rc != 0) {
    close(in[1]);
    close(out[0]);
    error = "posix_spawn " + py + ": " + std::strerror(rc);
    return false;
  }
  std::size_t off = 0;
  while (off < request.size()) {
    ssize_t n = write(in[1], request.data() + off, request.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    off += static_cast<std::size_t>(n);
  }
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
    const bool ok = baseline_once(o, request, error);
    const double us = us_since(t0);
    if (ok) lat.push_back(us);
    else ++b.failures;
  }
  if (lat.empty()) {
    b.error = error;
    std::printf("not available: %s\n", b.error.c_str());
    return b;
  }
  b.available = true;
  if (o.baseline_runs > 0)
    b.cpu_us_per_run = (rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN) - cpu0) * 1e6 / o.baseline_runs;
  b.runs = static_cast<int>(lat.size());
  b.p50_us = percentile(lat, 0.5);
  b.p99_us = percentile(lat, 0.99);
  std::printf("p50 %.0f us, p99 %.0f us over %d runs\n", b.p50_us, b.p99_us, b.runs);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Targets, table, JSON.

struct Target {
  std::string key;       // "<row>.<column>"
  std::string row, column;
  bool at_most;          // true: value <= limit; false: value >= limit
  double limit;
  std::optional<double> value;
  std::optional<bool> pass() const {
    if (!value) return std::nullopt;
    return at_most ? *value <= limit : *value >= limit;
  }
  std::string limit_text() const {
    char buf[48];
    if (limit >= 1000 && std::fmod(limit, 1000) == 0)
      std::snprintf(buf, sizeof buf, "%s%.0f,%03.0f", at_most ? "<=" : ">=", std::floor(limit / 1000),
                    std::fmod(limit, 1000));
    else
      std::snprintf(buf, sizeof buf, "%s%g", at_most ? "<=" : ">=", limit);
    return buf;
  }
};

std::string fixed(double v, int decimals) {
  char buf[48];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

struct Report {
  std::vector<ModeResult> modes;
  EngineResult engine;
  bool engine_run = false;
  BaselineResult baseline;
  bool baseline_run = false;
  std::string python;
  std::string load_start, load_end;  // /proc/loadavg 1/5/15-minute figures: the machine may be shared
  std::vector<Target> targets;
};

void build_targets(Report& r) {
  auto mode = [&](const std::string& n) -> const ModeResult* {
    for (const auto& m : r.modes)
      if (m.name == n && m.available) return &m;
    return nullptr;
  };
  auto add = [&](const std::string& row, const std::string& col, bool at_most, double limit, std::optional<double> v) {
    r.targets.push_back(Target{row + "." + col, row, col, at_most, limit, v});
  };
  auto p50 = [&](const std::string& n) -> std::optional<double> {
    if (auto* m = mode(n)) return m->p50_us;
    return std::nullopt;
  };
  add("namespace", "p50_us", true, 40, p50("namespace"));
  add("subinterpreter", "p50_us", true, 80, p50("subinterpreter"));
  add("fork", "p50_us", true, 700, p50("fork"));
  add("engine", "p50_us", true, 10, r.engine.available ? std::optional<double>(r.engine.p50_us) : std::nullopt);
  add("fork", "x_vs_baseline", false, 40, mode("fork") ? mode("fork")->ratio : std::nullopt);
  add("namespace", "runs_per_s", false, 20000,
      mode("namespace") ? std::optional<double>(mode("namespace")->runs_per_s) : std::nullopt);
  add("fork", "runs_per_s", false, 1500, mode("fork") ? std::optional<double>(mode("fork")->runs_per_s) : std::nullopt);
  for (const auto& m : r.modes) {
    if (!m.available) continue;
    if (m.memory_measured) add(m.name, "idle_rss_mb", true, 15, m.memory.rss_mb);
    add(m.name, "cold_start_ms", true, 100, m.cold_start_ms);
  }
}

const Target* find_target(const Report& r, const std::string& row, const std::string& col) {
  for (const auto& t : r.targets)
    if (t.row == row && t.column == col) return &t;
  return nullptr;
}

std::string cell(const Report& r, const std::string& row, const std::string& col, std::optional<double> v,
                 int decimals) {
  if (!v) return "-";
  std::string s = fixed(*v, decimals);
  if (const Target* t = find_target(r, row, col)) {
    auto p = t->pass();
    s += " (" + t->limit_text() + " " + (p ? (*p ? "pass" : "MISS") : "n/a") + ")";
  }
  return s;
}

void print_table(const Report& r) {
  const std::vector<std::string> head = {"mode",          "p50_us",      "p99_us",      "runs_per_s",
                                         "cold_start_ms", "idle_rss_mb", "idle_pss_mb", "x_vs_baseline",
                                         "cpu_us_per_run"};
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> notes;
  for (const auto& m : r.modes) {
    if (!m.available) {
      rows.push_back({m.name, "not available: " + m.error, "", "", "", "", "", "", ""});
      continue;
    }
    std::optional<double> rss, pss;
    if (m.memory_measured) {
      rss = m.memory.rss_mb;
      pss = m.memory.pss_mb;
    }
    rows.push_back({m.name, cell(r, m.name, "p50_us", m.p50_us, 1), cell(r, m.name, "p99_us", m.p99_us, 1),
                    cell(r, m.name, "runs_per_s", m.runs_per_s, 0), cell(r, m.name, "cold_start_ms", m.cold_start_ms, 1),
                    cell(r, m.name, "idle_rss_mb", rss, 1), cell(r, m.name, "idle_pss_mb", pss, 1),
                    cell(r, m.name, "x_vs_baseline", m.ratio, 1), cell(r, m.name, "cpu", m.cpu_us_per_run, 0)});
    const long failures = m.seq_failures + m.tput_failures;
    if (failures > 0)
      notes.push_back(m.name + ": " + std::to_string(failures) + " failed runs (first: " + m.first_failure + ")");
    else if (!m.first_failure.empty())
      notes.push_back(m.name + ": " + m.first_failure);
  }
  if (r.engine_run) {
    if (r.engine.available)
      rows.push_back({"engine (in-process)", cell(r, "engine", "p50_us", r.engine.p50_us, 2),
                      cell(r, "engine", "p99_us", r.engine.p99_us, 2), "-", "-", "-", "-",
                      cell(r, "engine", "x_vs_baseline", r.engine.ratio, 0), cell(r, "engine", "cpu", r.engine.cpu_us_per_run, 1)});
    else
      rows.push_back({"engine (in-process)", "not available: " + r.engine.error, "", "", "", "", "", "", ""});
    if (r.engine.failures > 0) notes.push_back("engine: " + std::to_string(r.engine.failures) + " failed runs");
  }
  if (r.baseline_run) {
    if (r.baseline.available)
      rows.push_back({"baseline (python3 per run)", fixed(r.baseline.p50_us, 0), fixed(r.baseline.p99_us, 0), "-", "-",
                      "-", "-", "1.0", cell(r, "baseline", "cpu", r.baseline.cpu_us_per_run, 0)});
    else
      rows.push_back({"baseline (python3 per run)", "not available: " + r.baseline.error, "", "", "", "", "", "", ""});
    if (r.baseline.failures > 0) notes.push_back("baseline: " + std::to_string(r.baseline.failures) + " failed runs");
  }

  std::vector<std::size_t> w(head.size());
  for (std::size_t c = 0; c < head.size(); ++c) w[c] = head[c].size();
  for (const auto& row : rows) {
    if (row[1].rfind("not available", 0) == 0) {
      w[0] = std::max(w[0], row[0].size());
      continue;  // spans the row; does not widen the columns
    }
    for (std::size_t c = 0; c < head.size(); ++c) w[c] = std::max(w[c], row[c].size());
  }
  auto line = [&](const std::vector<std::string>& row) {
    std::string s;
    for (std::size_t c = 0; c < head.size(); ++c) {
      std::string v = row[c];
      if (c == 0) v += std::string(w[c] - row[c].size(), ' ');
      else if (v.size() < w[c]) v.insert(0, w[c] - v.size(), ' ');
      if (c) s += "  ";
      s += v;
    }
    while (!s.empty() && s.back() == ' ') s.pop_back();
    std::printf("%s\n", s.c_str());
  };
  std::printf("\n");
  line(head);
  std::size_t total = 0;
  for (auto x : w) total += x + 2;
  std::printf("%s\n", std::string(total - 2, '-').c_str());
  for (const auto& row : rows) {
    if (row[1].rfind("not available", 0) == 0) {
      std::printf("%s  %s\n", (row[0] + std::string(w[0] - row[0].size(), ' ')).c_str(), row[1].c_str());
      continue;
    }
    line(row);
  }
  std::printf("\nfigures: latency in microseconds, steady_clock around Runner::run (engine: around embed::run);\n"
              "runs_per_s: 2 workers fed by 4 threads; cold start: Runner(1 worker) to first result, median;\n"
              "idle memory: per-worker average of warm, idle spr-worker children (RSS and PSS from smaps_rollup);\n"
              "cpu_us_per_run: CPU of bench + workers (+ their forked run children) per sequential run (no target).\n");
  int passed = 0, missed = 0;
  std::vector<std::string> misses;
  for (const auto& t : r.targets) {
    auto p = t.pass();
    if (!p) continue;
    if (*p) ++passed;
    else {
      ++missed;
      misses.push_back(t.key + " = " + fixed(*t.value, 1) + " (target " + t.limit_text() + ")");
    }
  }
  std::printf("targets: %d pass, %d miss\n", passed, missed);
  for (const auto& m : misses) std::printf("  MISS %s\n", m.c_str());
  for (const auto& n : notes) std::printf("note: %s\n", n.c_str());
}

json opt(std::optional<double> v) { return v ? json(*v) : json(nullptr); }

json to_json(const Report& r) {
  json j;
  j["modes"] = json::object();
  for (const auto& m : r.modes) {
    json e;
    e["available"] = m.available;
    if (!m.available) {
      e["error"] = m.error;
    } else {
      e["p50_us"] = m.p50_us;
      e["p99_us"] = m.p99_us;
      e["runs"] = m.runs;
      e["runs_per_s"] = m.runs_per_s;
      e["throughput_runs"] = m.tput_runs;
      e["throughput_seconds"] = m.tput_seconds;
      e["cold_start_ms"] = opt(m.cold_start_ms);
      e["idle_rss_mb"] = m.memory_measured ? json(m.memory.rss_mb) : json(nullptr);
      e["idle_pss_mb"] = m.memory_measured ? opt(m.memory.pss_mb) : json(nullptr);
      e["idle_workers"] = m.memory.workers;
      e["ratio_vs_baseline"] = opt(m.ratio);
      e["cpu_us_per_run"] = opt(m.cpu_us_per_run);
      e["failures"] = m.seq_failures + m.tput_failures;
      if (!m.first_failure.empty()) e["first_failure"] = m.first_failure;
    }
    j["modes"][m.name] = e;
  }
  if (r.engine_run) {
    json e;
    e["available"] = r.engine.available;
    if (r.engine.available) {
      e["p50_us"] = r.engine.p50_us;
      e["p99_us"] = r.engine.p99_us;
      e["runs"] = r.engine.runs;
      e["failures"] = r.engine.failures;
      e["ratio_vs_baseline"] = opt(r.engine.ratio);
      e["cpu_us_per_run"] = opt(r.engine.cpu_us_per_run);
    } else {
      e["error"] = r.engine.error;
    }
    j["engine"] = e;
  } else {
    j["engine"] = nullptr;
  }
  if (r.baseline_run && r.baseline.available)
    j["baseline"] = {{"p50_us", r.baseline.p50_us}, {"p99_us", r.baseline.p99_us}, {"runs", r.baseline.runs},
                     {"failures", r.baseline.failures}, {"cpu_us_per_run", opt(r.baseline.cpu_us_per_run)}};
  else if (r.baseline_run)
    j["baseline"] = {{"available", false}, {"error", r.baseline.error}};
  else
    j["baseline"] = nullptr;
  j["python"] = r.python;
  struct utsname u{};
  uname(&u);
  j["machine"] = {{"cpus", std::thread::hardware_concurrency()}, {"kernel", std::string(u.release)},
                  {"arch", std::string(u.machine)}, {"loadavg_start", r.load_start}, {"loadavg_end", r.load_end}};
  j["targets"] = json::object();
  for (const auto& t : r.targets) {
    auto p = t.pass();
    j["targets"][t.key] = {{"op", t.at_most ? "<=" : ">="}, {"target", t.limit}, {"value", opt(t.value)},
                           {"pass", p ? json(*p) : json(nullptr)}};
  }
  j["snippet"] = kSnippet;
  j["input_data"] = kInput;
  return j;
}

void write_plot(const Report& r, const std::string& path) {
  std::vector<spr_bench::PlotRow> rows;
  for (const auto& m : r.modes)
    if (m.available) rows.push_back({m.name, m.p50_us, m.p99_us});
  if (r.engine_run && r.engine.available) rows.push_back({"engine", r.engine.p50_us, r.engine.p99_us});
  if (r.baseline_run && r.baseline.available) rows.push_back({"baseline", r.baseline.p50_us, r.baseline.p99_us});
  std::string subtitle = "math.sqrt(input_data['x']) per run";
  if (!r.python.empty()) subtitle += ", Python " + r.python;
  subtitle += "; baseline = fresh python3 process per run";
  std::ofstream f(path);
  f << spr_bench::latency_svg(rows, "safe-py-runner: latency per run (p50 / p99)", subtitle);
  if (!f) std::fprintf(stderr, "cannot write %s\n", path.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const Options o = parse(argc, argv);
  const auto started = Clock::now();
  if (o.only_pandas) {
    const json p = spr_bench::measure_pandas_case(o.baseline_python, o.baseline_script, o.quick);
    if (!o.json_path.empty()) std::ofstream(o.json_path) << json{{"pandas", p}}.dump(2) << "\n";
    return p.empty() ? 1 : 0;
  }
  Report r;
  r.load_start = loadavg();
  std::printf("load average at start: %s (%u cpus)\n", r.load_start.c_str(), std::thread::hardware_concurrency());

  // The engine first: forking is only sound while no Runner thread exists.
  if (o.engine) {
    r.engine_run = true;
    r.engine = measure_engine(o);
  }
  if (o.baseline) {
    r.baseline_run = true;
    r.baseline = measure_baseline(o);
  }
  for (const auto& mode : o.modes) r.modes.push_back(measure_mode(o, mode, r.python));
  const json pandas = o.pandas ? spr_bench::measure_pandas_case(o.baseline_python, o.baseline_script, o.quick) : json();
  if (r.python.empty()) {
    try {
      spr::Runner runner(runner_options(o, "fork", 1));
      r.python = runner.python_version();
    } catch (const std::exception&) {
      r.python = r.engine.python;
    }
  }

  if (r.baseline.available) {
    for (auto& m : r.modes)
      if (m.available && m.p50_us > 0) m.ratio = r.baseline.p50_us / m.p50_us;
    if (r.engine.available && r.engine.p50_us > 0) r.engine.ratio = r.baseline.p50_us / r.engine.p50_us;
  }
  r.load_end = loadavg();
  build_targets(r);
  print_table(r);
  std::printf("python %s, %u cpus, load average %s at start, %s at end; total %.1f s\n", r.python.c_str(),
              std::thread::hardware_concurrency(), r.load_start.c_str(), r.load_end.c_str(), us_since(started) / 1e6);

  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    json j = to_json(r);
    if (!pandas.is_null()) j["pandas"] = pandas;
    f << j.dump(2) << "\n";
    if (!f) std::fprintf(stderr, "cannot write %s\n", o.json_path.c_str());
  }
  if (!o.plot_path.empty()) write_plot(r, o.plot_path);

  // Exit status: 1 when a measured mode had failed runs (a benchmark figure over failures is void).
  bool failed = false;
  for (const auto& m : r.modes)
    if (m.available && m.seq_failures + m.tput_failures > 0) failed = true;
  if (r.engine.failures > 0 || r.baseline.failures > 0) failed = true;
  return failed ? 1 : 0;
}
