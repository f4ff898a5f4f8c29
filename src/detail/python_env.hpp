// Which CPython build a python_executable names, and the sys.path it gives, found without running it.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace spr::detail {

struct PythonEnv {
  std::string executable;         // as given (the run's sys.executable)
  std::string version;            // "3.11.7"
  std::string build;              // its sys.version: the worker's hello must report the same
  std::string worker;             // the worker file that embeds its libpython ("spr-worker" for the default)
  std::string prefix;             // a venv's directory (the run's sys.prefix); "" for a Python itself
  std::vector<std::string> path;  // sys.path: PYTHONPATH, stdlib, site directories and their .pth path lines
  std::string error;              // why it cannot be served; the rest is then empty
};

// The python3 the default worker embeds (fixed at build time).
std::string default_python();

// Resolves `executable` ("" = the default) against the CPython builds this library was built with
// (cmake/pythons.cmake): a python3 of one of them, or a venv made from one (its pyvenv.cfg names the
// build's directory and version). Nothing is executed: a request may name any file. A .pth file's
// `import` lines are not run (its path lines are honoured).
PythonEnv resolve_python(const std::string& executable);

// "3.11.2 /usr/bin/python3.11", one per build this library can serve (doctor, error messages).
// `default_worker` (the default build's worker, when known): a build whose worker is not an executable file
// beside it is marked " (its worker is not built)" (`make run` builds the default one only).
std::vector<std::string> served_pythons(const std::filesystem::path& default_worker = {});

}  // namespace spr::detail
