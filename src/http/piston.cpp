// Piston v2 compatibility: its request fields mapped onto a run and its policy, a RunResult onto its answer.
#include "http/piston.hpp"

#include <cmath>
#include <set>

#include "common/frame.hpp"
#include "common/run_files.hpp"

namespace spr::http::piston {

namespace {

constexpr const char* kLanguage = "python";
const std::set<std::string> kNames{"python", "py", "python3"};
// Fields Piston's /api/v2/execute reads; anything else is refused, not silently ignored.
const std::set<std::string> kFields{"language",
                                    "version",
                                    "files",
                                    "stdin",
                                    "args",
                                    "compile_timeout",
                                    "run_timeout",
                                    "compile_memory_limit",
                                    "run_memory_limit",
                                    "compile_cpu_time",
                                    "run_cpu_time"};

// "*", "3", "3.11", "3.x", "3.11.2": what Piston's semver matching would accept for our one version.
bool version_matches(const std::string& wanted, const std::string& have) {
  if (wanted.empty() || wanted == "*" || wanted == "x" || wanted == have) return true;
  std::string w = wanted;
  while (w.size() >= 2 && (w.compare(w.size() - 2, 2, ".x") == 0 || w.compare(w.size() - 2, 2, ".*") == 0))
    w.resize(w.size() - 2);
  return have.compare(0, w.size(), w) == 0 && (have.size() == w.size() || have[w.size()] == '.');
}

// A number of milliseconds or bytes; -1 (or absent, or null) means "the operator's default".
std::optional<double> limit(const json& body, const char* field) {
  auto it = body.find(field);
  if (it == body.end() || it->is_null()) return std::nullopt;
  if (!it->is_number()) throw BadRequest(std::string(field) + " must be a number");
  const double v = it->get<double>();
  if (v == -1) return std::nullopt;
  if (!std::isfinite(v) || v <= 0) throw BadRequest(std::string(field) + " must be a positive number or -1");
  return v;
}

}  // namespace

json runtimes(const std::string& python_version) {
  return json::array({{{"language", kLanguage},
                       {"version", python_version},
                       {"aliases", {"py", "python3"}},
                       {"runtime", "safe-py-runner"}}});
}

Execute parse_execute(const json& body, const RunnerPolicy& base, const std::string& python_version) {
  if (!body.is_object()) throw BadRequest("the body must be a JSON object");
  for (const auto& [key, value] : body.items())
    if (!kFields.count(key)) throw BadRequest("unknown field '" + key + "'");
  const auto string_field = [&](const char* field) -> std::string {
    auto it = body.find(field);
    if (it == body.end() || it->is_null()) return {};
    if (!it->is_string()) throw BadRequest(std::string(field) + " must be a string");
    return it->get<std::string>();
  };
  const std::string language = string_field("language");
  if (language.empty()) throw BadRequest("language is required as a string");
  const std::string version = string_field("version");
  if (body.find("version") == body.end()) throw BadRequest("version is required as a string");
  if (!kNames.count(language) || !version_matches(version, python_version))
    throw BadRequest(language + "-" + version + " runtime is unknown");

  auto files = body.find("files");
  if (files == body.end() || !files->is_array() || files->empty())
    throw BadRequest("files is required as a non-empty array");
  const json& file = (*files)[0];
  if (!file.is_object()) throw BadRequest("files[0] must be an object");
  auto content = file.find("content");
  if (content == file.end() || !content->is_string()) throw BadRequest("files[0].content is required as a string");
  if (auto enc = file.find("encoding"); enc != file.end() && !(enc->is_string() && *enc == "utf8"))
    throw BadRequest("files[0].encoding: only \"utf8\" is supported");

  Execute e;
  // Piston runs files[0] and puts the others beside it: here they go into the run's directory (its
  // working directory), where the program reads them (as data: imports do not look there).
  for (std::size_t i = 1; i < files->size(); ++i) {
    const json& f = (*files)[i];
    const std::string at = "files[" + std::to_string(i) + "]";
    if (!f.is_object()) throw BadRequest(at + " must be an object");
    auto name = f.find("name");
    if (name == f.end() || !name->is_string()) throw BadRequest(at + ".name is required as a string");
    auto text = f.find("content");
    if (text == f.end() || !text->is_string()) throw BadRequest(at + ".content is required as a string");
    std::string bytes = text->get<std::string>();
    if (auto enc = f.find("encoding"); enc != f.end() && !enc->is_null() && *enc != "utf8") {
      if (*enc != "base64" || !detail::run_files::base64_decode(text->get_ref<const std::string&>(), bytes))
        throw BadRequest(at + ".encoding: only \"utf8\" and \"base64\" (with valid base64 content) are supported");
    }
    if (std::string why = detail::run_files::check_name(name->get_ref<const std::string&>()); !why.empty())
      throw BadRequest(at + ".name: " + why);
    if (!e.files.emplace(name->get<std::string>(), std::move(bytes)).second) throw BadRequest(at + ".name is given twice");
  }
  e.stdin_text = string_field("stdin");
  json argv = json::array();
  if (auto args = body.find("args"); args != body.end() && !args->is_null()) {
    if (!args->is_array()) throw BadRequest("args must be an array of strings");
    for (const auto& a : *args) {
      if (!a.is_string()) throw BadRequest("args must be an array of strings");
      argv.push_back(a);
    }
  }
  // sys.argv is the sandbox's own list; one line added before the code fills it, and shifts the line
  // numbers of tracebacks by one, so it is added only for code that names argv.
  if (!argv.empty() && content->get<std::string>().find("argv") != std::string::npos)
    e.code = "import sys as _spr_sys; _spr_sys.argv[1:] = " + detail::dump_json(argv) + "; del _spr_sys\n";
  e.code += content->get<std::string>();

  json overrides = json::object();
  if (auto ms = limit(body, "run_timeout")) overrides["timeout_seconds"] = *ms / 1000.0;
  if (auto bytes = limit(body, "run_memory_limit"))
    overrides["memory_limit_mb"] = std::max<std::int64_t>(1, static_cast<std::int64_t>(*bytes / (1024.0 * 1024.0)));
  if (auto ms = limit(body, "run_cpu_time")) overrides["cpu_time_seconds"] = *ms / 1000.0;
  limit(body, "compile_timeout");  // no compile step: checked for type only
  limit(body, "compile_memory_limit");
  limit(body, "compile_cpu_time");
  try {
    e.policy = RunnerPolicy::from_json(overrides, base);
  } catch (const PolicyError& err) {
    throw BadRequest(err.what());
  }
  return e;
}

json execute_answer(const RunResult& r, const std::string& output, const std::string& python_version) {
  std::string stderr_text = r.stderr_text;
  // Piston's stderr ends with Python's own report of the error; ours has it in `error`.
  if (!r.ok && r.error && r.error_kind != ErrorKind::system_exit && stderr_text.find(*r.error) == std::string::npos) {
    if (!stderr_text.empty() && stderr_text.back() != '\n') stderr_text += '\n';
    stderr_text += *r.error + "\n";
  }
  std::string combined = output.size() == r.stdout_text.size() + r.stderr_text.size() && !output.empty()
                             ? output
                             : r.stdout_text + r.stderr_text;
  combined += stderr_text.substr(r.stderr_text.size());
  json run = {{"stdout", r.stdout_text}, {"stderr", stderr_text}, {"output", combined}};
  if (r.timed_out) {
    run["code"] = nullptr;
    run["signal"] = "SIGKILL";
    run["status"] = "TO";
    run["message"] = r.error.value_or("timed out");
  } else {
    run["code"] = r.ok ? 0 : r.exit_code;
    run["signal"] = nullptr;
    if (!r.ok) {
      run["status"] = r.error_kind == ErrorKind::worker_crashed ? "SG" : "RE";
      run["message"] = r.error.value_or(to_string(r.error_kind));
    }
  }
  run["error_kind"] = to_string(r.error_kind);
  run["wall_time"] = r.duration.count() / 1000;
  return {{"language", kLanguage}, {"version", python_version}, {"run", run}};
}

}  // namespace spr::http::piston
