// Public API: host functions, the application's own functions that a run's code may call by name.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <string>

#include "spr/policy.hpp"

namespace spr {

/// One call of a host function, as the run's code made it. Everything in it is the run's own input:
/// treat it as untrusted, like input_data coming back.
struct HostCall {
  std::string name;              ///< the function's name, one the runner or the run declared
  json args = json::array();     ///< positional arguments, a JSON list
  json kwargs = json::object();  ///< keyword arguments, a JSON object
  std::uint64_t run_id = 0;      ///< the run's number: equal for every call of one run, unique per Runner
  std::uint64_t call_id = 0;     ///< 1, 2, ... within the run
};

/// A host function returns the call's answer as JSON. Throwing a std::exception raises
/// host.HostFunctionError (a RuntimeError) carrying what() in the run's code, which may catch it.
///
/// Threading: each run that calls a host function gets one helper thread of its own, started at
/// its first call; the run's calls are made there one at a time, in order. Calls of different runs
/// (pool workers, sessions, submit()) run on different threads at the same time, so a function
/// shared by runs must be thread-safe. Time in the host counts against the run's timeout_seconds:
/// a run whose host function is still busy at the deadline answers timed_out on time, its worker
/// is replaced, and the function's late answer is dropped. The function may therefore still be
/// running after its run (and even the Runner) has ended: it must not rely on the caller's stack;
/// capture what it uses by value or shared_ptr. No call is started after its run has ended.
using HostFunction = std::function<json(const HostCall&)>;
/// By name. A name must be a Python identifier that does not start with '_'; the run's code sees each
/// as a plain callable in its globals (replacing an input_data key or extra_globals entry of that
/// name) and as `host.<name>` (`import host`; `from host import HostFunctionError`).
using HostFunctions = std::map<std::string, HostFunction>;

}  // namespace spr
