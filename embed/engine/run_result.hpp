// A run's RunResult from what its code did: its exception classified, its `result` encoded.
#pragma once

#include <string>

#include "py.hpp"
#include "spr/policy.hpp"
#include "spr/result.hpp"

namespace spr::embed::run_result {

// `o` becomes the run's outcome; what the run already showed (its isolation, a session's repr) stays.
void become(RunResult& r, RunResult o);
// The run's exception `e` as its outcome (SystemExit's rules, limits, policy refusals); tracebacks
// and notes go to the captured stderr.
void from_exception(const py::FetchedError& e, const RunnerPolicy& p, RunResult& r);
// Over the wall-clock or the CPU limit, as the timers say.
void over_time(const RunnerPolicy& p, RunResult& r);
// The JSON form of the run's `result` into r.result (r.ok), or the outcome saying why it has none.
// Runs user code (__str__, __repr__): the caller keeps the limits armed.
void encode(PyObject* result, const RunnerPolicy& p, RunResult& r);

// "ValueError: msg", as the original reports it (the type's name, unqualified).
std::string one_line(const py::FetchedError& e);
// The exception as python3 prints an uncaught one, into the captured stderr (`only_exception`: without frames).
void print_traceback(const py::FetchedError& e, bool only_exception);
void write_stderr(const std::string& s);
// Whether the policy removed the builtin `name` from a run's builtins.
bool builtin_removed(const RunnerPolicy& p, const std::string& name);

}  // namespace spr::embed::run_result
