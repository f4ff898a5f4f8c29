// What a python3 sees: its version and sys.path, asked once per executable and cached.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace spr::detail {

struct PythonEnv {
  std::string executable;
  std::string version;            // "3.11"; empty when the probe failed
  std::vector<std::string> path;  // its sys.path: stdlib, site-packages, .pth entries
  std::string error;              // why the probe failed
};

// The python3 whose libpython spr-worker embeds (fixed at build time).
std::string default_python();
// The Python version spr-worker embeds ("3.11").
std::string worker_python_version();

// Runs `executable` once (thread-safe, cached for the life of the process) and reports its sys.path.
const PythonEnv& probe_python(const std::string& executable);

// The worker binary for `env`: `worker` itself when the versions match, else a spr-worker-pythonX.Y
// built next to it. Empty, with `error` set, when there is none.
std::filesystem::path worker_for(const std::filesystem::path& worker, const PythonEnv& env, std::string& error);

}  // namespace spr::detail
