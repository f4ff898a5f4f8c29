// spr-bench's session section: a session call next to a one-off run per mode, open cost, cancel latency.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace spr_bench {

struct SessionFigures {
  std::string mode;
  bool available = false;
  std::string error;
  int runs = 0;
  double oneoff_p50_us = 0, oneoff_p99_us = 0;    // a one-off run in this mode
  double session_p50_us = 0, session_p99_us = 0;  // the same snippet as a session call (interleaved)
  double cancel_p50_ms = 0, cancel_max_ms = 0;    // cancel() of a running run to its future being ready
  double recover_p50_ms = 0;                      // cancel() to the end of the next good run (a new worker)
  int cancels = 0;
};

struct SessionReport {
  std::vector<SessionFigures> modes;
  double cold_open_ms = 0;                  // the first open_session(): a session worker is started
  double open_p50_ms = 0, open_max_ms = 0;  // later opens, the spare worker ready (0.5 s between opens)
  int opens = 0;
  std::string error;
};

// `runs` interleaved pairs per mode, `opens` session opens, `cancels` cancels per mode.
SessionReport measure_sessions(const std::vector<std::string>& modes, const std::string& worker_path, int runs,
                               int opens, int cancels);
void print_sessions(const SessionReport& r);
nlohmann::json to_json(const SessionReport& r);

}  // namespace spr_bench
