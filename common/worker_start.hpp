// The worker's start as one typed plan: what it maps, mounts, limits and allows, built by the supervisor and
// carried once on the worker's command line (one to_argv/from_argv pair), applied by the worker in one pass.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "spr/policy.hpp"

namespace spr::detail {

struct WorkerStart {
  Isolation isolation = Isolation::fork;
  bool once = false;                    // process mode: one request, then exit
  std::size_t subinterpreter_pool = 2;  // subinterpreter mode: ready interpreters per worker
  bool harden = true;                   // false only for diagnostics: no sandbox at all
  bool allow_network = false;           // the host's network namespace, sockets allowed
  // OS backstops set before seccomp forbids changing them (0 = none): RLIMIT_AS of the worker's size at start
  // plus this much, and RLIMIT_CPU of its CPU time at start plus this many seconds.
  std::int64_t memory_backstop_mb = 0;
  double cpu_backstop_seconds = 0;
  std::string python;                   // the python3 whose sys.path the worker takes ("" = its own)
  std::vector<std::string> sys_path;    // that python3's sys.path: bound read-only into the root, importable
  std::vector<std::string> preload;     // modules imported before the sandbox closes
  std::vector<std::string> read_paths;  // allowed_read_paths: bound read-only (no link followed), readable
  std::string scratch;                  // the scratch directory: a tmpfs at this path inside the own root
  std::int64_t scratch_limit_mb = 64;   // its size
  // A session worker: one namespace kept across requests; RLIMIT_AS at start is what the warm interpreter holds
  // plus session_memory_mb (and slack). -1: not a session.
  std::int64_t session_memory_mb = -1;

  std::vector<std::string> to_argv() const;
  // Throws std::invalid_argument naming the argument it cannot read.
  static WorkerStart from_argv(const std::vector<std::string>& args);
  json to_json() const;  // for doctor --json
  friend bool operator==(const WorkerStart&, const WorkerStart&) = default;
};

}  // namespace spr::detail
