// The HTTP service's counters and gauges, rendered in the Prometheus text format for GET /metrics.
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "spr/result.hpp"

namespace spr::http {

class Metrics {
 public:
  // Upper bounds of the latency histogram's buckets, in seconds (+Inf is implied).
  static constexpr std::array<double, 14> kBuckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                   0.25,  0.5,    1,     2.5,  5,     10,   30};

  // A run or session call answered: by error_kind, and its duration in its isolation mode's histogram.
  void run_finished(const RunResult& r);
  // A request refused before any run: "unauthorized", "body_too_large", "overloaded", "draining", ...
  void refused(const std::string& reason);
  void request_answered(int status);

  struct Gauges {
    std::size_t workers_idle = 0, workers_busy = 0, sessions_open = 0, runs_in_flight = 0, connections = 0;
  };
  std::string render(const Gauges& g) const;

 private:
  struct Histogram {
    std::array<std::uint64_t, kBuckets.size()> counts{};  // per bucket, not cumulative
    std::uint64_t count = 0;
    double sum = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, std::uint64_t> runs_;     // by error_kind
  std::map<std::string, Histogram> latency_;      // by isolation mode
  std::map<std::string, std::uint64_t> refused_;  // by reason
  std::map<int, std::uint64_t> responses_;        // by HTTP status
};

}  // namespace spr::http
