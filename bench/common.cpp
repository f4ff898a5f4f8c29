// spr-bench helpers: the snippet, percentiles, options, and what /proc and rusage tell about our processes.
#include <dirent.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "bench.hpp"
#include "spr/policy.hpp"

namespace spr_bench {

const char* const kSnippet = "import math\nresult = math.sqrt(input_data['x'])";
const json kInput = {{"x", 81}};
bool expected_result(const json& r) {
  return r.is_number() && r.get<double>() == 9.0;
}

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

Stats stats(std::vector<double> v) {
  Stats s;
  s.n = static_cast<int>(v.size());
  if (v.empty()) return s;
  std::sort(v.begin(), v.end());
  auto rank = [&](double q) {  // nearest rank
    const auto i = static_cast<std::size_t>(std::max(0.0, std::ceil(q * static_cast<double>(v.size())) - 1));
    return v[std::min(i, v.size() - 1)];
  };
  s.p50 = rank(0.50);
  s.p99 = rank(0.99);
  return s;
}

namespace {

[[noreturn]] void usage(const char* argv0, int code) {
  std::fprintf(code ? stderr : stdout,
               "usage: %s [--quick] [--json FILE] [--plot FILE.svg] [--markdown FILE] [--readme README.md]\n"
               "          [--modes a,b,...]\n"
               "          [--runs N] [--paced-runs N] [--process-runs N] [--seconds S] [--baseline-runs N]\n"
               "          [--cold-starts N] [--engine-runs N] [--floor-runs N]\n"
               "          [--no-engine] [--no-baseline] [--no-serve] [--no-floors] [--no-pandas] [--only-pandas]\n"
               "          [--no-sessions | --sessions-only] [--no-host | --host-only] [--no-layers | --layers-only]\n"
               "          [--worker PATH] [--cli PATH]\n"
               "          [--baseline-python PATH] [--baseline-script PATH]\n"
               "modes: namespace, subinterpreter, fork, process (default: all); --process-runs also sizes\n"
               "subinterpreter's back-to-back sample (an interpreter is built per run there)\n"
               "paced: one request every %.0f ms; back to back: the next request as soon as the reply is in\n"
               "--readme: replace the block between <!-- spr-bench:begin --> and <!-- spr-bench:end --> with the\n"
               "run's table (--markdown writes that table alone)\n",
               argv0, kPacedGapMs);
  std::exit(code);
}

}  // namespace

Options parse_options(int argc, char** argv) {
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
      if (a == "--quick")
        o.quick = true;
      else if (a == "--json")
        o.json_path = value();
      else if (a == "--plot")
        o.plot_path = value();
      else if (a == "--readme")
        o.readme_path = value();
      else if (a == "--markdown")
        o.markdown_path = value();
      else if (a == "--worker")
        o.worker_path = value();
      else if (a == "--cli")
        o.cli_path = value();
      else if (a == "--baseline-python")
        o.baseline_python = value();
      else if (a == "--baseline-script")
        o.baseline_script = value();
      else if (a == "--no-engine")
        o.engine = false;
      else if (a == "--no-baseline")
        o.baseline = false;
      else if (a == "--no-serve")
        o.serve = false;
      else if (a == "--no-floors")
        o.floors = false;
      else if (a == "--no-sessions")
        o.sessions = false;
      else if (a == "--sessions-only")
        o.sessions_only = true;
      else if (a == "--no-host")
        o.host = false;
      else if (a == "--host-only")
        o.host_only = true;
      else if (a == "--no-layers")
        o.layers = false;
      else if (a == "--layers-only")
        o.layers_only = true;
      else if (a == "--no-pandas")
        o.pandas = false;
      else if (a == "--only-pandas")
        o.only_pandas = true;
      else if (a == "--runs")
        o.seq_runs = std::stoi(value());
      else if (a == "--paced-runs")
        o.paced_runs = std::stoi(value());
      else if (a == "--process-runs")
        o.process_runs = std::stoi(value());
      else if (a == "--baseline-runs")
        o.baseline_runs = std::stoi(value());
      else if (a == "--cold-starts")
        o.cold_starts = std::stoi(value());
      else if (a == "--engine-runs")
        o.engine_runs = std::stoi(value());
      else if (a == "--floor-runs")
        o.floor_runs = std::stoi(value());
      else if (a == "--seconds")
        o.tput_seconds = std::stod(value());
      else if (a == "--modes") {
        o.modes.clear();
        std::stringstream ss(value());
        std::string m;
        while (std::getline(ss, m, ',')) {
          if (m.empty()) continue;
          if (!spr::parse_isolation(m)) {
            std::fprintf(stderr, "unknown mode '%s'\n", m.c_str());
            usage(argv[0], 2);
          }
          if (std::find(o.modes.begin(), o.modes.end(), m) == o.modes.end()) o.modes.push_back(m);
        }
      } else if (a == "-h" || a == "--help")
        usage(argv[0], 0);
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
  dflt(o.paced_runs, 60, 20);
  dflt(o.process_runs, 60, 20);
  dflt(o.baseline_runs, 60, 20);
  dflt(o.cold_starts, 5, 2);
  dflt(o.engine_runs, 10000, 2000);
  dflt(o.floor_runs, 400, 100);
  dflt(o.tput_seconds, 3.0, 1.0);
  return o;
}

std::string loadavg() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

double rusage_seconds(int who) {
  struct rusage ru {};
  getrusage(who, &ru);
  auto tv = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) / 1e6; };
  return tv(ru.ru_utime) + tv(ru.ru_stime);
}

