// spr-bench's layer section: per isolation mode, what the worker's OS layers cost at its start and per run.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace spr_bench {

struct LayerFigures {
  std::string mode;
  std::string error;
  int starts = 0, runs = 0;
  double start_on_ms = 0, start_off_ms = 0;  // spawn to hello, p50
  double run_on_us = 0, run_off_us = 0;      // one run on a started worker (process mode: start + run), p50
  // The fastest of each sample: on a loaded machine the p50 is mostly waiting for a CPU, the minimum is
  // closest to what the work itself costs.
  double start_on_min_ms = 0, start_off_min_ms = 0, run_on_min_us = 0, run_off_min_us = 0;
};

// `starts` worker starts and `runs` runs per mode and setting, alternated so that load hits both alike.
std::vector<LayerFigures> measure_layers(const std::vector<std::string>& modes, const std::string& worker_path,
                                         int starts, int runs);
void print_layers(const std::vector<LayerFigures>& r);
nlohmann::json to_json(const std::vector<LayerFigures>& r);

}  // namespace spr_bench
