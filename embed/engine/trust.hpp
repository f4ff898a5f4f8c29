// Which code objects are the runtime's own, decided by identity: a mark set by the engine on code
// it loaded itself (before arming, or read by the engine from a file under the runtime's roots).
#pragma once

#include <string>
#include <vector>

#include "py.hpp"

namespace spr::embed::trust {

// The runtime's directories: modules loaded from files under them after arming are the runtime's own.
void set_runtime_roots(std::vector<std::string> roots);
const std::vector<std::string>& runtime_roots();
// True when path (made absolute and resolved) lies under one of roots.
bool path_under(const std::string& path, const std::vector<std::string>& roots);
// realpath(3) of `path` into `out` (false: it does not resolve). A directory written as a plain absolute path
// under the runtime's roots (no "." or ".." step) that resolves under them is resolved once per thread and
// kept: runs cannot change the runtime's directories, and an import resolves the same ones again and again
// (realpath reads every step of a path, a system call each). The last step is looked at each time.
bool real_path(const std::string& path, std::string& out);

// Armed: the audit hook checks every event. Disarmed only inside short sections the engine runs itself.
void arm(bool on);
// Suspends (true) or resumes the checks on this thread only; returns whether they were suspended.
bool suspend(bool on);
bool armed();

// RAII: disarms for the scope (the engine's own imports and sub-interpreter creation).
class Trusted {
 public:
  Trusted() : was_(suspend(true)) {}
  ~Trusted() { suspend(was_); }
  Trusted(const Trusted&) = delete;
  Trusted& operator=(const Trusted&) = delete;

 private:
  bool was_;
};

// Marks every function's code object (and the code nested in it) that exists in the current
// interpreter now. Call while nothing untrusted has run in it yet (before the audit hook arms, or
// right after a sub-interpreter's engine setup).
bool mark_loaded_code();
// Replaces get_code of the standard source and bytecode loaders: modules under the runtime's roots
// are read and compiled or unmarshalled by the engine itself and their code marked; anything else
// is compiled from source, unmarked, and bytecode-only files outside the roots are refused.
// FrozenImporter.exec_module is the engine's too: frozen code (from the interpreter binary) is marked.
bool install_loader_hook();
// True when `code` (a code object) carries the mark.
bool is_trusted(PyObject* code);

}  // namespace spr::embed::trust