namespace {

// Fields of /proc/<pid>/stat after the command name (field 3 = state is index 0).
std::vector<std::string> stat_fields(pid_t pid, std::string* comm = nullptr) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!std::getline(f, line)) return {};
  const auto open = line.find('('), close = line.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close < open) return {};
  if (comm) *comm = line.substr(open + 1, close - open - 1);
  std::istringstream rest(line.substr(close + 1));
  std::vector<std::string> out;
  for (std::string s; rest >> s;) out.push_back(s);
  return out;
}

double field(const std::vector<std::string>& f, int number) {  // `number` as in proc(5)
  const auto i = static_cast<std::size_t>(number - 3);
  return i < f.size() ? std::strtod(f[i].c_str(), nullptr) : 0;
}

}  // namespace

namespace {

bool all_digits(const char* s) {
  return *s && std::all_of(s, s + std::strlen(s), [](char c) { return c >= '0' && c <= '9'; });
}

// Every live process's parent, read once from /proc (host PIDs: the bench sees into the workers' namespaces).
std::map<pid_t, std::vector<pid_t>> children_by_parent() {
  std::map<pid_t, std::vector<pid_t>> out;
  DIR* d = opendir("/proc");
  if (!d) return out;
  while (dirent* e = readdir(d)) {
    if (!all_digits(e->d_name)) continue;
    const auto pid = static_cast<pid_t>(std::atol(e->d_name));
    auto f = stat_fields(pid);
    if (!f.empty()) out[static_cast<pid_t>(field(f, 4))].push_back(pid);
  }
  closedir(d);
  return out;
}

// The PID a process has in its own (innermost) PID namespace: the last figure of NSpid in /proc/<pid>/status.
long innermost_pid(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("NSpid:", 0) != 0) continue;
    std::istringstream ls(line.substr(6));
    long last = -1;
    for (long v; ls >> v;) last = v;
    return last;
  }
  return -1;
}

double ticks_to_s(double ticks) {
  return ticks / static_cast<double>(sysconf(_SC_CLK_TCK));
}

}  // namespace

WorkerTree worker_tree() {
  WorkerTree t;
  auto kids = children_by_parent();
  for (pid_t pid : kids[getpid()]) {
    std::string comm;
    if (!stat_fields(pid, &comm).empty() && comm == "spr-worker") t.started.push_back(pid);
  }
  std::vector<pid_t> todo = t.started;
  while (!todo.empty()) {
    const pid_t p = todo.back();
    todo.pop_back();
    t.all.push_back(p);
    for (pid_t c : kids[p]) todo.push_back(c);
  }
  // A worker under the PID layer is PID 2 of its namespace, the child of its init (PID 1), which is the
  // child of the process the supervisor started (the keeper); without that layer it is the started process.
  for (pid_t started : t.started) {
    pid_t warm = started;
    for (pid_t init : kids[started]) {
      if (innermost_pid(init) != 1) continue;
      for (pid_t w : kids[init])
        if (innermost_pid(w) == 2) warm = w;
    }
    t.warm.push_back(warm);
    for (pid_t c : kids[warm])
      if (c != warm) t.run_children.push_back(c);
  }
  // The run children's own descendants (none today: their filter refuses fork) count with them.
  for (std::size_t i = 0; i < t.run_children.size(); ++i)
    for (pid_t c : kids[t.run_children[i]]) t.run_children.push_back(c);
  return t;
}

double cpu_seconds_all() {
  // Each live process's own CPU plus that of the children it reaped (utime, stime, cutime, cstime): summed over
  // every live process under our workers, that is all the CPU the workers and their run children ever took.
  double s = rusage_seconds(RUSAGE_SELF) + rusage_seconds(RUSAGE_CHILDREN);
  for (pid_t pid : worker_tree().all) {
    auto f = stat_fields(pid);
    s += ticks_to_s(field(f, 14) + field(f, 15) + field(f, 16) + field(f, 17));
  }
  return s;
}

ForkFaults fork_faults() {
  // minflt is field 10, cminflt (of the children the process reaped) field 11.
  ForkFaults n;
  const WorkerTree t = worker_tree();
  for (pid_t w : t.warm) {
    auto f = stat_fields(w);
    n.parent += field(f, 10);
    n.children += field(f, 11);
  }
  for (pid_t c : t.run_children) {
    auto f = stat_fields(c);
    n.children += field(f, 10) + field(f, 11);
  }
  return n;
}

std::map<std::string, double> kb_fields(const std::string& path) {
  std::map<std::string, double> out;
  std::ifstream f(path);
  std::string key, line;
  double v = 0;
  while (std::getline(f, line)) {
    std::istringstream ls(line);
    if (ls >> key >> v && !key.empty() && key.back() == ':') out[key.substr(0, key.size() - 1)] = v;
  }
  return out;
}

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

bool write_all(int fd, const std::string& text) {
  std::size_t off = 0;
  while (off < text.size()) {
    ssize_t n = write(fd, text.data() + off, text.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<std::size_t>(n);
  }
  return true;
}

}  // namespace spr_bench
