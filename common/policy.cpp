// RunnerPolicy: validation and its JSON form, with the original's error messages (TOML files: src/policy_file.cpp).
#include <algorithm>
#include <sstream>
#include <cmath>
#include <filesystem>
#include <functional>

#include "common/frame.hpp"
#include "common/protocol.hpp"
#include "spr/policy.hpp"

namespace spr {

std::string to_string(Isolation i) {
  switch (i) {
    case Isolation::namespace_: return "namespace";
    case Isolation::subinterpreter: return "subinterpreter";
    case Isolation::fork: return "fork";
    case Isolation::process: return "process";
  }
  return "?";
}

std::string to_string(Mode m) { return m == Mode::allow ? "allow" : "restrict"; }

std::optional<Isolation> parse_isolation(std::string_view name) {
  for (auto i : {Isolation::namespace_, Isolation::subinterpreter, Isolation::fork, Isolation::process})
    if (name == to_string(i)) return i;
  return std::nullopt;
}

namespace {

[[noreturn]] void fail(const std::string& msg) { throw PolicyError(msg); }

std::string quoted(const std::string& field) { return "'" + field + "'"; }
std::string detail_number(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

double number(const json& v, const std::string& field) {
  if (!v.is_number() || v.is_boolean()) fail(quoted(field) + " must be a number");
  return v.get<double>();
}

std::int64_t integer(const json& v, const std::string& field) {
  if (v.is_number_integer()) return v.get<std::int64_t>();
  if (v.is_number_float() && std::isfinite(v.get<double>()) && std::floor(v.get<double>()) == v.get<double>() &&
      std::fabs(v.get<double>()) < 9e15)
    return static_cast<std::int64_t>(v.get<double>());
  fail(quoted(field) + " must be an integer");
}

bool boolean(const json& v, const std::string& field) {
  if (!v.is_boolean()) fail(quoted(field) + " must be true or false");
  return v.get<bool>();
}

std::vector<std::string> strings(const json& v, const std::string& field) {
  if (!v.is_array()) fail(quoted(field) + " must be a list of strings");
  std::vector<std::string> out;
  for (const auto& e : v) {
    if (!e.is_string()) fail(quoted(field) + " must contain only strings");
    out.push_back(e.get<std::string>());
  }
  return out;
}

Isolation isolation_field(const json& v) {
  if (v.is_string())
    if (auto i = parse_isolation(v.get<std::string>())) return *i;
  fail("isolation must be one of 'namespace', 'subinterpreter', 'fork', 'process'");
}

struct Field {
  const char* name;
  std::function<void(RunnerPolicy&, const json&)> set;
  std::function<json(const RunnerPolicy&)> get;
};

// One row per policy field: how it is read from JSON/TOML and written back.
const std::vector<Field>& fields() {
  static const std::vector<Field> table = {
      {"mode",
       [](RunnerPolicy& p, const json& v) {
         if (v == "restrict") p.mode = Mode::restrict;
         else if (v == "allow") p.mode = Mode::allow;
         else fail("mode must be 'allow' or 'restrict'");
       },
       [](const RunnerPolicy& p) { return json(to_string(p.mode)); }},
      {"timeout_seconds", [](RunnerPolicy& p, const json& v) { p.timeout_seconds = number(v, "timeout_seconds"); },
       [](const RunnerPolicy& p) { return json(p.timeout_seconds); }},
      {"memory_limit_mb", [](RunnerPolicy& p, const json& v) { p.memory_limit_mb = integer(v, "memory_limit_mb"); },
       [](const RunnerPolicy& p) { return json(p.memory_limit_mb); }},
      {"max_output_kb", [](RunnerPolicy& p, const json& v) { p.max_output_kb = integer(v, "max_output_kb"); },
       [](const RunnerPolicy& p) { return json(p.max_output_kb); }},
      {"max_result_kb", [](RunnerPolicy& p, const json& v) { p.max_result_kb = integer(v, "max_result_kb"); },
       [](const RunnerPolicy& p) { return json(p.max_result_kb); }},
      {"max_stdin_kb", [](RunnerPolicy& p, const json& v) { p.max_stdin_kb = integer(v, "max_stdin_kb"); },
       [](const RunnerPolicy& p) { return json(p.max_stdin_kb); }},
      {"max_files_kb", [](RunnerPolicy& p, const json& v) { p.max_files_kb = integer(v, "max_files_kb"); },
       [](const RunnerPolicy& p) { return json(p.max_files_kb); }},
      {"max_host_calls", [](RunnerPolicy& p, const json& v) { p.max_host_calls = integer(v, "max_host_calls"); },
       [](const RunnerPolicy& p) { return json(p.max_host_calls); }},
      {"max_host_call_kb",
       [](RunnerPolicy& p, const json& v) {
         if (v.is_null()) p.max_host_call_kb.reset();
         else p.max_host_call_kb = integer(v, "max_host_call_kb");
       },
       [](const RunnerPolicy& p) { return p.max_host_call_kb ? json(*p.max_host_call_kb) : json(); }},
      {"cpu_time_seconds", [](RunnerPolicy& p, const json& v) { p.cpu_time_seconds = number(v, "cpu_time_seconds"); },
       [](const RunnerPolicy& p) { return json(p.cpu_time_seconds); }},
      {"blocked_imports", [](RunnerPolicy& p, const json& v) { p.blocked_imports = strings(v, "blocked_imports"); },
       [](const RunnerPolicy& p) { return json(p.blocked_imports); }},
      {"allowed_imports", [](RunnerPolicy& p, const json& v) { p.allowed_imports = strings(v, "allowed_imports"); },
       [](const RunnerPolicy& p) { return json(p.allowed_imports); }},
      {"blocked_builtins", [](RunnerPolicy& p, const json& v) { p.blocked_builtins = strings(v, "blocked_builtins"); },
       [](const RunnerPolicy& p) { return json(p.blocked_builtins); }},
      {"allowed_builtins", [](RunnerPolicy& p, const json& v) { p.allowed_builtins = strings(v, "allowed_builtins"); },
       [](const RunnerPolicy& p) { return json(p.allowed_builtins); }},
      {"blocked_globals", [](RunnerPolicy& p, const json& v) { p.blocked_globals = strings(v, "blocked_globals"); },
       [](const RunnerPolicy& p) { return json(p.blocked_globals); }},
      {"allowed_globals", [](RunnerPolicy& p, const json& v) { p.allowed_globals = strings(v, "allowed_globals"); },
       [](const RunnerPolicy& p) { return json(p.allowed_globals); }},
      {"extra_globals",
       [](RunnerPolicy& p, const json& v) {
         if (!v.is_object()) fail("'extra_globals' must be an object");
         p.extra_globals = v;
       },
       [](const RunnerPolicy& p) { return p.extra_globals; }},
      {"isolation", [](RunnerPolicy& p, const json& v) { p.isolation = isolation_field(v); },
       [](const RunnerPolicy& p) { return json(to_string(p.isolation)); }},
      {"allow_network", [](RunnerPolicy& p, const json& v) { p.allow_network = boolean(v, "allow_network"); },
       [](const RunnerPolicy& p) { return json(p.allow_network); }},
      {"allow_unix_sockets",
       [](RunnerPolicy& p, const json& v) { p.allow_unix_sockets = boolean(v, "allow_unix_sockets"); },
       [](const RunnerPolicy& p) { return json(p.allow_unix_sockets); }},
      {"allowed_read_paths",
       [](RunnerPolicy& p, const json& v) { p.allowed_read_paths = strings(v, "allowed_read_paths"); },
       [](const RunnerPolicy& p) { return json(p.allowed_read_paths); }},
      {"scratch_dir", [](RunnerPolicy& p, const json& v) { p.scratch_dir = boolean(v, "scratch_dir"); },
       [](const RunnerPolicy& p) { return json(p.scratch_dir); }},
      {"scratch_limit_mb", [](RunnerPolicy& p, const json& v) { p.scratch_limit_mb = integer(v, "scratch_limit_mb"); },
       [](const RunnerPolicy& p) { return json(p.scratch_limit_mb); }},
      {"trust_domain",
       [](RunnerPolicy& p, const json& v) {
         if (!v.is_string()) fail("'trust_domain' must be a string");
         p.trust_domain = v.get<std::string>();
       },
       [](const RunnerPolicy& p) { return json(p.trust_domain); }},
      {"python_executable",
       [](RunnerPolicy& p, const json& v) {
         if (!v.is_string()) fail("'python_executable' must be a string");
         p.python_executable = v.get<std::string>();
       },
       [](const RunnerPolicy& p) { return json(p.python_executable); }},
  };
  return table;
}

}  // namespace

void RunnerPolicy::validate() const {
  // 0 is accepted as in the original, which never waits less than a second (Runner runs it with 1).
  if (!std::isfinite(timeout_seconds) || timeout_seconds < 0)
    fail("'timeout_seconds' must be zero or a positive number");
  if (timeout_seconds > 86400.0 * 365) fail("'timeout_seconds' is too large");
  if (memory_limit_mb <= 0) fail("'memory_limit_mb' must be a positive integer");
  if (memory_limit_mb > (std::int64_t{1} << 40)) fail("'memory_limit_mb' is too large");
  if (max_output_kb < 0 || max_output_kb > (1 << 20)) fail("'max_output_kb' must be between 0 and 1048576");
  if (max_result_kb < 0 || max_result_kb > (1 << 20)) fail("'max_result_kb' must be between 0 and 1048576");
  if (max_stdin_kb < 0 || max_stdin_kb > (1 << 20)) fail("'max_stdin_kb' must be between 0 and 1048576");
  if (max_files_kb < 0 || max_files_kb > (1 << 20)) fail("'max_files_kb' must be between 0 and 1048576");
  if (max_host_calls < 0 || max_host_calls > 100000000) fail("'max_host_calls' must be between 0 and 100000000");
  if (max_host_call_kb && (*max_host_call_kb < 0 || *max_host_call_kb > (1 << 20)))
    fail("'max_host_call_kb' must be between 0 and 1048576");
  if (!std::isfinite(cpu_time_seconds) || cpu_time_seconds < 0)
    fail("'cpu_time_seconds' must be zero or a positive number");
  if (scratch_limit_mb < 1 || scratch_limit_mb > (1 << 20)) fail("'scratch_limit_mb' must be between 1 and 1048576");
  if (!extra_globals.is_object()) fail("'extra_globals' must be an object");
  if (detail::json_depth(extra_globals) > detail::kMaxJsonDepth) fail("'extra_globals' is nested too deeply");
  for (const auto& p : allowed_read_paths) {
    if (p.empty() || p[0] != '/') fail("'allowed_read_paths' must hold absolute paths");
    // Compared as text against a ceiling: "." and ".." (or "//") would name another place than they seem to.
    if (p.find("//") != std::string::npos || p.find("/./") != std::string::npos || p.find("/../") != std::string::npos ||
        (p.size() >= 2 && p.compare(p.size() - 2, 2, "/.") == 0) || (p.size() >= 3 && p.compare(p.size() - 3, 3, "/..") == 0))
      fail("'allowed_read_paths' must hold normalised paths (no '.', '..' or '//'): '" + p + "'");
  }
  if (trust_domain.size() > 256) fail("'trust_domain' is longer than 256 bytes");
  if (!python_executable.empty() && python_executable[0] != '/')
    fail("'python_executable' must be an absolute path (or empty for the default python3)");
}

namespace {
RunnerPolicy apply_fields(const json& overrides, RunnerPolicy p) {
  if (!overrides.is_object()) fail("a policy must be a JSON object");
  for (auto it = overrides.begin(); it != overrides.end(); ++it) {
    const Field* f = nullptr;
    for (const auto& row : fields())
      if (it.key() == row.name) f = &row;
    if (!f) fail("unknown policy field '" + it.key() + "'");
    f->set(p, it.value());
  }
  return p;
}
}  // namespace

RunnerPolicy RunnerPolicy::from_json(const json& overrides, const RunnerPolicy& base) {
  RunnerPolicy p = apply_fields(overrides, base);
  p.validate();
  return p;
}

RunnerPolicy protocol::policy_from_wire(const json& j) { return apply_fields(j, RunnerPolicy{}); }

RunnerPolicy RunnerPolicy::from_json(const json& overrides) { return from_json(overrides, RunnerPolicy{}); }

// Every field, in declaration order (keep in step with the struct and the table above).
bool operator==(const RunnerPolicy& a, const RunnerPolicy& b) {
  return a.mode == b.mode && a.timeout_seconds == b.timeout_seconds && a.memory_limit_mb == b.memory_limit_mb &&
         a.max_output_kb == b.max_output_kb && a.max_result_kb == b.max_result_kb &&
         a.max_stdin_kb == b.max_stdin_kb && a.max_files_kb == b.max_files_kb &&
         a.max_host_calls == b.max_host_calls && a.max_host_call_kb == b.max_host_call_kb &&
         a.cpu_time_seconds == b.cpu_time_seconds && a.blocked_imports == b.blocked_imports &&
         a.allowed_imports == b.allowed_imports && a.blocked_builtins == b.blocked_builtins &&
         a.allowed_builtins == b.allowed_builtins && a.blocked_globals == b.blocked_globals &&
         a.allowed_globals == b.allowed_globals && a.extra_globals == b.extra_globals && a.isolation == b.isolation &&
         a.allow_network == b.allow_network && a.allow_unix_sockets == b.allow_unix_sockets &&
         a.allowed_read_paths == b.allowed_read_paths && a.scratch_dir == b.scratch_dir &&
         a.scratch_limit_mb == b.scratch_limit_mb && a.trust_domain == b.trust_domain &&
         a.python_executable == b.python_executable;
}

namespace {
bool subset(const std::vector<std::string>& a, const std::vector<std::string>& b) {
  return std::all_of(a.begin(), a.end(), [&](const std::string& x) { return std::find(b.begin(), b.end(), x) != b.end(); });
}
// How strongly a mode separates runs: a run may move to a stronger one, never a weaker one.
int separation(Isolation i) {
  switch (i) {
    case Isolation::namespace_: return 0;
    case Isolation::subinterpreter: return 1;
    case Isolation::fork: return 2;
    case Isolation::process: return 3;
  }
  return 0;
}
// Where a path leads on this machine now: symlinks resolved (Landlock follows them too), so a link
// inside an allowed directory cannot name a place outside it.
std::string resolved(const std::string& path) {
  std::error_code ec;
  const auto r = std::filesystem::weakly_canonical(path, ec);
  return ec ? path : r.string();
}

bool path_within(const std::string& path, const std::vector<std::string>& roots) {
  const std::string p = resolved(path);
  return std::any_of(roots.begin(), roots.end(), [&](const std::string& given) {
    const std::string root = resolved(given);
    if (p.compare(0, root.size(), root) != 0) return false;
    return p.size() == root.size() || p[root.size()] == '/' || (!root.empty() && root.back() == '/');
  });
}
}  // namespace

std::string RunnerPolicy::looser_than(const RunnerPolicy& c) const {
  auto no = [](const char* field, const std::string& rule) { return quoted(field) + " " + rule; };
  if (mode != c.mode) return no("mode", "must stay '" + to_string(c.mode) + "'");
  // 0 means the original's floor of one second.
  const auto effective = [](double t) { return t == 0 ? 1.0 : t; };
  if (effective(timeout_seconds) > effective(c.timeout_seconds))
    return no("timeout_seconds", "may not exceed " + detail_number(effective(c.timeout_seconds)));
  if (memory_limit_mb > c.memory_limit_mb) return no("memory_limit_mb", "may not exceed " + std::to_string(c.memory_limit_mb));
  if (max_output_kb > c.max_output_kb) return no("max_output_kb", "may not exceed " + std::to_string(c.max_output_kb));
  if (max_result_kb > c.max_result_kb) return no("max_result_kb", "may not exceed " + std::to_string(c.max_result_kb));
  if (max_stdin_kb > c.max_stdin_kb) return no("max_stdin_kb", "may not exceed " + std::to_string(c.max_stdin_kb));
  if (max_files_kb > c.max_files_kb) return no("max_files_kb", "may not exceed " + std::to_string(c.max_files_kb));
  if (max_host_calls > c.max_host_calls) return no("max_host_calls", "may not exceed " + std::to_string(c.max_host_calls));
  if (host_call_kb() > c.host_call_kb()) return no("max_host_call_kb", "may not exceed " + std::to_string(c.host_call_kb()));
  if (c.cpu_time_seconds > 0 && (cpu_time_seconds == 0 || cpu_time_seconds > c.cpu_time_seconds))
    return no("cpu_time_seconds", "must be set and may not exceed " + detail_number(c.cpu_time_seconds));
  if (!subset(c.blocked_imports, blocked_imports)) return no("blocked_imports", "must keep every entry of the operator's list");
  if (!subset(c.blocked_builtins, blocked_builtins)) return no("blocked_builtins", "must keep every entry of the operator's list");
  if (!subset(c.blocked_globals, blocked_globals)) return no("blocked_globals", "must keep every entry of the operator's list");
  if (!subset(allowed_imports, c.allowed_imports)) return no("allowed_imports", "may only drop entries of the operator's list");
  if (!subset(allowed_builtins, c.allowed_builtins)) return no("allowed_builtins", "may only drop entries of the operator's list");
  if (!subset(allowed_globals, c.allowed_globals)) return no("allowed_globals", "may only drop entries of the operator's list");
  if (separation(isolation) < separation(c.isolation))
    return no("isolation", "may not be weaker than '" + to_string(c.isolation) + "'");
  if (allow_network && !c.allow_network) return no("allow_network", "may not be enabled");
  if (allow_unix_sockets && !c.allow_unix_sockets) return no("allow_unix_sockets", "may not be enabled");
  if (scratch_dir && !c.scratch_dir) return no("scratch_dir", "may not be enabled");
  if (scratch_limit_mb > c.scratch_limit_mb)
    return no("scratch_limit_mb", "may not exceed " + std::to_string(c.scratch_limit_mb));
  for (const auto& path : allowed_read_paths)
    if (!path_within(path, c.allowed_read_paths)) return no("allowed_read_paths", "may only name paths under the operator's ('" + path + "' is not)");
  // Another interpreter's packages are code the operator did not choose.
  if (python_executable != c.python_executable) return no("python_executable", "must stay the operator's");
  // A key the operator set names the party: a request claiming another would share that party's workers.
  if (!c.trust_domain.empty() && trust_domain != c.trust_domain) return no("trust_domain", "must stay the operator's");
  return {};
}

json RunnerPolicy::to_json() const {
  json out = json::object();
  for (const auto& row : fields()) out[row.name] = row.get(*this);
  return out;
}

}  // namespace spr
