// spr-bench's layer section: a worker started with its OS layers (PID namespace, own root, identity,
// capabilities, rlimits, Landlock, seccomp) against one started without them (the worker's --no-harden, a
// start only this benchmark asks for: no policy field or runner option reaches it), per isolation mode.
// The workers are driven through the supervisor's own WorkerProcess, so both sides pay the same protocol.
#include "layers_bench.hpp"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <memory>

#include "bench.hpp"
#include "detail/python_env.hpp"
#include "detail/worker_pool.hpp"
#include "detail/worker_process.hpp"

namespace spr_bench {
namespace {

namespace d = spr::detail;

d::SpawnOptions spawn_options(const std::string& worker, const spr::RunnerPolicy& policy, bool harden) {
  d::SpawnOptions so = d::spawn_options_of(d::key_of(policy));
  const d::PythonEnv env = d::resolve_python(policy.python_executable);
  if (!env.error.empty()) throw std::runtime_error(env.error);
  so.worker_path = worker;
  so.start.python = env.executable;
  so.start.sys_path = env.path;
  so.python_build = env.build;
  so.start.harden = harden;
  so.start_timeout_seconds = 30;
  return so;
}

double run_once(d::WorkerProcess& w, std::uint64_t id, const spr::RunnerPolicy& p) {
  const auto t0 = Clock::now();
  const spr::RunResult r = w.run(id, kSnippet, kInput, p, Clock::now() + std::chrono::seconds(30));
  const double us = us_since(t0);
  if (!r.ok || !expected_result(r.result)) throw std::runtime_error("run failed: " + r.error.value_or("?"));
  return us;
}

}  // namespace

std::vector<LayerFigures> measure_layers(const std::vector<std::string>& modes, const std::string& worker_path,
                                         int starts, int runs) {
  const std::string worker = d::find_worker(worker_path).string();
  std::vector<LayerFigures> out;
  for (const auto& mode : modes) {
    LayerFigures f;
    f.mode = mode;
    try {
      spr::RunnerPolicy p = spr::RunnerPolicy::from_json({{"isolation", mode}});
      const d::SpawnOptions on = spawn_options(worker, p, true), off = spawn_options(worker, p, false);
      std::vector<double> start_on, start_off, run_on, run_off;
      std::uint64_t id = 0;
      for (int i = 0; i < starts; ++i)
        for (bool harden : {true, false}) {
          const auto t0 = Clock::now();
          auto w = d::WorkerProcess::spawn(harden ? on : off);
          (harden ? start_on : start_off).push_back(us_since(t0));
        }
      if (p.isolation == spr::Isolation::process) {
        // One run per worker: a run's cost is its worker's start and the run.
        for (int i = 0; i < runs; ++i)
          for (bool harden : {true, false}) {
            const auto t0 = Clock::now();
            auto w = d::WorkerProcess::spawn(harden ? on : off);
            run_once(*w, ++id, p);
            (harden ? run_on : run_off).push_back(us_since(t0));
          }
      } else {
        auto w_on = d::WorkerProcess::spawn(on), w_off = d::WorkerProcess::spawn(off);
        for (int i = 0; i < 5; ++i) {  // warm both
          run_once(*w_on, ++id, p);
          run_once(*w_off, ++id, p);
        }
        for (int i = 0; i < runs; ++i) {
          run_on.push_back(run_once(*w_on, ++id, p));
          run_off.push_back(run_once(*w_off, ++id, p));
        }
      }
      f.starts = starts;
      f.runs = runs;
      f.start_on_ms = stats(start_on).p50 / 1000;
      f.start_off_ms = stats(start_off).p50 / 1000;
      f.run_on_us = stats(run_on).p50;
      f.run_off_us = stats(run_off).p50;
      auto least = [](const std::vector<double>& v) { return v.empty() ? 0.0 : *std::min_element(v.begin(), v.end()); };
      f.start_on_min_ms = least(start_on) / 1000;
      f.start_off_min_ms = least(start_off) / 1000;
      f.run_on_min_us = least(run_on);
      f.run_off_min_us = least(run_off);
    } catch (const std::exception& e) {
      f.error = e.what();
    }
    out.push_back(f);
  }
  return out;
}

void print_layers(const std::vector<LayerFigures>& r) {
  std::printf("\nOS layers, per mode ('off' = a worker started without them, for this comparison only);\n"
              "each cell p50 / fastest:\n");
  std::printf("  %-15s %18s %18s %13s %20s %20s %13s\n", "mode", "start on ms", "start off ms", "ratio",
              "run on us", "run off us", "ratio");
  for (const auto& f : r) {
    if (!f.error.empty()) {
      std::printf("  %-15s failed: %s\n", f.mode.c_str(), f.error.c_str());
      continue;
    }
    auto ratio = [](double a, double b) { return a / std::max(b, 1e-9); };
    std::printf("  %-15s %8.1f / %7.1f %8.1f / %7.1f %5.2f / %5.2f %9.0f / %8.0f %9.0f / %8.0f %5.2f / %5.2f\n",
                f.mode.c_str(), f.start_on_ms, f.start_on_min_ms, f.start_off_ms, f.start_off_min_ms,
                ratio(f.start_on_ms, f.start_off_ms), ratio(f.start_on_min_ms, f.start_off_min_ms), f.run_on_us,
                f.run_on_min_us, f.run_off_us, f.run_off_min_us, ratio(f.run_on_us, f.run_off_us),
                ratio(f.run_on_min_us, f.run_off_min_us));
  }
  std::printf("  (process: a run is its worker's start and the run; fork: the child inherits the worker's root and\n"
              "   namespaces, and stacks its own seccomp filter with the layers off too)\n");
}

nlohmann::json to_json(const std::vector<LayerFigures>& r) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& f : r)
    out.push_back({{"mode", f.mode}, {"error", f.error}, {"starts", f.starts}, {"runs", f.runs},
                   {"start_on_ms", f.start_on_ms}, {"start_off_ms", f.start_off_ms}, {"run_on_us", f.run_on_us},
                   {"run_off_us", f.run_off_us}, {"start_on_min_ms", f.start_on_min_ms},
                   {"start_off_min_ms", f.start_off_min_ms}, {"run_on_min_us", f.run_on_min_us},
                   {"run_off_min_us", f.run_off_min_us}});
  return out;
}

}  // namespace spr_bench
