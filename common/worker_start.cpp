// The worker's start plan on a command line and back (and as JSON for doctor).
#include "common/worker_start.hpp"

#include <stdexcept>

#include "common/outcome.hpp"  // format_seconds

namespace spr::detail {
namespace {

std::int64_t to_int(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  long long n = 0;
  try {
    n = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size()) throw std::invalid_argument("bad value for " + flag + ": " + v);
  return n;
}

double to_double(const std::string& flag, const std::string& v) {
  std::size_t used = 0;
  double d = 0;
  try {
    d = std::stod(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != v.size()) throw std::invalid_argument("bad value for " + flag + ": " + v);
  return d;
}

}  // namespace

std::vector<std::string> WorkerStart::to_argv() const {
  std::vector<std::string> a = {"--isolation", to_string(isolation)};
  if (once) a.push_back("--once");
  if (!harden) a.push_back("--no-harden");
  if (isolation == Isolation::subinterpreter) a.insert(a.end(), {"--subinterpreter-pool", std::to_string(subinterpreter_pool)});
  if (allow_network) a.push_back("--allow-network");
  if (memory_backstop_mb > 0) a.insert(a.end(), {"--memory-backstop-mb", std::to_string(memory_backstop_mb)});
  if (cpu_backstop_seconds > 0) a.insert(a.end(), {"--cpu-backstop-seconds", format_seconds(cpu_backstop_seconds)});
  if (!python.empty()) a.insert(a.end(), {"--python", python});
  for (const auto& p : sys_path) a.insert(a.end(), {"--sys-path", p});
  for (const auto& m : preload) a.insert(a.end(), {"--preload", m});
  for (const auto& p : read_paths) a.insert(a.end(), {"--read", p});
  if (!scratch.empty()) a.insert(a.end(), {"--scratch", scratch});
  a.insert(a.end(), {"--scratch-limit-mb", std::to_string(scratch_limit_mb)});
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
    if (k == "--isolation") {
      const std::string& v = value();
      const auto iso = parse_isolation(v);
      if (!iso) throw std::invalid_argument("unknown isolation " + v);
      s.isolation = *iso;
    } else if (k == "--once") {
      s.once = true;
    } else if (k == "--no-harden") {
      s.harden = false;
    } else if (k == "--subinterpreter-pool") {
      s.subinterpreter_pool = static_cast<std::size_t>(to_int(k, value()));
    } else if (k == "--allow-network") {
      s.allow_network = true;
    } else if (k == "--memory-backstop-mb") {
      s.memory_backstop_mb = to_int(k, value());
    } else if (k == "--cpu-backstop-seconds") {
      s.cpu_backstop_seconds = to_double(k, value());
    } else if (k == "--python") {
      s.python = value();
    } else if (k == "--sys-path") {
      s.sys_path.push_back(value());
    } else if (k == "--preload") {
      s.preload.push_back(value());
    } else if (k == "--read") {
      s.read_paths.push_back(value());
    } else if (k == "--scratch") {
      s.scratch = value();
    } else if (k == "--scratch-limit-mb") {
      s.scratch_limit_mb = to_int(k, value());
    } else if (k == "--session") {
      s.session_memory_mb = to_int(k, value());
    } else {
      throw std::invalid_argument("unknown argument " + k);
    }
  }
  return s;
}

json WorkerStart::to_json() const {
  return {{"isolation", to_string(isolation)},
          {"once", once},
          {"harden", harden},
          {"allow_network", allow_network},
          {"memory_backstop_mb", memory_backstop_mb},
          {"cpu_backstop_seconds", cpu_backstop_seconds},
          {"python", python},
          {"sys_path", sys_path},
          {"preload", preload},
          {"read_paths", read_paths},
          {"scratch", scratch},
          {"scratch_limit_mb", scratch_limit_mb},
          {"session_memory_mb", session_memory_mb}};
}

}  // namespace spr::detail
