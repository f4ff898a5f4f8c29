// Batch evaluation: a stream of case lines in, one result line per case out in input order, a summary.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <map>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "spr/runner.hpp"

namespace spr::detail {

// The competitive-programming convention: trailing whitespace on each line and trailing blank lines
// are not compared.
bool stdout_matches(std::string_view actual, std::string_view expected);

// Cases or outputs that cannot be used as given (duplicate ids, missing or unknown ids in a merge).
class BatchInputError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// The id of each case of a cases file, by position (a case is a non-blank line; its position counts
// cases from 0). Kept as 128-bit digests of the id's JSON text with the position: 24 bytes per case.
class CaseIndex {
 public:
  // Reads `in` to its end. Throws BatchInputError naming an id given twice and both line numbers.
  static CaseIndex scan(std::istream& in);
  std::size_t size() const { return no_id_.size(); }
  // The position of the case with this id; nullopt when none has it (null is no case's id).
  std::optional<std::size_t> find(const json& id) const;
  // True when the case at `pos` has no usable id (its line is answered bad_input).
  bool without_id(std::size_t pos) const;

  struct Key {
    std::uint64_t a = 0, b = 0;
    friend bool operator==(const Key& x, const Key& y) { return x.a == y.a && x.b == y.b; }
    friend bool operator<(const Key& x, const Key& y) { return x.a != y.a ? x.a < y.a : x.b < y.b; }
  };

 private:
  std::vector<bool> no_id_;                          // by position: the case has no usable id
  std::vector<std::pair<Key, std::size_t>> sorted_;  // (key, position), sorted, for find()
};

struct BatchOptions {
  RunnerPolicy ceiling;         // the batch's policy: a case's "policy" may only tighten it
  std::size_t workers = 2;      // the Runner's workers (sets how many runs are kept in flight)
  std::size_t max_in_flight = 0;  // runs kept in flight at once; 0: twice the workers (the Runner's executor)
  int repeat = 1;               // runs per case
  std::size_t shard_index = 0;  // run the positions p with p % shard_count == shard_index
  std::size_t shard_count = 1;
  // Cases started past the oldest unwritten one (the reorder buffer); 0: 32 per worker, 64 at least.
  // A slow case holds later output back for at most its own timeout, then the window lets no more start.
  std::size_t window = 0;
  std::size_t max_buffered_bytes = 64u << 20;  // finished lines held for order; past it no case starts
  // Called on run()'s thread, with no lock held, before each case starts: a sink that queues lines for
  // a slow reader waits here until it has room (the sink itself runs where runs end and must not wait).
  std::function<void()> before_case;
  // Called with each run's result as it ends (cancelled ones included), where runs end, without the
  // batch's lock: for counters such as the HTTP service's metrics.
  std::function<void(const RunResult&)> on_run_end;
  // Hands a case's run to the Runner as RunnerAccess::submit does (which is used when this is empty): the HTTP
  // service queues it in turn with other tokens' runs.
  std::function<void(std::string code, json input, RunnerPolicy policy, RunOptions options,
                     std::function<void(const RunResult&)> on_done)>
      submit;
};

// Counts so far (progress) or at the end (summary).
struct BatchSummary {
  std::size_t total = 0;  // cases this run is to write (shard and resume applied)
  std::size_t cases = 0;  // cases written
  std::size_t passed = 0, failed = 0;
  std::size_t bad_input = 0, timeouts = 0, memory = 0, wrong_output = 0, flaky = 0;
  std::size_t skipped = 0;                         // already in the output (resume)
  std::size_t runs = 0;                            // runs that ended (repeat counts each)
  std::map<std::string, std::size_t> error_kinds;  // of failed cases that did not end ok, by error_kind
  double p50_ms = 0, p99_ms = 0;                   // of every run's duration_ms (to 2%)
  double wall_seconds = 0;
  bool interrupted = false;

  json to_json() const;
  std::string to_text() const;        // the closing summary, several lines
  std::string progress_line() const;  // done/total, passed, failed, timeouts, rate, ETA
};

// Runs cases on a Runner: as many runs in flight as its executor takes, results written in input order.
class Batch {
 public:
  // Receives each output line whole ('\n' included), in input order; false stops the batch.
  using Sink = std::function<bool(std::string_view line)>;

  Batch(Runner& runner, BatchOptions options);
  ~Batch();
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;

  // Runs the cases of `in` (read again from its start; `index` is its scan) and returns the summary.
  // `done[p]` (resume): position p is already answered and is skipped. Returns when every started
  // case is written, or after stop() once the running cases are cancelled (those are not written).
  BatchSummary run(std::istream& in, const CaseIndex& index, const std::vector<bool>& done, const Sink& sink);
  // From any thread (not a signal handler): take no more cases, cancel the running ones.
  void stop();
  BatchSummary progress() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Positions of `index` already answered by the lines of an earlier output (by id; a line answering a
// case without an id, by its "index" field).
std::vector<bool> answered_positions(const CaseIndex& index, std::istream& output);

// Writes the lines of `inputs` to `out_path` in input order: by the position of their id in `index`,
// or by their "index" field when `index` is null. Through a temporary file in the same directory,
// renamed over `out_path`. `strict` (batch-merge): a missing, duplicate or unknown case throws
// BatchInputError and nothing is written. Otherwise (resume) the first line of a case is kept and
// lines of no case are dropped; returns what was dropped, one message each.
std::vector<std::string> write_in_order(const std::vector<std::string>& inputs, const CaseIndex* index,
                                        const std::string& out_path, bool strict);

}  // namespace spr::detail
