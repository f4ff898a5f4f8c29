// spr-closed-loop: N client threads each running one snippet back to back on one Runner for S seconds,
// as N HTTP connections would (bench/http_compare.py sets the same snippet against `http` and `serve`).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "spr/runner.hpp"

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: spr-closed-loop CLIENTS SECONDS WORKERS CODE [GAP_MS]\n");
    return 64;
  }
  const int clients = std::atoi(argv[1]);
  const double seconds = std::atof(argv[2]);
  spr::RunnerOptions o;
  o.workers = static_cast<std::size_t>(std::atoi(argv[3]));
  o.worker_stderr = std::getenv("SPR_WORKER_STDERR") != nullptr;  // e.g. a -DSPR_FORK_PHASES=ON worker's figures
  const std::string code = argv[4];
  const double gap_ms = argc > 5 ? std::atof(argv[5]) : 0;  // paced: each client starts a run every GAP_MS
  spr::Runner runner(o);
  runner.run("result = 1");  // a warm worker before the clock starts
  using Clock = std::chrono::steady_clock;
  const auto end = Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
  std::mutex mu;
  std::vector<double> latencies_ms;
  std::atomic<long> wrong{0};
  std::vector<std::thread> threads;
  const auto start = Clock::now();
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      std::vector<double> mine;
      auto next = Clock::now();
      for (long i = 0; Clock::now() < end; ++i) {
        if (gap_ms > 0) {
          std::this_thread::sleep_until(next);
          next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double, std::milli>(gap_ms));
        }
        const long n = c * 1000000L + i;
        const auto t0 = Clock::now();
        const spr::RunResult r = runner.run(code, {{"n", n}});
        mine.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        if (!r.ok || r.result != spr::json(2 * n)) ++wrong;
      }
      std::lock_guard<std::mutex> lk(mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  for (auto& t : threads) t.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  std::sort(latencies_ms.begin(), latencies_ms.end());
  const auto pct = [&](double p) {
    return latencies_ms.empty()
               ? 0.0
               : latencies_ms[std::min(latencies_ms.size() - 1, static_cast<std::size_t>(p * latencies_ms.size()))];
  };
  std::printf(
      "{\"requests\": %zu, \"seconds\": %.3f, \"requests_per_second\": %.1f, \"p50_ms\": %.3f, \"p99_ms\": %.3f, "
      "\"wrong\": %ld}\n",
      latencies_ms.size(), elapsed, latencies_ms.size() / elapsed, pct(0.50), pct(0.99), wrong.load());
  return wrong.load() == 0 ? 0 : 1;
}
