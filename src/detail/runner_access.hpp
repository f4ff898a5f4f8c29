// What the library's own CLI needs of a Runner beyond its public API: submit() with a completion callback,
// the pool's worker counts, and a worker's start plan.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <utility>

#include "spr/runner.hpp"

namespace spr::detail {

struct RunnerAccess {
  // Runner::submit, and `on_done` called once: with the run's own result when a run that started ends
  // (cancelled or not; on the executor's thread), or with the cancel's result, at once on the
  // cancelling thread, when the run had not started. It must not cancel the run or block long.
  static RunHandle submit(Runner& runner, std::string code, json input_data, RunnerPolicy policy, RunOptions options,
                          std::function<void(const RunResult&)> on_done);
  // Lets submit() run at least `runs` at once (its threads otherwise stop at runs_at_once):
  // a service that admits that many runs, across as many pools as its clients choose, gives each a thread, so
  // that a run waits for its own pool's worker and never for a thread another client's runs hold.
  static void allow_submitted_at_once(Runner& runner, std::size_t runs);
  // The most runs the runner's pools serve at once (WorkerPool::runs_at_once): how many threads a caller that
  // submits on its own threads (the Python package's executor) may usefully keep.
  static std::size_t runs_at_once(Runner& runner);
  // Warm workers waiting, and workers running a run or being started, over every pool (for metrics).
  static std::pair<std::size_t, std::size_t> worker_counts(Runner& runner);
  // The start plan (WorkerStart::to_json) of the worker a run in `isolation` gets under the runner's policy:
  // what it mounts, maps and allows (for doctor). Throws WorkerError when that Python cannot be served.
  static json worker_start(Runner& runner, Isolation isolation);
  // The default Python's worker the runner found (the other Pythons' workers sit beside it).
  static std::filesystem::path worker_path(Runner& runner);
  // Runner::run for a caller that has itself found options.input_json valid with json_text_error() (the
  // Python binding and the CLI, which refuse it in their own way): a large input is not scanned twice.
  static RunResult run_checked_input(Runner& runner, const std::string& code, const RunnerPolicy& policy,
                                     const RunOptions& options);
};

}  // namespace spr::detail
