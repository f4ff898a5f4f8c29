// spr-bench's pandas case (issue 10): a pandas snippet in fork mode with and without preload, next to
// the original's model (a fresh python3 per run).
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace spr_bench {

// Prints its own table; returns the figures for the JSON report ({} when pandas is not importable).
nlohmann::json measure_pandas_case(const std::string& baseline_python, const std::string& baseline_script, bool quick);

}  // namespace spr_bench
