// The C audit hook: a table of audit events and what a run may do about each. It asks trust.hpp
// whether it is armed and whether a caller's code is the runtime's own.
#pragma once

#include <string>
#include <vector>

#include "py.hpp"

namespace spr::embed::audit {

// What the hook enforces for the current run. Lives in C++ only: nothing here is reachable from Python.
struct RunRules {
  bool allow_network = false;
  bool allow_unix_sockets = false;
  bool allow_threads = false;
  bool block_exec = true;     // exec and eval both blocked: deny "exec" events raised from user code
  bool block_compile = true;  // deny "compile" events raised from user code
  std::vector<std::string> read_roots;  // besides the runtime's own: allowed_read_paths
  std::string scratch;                  // writable directory of this run ("" = none)
};

// Registers the hook. Must run before Py_Initialize so it is runtime-wide and unremovable.
void install();
// Readable, but not code: shared libraries extensions load, the time-zone database.
void set_support_roots(std::vector<std::string> roots);
void set_rules(RunRules rules);
// Gates code.replace: renaming a code object (co_name, co_qualname, co_filename, co_firstlineno)
// and types.coroutine's one flag pass the "code.__new__" rule, any other change meets it. numpy
// renames its dispatchers this way while it imports. Call once per interpreter, before arming.
bool install_code_replace_gate();

// Denials since the last reset (the engine maps a PermissionError to error_kind "denied").
int denials();
void reset_denials();

// True when the innermost Python frame's code object is not one the engine marked as the runtime's
// own (loaded before arming, or read by the engine from a file under the runtime roots). Decided
// by the code object's identity, never by its co_filename.
bool caller_is_user();

// Import decisions are the guard's; the hook asks it about "import" events.
using ImportCheck = std::string (*)(const std::string& module);  // "" = allowed, else the message
void set_import_check(ImportCheck check);

}  // namespace spr::embed::audit
