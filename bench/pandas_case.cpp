// The pandas case of spr-bench: what preloading saves for a snippet that imports a heavy package.
#include "pandas_case.hpp"

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include <spr/spr.hpp>

namespace spr_bench {

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

const char* const kPandasSnippet =
    "import pandas as pd\ndf = pd.DataFrame(input_data['rows'])\nresult = float(df['x'].sum())";

json rows() {
  json r = json::array();
  for (int i = 1; i <= 100; ++i) r.push_back(json{{"x", i}});
  return r;
}
constexpr double kExpected = 5050.0;

double p50(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median latency (ms) of `runs` runs on a warm Runner, or a negative value when a run failed.
double engine_p50_ms(spr::Isolation isolation, const std::vector<std::string>& preload, int runs, std::string& error) {
  spr::RunnerOptions o;
  o.workers = 1;
  o.policy.isolation = isolation;
  o.policy.timeout_seconds = 30;
  o.preload = preload;
  spr::Runner runner(o);
  const json input = {{"rows", rows()}};
  std::vector<double> ms;
  for (int i = 0; i < runs + 2; ++i) {  // two warm-up runs: the worker's start is not the snippet's cost
    const auto t0 = Clock::now();
    const spr::RunResult r = runner.run(kPandasSnippet, input, o.policy);
    const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    if (!r.ok || r.result != json(kExpected)) {
      error = r.error.value_or("wrong result " + r.result.dump());
      return -1;
    }
    if (i >= 2) ms.push_back(t);
  }
  return p50(ms);
}

// The original's model: a fresh python3 runs the baseline script per request.
double baseline_p50_ms(const std::string& python, const std::string& script, int runs, std::string& error) {
  const std::string request = json{{"code", kPandasSnippet}, {"input_data", {{"rows", rows()}}}}.dump();
  std::vector<double> ms;
  for (int i = 0; i < runs; ++i) {
    int in[2], out[2];
    if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0) {
      error = std::strerror(errno);
      return -1;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    std::string py = python, sc = script, env_lang = "LANG=C.UTF-8";
    char* argv[] = {py.data(), sc.data(), nullptr};
    char* envp[] = {env_lang.data(), nullptr};
    const auto t0 = Clock::now();
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, py.c_str(), &fa, nullptr, argv, envp);
    posix_spawn_file_actions_destroy(&fa);
    close(in[0]);
    close(out[1]);
    if (rc != 0) {
      close(in[1]);
      close(out[0]);
      error = "posix_spawn " + python + ": " + std::strerror(rc);
      return -1;
    }
    if (write(in[1], request.data(), request.size()) != static_cast<ssize_t>(request.size())) error = "short write";
    close(in[1]);
    std::string reply;
    char buf[4096];
    for (ssize_t n; (n = read(out[0], buf, sizeof buf)) != 0;) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      reply.append(buf, static_cast<std::size_t>(n));
    }
    close(out[0]);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    const json j = json::parse(reply, nullptr, false);
    if (j.is_discarded() || !j.value("ok", false) || j.value("result", json()) != json(kExpected)) {
      error = "baseline child answered " + reply;
      return -1;
    }
  }
  return p50(ms);
}

}  // namespace

json measure_pandas_case(const std::string& baseline_python, const std::string& baseline_script, bool quick) {
  const int runs = quick ? 10 : 30, baseline_runs = quick ? 5 : 15;
  std::printf("[pandas] ");
  std::fflush(stdout);
  std::string error;
  const double cold = engine_p50_ms(spr::Isolation::fork, {}, runs, error);
  const double warm = cold < 0 ? -1 : engine_p50_ms(spr::Isolation::fork, {"numpy", "pandas"}, runs, error);
  const double ns = warm < 0 ? -1 : engine_p50_ms(spr::Isolation::namespace_, {"numpy", "pandas"}, runs, error);
  const double base = ns < 0 ? -1 : baseline_p50_ms(baseline_python, baseline_script, baseline_runs, error);
  if (base < 0) {
    std::printf("skipped: %s\n", error.c_str());
    return json::object();
  }
  std::printf("done\n\npandas snippet (100 rows), p50 latency\n");
  std::printf("  %-36s %10.1f ms\n", "fork, no preload", cold);
  std::printf("  %-36s %10.2f ms\n", "fork, preload numpy,pandas", warm);
  std::printf("  %-36s %10.2f ms\n", "namespace, preload numpy,pandas", ns);
  std::printf("  %-36s %10.1f ms\n", "original's model (fresh python3)", base);
  std::printf("  fork with preload is %.0fx faster than the original's model (namespace: %.0fx), %.0fx faster than "
              "fork without preload\n\n", base / warm, base / ns, cold / warm);
  return json{{"snippet", kPandasSnippet},
              {"fork_no_preload_p50_ms", cold},
              {"fork_preload_p50_ms", warm},
              {"namespace_preload_p50_ms", ns},
              {"baseline_p50_ms", base},
              {"x_vs_baseline", base / warm},
              {"namespace_x_vs_baseline", base / ns},
              {"runs", runs},
              {"baseline_runs", baseline_runs}};
}

}  // namespace spr_bench
