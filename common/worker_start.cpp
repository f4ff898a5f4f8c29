// The worker's start plan on a command line and back (and as JSON for doctor).
#include "common/worker_start.hpp"

#include <unistd.h>

#include <cmath>
#include <stdexcept>

#include "common/outcome.hpp"  // format_seconds

namespace spr::detail {
namespace {

std::int64_t to_int(const std::string& flag, const std::string& v, std::int64_t min) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size() || n < min) throw std::invalid_argument("bad value for " + flag + ": " + v);
  return n;
}

double to_seconds(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  double d = 0;
  try {
    d = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size() || !std::isfinite(d) || d < 0)
    throw std::invalid_argument("bad value for " + flag + ": " + v);
  return d;
}

// Boolean switches, present or absent: one table for both directions.
struct Switch {
  const char* flag;
  bool WorkerStart::*field;
  bool when_present;
};
constexpr Switch kSwitches[] = {
    {"--once", &WorkerStart::once, true},
    {"--no-harden", &WorkerStart::harden, false},
    {"--allow-network", &WorkerStart::allow_network, true},
    {"--allow-unix-sockets", &WorkerStart::allow_unix_sockets, true},
};

// Repeated path or name lists.
struct List {
  const char* flag;
  std::vector<std::string> WorkerStart::*field;
};
constexpr List kLists[] = {
    {"--sys-path", &WorkerStart::sys_path},
    {"--preload", &WorkerStart::preload},
    {"--read", &WorkerStart::read_paths},
};

}  // namespace

std::vector<std::string> WorkerStart::to_argv() const {
  std::vector<std::string> a = {"--isolation", to_string(isolation)};
  for (const auto& s : kSwitches)
    if (this->*s.field == s.when_present) a.push_back(s.flag);
  if (isolation == Isolation::subinterpreter)
    a.insert(a.end(), {"--subinterpreter-pool", std::to_string(subinterpreter_pool)});
  if (isolation == Isolation::subinterpreter && subinterpreter_threads > 1)
    a.insert(a.end(), {"--subinterpreter-threads", std::to_string(subinterpreter_threads)});
  if (memory_backstop_mb > 0) a.insert(a.end(), {"--memory-backstop-mb", std::to_string(memory_backstop_mb)});
  if (cpu_backstop_seconds > 0) a.insert(a.end(), {"--cpu-backstop-seconds", format_seconds(cpu_backstop_seconds)});
  if (!python.empty()) a.insert(a.end(), {"--python", python});
  if (!prefix.empty()) a.insert(a.end(), {"--prefix", prefix});
  for (const auto& l : kLists)
    for (const auto& v : this->*l.field) a.insert(a.end(), {l.flag, v});
  if (!scratch.empty()) a.insert(a.end(), {"--scratch", scratch});
  a.insert(a.end(), {"--scratch-limit-mb", std::to_string(scratch_limit_mb)});
  if (!cache_dir.empty()) a.insert(a.end(), {"--cache-dir", cache_dir});
  if (session_memory_mb >= 0) a.insert(a.end(), {"--session", std::to_string(session_memory_mb)});
  return a;
}

WorkerStart WorkerStart::from_argv(const std::vector<std::string>& args) {
  WorkerStart s;
  for (std::size_t i = 0; i < args.size(); ++i) {
    const std::string& k = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw std::invalid_argument("missing value for " + k);
      return args[++i];
    };
    bool known = false;
    for (const auto& sw : kSwitches)
      if (k == sw.flag) {
        s.*sw.field = sw.when_present;
        known = true;
      }
    for (const auto& l : kLists)
      if (k == l.flag) {
        (s.*l.field).push_back(value());
        known = true;
      }
    if (known) continue;
    if (k == "--isolation") {
      const std::string& v = value();
      const auto iso = parse_isolation(v);
      if (!iso) throw std::invalid_argument("unknown isolation " + v);
      s.isolation = *iso;
    } else if (k == "--subinterpreter-pool") {
      s.subinterpreter_pool = static_cast<std::size_t>(to_int(k, value(), 1));
    } else if (k == "--subinterpreter-threads") {
      s.subinterpreter_threads = static_cast<std::size_t>(to_int(k, value(), 1));
      if (s.subinterpreter_threads > kMaxRunThreads)
        throw std::invalid_argument("--subinterpreter-threads is at most " + std::to_string(kMaxRunThreads));
    } else if (k == "--memory-backstop-mb") {
      s.memory_backstop_mb = to_int(k, value(), 0);
    } else if (k == "--cpu-backstop-seconds") {
      s.cpu_backstop_seconds = to_seconds(k, value());
    } else if (k == "--python") {
      s.python = value();
    } else if (k == "--prefix") {
      s.prefix = value();
    } else if (k == "--scratch") {
      s.scratch = value();
    } else if (k == "--cache-dir") {
      s.cache_dir = value();
    } else if (k == "--scratch-limit-mb") {
      s.scratch_limit_mb = to_int(k, value(), 1);
    } else if (k == "--session") {
      s.session_memory_mb = to_int(k, value(), 0);
    } else {
      throw std::invalid_argument("unknown argument " + k);
    }
  }
  return s;
}

json WorkerStart::to_json() const {
  json mounts = json::array();
  auto bind = [&](const std::string& path, const char* what) {
    mounts.push_back({{"path", path}, {"how", "bind, read-only"}, {"what", what}});
  };
  // An entry of sys.path that does not exist (python3XY.zip) is importable from nowhere and not bound.
  for (const auto& p : sys_path) bind(p, "sys.path, where it exists");
  for (const auto& p : read_paths) bind(p, "allowed_read_paths");
  for (const char* d : {"/dev/null", "/dev/urandom", "/dev/zero"}) bind(d, "device");
  mounts.push_back({{"path", scratch.empty() ? std::string("(a new directory per worker)") : scratch},
                    {"how", "tmpfs, read-write"},
                    {"size_mb", scratch_limit_mb},
                    {"what", "scratch"}});
  // No /proc: through another process's /proc/<pid>/fd a run could reopen that process's pipes.
  const uid_t euid = ::geteuid();
  return {{"isolation", to_string(isolation)},
          {"once", once},
          {"harden", harden},
          {"subinterpreter_pool", subinterpreter_pool},
          {"subinterpreter_threads", subinterpreter_threads},
          {"python", python},
          {"prefix", prefix},
          {"preload", preload},
          {"session_memory_mb", session_memory_mb},
          {"cache_dir", cache_dir},
          {"mounts", mounts},
          // The runtime's own directories and the shared libraries its extensions load are found by the worker
          // from the interpreter it embeds, and bound read-only beside these.
          {"mounts_also", "the embedded runtime's directories and the shared libraries extensions need"},
          {"identity",
           {{"inside_uid", 0}, {"outside_uid", root_with_sandbox_id() ? kSandboxId : static_cast<std::uint32_t>(euid)}}},
          {"pid_namespace", harden},
          {"network_namespace", harden && !allow_network},
          {"seccomp",
           {{"default", "EPERM"},
            {"fork", allow_fork()},
            {"threads", allow_threads()},
            {"network", allow_network},
            {"unix_sockets", allow_unix_sockets}}},
          {"rlimits",
           {{"processes", allow_fork() ? json("1 per run's child") : json(kMaxTasks)},
            {"memory_backstop_mb", memory_backstop_mb},
            {"cpu_backstop_seconds", cpu_backstop_seconds}}},
          {"argv", to_argv()}};
}

}  // namespace spr::detail
