// safe-py-runner CLI: `run` one snippet, `serve` JSON lines, `doctor` the sandbox layers.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>
#include <utility>
#include <vector>

#include "common/frame.hpp"
#include "common/wire.hpp"
#include "cli/serve.hpp"
#include "spr/runner.hpp"

namespace {

constexpr int kExitUsage = 64;  // sysexits.h EX_USAGE
constexpr int kExitData = 65;   // sysexits.h EX_DATAERR
constexpr int kExitUnavailable = 69;  // sysexits.h EX_UNAVAILABLE

struct CliError {
  int code;
  std::string message;
};

std::string read_all(std::istream& in) {
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw CliError{kExitData, std::string("cannot read ") + what + " '" + path + "'"};
  return read_all(in);
}

spr::json parse_input(const std::string& text, const std::string& where) {
  try {
    return spr::detail::parse_json(text);
  } catch (const std::exception& e) {
    throw CliError{kExitData, "invalid JSON in " + where + ": " + e.what()};
  }
}

// Comma-separated names ("os,json"); "" is the empty list.
spr::json name_list(const std::string& text) {
  spr::json out = spr::json::array();
  std::istringstream in(text);
  for (std::string item; std::getline(in, item, ',');)
    if (!item.empty()) out.push_back(item);
  return out;
}

// Policy flags; each is applied on top of --policy only when it was given on the command line.
struct PolicyArgs {
  struct Flag {
    const char* field;                   // the policy field it sets
    CLI::Option* option;
    std::function<spr::json()> value;    // the given value, as the field's JSON
  };
  std::string file;
  double timeout = 0, cpu_time = 0;
  long long memory_mb = 0, max_output_kb = 0, max_result_kb = 0, max_host_calls = 0, max_host_call_kb = 0;
  std::string isolation, python, mode, blocked_imports, allowed_imports, blocked_builtins, allowed_builtins;
  bool allow_network = false, scratch_dir = false;
  std::vector<Flag> flags;
};

void add_policy_options(CLI::App* cmd, PolicyArgs& a) {
  cmd->add_option("--policy", a.file, "TOML policy file ([policy] table or top-level keys)");
  const auto scalar = [&](const char* field, const char* flag, auto& v, const char* help) {
    a.flags.push_back({field, cmd->add_option(flag, v, help), [&v] { return spr::json(v); }});
  };
  const auto names = [&](const char* field, const char* flag, std::string& v, const char* help) {
    a.flags.push_back({field, cmd->add_option(flag, v, help), [&v] { return name_list(v); }});
  };
  const auto flag = [&](const char* field, const char* name, bool& v, const char* help) {
    a.flags.push_back({field, cmd->add_flag(name, v, help), [&v] { return spr::json(v); }});
  };
  scalar("timeout_seconds", "--timeout", a.timeout, "wall-clock limit in seconds (fractions allowed)");
  scalar("memory_limit_mb", "--memory-mb", a.memory_mb, "memory one run may allocate, in MiB");
  scalar("max_output_kb", "--max-output-kb", a.max_output_kb, "cap on stdout and on stderr, each, in KiB");
  scalar("max_result_kb", "--max-result-kb", a.max_result_kb, "cap on the JSON text of result, in KiB");
  scalar("max_host_calls", "--max-host-calls", a.max_host_calls, "host function calls one run may make (serve)");
  scalar("max_host_call_kb", "--max-host-call-kb", a.max_host_call_kb,
         "cap on one host call's arguments and on its answer, in KiB (default: max-result-kb)");
  scalar("cpu_time_seconds", "--cpu-time", a.cpu_time, "CPU time limit in seconds (0: none)");
  scalar("isolation", "--isolation", a.isolation, "namespace, subinterpreter, fork (default) or process");
  scalar("python_executable", "--python", a.python, "python3 whose packages runs see (a venv's bin/python3)");
  scalar("mode", "--mode", a.mode, "restrict (default) or allow");
  names("blocked_imports", "--blocked-imports", a.blocked_imports, "comma-separated module names ('' for none)");
  names("allowed_imports", "--allowed-imports", a.allowed_imports, "comma-separated module names (allow mode)");
  names("blocked_builtins", "--blocked-builtins", a.blocked_builtins, "comma-separated builtin names ('' for none)");
  names("allowed_builtins", "--allowed-builtins", a.allowed_builtins, "comma-separated builtin names (allow mode)");
  flag("allow_network", "--allow-network", a.allow_network, "let the code open sockets");
  flag("scratch_dir", "--scratch-dir", a.scratch_dir, "a private writable working directory per run");
}

spr::RunnerPolicy build_policy(const PolicyArgs& a) {
  spr::RunnerPolicy p;
  try {
    if (!a.file.empty()) p = spr::RunnerPolicy::from_file(a.file);
    spr::json o = spr::json::object();
    for (const auto& f : a.flags)
      if (f.option->count() > 0) o[f.field] = f.value();
    return spr::RunnerPolicy::from_json(o, p);
  } catch (const spr::PolicyError& e) {
    throw CliError{kExitData, std::string("invalid policy: ") + e.what()};
  }
}

spr::RunnerOptions runner_options(const spr::RunnerPolicy& p, std::size_t workers) {
  spr::RunnerOptions o;
  o.policy = p;
  o.workers = workers;
  return o;
}

// The shell holds 0-255: SystemExit(n) outside 1-255 exits 1 (the JSON keeps the real n).
int exit_status(const spr::RunResult& r) {
  if (r.ok) return 0;
  if (r.error_kind == spr::ErrorKind::worker_unavailable) return kExitUnavailable;
  return r.exit_code >= 1 && r.exit_code <= 255 ? r.exit_code : 1;
}

int cmd_run(const std::string& code_arg, const std::string& file, const std::string& input,
            const std::string& input_file, const std::string& stdin_file, const PolicyArgs& pa) {
  std::string code;
  if (!code_arg.empty() && !file.empty()) throw CliError{kExitUsage, "give either -c CODE or a FILE, not both"};
  if (!code_arg.empty()) code = code_arg;
  else if (file.empty() || file == "-") code = read_all(std::cin);
  else code = read_file(file, "code file");
  if (!input.empty() && !input_file.empty()) throw CliError{kExitUsage, "give either --input or --input-file, not both"};
  spr::json data = spr::json::object();
  if (!input.empty()) data = parse_input(input, "--input");
  if (!input_file.empty()) data = parse_input(read_file(input_file, "input file"), input_file);
  spr::RunnerPolicy p = build_policy(pa);
  spr::Runner runner(runner_options(p, 1));
  const std::string stdin_text = stdin_file.empty() ? std::string() : read_file(stdin_file, "stdin file");
  spr::RunResult r = runner.run(code, data, p, stdin_text);
  std::cout << spr::detail::dump_json(r.to_json()) << std::endl;
  return exit_status(r);
}

int cmd_serve(std::size_t workers, const std::string& preload, const PolicyArgs& pa, bool allow_overrides) {
  if (workers == 0 || workers > 256) throw CliError{kExitUsage, "--workers must be between 1 and 256"};
  spr::RunnerPolicy base = build_policy(pa);
  spr::RunnerOptions options = runner_options(base, workers);
  // The operator's policy is a ceiling: a request may tighten it, never loosen it.
  options.policy_is_ceiling = !allow_overrides;
  std::stringstream modules(preload);
  for (std::string m; std::getline(modules, m, ',');)
    if (!m.empty()) options.preload.push_back(m);
  spr::Runner runner(options);
  spr::cli::serve(runner, base, std::cin, std::cout);
  return 0;
}

// Per isolation mode, the worker's report of its sandbox layers; a mode that cannot start says why.
spr::json doctor_report(const spr::RunnerPolicy& p) {
  spr::Runner runner(runner_options(p, 1));
  spr::json out = {{"version", spr::version()}, {"python", runner.python_version()}, {"modes", spr::json::object()}};
  bool all = true;
  for (auto iso : {spr::Isolation::namespace_, spr::Isolation::subinterpreter, spr::Isolation::fork,
                   spr::Isolation::process}) {
    spr::json mode = {{"available", true}};
    try {
      mode["layers"] = runner.hardening(iso);
      for (const auto& l : mode["layers"]) all = all && l.value("active", false);
    } catch (const spr::WorkerError& e) {
      mode = {{"available", false}, {"error", e.what()}, {"layers", spr::json::array()}};
      all = false;
    }
    out["modes"][spr::to_string(iso)] = mode;
  }
  out["all_layers_active"] = all;
  return out;
}

void print_doctor_summary(const spr::json& report) {
  std::cout << "safe-py-runner " << report["version"].get<std::string>() << ", embedding Python "
            << report["python"].get<std::string>() << "\n";
  for (const char* name : {"namespace", "subinterpreter", "fork", "process"}) {
    const spr::json& mode = report["modes"][name];
    std::cout << "\n" << name << ":";
    if (!mode["available"].get<bool>()) {
      std::cout << " unavailable (" << mode["error"].get<std::string>() << ")\n";
      continue;
    }
    std::size_t active = 0;
    for (const auto& l : mode["layers"]) active += l.value("active", false) ? 1 : 0;
    std::cout << " " << active << " of " << mode["layers"].size() << " layers active\n";
    for (const auto& l : mode["layers"]) {
      std::cout << "  [" << (l.value("active", false) ? "on " : "off") << "] " << l.value("name", std::string("?"));
      const std::string detail = l.value("detail", std::string());
      if (!detail.empty()) std::cout << ": " << detail;
      std::cout << "\n";
    }
  }
  std::cout << "\n"
            << (report["all_layers_active"].get<bool>() ? "Every sandbox layer is active."
                                                        : "Some layers are off on this machine (see above).")
            << std::endl;
}

int cmd_doctor(const PolicyArgs& pa, bool as_json) {
  const spr::json report = doctor_report(build_policy(pa));
  if (as_json) std::cout << report.dump(2) << std::endl;
  else print_doctor_summary(report);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"safe-py-runner: run untrusted Python snippets in hardened, supervised workers"};
  app.set_version_flag("--version", std::string("safe-py-runner ") + spr::version());
  app.require_subcommand(1);

