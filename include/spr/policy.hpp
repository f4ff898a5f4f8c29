// Public API: the run policy (RunnerPolicy), its enums, and the error thrown for an invalid one.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace spr {

using json = nlohmann::json;

/// How a run is separated from the runs before and after it (see README, "Isolation modes").
enum class Isolation { namespace_, subinterpreter, fork, process };
/// "restrict": everything except blocked_imports / blocked_builtins; "allow": only the allowed lists.
enum class Mode { restrict, allow };

std::string to_string(Isolation);
std::string to_string(Mode);
/// "namespace", "subinterpreter", "fork", "process"; nullopt for anything else.
std::optional<Isolation> parse_isolation(std::string_view name);

/// Thrown for misuse: an invalid policy, a policy file that cannot be read or parsed.
class PolicyError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

/// What a run may do: the original package's fields and defaults, then this engine's. Every field is
/// optional; the defaults are the secure ones (README, "Policy").
struct RunnerPolicy {
  Mode mode = Mode::restrict;         ///< which of the import and builtin lists apply
  double timeout_seconds = 5.0;       ///< wall clock, fractions honoured
  std::int64_t memory_limit_mb = 256;  ///< what one run may allocate
  std::int64_t max_output_kb = 128;    ///< cap on stdout and on stderr, each, in bytes / 1024
  std::int64_t max_result_kb = 1024;   ///< cap on the JSON text of `result`
  std::int64_t max_stdin_kb = 1024;    ///< cap on the text a run reads as stdin, in bytes / 1024
  std::int64_t max_files_kb = 1024;    ///< cap on the files a run returns (RunOptions::collect), in all
  double cpu_time_seconds = 0;         ///< CPU time cap; 0 = only the wall-clock timeout
  std::int64_t max_host_calls = 10000;  ///< host function calls one run may make
  /// Cap on the JSON text of one host call's arguments and of one answer; unset: max_result_kb.
  std::optional<std::int64_t> max_host_call_kb;
  /// Modules (and their submodules) a run may not import in `restrict` mode.
  std::vector<std::string> blocked_imports{"os", "subprocess", "socket", "ctypes", "importlib"};
  std::vector<std::string> allowed_imports;  ///< the only modules a run may import in `allow` mode
  /// Builtins removed from a run's namespace in `restrict` mode.
  std::vector<std::string> blocked_builtins{"eval", "exec", "open", "compile", "breakpoint"};
  std::vector<std::string> allowed_builtins;  ///< the only builtins a run sees in `allow` mode
  std::vector<std::string> blocked_globals;   ///< names removed from the run's globals in `restrict` mode
  std::vector<std::string> allowed_globals;   ///< the only globals kept in `allow` mode
  json extra_globals = json::object();        ///< a JSON object whose keys become variables of the run
  Isolation isolation = Isolation::fork;      ///< how a run is separated from the others (README, "Isolation modes")
  bool allow_network = false;                 ///< network sockets, in the host's network namespace
  /// socket(AF_UNIX): lets a run connect to any unix socket whose path it can name, the host's daemons
  /// included (docker.sock), whatever allow_network says. socketpair() needs no permission.
  bool allow_unix_sockets = false;
  std::vector<std::string> allowed_read_paths;  ///< absolute paths a run may read besides its Python's
  bool scratch_dir = false;  ///< a private writable directory per run, removed afterwards
  /// Size of the worker's scratch file system (a tmpfs of its own, in RAM, counted against nothing else):
  /// what the runs of one worker may hold in files at once.
  std::int64_t scratch_limit_mb = 64;
  /// namespace and subinterpreter workers serve many runs in one process, so they never mix trust
  /// domains: runs with different keys never share a worker. Give each party (user, tenant) its own key.
  std::string trust_domain;
  /// The python3 (a venv's, or another installation's) whose packages runs see; empty: the python3
  /// whose libpython the worker embeds. Another Python version needs a worker built for it.
  std::string python_executable;

  /// Throws PolicyError naming the first invalid field.
  void validate() const;
  /// max_host_call_kb, or max_result_kb when it is unset.
  std::int64_t host_call_kb() const { return max_host_call_kb ? *max_host_call_kb : max_result_kb; }

  /// Policy files use the original's TOML format: a [policy] table or the same keys at top level.
  /// Throws PolicyError when the file cannot be read, parsed or holds an invalid value.
  static RunnerPolicy from_file(const std::filesystem::path& path);
  /// from_file() for TOML text already in memory.
  static RunnerPolicy from_toml(std::string_view text);
  /// Applies the fields present in `overrides` (a JSON object) on top of the defaults; throws PolicyError.
  static RunnerPolicy from_json(const json& overrides);
  /// Applies the fields present in `overrides` (a JSON object) on top of `base`; throws PolicyError.
  static RunnerPolicy from_json(const json& overrides, const RunnerPolicy& base);
  /// Every field, as from_json() reads them back.
  json to_json() const;

  /// "" when this policy is at least as tight as `ceiling` in every field, else which field loosens it.
  /// Tighter means: same mode; timeout, memory, output, result, stdin, files, host call and CPU caps no larger (a CPU
  /// cap kept when the ceiling has one); blocked lists supersets; allowed lists subsets; isolation as strong
  /// or stronger (namespace < subinterpreter < fork < process); scratch_limit_mb no larger; allow_network,
  /// allow_unix_sockets and scratch_dir only if
  /// the ceiling enables them; allowed_read_paths under the ceiling's; trust_domain unchanged when the
  /// ceiling sets one. extra_globals (and trust_domain when the ceiling has none) are free.
  std::string looser_than(const RunnerPolicy& ceiling) const;

  /// Field by field.
  friend bool operator==(const RunnerPolicy& a, const RunnerPolicy& b);
  /// Field by field.
  friend bool operator!=(const RunnerPolicy& a, const RunnerPolicy& b) { return !(a == b); }
};

}  // namespace spr
