// The in-process engine: initialises the embedded interpreter and runs one request in it.
// The worker's main loop calls it; a C++ program that accepts in-process risk may call it directly.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "common/protocol.hpp"
#include "spr/result.hpp"

struct _object;  // PyObject, without Python.h

namespace spr::embed {

struct EngineOptions {
  int capture_fd = -1;  // the shared output memfd; -1: a private buffer
  bool preload = true;  // import bootstrap_py/preload.txt so runs find those modules cached
  // With `preload`: the [warm] sections wait for preload_deferred(), called once the worker is idle
  // (a fork-mode worker, whose own interpreter never runs a request: its first run need not wait).
  bool defer_warm = false;
  std::vector<std::string> preload_modules;  // RunnerOptions::preload: imported before the sandbox closes
  std::vector<std::string> sys_path;  // sys.path as the chosen python3 sees it; empty: the embedded default
  std::string executable;             // the python3 whose environment this is (shown as sys.executable)
  std::string prefix;                 // a venv's directory: sys.prefix and sys.exec_prefix; empty: the build's own
  std::string home;  // sys.base_prefix of the build whose libpython this is; empty: the one compiled in
  std::string cache_dir;  // where the library scan is kept between starts (libdeps.hpp); empty: none
};

// Initialises CPython once per process. Returns "" or the reason it failed (never exits).
std::string initialize(const EngineOptions& options);
// True until preload_deferred() has imported what EngineOptions::defer_warm held back.
bool preload_pending();
// Imports what EngineOptions::defer_warm held back, one module at a time until `stop` says a request
// waits (the rest stays pending for the next idle moment), marks the new code as the runtime's and freezes
// it with the rest of the warm heap. Only in a process no request has run in.
void preload_deferred(const std::function<bool()>& stop);
// Runs `req` in this process, as the worker decoded it (the policy already narrowed to the worker's
// scope). `session_main`: a session's __main__ module, whose namespace is kept between calls (borrowed);
// null: a fresh one, cleared after the run. Outcomes are data; never throws.
RunResult run(const protocol::Request& req, ::_object* session_main = nullptr);
// Like run() but without preparing the capture buffer (the fork child's parent already did).
RunResult run_prepared(const protocol::Request& req, ::_object* session_main = nullptr);
bool prepare_capture(const protocol::Request& req);
// Builds, before a run is asked for, what a run of a policy that filters builtins as `like` does gets
// the same (its `builtins` module, fresh sys.stdin/stdout/stderr), so the run only builds what it changes:
// in a fork parent for the children it forks (`freeze`: moved out of the collector's reach with the warm
// heap, so a child's collection writes no page of them), in a namespace worker while it waits. The next
// run in this process takes them, once (one of another policy's builtins, or with stdin, builds its own).
// They hold no run's data. Returns false (and builds nothing) when Python fails.
bool prebuild_run_objects(const RunnerPolicy& like, bool freeze);
// Whether objects prebuilt above are waiting for a run.
bool prebuilt_run_objects();

// Sets up the guard, bootstrap and streams in the interpreter now current (a fresh sub-interpreter,
// made current with its engine state by an ActiveInterpreter scope). Returns "" or the reason.
std::string init_current_interpreter();

std::string python_version();
// sys.version of the libpython this worker loaded: which build it is, not only its version.
std::string python_build();
// Directories the runtime reads from (stdlib, lib-dynload, site-packages): Landlock's read-only set.
std::vector<std::string> runtime_paths();
// Readable data the runtime needs besides its code: the shared libraries extension modules load
// and the time-zone database. Landlock's and the audit hook's read sets both include these.
std::vector<std::string> support_paths();

}  // namespace spr::embed