  std::string code, file, input, input_file, stdin_file, preload;
  PolicyArgs run_policy, serve_policy, doctor_policy;
  auto* run = app.add_subcommand("run", "run one snippet and print one JSON result");
  run->add_option("-c,--code", code, "the code to run");
  run->add_option("file", file, "file with the code, or - for standard input (the default)");
  run->add_option("--input", input, "input_data as JSON");
  run->add_option("--input-file", input_file, "file holding input_data as JSON");
  run->add_option("--stdin-file", stdin_file, "file whose text the code reads from sys.stdin and input()");
  add_policy_options(run, run_policy);

  std::size_t workers = 2;
  auto* serve = app.add_subcommand("serve", "answer JSON-lines requests from stdin on stdout");
  serve->add_option("--workers", workers, "warm workers (default 2)");
  serve->add_option("--preload", preload, "modules each warm worker imports before its sandbox closes: numpy,pandas");
  add_policy_options(serve, serve_policy);
  bool allow_overrides = false;
  serve->add_flag("--allow-policy-overrides", allow_overrides,
                  "let a request's policy loosen the operator's (by default it may only tighten it)");

  bool doctor_json = false;
  auto* doctor = app.add_subcommand("doctor", "print which sandbox layers are active on this machine");
  doctor->add_flag("--json", doctor_json, "print the report as JSON");
  add_policy_options(doctor, doctor_policy);

