// `serve`: JSON-lines requests on stdin, one result line each on stdout; sessions, streams, cancel.
#pragma once

#include <cstddef>
#include <istream>
#include <ostream>

#include "spr/runner.hpp"

namespace spr::cli {

// Answers every request line of `in` on `out` (one-off runs on runner.submit(), as many at once as
// its executor runs) and returns when `in` ends and every run has answered (sessions are then closed).
void serve(Runner& runner, const RunnerPolicy& base, std::istream& in, std::ostream& out);

}  // namespace spr::cli
