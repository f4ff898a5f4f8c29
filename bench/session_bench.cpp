// spr-bench's session section. One-off runs and session calls alternate (ABAB), so load from other
// processes on a shared machine hits both alike; the figures to compare are the ratios.
#include "session_bench.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include "spr/spr.hpp"

namespace spr_bench {

namespace {

using Clock = std::chrono::steady_clock;
using spr::json;

const char* const kSnippet = "import math\nresult = math.sqrt(input_data['x'])";
const json kInput = {{"x", 81}};

double us_since(Clock::time_point t0) {
  return std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

bool good(const spr::RunResult& r) {
  return r.ok && r.result.is_number() && r.result.get<double>() == 9.0;
}

spr::RunnerOptions options_for(const std::string& worker_path, spr::Isolation iso) {
  spr::RunnerOptions o;
  o.workers = 1;
  o.policy.isolation = iso;
  o.worker_path = worker_path;
  return o;
}

void measure_mode(const std::string& worker_path, SessionFigures& f, int runs, int cancels) {
  auto iso = spr::parse_isolation(f.mode);
  if (!iso) {
    f.error = "unknown mode";
    return;
  }
  spr::Runner runner(options_for(worker_path, *iso));
  spr::Session session = runner.open_session();
  std::vector<double> one, ses;
  for (int i = 0; i < runs + 5; ++i) {
    auto t0 = Clock::now();
    spr::RunResult a = runner.run(kSnippet, kInput);
    const double a_us = us_since(t0);
    t0 = Clock::now();
    spr::RunResult b = session.run(kSnippet, kInput);
    const double b_us = us_since(t0);
    if (!good(a) || !good(b)) {
      f.error = "run failed: " + (good(a) ? b : a).error.value_or("?");
      return;
    }
    if (i < 5) continue;  // warm-up
    one.push_back(a_us);
    ses.push_back(b_us);
  }
  f.runs = runs;
  f.oneoff_p50_us = percentile(one, 0.5);
  f.oneoff_p99_us = percentile(one, 0.99);
  f.session_p50_us = percentile(ses, 0.5);
  f.session_p99_us = percentile(ses, 0.99);

  std::vector<double> lat, recover;
  for (int i = 0; i < cancels; ++i) {
    std::atomic<bool> started{false};
    spr::RunOptions o;
    o.on_output = [&](spr::OutputStream, const std::string&) { started = true; };
    spr::RunnerPolicy p = runner.options().policy;
    p.timeout_seconds = 30;
    spr::RunHandle h = runner.submit("print('go', flush=True)\nwhile True: pass", json::object(), p, o);
    const auto give_up = Clock::now() + std::chrono::seconds(30);
    while (!started && Clock::now() < give_up) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    const auto t0 = Clock::now();
    h.cancel();
    spr::RunResult r = h.get();
    const double ms = us_since(t0) / 1000;
    if (r.error_kind != spr::ErrorKind::cancelled) {
      f.error = "cancel answered " + spr::to_string(r.error_kind);
      return;
    }
    lat.push_back(ms);
    if (!good(runner.run(kSnippet, kInput))) {
      f.error = "the pool did not recover after a cancel";
      return;
    }
    recover.push_back(us_since(t0) / 1000);
  }
  f.cancels = cancels;
  f.cancel_p50_ms = percentile(lat, 0.5);
  f.cancel_max_ms = lat.empty() ? 0 : *std::max_element(lat.begin(), lat.end());
  f.recover_p50_ms = percentile(recover, 0.5);
  f.available = true;
}

}  // namespace

SessionReport measure_sessions(const std::vector<std::string>& modes, const std::string& worker_path, int runs,
                               int opens, int cancels) {
  SessionReport rep;
  for (const auto& m : modes) {
    SessionFigures f;
    f.mode = m;
    try {
      measure_mode(worker_path, f, runs, cancels);
    } catch (const std::exception& e) {
      f.error = e.what();
    }
    rep.modes.push_back(f);
  }
  try {
    spr::Runner runner(options_for(worker_path, spr::Isolation::fork));
    std::vector<double> open_ms;
    for (int i = 0; i <= opens; ++i) {
      if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(500));  // the spare comes up meanwhile
      const auto t0 = Clock::now();
      spr::Session s = runner.open_session();
      const double ms = us_since(t0) / 1000;
      if (i == 0)
        rep.cold_open_ms = ms;
      else
        open_ms.push_back(ms);
      if (!good(s.run(kSnippet, kInput))) {
        rep.error = "a session call failed";
        break;
      }
      s.close();
    }
    rep.opens = static_cast<int>(open_ms.size());
    rep.open_p50_ms = percentile(open_ms, 0.5);
    rep.open_max_ms = open_ms.empty() ? 0 : *std::max_element(open_ms.begin(), open_ms.end());
  } catch (const std::exception& e) {
    rep.error = e.what();
  }
  return rep;
}

void print_sessions(const SessionReport& r) {
  std::printf(
      "\nsessions (a session call vs a one-off run of the same snippet, interleaved; cancel = cancel() to result)\n");
  std::printf("%-15s %12s %12s %8s %12s %12s %16s %12s\n", "mode", "one-off p50", "session p50", "ratio", "one-off p99",
              "session p99", "cancel p50/max", "recovered");
  for (const auto& m : r.modes) {
    if (!m.available) {
      std::printf("%-15s unavailable: %s\n", m.mode.c_str(), m.error.c_str());
      continue;
    }
    std::printf("%-15s %10.0f us %10.0f us %7.2fx %10.0f us %10.0f us %8.2f/%.2f ms %9.1f ms\n", m.mode.c_str(),
                m.oneoff_p50_us, m.session_p50_us, m.session_p50_us > 0 ? m.oneoff_p50_us / m.session_p50_us : 0,
                m.oneoff_p99_us, m.session_p99_us, m.cancel_p50_ms, m.cancel_max_ms, m.recover_p50_ms);
  }
  if (r.error.empty())
    std::printf("open_session: first (starts a worker) %.1f ms; later (spare ready) p50 %.2f ms, max %.2f ms over %d\n",
                r.cold_open_ms, r.open_p50_ms, r.open_max_ms, r.opens);
  else
    std::printf("open_session: %s\n", r.error.c_str());
}

nlohmann::json to_json(const SessionReport& r) {
  json modes = json::array();
  for (const auto& m : r.modes) {
    json j = {{"mode", m.mode}, {"available", m.available}};
    if (!m.available) {
      j["error"] = m.error;
    } else {
      j.update({{"runs", m.runs},
                {"oneoff_p50_us", m.oneoff_p50_us},
                {"oneoff_p99_us", m.oneoff_p99_us},
                {"session_p50_us", m.session_p50_us},
                {"session_p99_us", m.session_p99_us},
                {"cancels", m.cancels},
                {"cancel_p50_ms", m.cancel_p50_ms},
                {"cancel_max_ms", m.cancel_max_ms},
                {"recover_p50_ms", m.recover_p50_ms}});
    }
    modes.push_back(j);
  }
  json out = {{"modes", modes},
              {"cold_open_ms", r.cold_open_ms},
              {"opens", r.opens},
              {"open_p50_ms", r.open_p50_ms},
              {"open_max_ms", r.open_max_ms}};
  if (!r.error.empty()) out["error"] = r.error;
  return out;
}

}  // namespace spr_bench