  // CLI11 reports an unknown command as a missing one; name it instead.
  const auto is_command = [&](const std::string& name) {
    try {
      return app.get_subcommand(name) != nullptr;
    } catch (const CLI::OptionNotFound&) {
      return false;
    }
  };
  if (argc > 1 && argv[1][0] != '-' && !is_command(argv[1])) {
    std::cerr << "safe-py-runner: unknown command '" << argv[1] << "' (commands: run, serve, doctor; see --help)"
              << std::endl;
    return kExitUsage;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "safe-py-runner: " << e.what() << " (see --help)" << std::endl;  // one line
    return kExitUsage;
  }
  try {
    if (*run) return cmd_run(code, file, input, input_file, stdin_file, run_policy);
    if (*serve) return cmd_serve(workers, preload, serve_policy, allow_overrides);
    if (*doctor) return cmd_doctor(doctor_policy, doctor_json);
  } catch (const CliError& e) {
    std::cerr << "safe-py-runner: " << e.message << std::endl;
    return e.code;
  } catch (const spr::PolicyError& e) {
    std::cerr << "safe-py-runner: invalid policy: " << e.what() << std::endl;
    return kExitData;
  } catch (const spr::WorkerError& e) {
    std::cerr << "safe-py-runner: " << e.what() << std::endl;
    return kExitUnavailable;
  }
  return kExitUsage;
}
