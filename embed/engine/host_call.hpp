// Host functions as the run sees them: plain callables and the built-in `host` module, calling out over the channel.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "py.hpp"
#include "spr/policy.hpp"

namespace spr::embed::host_call {

// Where a call's frame goes and its answer comes from: the protocol socket (fd 3) in every mode but
// fork, where a run's child has its own two pipes to the fork parent, which forwards the frames.
void set_channel(int write_fd, int read_fd);
// This thread's calls go over `fd`, a socket to the supervisor (a run thread's own; default fd 3).
void set_socket(int fd);

// Per run, in the run's interpreter: puts each of `functions` into `globals` as a callable and makes
// the module `host` (the callables and HostFunctionError) importable as sys.modules['host'] for the
// run's duration. No functions: nothing is added. False with a Python error set on failure.
bool begin_run(std::uint64_t run_id, const std::vector<std::string>& functions, const RunnerPolicy& policy,
               PyObject* globals);
// Removes sys.modules['host'] and forgets the run: a callable kept past its run raises RuntimeError.
void end_run();

// A run with host functions is in progress (the guard lets it import `host` in allow mode too).
bool active();
// The run went over a host call limit (its calls or one call's size): it ends with host_call_limit
// even when its code caught the exception. `why` is the limit's text.
bool limit_hit();
const std::string& limit_why();

}  // namespace spr::embed::host_call
