// The import guard and builtins filter: the `_spr` built-in module and the run's import policy.
#pragma once

#include <string>
#include <vector>

#include "py.hpp"
#include "spr/policy.hpp"

namespace spr::embed::guard {

// Registers `_spr` with PyImport_AppendInittab; call before Py_Initialize.
void register_module();

// Resolves the import policy of a run (aliases expanded) and makes it current.
void set_policy(const RunnerPolicy& policy);
// "" when `module` may be imported by user code under the current policy, else the ImportError text.
std::string check(const std::string& module);
// Whether the last ImportError of the run came from the policy.
bool blocked_import_raised();
void reset_run_state();

// Installs the guarded __import__ into the real builtins module (keeps the original for itself).
bool install_import_hook();
// A fresh builtins dict for one run: filtered by the policy, __import__ guarded.
PyObject* make_run_builtins(const RunnerPolicy& policy);

}  // namespace spr::embed::guard
