// `batch` and `batch-merge`: a cases file in, ordered result lines out, with progress, resume and shards.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "spr/policy.hpp"

namespace spr::cli {

struct BatchArgs {
  std::string cases;         // a path, or "-" for standard input
  std::string output = "-";  // a path, or "-" for standard output
  std::size_t workers = 2;
  int repeat = 1;
  std::string shard;         // "I/N", empty for all cases
  std::string summary_json;  // a path for the summary as JSON, empty for none
  bool resume = false;
  bool quiet = false;
  std::vector<std::string> preload;
  double start_timeout_seconds = 10;  // RunnerOptions::start_timeout_seconds
};

// Runs the batch; returns the exit status (0 every case ran, 130 interrupted, 65 bad arguments or
// duplicate ids, 69 no worker, 74 output not writable). Messages go to stderr.
int batch(const BatchArgs& args, const RunnerPolicy& policy);

// Merges shard outputs into `out` in input order (by the cases file's ids when `cases` is given, else
// by each line's "index"); refuses missing, duplicate or unknown cases. Returns the exit status.
int batch_merge(const std::string& out, const std::vector<std::string>& shards, const std::string& cases);

}  // namespace spr::cli
