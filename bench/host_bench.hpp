// spr-bench's host function section: a host call's round trip per mode, through serve and Python, next to the pipe floor.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "bench.hpp"

namespace spr_bench {

struct HostFigures {
  std::string mode;
  bool available = false;
  std::string error;
  int reps = 0;
  double per_call_us = 0;  // median over pairs of (1,000 host calls - the same loop local) / 1,000
};

struct HostReport {
  std::optional<Stats> pipe_same_cpu, pipe_cross_cpu;
  std::vector<HostFigures> modes;
  HostFigures serve, python;
};

HostReport measure_host_calls(const Options& o);
void print_host_calls(const HostReport& r);
json to_json(const HostReport& r);

}  // namespace spr_bench
