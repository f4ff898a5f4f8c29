// spr-bench: every isolation mode through the public API, back to back and paced, against the
// floors of this machine measured in the same run (pipe, fork, copy-on-write, interpreters).
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <thread>

#include "bench.hpp"
#include "host_bench.hpp"
#include "layers_bench.hpp"
#include "pandas_case.hpp"
#include "session_bench.hpp"
#include "spr/runner.hpp"

using namespace spr_bench;

int main(int argc, char** argv) {
  signal(SIGPIPE, SIG_IGN);
  const Options o = parse_options(argc, argv);
  const auto started = Clock::now();
  if (o.only_pandas) {
    const json p = measure_pandas_case(o.baseline_python, o.baseline_script, o.quick);
    if (!o.json_path.empty()) std::ofstream(o.json_path) << json{{"pandas", p}}.dump(2) << "\n";
    return p.empty() ? 1 : 0;
  }
  if (o.host_only) {
    const std::string load = loadavg();
    const HostReport h = measure_host_calls(o);
    print_host_calls(h);
    std::printf("load average %s at start, %s at end\n", load.c_str(), loadavg().c_str());
    if (!o.json_path.empty()) std::ofstream(o.json_path) << json{{"host_functions", to_json(h)}}.dump(2) << "\n";
    return 0;
  }
  if (o.sessions_only) {
    const std::string load = loadavg();
    const auto rep = measure_sessions(o.modes, o.worker_path, o.quick ? 30 : 200, o.quick ? 5 : 20, o.quick ? 5 : 20);
    print_sessions(rep);
    std::printf("load average %s at start, %s at end\n", load.c_str(), loadavg().c_str());
    if (!o.json_path.empty()) std::ofstream(o.json_path) << to_json(rep).dump(2) << "\n";
    return 0;
  }
  const int layer_starts = o.quick ? 5 : 20, layer_runs = o.quick ? 30 : 200;
  if (o.layers_only) {
    const std::string load = loadavg();
    const auto layers = measure_layers(o.modes, o.worker_path, layer_starts, layer_runs);
    print_layers(layers);
    std::printf("load average %s at start, %s at end\n", load.c_str(), loadavg().c_str());
    if (!o.json_path.empty()) std::ofstream(o.json_path) << json{{"layers", to_json(layers)}}.dump(2) << "\n";
    return 0;
  }
  Report r;
  r.load_start = loadavg();
  std::printf("load average at start: %s (%u cpus)\n", r.load_start.c_str(), std::thread::hardware_concurrency());
  if (std::strtod(r.load_start.c_str(), nullptr) >= 1)
    std::fprintf(stderr,
                 "\n*** WARNING: load average %s at start (1 or more): other work shares the CPUs, so every figure\n"
                 "*** will be inflated and noisy. Only ratios within this run mean much; the table says so.\n\n",
                 r.load_start.c_str());

  // Everything that forks the bench itself first, while no Runner thread exists.
  if (o.engine) {
    r.engine_run = true;
    r.engine = measure_engine(o);
  }
  if (o.baseline) {
    r.baseline_run = true;
    r.baseline = measure_baseline(o);
  }
  for (const auto& mode : o.modes) r.modes.push_back(measure_mode(o, mode, r.python));
  const json pandas = o.pandas ? measure_pandas_case(o.baseline_python, o.baseline_script, o.quick) : json();
  if (o.serve) {
    r.serve_run = true;
    r.serve = measure_serve(o);
  }
  // The floors after the modes (every Runner is gone again), with the fork floor at the size of
  // the warm worker just measured.
  double rss_mb = 0;
  for (const auto& m : r.modes)
    if (m.name == "fork" && m.idle_rss_mb) rss_mb = *m.idle_rss_mb;
  if (o.floors) r.floors = measure_floors(o, rss_mb);
  if (r.python.empty()) r.python = r.engine.python;
  std::optional<SessionReport> sessions;
  if (o.sessions)
    sessions = measure_sessions(o.modes, o.worker_path, o.quick ? 30 : 200, o.quick ? 5 : 20, o.quick ? 5 : 20);

  std::optional<HostReport> host;
  if (o.host) host = measure_host_calls(o);
  std::optional<std::vector<LayerFigures>> layers;
  if (o.layers) layers = measure_layers(o.modes, o.worker_path, layer_starts, layer_runs);

  r.load_end = loadavg();
  r.seconds = us_since(started) / 1e6;
  print_report(r);
  if (sessions) print_sessions(*sessions);
  if (host) print_host_calls(*host);
  if (layers) print_layers(*layers);
  std::printf("\npython %s, %u cpus, load average %s at start, %s at end; total %.1f s\n", r.python.c_str(),
              std::thread::hardware_concurrency(), r.load_start.c_str(), r.load_end.c_str(), r.seconds);

  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    json j = to_json(r);
    if (!pandas.is_null()) j["pandas"] = pandas;
    if (sessions) j["sessions"] = to_json(*sessions);
    if (host) j["host_functions"] = to_json(*host);
    if (layers) j["layers"] = to_json(*layers);
    f << j.dump(2) << "\n";
    if (!f) std::fprintf(stderr, "cannot write %s\n", o.json_path.c_str());
  }
  if (!o.plot_path.empty()) write_plot(r, o.plot_path);
  if (!o.markdown_path.empty() || !o.readme_path.empty()) {
    const std::string md = markdown(r);
    if (!o.markdown_path.empty()) {
      std::ofstream f(o.markdown_path);
      f << md;
      if (!f) std::fprintf(stderr, "cannot write %s\n", o.markdown_path.c_str());
    }
    std::string error;
    if (!o.readme_path.empty()) {
      if (replace_marked_block(o.readme_path, md, error))
        std::printf("wrote this run's table into %s (load average %s at start)\n", o.readme_path.c_str(),
                    r.load_start.c_str());
      else
        std::fprintf(stderr, "README not updated: %s\n", error.c_str());
    }
  }

  // Exit status: 1 when a measured mode had failed runs (a benchmark figure over failures is void).
  bool failed = r.engine.failures > 0 || r.baseline.failures > 0;
  for (const auto& m : r.modes)
    if (m.available && m.b2b.failures + m.paced.failures + m.tput_failures > 0) failed = true;
  return failed ? 1 : 0;
}
