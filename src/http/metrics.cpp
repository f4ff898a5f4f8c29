// Prometheus text exposition (format 0.0.4) of the HTTP service's metrics.
#include "http/metrics.hpp"

#include <charconv>
#include <sstream>

namespace spr::http {

void Metrics::run_finished(const RunResult& r) {
  // What the client waited for the run: its own time and its wait for a worker.
  const double seconds = static_cast<double>((r.duration + r.queued).count()) / 1e6;
  std::lock_guard<std::mutex> lk(mu_);
  ++runs_[to_string(r.error_kind)];
  Histogram& h = latency_[to_string(r.isolation)];
  std::size_t i = 0;
  while (i < kBuckets.size() && seconds > kBuckets[i]) ++i;
  if (i < kBuckets.size()) ++h.counts[i];
  ++h.count;
  h.sum += seconds;
}

void Metrics::refused(const std::string& reason) {
  std::lock_guard<std::mutex> lk(mu_);
  ++refused_[reason];
}

void Metrics::request_answered(int status) {
  std::lock_guard<std::mutex> lk(mu_);
  ++responses_[status];
}

// A bucket bound as its shortest round-trip text (0.0025, not 0.0025000000000000001).
static std::string shortest(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

std::string Metrics::render(const Gauges& g) const {
  std::ostringstream o;
  o.precision(17);
  std::lock_guard<std::mutex> lk(mu_);
  o << "# HELP spr_runs_total Runs and session calls answered, by error_kind (none: ok).\n"
       "# TYPE spr_runs_total counter\n";
  for (const auto& [kind, n] : runs_) o << "spr_runs_total{error_kind=\"" << kind << "\"} " << n << "\n";
  o << "# HELP spr_run_duration_seconds Time from a run's submission to its answer, queueing included.\n"
       "# TYPE spr_run_duration_seconds histogram\n";
  for (const auto& [iso, h] : latency_) {
    std::uint64_t cumulative = 0;
    for (std::size_t i = 0; i < kBuckets.size(); ++i) {
      cumulative += h.counts[i];
      o << "spr_run_duration_seconds_bucket{isolation=\"" << iso << "\",le=\"" << shortest(kBuckets[i]) << "\"} " << cumulative
        << "\n";
    }
    o << "spr_run_duration_seconds_bucket{isolation=\"" << iso << "\",le=\"+Inf\"} " << h.count << "\n";
    o << "spr_run_duration_seconds_sum{isolation=\"" << iso << "\"} " << h.sum << "\n";
    o << "spr_run_duration_seconds_count{isolation=\"" << iso << "\"} " << h.count << "\n";
  }
  o << "# HELP spr_requests_refused_total Requests refused before any run, by reason.\n"
       "# TYPE spr_requests_refused_total counter\n";
  for (const auto& [reason, n] : refused_) o << "spr_requests_refused_total{reason=\"" << reason << "\"} " << n << "\n";
  o << "# HELP spr_http_responses_total HTTP responses, by status code.\n"
       "# TYPE spr_http_responses_total counter\n";
  for (const auto& [status, n] : responses_) o << "spr_http_responses_total{status=\"" << status << "\"} " << n << "\n";
  const auto gauge = [&o](const char* name, const char* help, std::size_t v) {
    o << "# HELP " << name << " " << help << "\n# TYPE " << name << " gauge\n" << name << " " << v << "\n";
  };
  gauge("spr_workers_idle", "Warm workers waiting for a run.", g.workers_idle);
  gauge("spr_workers_busy", "Workers running a run or being started.", g.workers_busy);
  gauge("spr_sessions_open", "Sessions open on this server.", g.sessions_open);
  gauge("spr_runs_in_flight", "Runs and session calls admitted and not answered yet.", g.runs_in_flight);
  gauge("spr_http_connections", "Open client connections.", g.connections);
  return o.str();
}

}  // namespace spr::http
