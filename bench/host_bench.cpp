// spr-bench's host function section: one call's round trip per mode, through serve and Python, next to the pipe floor.
// A run making 1,000 calls to an identity host function alternates with the same loop calling a
// local identity function; the difference over 1,000 is one call's cost. The pipe round trip (same
// CPU, across CPUs) is measured in the same run, first, before any Runner thread exists.
#include "host_bench.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "spr/spr.hpp"

namespace spr_bench {

namespace {

constexpr int kCalls = 1000;
const std::string kWithHost = "n = 0\nfor i in range(1000):\n    n = identity(n) + 1\nresult = n";
const std::string kLocal = "def ident(x):\n    return x\nn = 0\nfor i in range(1000):\n    n = ident(n) + 1\nresult = n";

// Median of per-call figures; each from one pair (host loop, local loop) run back to back.
double per_call_us(const std::vector<double>& host_us, const std::vector<double>& local_us) {
  std::vector<double> d;
  for (std::size_t i = 0; i < host_us.size() && i < local_us.size(); ++i) d.push_back((host_us[i] - local_us[i]) / kCalls);
  if (d.empty()) return 0;
  std::sort(d.begin(), d.end());
  return d[d.size() / 2];
}

void measure_mode(const Options& o, HostFigures& f, int reps) {
  auto iso = spr::parse_isolation(f.mode);
  spr::RunnerOptions ro;
  ro.workers = 1;
  ro.policy.isolation = *iso;
  ro.policy.timeout_seconds = 60;
  ro.worker_path = o.worker_path;
  ro.functions["identity"] = [](const spr::HostCall& c) { return c.args.at(0); };
  try {
    spr::Runner runner(ro);
    std::vector<double> host_us, local_us;
    for (int i = 0; i < reps + 1; ++i) {
      auto t0 = Clock::now();
      const spr::RunResult a = runner.run(kWithHost);
      const double a_us = us_since(t0);
      t0 = Clock::now();
      const spr::RunResult b = runner.run(kLocal);
      const double b_us = us_since(t0);
      if (!a.ok || !b.ok || a.result != spr::json(kCalls)) {
        f.error = "run failed: " + a.error.value_or(b.error.value_or("wrong result"));
        return;
      }
      if (i == 0) continue;  // the first pair starts the helper thread and warms the caches
      host_us.push_back(a_us);
      local_us.push_back(b_us);
    }
    f.available = true;
    f.reps = reps;
    f.per_call_us = per_call_us(host_us, local_us);
  } catch (const std::exception& e) {
    f.error = e.what();
  }
}

// `safe-py-runner serve` (namespace mode) answering each call line with a call_result line.
void measure_serve(const Options& o, HostFigures& f, int reps) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
    f.error = std::string("pipe2: ") + std::strerror(errno);
    return;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, in[0], 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::vector<std::string> args = {o.cli_path, "serve", "--workers", "1", "--isolation", "namespace", "--timeout", "60"};
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
    f.error = "posix_spawn " + o.cli_path + ": " + std::strerror(rc);
    return;
  }
  FILE* lines = fdopen(out[0], "r");
  long id = 0;
  // One request; every call line answered at once. The result line's time, or -1.
  auto request = [&](const std::string& code, bool functions) -> double {
    json rq = {{"id", ++id}, {"code", code}};
    if (functions) rq["functions"] = {"identity"};
    const auto t0 = Clock::now();
    if (!write_all(in[1], rq.dump() + "\n")) return -1;
    char* buf = nullptr;
    std::size_t cap = 0;
    for (;;) {
      const ssize_t n = getline(&buf, &cap, lines);
      if (n <= 0) break;
      const json j = json::parse(std::string(buf, static_cast<std::size_t>(n)), nullptr, false);
      if (j.contains("call")) {
        const json& c = j["call"];
        const json answer = {{"call_result", {{"id", j["id"]}, {"call_id", c["call_id"]}, {"value", c["args"][0]}}}};
        if (!write_all(in[1], answer.dump() + "\n")) break;
        continue;
      }
      free(buf);
      return j.value("ok", false) ? us_since(t0) : -1;
    }
    free(buf);
    return -1;
  };
  std::vector<double> host_us, local_us;
  for (int i = 0; i < reps + 1; ++i) {
    const double a = request(kWithHost, true), b = request(kLocal, false);
    if (a < 0 || b < 0) {
      f.error = "serve run failed";
      break;
    }
    if (i == 0) continue;
    host_us.push_back(a);
    local_us.push_back(b);
  }
  close(in[1]);
  if (lines) fclose(lines);
  int status = 0;
  waitpid(pid, &status, 0);
  if (!f.error.empty()) return;
  f.available = true;
  f.reps = reps;
  f.per_call_us = per_call_us(host_us, local_us);
}

