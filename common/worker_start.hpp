// The worker's start as one typed plan: what it maps, mounts, limits and allows, built by the supervisor from
// the policy and carried once on the worker's command line (one to_argv/from_argv pair).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common/sandbox_id.hpp"
#include "spr/policy.hpp"

namespace spr::detail {

struct WorkerStart {
  Isolation isolation = Isolation::fork;
  bool once = false;                    // process mode: one request, then exit
  std::size_t subinterpreter_pool = 2;  // subinterpreter mode: ready interpreters per worker (per run thread)
  // subinterpreter mode on CPython 3.12+: runs at once, each on a thread of its own in own-GIL interpreters,
  // each thread with its own socket and capture buffer (kRunThreadFirstFd + 2k, + 1). 1: the main thread only.
  std::size_t subinterpreter_threads = 1;
  bool harden = true;                   // false: no OS layer at all (by hand, and spr-bench's layer comparison)
  bool allow_network = false;           // the host's network namespace, TCP/UDP sockets allowed
  bool allow_unix_sockets = false;      // socket(AF_UNIX) allowed (socketpair always is)
  // OS backstops set before seccomp forbids changing them (0 = none): RLIMIT_AS of the worker's size at start
  // plus twice this much (and slack), and RLIMIT_CPU of its CPU time at start plus this many seconds.
  std::int64_t memory_backstop_mb = 0;
  double cpu_backstop_seconds = 0;
  std::string python;                   // the python3 whose sys.path the worker takes ("" = its own)
  std::string prefix;                   // that python3's venv directory (its sys.prefix); "" = not a venv
  std::vector<std::string> sys_path;    // that python3's sys.path: bound read-only into the root, importable
  std::vector<std::string> preload;     // modules imported before the sandbox closes
  std::vector<std::string> read_paths;  // allowed_read_paths: bound read-only (no link followed), readable
  std::string scratch;                  // the scratch directory: a tmpfs at this path inside the own root
  std::int64_t scratch_limit_mb = 64;   // its size
  // Where the worker keeps its library scan between starts (a directory only the supervisor's user writes, made
  // if missing; embed/engine/libdeps_cache.cpp). "" = scan at every start.
  std::string cache_dir;
  // A session worker: one namespace kept across requests; RLIMIT_AS at start is what the warm interpreter holds
  // plus session_memory_mb (and slack). -1: not a session.
  std::int64_t session_memory_mb = -1;

  // Run thread k > 0's socket and capture memfd (thread 0 uses kProtocolFd and kCaptureFd).
  static constexpr int kRunThreadFirstFd = 5;
  static constexpr std::size_t kMaxRunThreads = 16;
  int run_thread_socket(std::size_t k) const { return k == 0 ? 3 : kRunThreadFirstFd + 2 * static_cast<int>(k - 1); }
  int run_thread_capture(std::size_t k) const { return k == 0 ? 4 : kRunThreadFirstFd + 2 * static_cast<int>(k - 1) + 1; }
  // RLIMIT_NPROC of a worker that does not fork (threads count too, so not 1).
  static constexpr std::uint64_t kMaxTasks = 64;
  // The fork-mode worker forks one child per run (which stacks its own filter); no other worker may.
  bool allow_fork() const { return isolation == Isolation::fork; }
  // A long-lived interpreter must not get threads: they would keep running into later runs.
  bool allow_threads() const { return isolation == Isolation::fork || isolation == Isolation::process; }

  std::vector<std::string> to_argv() const;
  // Throws std::invalid_argument naming the argument it cannot read (unknown, missing or malformed value).
  static WorkerStart from_argv(const std::vector<std::string>& args);
  // For doctor --json: the fields, and what they mean for the worker's mounts, identity, seccomp and limits.
  json to_json() const;
  // Every field, for comparison: a field added above and not here would make two different plans equal.
  auto fields() const {
    return std::tie(isolation, once, subinterpreter_pool, subinterpreter_threads, harden, allow_network, allow_unix_sockets,
                    memory_backstop_mb, cpu_backstop_seconds, python, prefix, sys_path, preload, read_paths, scratch,
                    scratch_limit_mb, cache_dir, session_memory_mb);
  }
  friend bool operator==(const WorkerStart& a, const WorkerStart& b) { return a.fields() == b.fields(); }
  friend bool operator!=(const WorkerStart& a, const WorkerStart& b) { return !(a == b); }
};

}  // namespace spr::detail
