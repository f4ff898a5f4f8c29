// Public API: the Runner (a pool of supervised, hardened workers) and the one-call run_code.
#pragma once

#include <cstddef>
#include <filesystem>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "spr/host.hpp"
#include "spr/policy.hpp"
#include "spr/result.hpp"
#include "spr/run_control.hpp"
#include "spr/session.hpp"
#include "spr/version.hpp"

namespace spr {

namespace detail {
struct RunnerAccess;
}

/// Thrown when no worker can be started at all (missing or broken worker binary).
class WorkerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Thrown by open_session when the runner already holds max_sessions open sessions.
class SessionLimitError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// How a Runner is built: its pool, its default (or ceiling) policy, its sessions.
struct RunnerOptions {
  std::size_t workers = 2;                     ///< warm workers per isolation mode in use (one starts with the
                                               ///< Runner; the rest after the first run gave its worker back)
  RunnerPolicy policy;                         ///< defaults for every run
  std::filesystem::path worker_path;           ///< empty: $SPR_WORKER, then next to this program, then the install dir
  double kill_grace_seconds = 0.25;            ///< hard deadline = timeout + grace
  double start_timeout_seconds = 10;           ///< a worker that sends no hello by then is killed; a run
                                               ///< waiting on starts alone gives up after twice this
  std::size_t subinterpreter_pool = 2;         ///< subinterpreter mode: interpreters each worker keeps ready
  /// subinterpreter mode on CPython 3.12+: runs each worker runs at once, on threads of its own in own-GIL
  /// interpreters (1 to 16). Each thread is a slot of `workers`: workers = 2 with 2 threads is one process.
  /// A worker that embeds 3.10/3.11 refuses to start with more than 1 (its runs answer worker_unavailable).
  std::size_t subinterpreter_threads = 1;
  /// Let workers write diagnostics to this process's stderr. Off by default: code that got past the
  /// Python layer could write there too (it cannot reach anything else of yours).
  bool worker_stderr = false;
  /// `policy` is a ceiling, not just a default: run()/submit() with a policy that loosens it in any
  /// field (see RunnerPolicy::looser_than) throw PolicyError. Off by default in the library (the
  /// default policy is the library's, not an operator's); `serve --policy` turns it on.
  bool policy_is_ceiling = false;
  /// Modules imported in each warm worker before its sandbox closes (fork and namespace mode), so runs
  /// find them cached: {"numpy", "pandas"}. A run's own imports still follow its import policy.
  std::vector<std::string> preload;
  /// Host functions every run and session call may call (spr/host.hpp: the threading contract).
  HostFunctions functions;
  /// Where workers keep, between starts, the list of shared libraries the Python environment's extension
  /// modules load (read from hundreds of files at each start otherwise; reused while none of them changed):
  /// a directory only this user may write, made if missing. Empty: $SAFE_PY_RUNNER_CACHE_DIR, then
  /// $XDG_CACHE_HOME/safe-py-runner, then $HOME/.cache/safe-py-runner. None when `worker_cache` is false or
  /// SAFE_PY_RUNNER_CACHE_DIR is set but empty.
  std::filesystem::path cache_dir;
  bool worker_cache = true;  ///< false: no cache directory at all; each worker scans at its start
  std::size_t max_sessions = 8;          ///< open sessions at once (each is a process of its own)
  double session_idle_seconds = 600;     ///< a session unused this long is closed
};

/// A pool of warm, supervised, hardened workers. Thread-safe.
class Runner {
 public:
  /// Starts its first worker in the background (the rest follow the first run); throws WorkerError if
  /// spr-worker cannot be found (a worker that fails to start is reported by the runs that wait for it).
  explicit Runner(RunnerOptions options = {});
  ~Runner();  ///< stops the workers; runs in flight are answered worker_unavailable
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  /// Thread-safe. Never throws for what the code does; throws PolicyError for an invalid policy.
  RunResult run(const std::string& code, const json& input_data = json::object());
  /// run() under `policy` instead of the runner's.
  RunResult run(const std::string& code, const json& input_data, const RunnerPolicy& policy);
  /// `stdin_text` feeds sys.stdin and input(); it may be as long as the policy's max_stdin_kb.
  RunResult run(const std::string& code, const json& input_data, const RunnerPolicy& policy,
                const std::string& stdin_text);
  /// Streams output to options.on_output and stops when options.cancel is cancelled.
  RunResult run(const std::string& code, const json& input_data, const RunnerPolicy& policy, const RunOptions& options);
  /// Queues the run; the handle is a std::future<RunResult> that can also cancel() it.
  RunHandle submit(std::string code, json input_data, RunnerPolicy policy);
  /// submit() with options (stdin, output callback, cancel token, host functions).
  RunHandle submit(std::string code, json input_data, RunnerPolicy policy, RunOptions options);

  /// A session in a dedicated worker process (see spr/session.hpp). Throws PolicyError for an invalid
  /// policy, SessionLimitError past max_sessions, WorkerError when its process cannot start.
  Session open_session();
  /// open_session() under `policy` instead of the runner's.
  Session open_session(const RunnerPolicy& policy);

  /// The options the runner was built with.
  const RunnerOptions& options() const;
  /// The worker's report of its hardening layers: [{"name","active","detail"}, ...] (waits for one worker).
  json hardening(Isolation isolation);
  /// Python version the workers embed, from their hello frame.
  std::string python_version();
  /// Stops the workers and closes the sessions; runs in flight answer worker_unavailable. Idempotent.
  void shutdown();

 private:
  friend struct detail::RunnerAccess;  ///< the library's own CLI (src/detail/runner_access.hpp)
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// Runs with a process-wide default Runner, started on first use.
RunResult run_code(const std::string& code, const json& input_data = json::object(),
                   const RunnerPolicy& policy = {});

}  // namespace spr
