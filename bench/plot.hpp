// Hand-written SVG bar chart of p50/p99 latency per row against floor lines, log-scale y axis.
#pragma once

#include <string>
#include <vector>

namespace spr_bench {

struct PlotRow {
  std::string label;
  double p50_us = 0;
  double p99_us = 0;
};

// A floor measured in the same run, drawn as a dashed horizontal line across the bars.
struct PlotLine {
  std::string label;
  double us = 0;
};

// Returns a complete SVG document. Rows with non-positive figures are drawn without bars.
std::string latency_svg(const std::vector<PlotRow>& rows, const std::vector<PlotLine>& floors, const std::string& title,
                        const std::string& subtitle);

// "23.4 µs", "1.25 ms", "2.1 s".
std::string format_latency(double us);

}  // namespace spr_bench