// The Python package (the build tree's staged copy) through run_code, in a python3 of its own.
void measure_python(const Options& o, HostFigures& f, int reps) {
  const std::string script =
      "import json, time\n"
      "from safe_py_runner import Runner, RunnerPolicy\n"
      "host = " + json(kWithHost).dump() + "\nlocal = " + json(kLocal).dump() + "\n"
      "d = []\n"
      "with Runner(RunnerPolicy(isolation='namespace', timeout_seconds=60), workers=1,\n"
      "            functions={'identity': lambda x: x}) as r:\n"
      "    for i in range(" + std::to_string(reps + 1) + "):\n"
      "        t = time.perf_counter(); a = r.run(host); ta = time.perf_counter() - t\n"
      "        t = time.perf_counter(); b = r.run(local); tb = time.perf_counter() - t\n"
      "        assert a.ok and b.ok, (a.error, b.error)\n"
      "        if i: d.append((ta - tb) * 1e6 / 1000)\n"
      "d.sort()\n"
      "print(json.dumps(d[len(d) // 2]))\n";
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) return;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  std::vector<std::string> args = {o.baseline_python, "-c", script};
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::string env_path = std::string("PYTHONPATH=") + SPR_BENCH_PYTHON_DIR;
  std::string env_worker = "SPR_WORKER=" + o.worker_path;
  char* envp[] = {env_path.data(), o.worker_path.empty() ? nullptr : env_worker.data(), nullptr};
  pid_t pid = -1;
  const int rc = posix_spawn(&pid, args[0].c_str(), &fa, nullptr, argv.data(), envp);
  posix_spawn_file_actions_destroy(&fa);
  close(out[1]);
  if (rc != 0) {
    close(out[0]);
    f.error = "posix_spawn " + o.baseline_python + ": " + std::strerror(rc);
    return;
  }
  std::string text;
  char buf[256];
  for (ssize_t n; (n = read(out[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  close(out[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  const json v = json::parse(text, nullptr, false);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || !v.is_number()) {
    f.error = "python3 with the package staged in " + std::string(SPR_BENCH_PYTHON_DIR) + " failed";
    return;
  }
  f.available = true;
  f.reps = reps;
  f.per_call_us = v.get<double>();
}

}  // namespace

HostReport measure_host_calls(const Options& o) {
  HostReport r;
  const int reps = o.quick ? 3 : 9;
  std::printf("[host functions] pipe floors");
  std::fflush(stdout);
  r.pipe_same_cpu = pipe_round_trip(2000, 0);
  if (std::thread::hardware_concurrency() > 1) r.pipe_cross_cpu = pipe_round_trip(2000, 1);
  for (const auto& m : o.modes) {
    std::printf(", %s", m.c_str());
    std::fflush(stdout);
    HostFigures f;
    f.mode = m;
    measure_mode(o, f, reps);
    r.modes.push_back(f);
  }
  std::printf(", serve");
  std::fflush(stdout);
  r.serve.mode = "serve (namespace)";
  measure_serve(o, r.serve, reps);
  std::printf(", python\n");
  r.python.mode = "Python package (namespace)";
  measure_python(o, r.python, reps);
  return r;
}

void print_host_calls(const HostReport& r) {
  std::printf("\nHost function round trip (one call of an identity function, from 1,000 calls in a run;\n"
              "the run minus the same loop calling a local function, median of pairs)\n");
  const double cross = r.pipe_cross_cpu ? r.pipe_cross_cpu->p50 : 0;
  if (r.pipe_same_cpu) std::printf("  pipe round trip, same CPU      p50 %7.1f us\n", r.pipe_same_cpu->p50);
  if (r.pipe_cross_cpu) std::printf("  pipe round trip, across CPUs   p50 %7.1f us\n", cross);
  auto row = [&](const HostFigures& f) {
    if (!f.available) {
      std::printf("  %-30s not measured: %s\n", f.mode.c_str(), f.error.c_str());
      return;
    }
    std::printf("  %-30s %7.1f us per call", f.mode.c_str(), f.per_call_us);
    if (cross > 0) std::printf("   %.1fx the cross-CPU pipe round trip", f.per_call_us / cross);
    std::printf("\n");
  };
  for (const auto& m : r.modes) row(m);
  row(r.serve);
  row(r.python);
}

json to_json(const HostReport& r) {
  auto fig = [](const HostFigures& f) {
    json j = {{"mode", f.mode}, {"available", f.available}};
    if (f.available) j.update({{"per_call_us", f.per_call_us}, {"pairs", f.reps}});
    else j["error"] = f.error;
    return j;
  };
  json j = json::object();
  if (r.pipe_same_cpu) j["pipe_same_cpu_p50_us"] = r.pipe_same_cpu->p50;
  if (r.pipe_cross_cpu) j["pipe_cross_cpu_p50_us"] = r.pipe_cross_cpu->p50;
  j["modes"] = json::array();
  for (const auto& m : r.modes) j["modes"].push_back(fig(m));
  j["serve"] = fig(r.serve);
  j["python"] = fig(r.python);
  return j;
}

}  // namespace spr_bench
