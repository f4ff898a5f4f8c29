// Per-interpreter objects of the engine. The worker runs one interpreter at a time, so the
// engine swaps which state is current when it switches to or from a sub-interpreter.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

#include "py.hpp"
#include "spr/policy.hpp"

namespace spr::embed {

struct InterpState {
  PyObject* original_import = nullptr;  // builtins.__import__ before the guard replaced it
  PyObject* make_sys_proxy = nullptr;   // the bootstrap's factory of the restricted `sys` view
  PyObject* sys_proxy = nullptr;        // built on a run's first `import sys`, dropped after the run
  PyTypeObject* stream_type = nullptr;  // _spr.Stream of this interpreter
  PyObject* out = nullptr;              // sys.stdout / sys.stderr replacements
  PyObject* err = nullptr;
  PyObject* bootstrap = nullptr;         // the bootstrap module (its after_namespace_run)
  PyObject* builtins_snapshot = nullptr;  // the real builtins dict as the engine left it
  // Compiled user code by exact source text: agents and benchmarks resend the same snippet.
  std::unordered_map<std::string, PyObject*> code_cache;
  std::size_t code_cache_bytes = 0;
  Py_ssize_t trust_index = -1;  // co_extra slot of the engine's trusted-code mark (trust.cpp)
  PyObject* create_dynamic = nullptr;  // _imp's own functions, behind the guard's gates
  PyObject* create_builtin = nullptr;
  PyObject* module_spec = nullptr;     // importlib's ModuleSpec, for the specs the gates pass on
  PyObject* get_frozen_object = nullptr;  // _imp's own, for the engine's frozen-module loader (trust.cpp)
  PyObject* code_replace = nullptr;    // the code type's own replace, behind the audit hook's gate
  // Built by prebuild_run_objects() before a run is asked for (a fork parent for its children, a namespace
  // worker while idle), taken by the next run (one run only): the `builtins` module of a run whose policy
  // filters builtins as `prebuilt_like` does, and whether sys.std* are fresh, unused streams.
  PyObject* prebuilt_builtins = nullptr;
  Mode prebuilt_mode = Mode::restrict;
  std::vector<std::string> prebuilt_names;  // prebuilt_like's blocked (restrict) or allowed (allow) builtins
  bool prebuilt_streams = false;
  PyObject* json_scanner = nullptr;    // _json.make_scanner configured as json.JSONDecoder(), for input_data (codec.cpp)
  bool packages_patched = false;       // numpy's as_strided replaced by the bootstrap's checked one
};

InterpState& state();
void use_state(InterpState* s);

}  // namespace spr::embed
