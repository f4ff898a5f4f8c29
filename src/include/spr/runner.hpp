// Public API of safe-py-runner: run untrusted Python snippets in supervised, hardened workers.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <future>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace spr {

using json = nlohmann::json;

// How a run is separated from the runs before and after it (see README, "Isolation modes").
enum class Isolation { namespace_, subinterpreter, fork, process };
// "restrict": everything except blocked_imports / blocked_builtins; "allow": only the allowed lists.
enum class Mode { restrict, allow };

std::string to_string(Isolation);
std::string to_string(Mode);

// Thrown for misuse: an invalid policy, a policy file that cannot be read or parsed.
class PolicyError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Thrown when no worker can be started at all (missing or broken worker binary).
class WorkerError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct RunnerPolicy {
  Mode mode = Mode::restrict;
  double timeout_seconds = 5.0;       // wall clock, fractions honoured
  std::int64_t memory_limit_mb = 256;  // what one run may allocate
  std::int64_t max_output_kb = 128;    // cap on stdout and on stderr, each, in bytes / 1024
  std::int64_t max_result_kb = 1024;   // cap on the JSON text of `result`
  double cpu_time_seconds = 0;         // CPU time cap; 0 = only the wall-clock timeout
  std::vector<std::string> blocked_imports{"os", "subprocess", "socket", "ctypes", "importlib"};
  std::vector<std::string> allowed_imports;
  std::vector<std::string> blocked_builtins{"eval", "exec", "open", "compile", "breakpoint"};
  std::vector<std::string> allowed_builtins;
  std::vector<std::string> blocked_globals;
  std::vector<std::string> allowed_globals;
  json extra_globals = json::object();
  Isolation isolation = Isolation::fork;
  bool allow_network = false;
  std::vector<std::string> allowed_read_paths;
  bool scratch_dir = false;  // a private writable directory per run, removed afterwards
  // namespace and subinterpreter workers serve many runs in one process, so they never mix trust
  // domains: runs with different keys never share a worker. Give each party (user, tenant) its own key.
  std::string trust_domain;

  // Throws PolicyError naming the first invalid field.
  void validate() const;

  // Policy files use the original's TOML format: a [policy] table or the same keys at top level.
  static RunnerPolicy from_file(const std::filesystem::path& path);
  static RunnerPolicy from_toml(std::string_view text);
  // Applies the fields present in `overrides` (a JSON object) on top of `base`.
  static RunnerPolicy from_json(const json& overrides);
  static RunnerPolicy from_json(const json& overrides, const RunnerPolicy& base);
  json to_json() const;

  // "" when this policy is at least as tight as `ceiling` in every field, else which field loosens it.
  // Tighter means: same mode; timeout, memory, output, result and CPU caps no larger (a CPU cap kept
  // when the ceiling has one); blocked lists supersets; allowed lists subsets; isolation as strong
  // or stronger (namespace < subinterpreter < fork < process); allow_network and scratch_dir only if
  // the ceiling enables them; allowed_read_paths under the ceiling's. extra_globals and trust_domain
  // are data, not privileges: free.
  std::string looser_than(const RunnerPolicy& ceiling) const;

  friend bool operator==(const RunnerPolicy& a, const RunnerPolicy& b);
  friend bool operator!=(const RunnerPolicy& a, const RunnerPolicy& b) { return !(a == b); }
};

// Stable codes for how a run ended; match on these, not on `error` text.
enum class ErrorKind {
  none,
  exception,
  syntax,
  timeout,
  memory,
  cpu_time,
  blocked_import,
  denied,  // a sandbox layer refused an operation (PermissionError from the audit hook or the OS)
  system_exit,
  result_too_large,
  worker_crashed,
  worker_unavailable,
  protocol_error,
  bad_input,
};
std::string to_string(ErrorKind);

struct RunResult {
  bool ok = false;
  json result;  // the `result` variable, as JSON (null when unset or on failure)
  std::string stdout_text;
  std::string stderr_text;
  bool timed_out = false;
  bool resource_exceeded = false;
  std::optional<std::string> error;  // one line; empty optional on success
  int exit_code = 0;                 // 0 ok, 1 error, 2 memory, 124 timeout, n for SystemExit(n)
  ErrorKind error_kind = ErrorKind::none;
  bool stdout_truncated = false;
  bool stderr_truncated = false;
  std::chrono::microseconds duration{0};  // as seen by the caller, queueing included
  Isolation isolation = Isolation::fork;

  // All fields; `stdout`/`stderr` keys as in the original, `duration_ms` as a number.
  json to_json() const;
};

struct RunnerOptions {
  std::size_t workers = 2;                     // warm workers per isolation mode in use
  RunnerPolicy policy;                         // defaults for every run
  std::filesystem::path worker_path;           // empty: $SPR_WORKER, then next to this program, then the install dir
  double kill_grace_seconds = 0.25;            // hard deadline = timeout + grace
  double start_timeout_seconds = 10;           // a worker that sends no hello by then is killed
  // Let workers write diagnostics to this process's stderr. Off by default: code that got past the
  // Python layer could write there too (it cannot reach anything else of yours).
  bool worker_stderr = false;
  // `policy` is a ceiling, not just a default: run()/submit() with a policy that loosens it in any
  // field (see RunnerPolicy::looser_than) throw PolicyError. Off by default in the library (the
  // default policy is the library's, not an operator's); `serve --policy` turns it on.
  bool policy_is_ceiling = false;
};

class Runner {
 public:
  explicit Runner(RunnerOptions options = {});
  ~Runner();  // stops the workers; runs in flight are answered worker_unavailable
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  // Thread-safe. Never throws for what the code does; throws PolicyError for an invalid policy.
  RunResult run(const std::string& code, const json& input_data = json::object());
  RunResult run(const std::string& code, const json& input_data, const RunnerPolicy& policy);
  std::future<RunResult> submit(std::string code, json input_data, RunnerPolicy policy);

  const RunnerOptions& options() const;
  // The worker's report of its hardening layers: [{"name","active","detail"}, ...] (waits for one worker).
  json hardening(Isolation isolation);
  // Python version the workers embed, from their hello frame.
  std::string python_version();
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Runs with a process-wide default Runner, started on first use.
RunResult run_code(const std::string& code, const json& input_data = json::object(),
                   const RunnerPolicy& policy = {});

const char* version();

}  // namespace spr
