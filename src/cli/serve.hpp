// `serve`: JSON-lines requests on stdin, one result line each on stdout; sessions, streams, cancel.
#pragma once

#include <cstddef>

#include "spr/runner.hpp"

namespace spr::cli {

// Answers every request line read from `in_fd` on `out_fd`, one write(2) per answer line (one-off runs
// on runner.submit(), as many at once as its executor runs; sessions on a bounded pool of threads) and
// returns when the input ends and every run has answered (sessions are then closed).
void serve(Runner& runner, const RunnerPolicy& base, int in_fd, int out_fd);

}  // namespace spr::cli
