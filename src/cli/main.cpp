// safe-py-runner CLI: `run` one snippet, `serve` JSON lines, `batch` a cases file, `http` the HTTP service,
// `doctor` the sandbox layers.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <condition_variable>
#include <cerrno>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <iostream>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "common/fd.hpp"
#include "common/frame.hpp"
#include "common/run_files.hpp"
#include "common/protocol.hpp"
#include "cli/batch_cli.hpp"
#include "cli/exit_status.hpp"
#include "cli/serve.hpp"
#include "detail/python_env.hpp"
#include "detail/runner_access.hpp"
#include "http/server.hpp"
#include "spr/runner.hpp"

namespace {

using spr::cli::kExitData;
using spr::cli::kExitUnavailable;
using spr::cli::kExitUsage;

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

std::string checked_input(std::string text, const std::string& where) {
  if (std::string why = spr::detail::json_text_error(text); !why.empty())
    throw CliError{kExitData, "invalid JSON in " + where + ": " + why};
  return text;
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
  long long memory_mb = 0, max_output_kb = 0, max_result_kb = 0, max_stdin_kb = 0, max_files_kb = 0, scratch_limit_mb = 0, max_host_calls = 0,
            max_host_call_kb = 0;
  std::string isolation, python, mode, blocked_imports, allowed_imports, blocked_builtins, allowed_builtins;
  bool allow_network = false, allow_unix_sockets = false, scratch_dir = false;
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
  scalar("max_stdin_kb", "--max-stdin-kb", a.max_stdin_kb, "cap on the text a run reads as stdin, in KiB");
  scalar("max_files_kb", "--max-files-kb", a.max_files_kb, "cap on the files a run returns (--collect), in KiB");
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
  flag("allow_network", "--allow-network", a.allow_network, "let the code open network sockets");
  flag("allow_unix_sockets", "--allow-unix-sockets", a.allow_unix_sockets,
       "let the code open unix sockets (it can reach any the host has at a path it can name)");
  flag("scratch_dir", "--scratch-dir", a.scratch_dir, "a private writable working directory per run");
  scalar("scratch_limit_mb", "--scratch-limit-mb", a.scratch_limit_mb, "size of a worker's scratch file system, in MiB");
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

// The warm pool of serve, http and batch: --workers, --preload, --start-timeout.
struct PoolArgs {
  std::size_t workers = 2;
  std::string preload;        // module names, comma-separated
  double start_timeout = 10;  // seconds, as RunnerOptions::start_timeout_seconds
};
const PoolArgs kOneWorker{1, "", 10};

void add_pool_options(CLI::App* cmd, PoolArgs& a) {
  cmd->add_option("--workers", a.workers, "warm workers (default 2)");
  cmd->add_option("--preload", a.preload, "modules each warm worker imports before its sandbox closes: numpy,pandas");
  cmd->add_option("--start-timeout", a.start_timeout,
                  "seconds a worker may take to start, its preload included (default 10; a run waiting on "
                  "worker starts alone gives up after twice this)");
}

void check_pool(const PoolArgs& a) {
  if (a.workers == 0 || a.workers > 256) throw CliError{kExitUsage, "--workers must be between 1 and 256"};
  if (!(a.start_timeout > 0 && a.start_timeout <= 3600))
    throw CliError{kExitUsage, "--start-timeout must be more than 0 and at most 3600 seconds"};
}

std::vector<std::string> preload_list(const std::string& text) {
  std::vector<std::string> modules;
  std::stringstream in(text);
  for (std::string m; std::getline(in, m, ',');)
    if (!m.empty()) modules.push_back(m);
  return modules;
}

spr::RunnerOptions runner_options(const spr::RunnerPolicy& p, const PoolArgs& a) {
  check_pool(a);
  spr::RunnerOptions o;
  o.policy = p;
  o.workers = a.workers;
  o.preload = preload_list(a.preload);
  o.start_timeout_seconds = a.start_timeout;
  return o;
}

// The shell holds 0-255: SystemExit(n) outside 1-255 exits 1 (the JSON keeps the real n).
int exit_status(const spr::RunResult& r) {
  if (r.ok) return 0;
  if (r.error_kind == spr::ErrorKind::worker_unavailable) return kExitUnavailable;
  return r.exit_code >= 1 && r.exit_code <= 255 ? r.exit_code : 1;
}

// Files in and out of `run`: --file NAME=PATH (repeatable), --collect GLOB (repeatable), --out-dir DIR.
struct FileArgs {
  std::vector<std::string> files, collect;
  std::string out_dir;
  bool replace = false;  // --replace: a collected file may overwrite one already in --out-dir
};

spr::Files read_input_files(const std::vector<std::string>& specs) {
  spr::Files files;
  for (const auto& spec : specs) {
    const auto eq = spec.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == spec.size())
      throw CliError{kExitUsage, "--file takes NAME=PATH (the name in the run directory, the file to read here): '" +
                                     spec + "'"};
    const std::string name = spec.substr(0, eq);
    if (std::string why = spr::detail::run_files::check_name(name); !why.empty())
      throw CliError{kExitData, "--file '" + name + "': " + why};
    if (!files.emplace(name, read_file(spec.substr(eq + 1), "--file")).second)
      throw CliError{kExitUsage, "--file '" + name + "' is given twice"};
  }
  return files;
}

// The run's files go under `dir` only: each name was checked by the runner, every component is opened
// below `dir` without following a link, so a name cannot lead the write anywhere else. The names are the
// run's choice: without `replace` none of them may overwrite a file already there (O_EXCL).
// "" or why not.
std::string write_out_dir(const std::string& dir, const spr::Files& files, bool replace) {
  if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
    return "cannot create --out-dir '" + dir + "': " + std::strerror(errno);
  spr::detail::Fd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd) return "cannot open --out-dir '" + dir + "': " + std::strerror(errno);
  int err = 0;
  std::string why = spr::detail::run_files::write_files(fd.get(), files, replace, "--out-dir '" + dir + "'", &err);
  if (err == EEXIST && !replace) why += "; --replace lets collected files overwrite existing ones";
  return why;
}

int cmd_run(const std::string& code_arg, const std::string& file, const std::string& input,
            const std::string& input_file, const std::string& stdin_file, const FileArgs& fa, const PolicyArgs& pa) {
  std::string code;
  if (!code_arg.empty() && !file.empty()) throw CliError{kExitUsage, "give either -c CODE or a FILE, not both"};
  if (!code_arg.empty()) code = code_arg;
  else if (file.empty() || file == "-") code = read_all(std::cin);
  else code = read_file(file, "code file");
  if (!input.empty() && !input_file.empty()) throw CliError{kExitUsage, "give either --input or --input-file, not both"};
  spr::RunnerPolicy p = build_policy(pa);
  spr::RunOptions options;
  // The input's text goes to the run as it is, checked here once (no tree is built of it).
  if (!input.empty()) options.input_json = checked_input(input, "--input");
  if (!input_file.empty()) options.input_json = checked_input(read_file(input_file, "input file"), input_file);
  options.stdin_text = stdin_file.empty() ? std::string() : read_file(stdin_file, "stdin file");
  // Refused before a worker starts: invalid input, as an unreadable file is.
  if (options.stdin_text.size() > static_cast<std::size_t>(p.max_stdin_kb) * 1024)
    throw CliError{kExitData, "stdin file " + stdin_file + " is " + std::to_string(options.stdin_text.size()) +
                                  " bytes, more than max_stdin_kb allows (" + std::to_string(p.max_stdin_kb) +
                                  " KB; raise it with --max-stdin-kb)"};
  spr::Runner runner(runner_options(p, kOneWorker));
  options.files = read_input_files(fa.files);
  options.collect = fa.collect;
  if (!fa.out_dir.empty() && fa.collect.empty()) throw CliError{kExitUsage, "--out-dir needs --collect GLOB"};
  spr::RunResult r = spr::detail::RunnerAccess::run_checked_input(runner, code, p, options);  // checked above
  spr::json out = r.to_json();
  std::string not_written;
  if (!fa.out_dir.empty() && !r.files.empty()) {
    not_written = write_out_dir(fa.out_dir, r.files, fa.replace);
    if (not_written.empty()) {
      // The files are on disk: the JSON names them instead of carrying them.
      out.erase("files");
      out["files_written"] = spr::json::array();
      for (const auto& f : r.files) out["files_written"].push_back(f.first);
    }  // else the JSON keeps them all: nothing of the run is lost
  }
  std::cout << spr::detail::dump_json(out) << std::endl;
  if (!not_written.empty()) throw CliError{kExitData, not_written};
  if (!r.files_left_out.empty()) {
    std::cerr << "safe-py-runner: " << r.files_left_out.size()
              << " collected file(s) left out, over max_files_kb:";
    for (const auto& n : r.files_left_out) std::cerr << " " << n;
    std::cerr << std::endl;
  }
  if (r.files_truncated)
    std::cerr << "safe-py-runner: more files matched --collect than the result names (see files_truncated)"
              << std::endl;
  return exit_status(r);
}

int cmd_serve(const PoolArgs& pool, std::size_t subinterpreter_threads, const PolicyArgs& pa, bool allow_overrides) {
  if (subinterpreter_threads == 0 || subinterpreter_threads > 16)
    throw CliError{kExitUsage, "--subinterpreter-threads must be between 1 and 16"};
  spr::RunnerPolicy base = build_policy(pa);
  spr::RunnerOptions options = runner_options(base, pool);
  options.subinterpreter_threads = subinterpreter_threads;
  // The operator's policy is a ceiling: a request may tighten it, never loosen it.
  options.policy_is_ceiling = !allow_overrides;
  spr::Runner runner(options);
  spr::cli::serve(runner, base, STDIN_FILENO, STDOUT_FILENO);
  return 0;
}

struct HttpArgs {
  std::string listen = "127.0.0.1:8080";
  std::string token_file;
  PoolArgs pool;
  std::size_t max_concurrent = 64, max_body_mb = 16, max_connections = 512, threads = 2, max_sessions = 8;
  double read_timeout = 10, queue_timeout = 30, grace = 10;
  bool session_id_header = false;
  std::optional<std::size_t> sessions_per_token, runs_per_token;  // unset: half the server's limit
};

// "127.0.0.1:8080", "[::1]:8080" -> address and port.
std::pair<std::string, unsigned short> split_listen(const std::string& text) {
  const std::size_t colon = text.rfind(':');
  if (colon == std::string::npos || colon + 1 == text.size())
    throw CliError{kExitUsage, "--listen takes ADDRESS:PORT, such as 127.0.0.1:8080"};
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port = text.substr(colon + 1);
  if (port.find_first_not_of("0123456789") != std::string::npos || port.size() > 5 || std::stoul(port) > 65535)
    throw CliError{kExitUsage, "--listen: '" + port + "' is not a port number"};
  return {host, static_cast<unsigned short>(std::stoul(port))};
}

// One token a line; blank lines and lines starting with '#' are skipped, spaces around a token dropped.
std::vector<std::string> read_tokens(const std::string& path) {
  std::istringstream in(read_file(path, "token file"));
  std::vector<std::string> tokens;
  for (std::string line; std::getline(in, line);) {
    const std::size_t b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos || line[b] == '#') continue;
    const std::string t = line.substr(b, line.find_last_not_of(" \t\r") - b + 1);
    if (t.size() < 16) throw CliError{kExitData, "a token in '" + path + "' is shorter than 16 characters"};
    tokens.push_back(t);
  }
  if (tokens.empty()) throw CliError{kExitData, "the token file '" + path + "' holds no token"};
  return tokens;
}

int cmd_http(const HttpArgs& h, const PolicyArgs& pa) {
  check_pool(h.pool);
  if (h.max_concurrent == 0) throw CliError{kExitUsage, "--max-concurrent must be at least 1"};
  if (h.max_body_mb == 0 || h.max_body_mb > 1024) throw CliError{kExitUsage, "--max-body-mb must be between 1 and 1024"};
  if (h.threads == 0 || h.threads > 64) throw CliError{kExitUsage, "--threads must be between 1 and 64"};
  if (!(h.read_timeout > 0) || !(h.queue_timeout >= 0) || !(h.grace >= 0))
    throw CliError{kExitUsage, "--read-timeout must be positive, --queue-timeout and --grace not negative"};
  spr::http::ServerOptions o;
  std::tie(o.address, o.port) = split_listen(h.listen);
  if (!h.token_file.empty()) o.tokens = read_tokens(h.token_file);
  if (o.tokens.empty() && !spr::http::is_loopback(o.address))
    throw CliError{kExitUsage, "without --token-file the server listens on a loopback address only (127.0.0.1 or "
                               "::1), not " + o.address};
  o.max_body_bytes = h.max_body_mb << 20;
  o.max_connections = h.max_connections;
  o.read_timeout_seconds = h.read_timeout;
  o.grace_seconds = h.grace;
  o.threads = h.threads;
  o.api.max_in_flight = h.max_concurrent;
  o.api.queue_timeout_seconds = h.queue_timeout;
  o.api.blocking_threads = h.max_sessions + 2;
  o.api.session_id_from_header = h.session_id_header;
  // Shares of one token: half of each limit (at least 1), so no single client can take every slot while any
  // other waits. Without a token file every request is one party and there is nothing to share.
  if (!o.tokens.empty()) {
    o.api.sessions_per_token = h.sessions_per_token.value_or(std::max<std::size_t>(1, h.max_sessions / 2));
    o.api.runs_per_token = h.runs_per_token.value_or(std::max<std::size_t>(1, h.max_concurrent / 2));
  }
  spr::RunnerPolicy base = build_policy(pa);
  spr::RunnerOptions options = runner_options(base, h.pool);
  options.policy_is_ceiling = true;  // as in serve: a request may tighten the operator's policy, never loosen it
  options.max_sessions = h.max_sessions;
  spr::Runner runner(options);
  try {
    return spr::http::serve(runner, base, o);
  } catch (const std::runtime_error& e) {
    throw CliError{kExitUnavailable, e.what()};
  }
}

// Per isolation mode, the worker's report of its sandbox layers; a mode that cannot start says why. The
// policy (the defaults with --policy and the flags applied) is reported whole.
spr::json doctor_report(const spr::RunnerPolicy& p) {
  spr::Runner runner(runner_options(p, kOneWorker));
  spr::json out = {{"version", spr::version()}, {"python", runner.python_version()},
                   {"pythons", spr::detail::served_pythons(spr::detail::RunnerAccess::worker_path(runner))},
                   {"policy", p.to_json()}, {"modes", spr::json::object()}};
  bool all = true;
  for (auto iso : {spr::Isolation::namespace_, spr::Isolation::subinterpreter, spr::Isolation::fork,
                   spr::Isolation::process}) {
    spr::json mode = {{"available", true}};
    try {
      mode["worker_start"] = spr::detail::RunnerAccess::worker_start(runner, iso);
      mode["layers"] = runner.hardening(iso);
      for (const auto& l : mode["layers"]) all = all && l.value("active", false);
    } catch (const spr::WorkerError& e) {
      mode = {{"available", false}, {"error", e.what()}, {"layers", spr::json::array()}, {"worker_start", nullptr}};
      all = false;
    }
    out["modes"][spr::to_string(iso)] = mode;
  }
  out["all_layers_active"] = all;
  return out;
}

// One line of the plan a worker of this mode starts with: what it binds, who it runs as, what it may do.
void print_worker_start(const spr::json& ws) {
  std::size_t binds = 0;
  std::int64_t scratch_mb = 0;
  for (const auto& m : ws["mounts"]) {
    if (m["what"] == "scratch") scratch_mb = m["size_mb"].get<std::int64_t>();
    else if (m["how"] == "bind, read-only") ++binds;
  }
  const spr::json& sc = ws["seccomp"];
  std::cout << "  start: binds sys.path, allowed_read_paths and devices read-only (" << binds
            << " paths, and the runtime's own); scratch tmpfs " << scratch_mb << " MiB; uid 0 inside is "
            << ws["identity"]["outside_uid"].dump() << " outside; "
            << (ws["pid_namespace"].get<bool>() ? "own PID namespace" : "host PIDs") << "; seccomp allow-list"
            << (sc["fork"].get<bool>() ? ", fork" : "") << (sc["threads"].get<bool>() ? ", threads" : "")
            << (sc["network"].get<bool>() ? ", network" : "") << (sc["unix_sockets"].get<bool>() ? ", unix sockets" : "")
            << "\n";
}

void print_doctor_summary(const spr::json& report) {
  std::cout << "safe-py-runner " << report["version"].get<std::string>() << ", embedding Python "
            << report["python"].get<std::string>() << "\n";
  // Which python_executable values this build serves (each, and any venv made from one).
  std::cout << "python_executable: a venv of, or one of:";
  for (const auto& py : report["pythons"]) std::cout << "\n  " << py.get<std::string>();
  std::cout << "\n  (a worker is built for every CPython 3.9 to 3.13 with a shared libpython the build finds, or names"
               " in -DSPR_PYTHONS; `make run` builds the default one only, `make` the others)\n";
  const spr::json& p = report["policy"];
  std::cout << "limits: timeout " << p["timeout_seconds"].dump() << " s, memory " << p["memory_limit_mb"].dump()
            << " MiB, output " << p["max_output_kb"].dump() << " KiB a stream, result " << p["max_result_kb"].dump()
            << " KiB, stdin " << p["max_stdin_kb"].dump() << " KiB\n";
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
    print_worker_start(mode["worker_start"]);
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

  std::string code, file, input, input_file, stdin_file;
  PolicyArgs run_policy, serve_policy, doctor_policy;
  auto* run = app.add_subcommand("run", "run one snippet and print one JSON result");
  run->add_option("-c,--code", code, "the code to run");
  run->add_option("file", file, "file with the code, or - for standard input (the default)");
  run->add_option("--input", input, "input_data as JSON");
  run->add_option("--input-file", input_file, "file holding input_data as JSON");
  run->add_option("--stdin-file", stdin_file, "file whose text the code reads from sys.stdin and input()");
  FileArgs run_files;
  run->add_option("--file", run_files.files, "NAME=PATH: put file PATH into the run's directory as NAME (repeatable)")
      ->allow_extra_args(false);
  run->add_option("--collect", run_files.collect,
                  "glob of files the run leaves in its directory to return in \"files\" (repeatable; '*.png')")
      ->allow_extra_args(false);
  run->add_option("--out-dir", run_files.out_dir,
                  "write the collected files under this directory (an existing file is kept: see --replace)");
  run->add_flag("--replace", run_files.replace, "let collected files overwrite files already in --out-dir");
  add_policy_options(run, run_policy);

  PoolArgs serve_pool;
  auto* serve = app.add_subcommand("serve", "answer JSON-lines requests from stdin on stdout");
  serve->footer(
      "Request, one JSON object a line (a run needs only code):\n"
      "  {\"id\": any, \"code\": str, \"input_data\": any, \"stdin\": str, \"policy\": {field: value},\n"
      "   \"files\": {name: str | {\"base64\": str}}, \"collect\": [glob],\n"
      "   \"session\": name, \"repr\": bool, \"stream\": bool, \"functions\": [name]}\n"
      "  {\"id\": any, \"cancel\": id}    {\"id\": any, \"close_session\": name}\n"
      "  {\"call_result\": {\"id\", \"call_id\", \"value\"}}  {\"call_error\": {\"id\", \"call_id\", \"message\"}}\n"
      "Answer, one line per request, in the order runs end:\n"
      "  {\"id\": same, \"ok\", \"result\", \"stdout\", \"stderr\", \"error\", \"error_kind\", \"exit_code\",\n"
      "   \"timed_out\", \"resource_exceeded\", \"stdout_truncated\", \"stderr_truncated\",\n"
      "   \"duration_ms\", \"queued_ms\", \"isolation\", and when they apply \"repr\", \"files\",\n"
      "   \"files_left_out\", \"files_truncated\"}\n"
      "  with \"stream\": {\"id\", \"stream\": \"stdout\"|\"stderr\", \"data\": str} lines before it,\n"
      "  and with \"functions\": {\"id\", \"call\": {\"call_id\", \"name\", \"args\", \"kwargs\"}} per host call\n"
      "A bad line answers error_kind \"bad_input\" (id null when unreadable). A request's policy may only\n"
      "tighten the operator's (--policy and the flags) unless --allow-policy-overrides. See README, \"CLI\".\n");
  add_pool_options(serve, serve_pool);
  std::size_t subinterpreter_threads = 1;
  serve->add_option("--subinterpreter-threads", subinterpreter_threads,
                    "subinterpreter mode, CPython 3.12+: runs at once per worker, each on its own thread and GIL "
                    "(default 1; each thread counts as one of --workers)");
  add_policy_options(serve, serve_policy);
  bool allow_overrides = false;
  serve->add_flag("--allow-policy-overrides", allow_overrides,
                  "let a request's policy loosen the operator's (by default it may only tighten it)");

  HttpArgs http_args;
  PolicyArgs http_policy;
  auto* http = app.add_subcommand("http", "serve runs over HTTP: our JSON API, Piston's v2 API, metrics, a playground");
  http->add_option("--listen", http_args.listen, "ADDRESS:PORT to listen on (default 127.0.0.1:8080; port 0: any free one)");
  add_pool_options(http, http_args.pool);
  http->add_option("--token-file", http_args.token_file,
                   "file of bearer tokens, one a line; without it only a loopback address is allowed");
  http->add_option("--max-concurrent", http_args.max_concurrent,
                   "runs admitted at once, running or waiting for a worker; more answer 429 (default 64)");
  http->add_option("--max-body-mb", http_args.max_body_mb, "largest request body in MiB; larger answer 413 (default 16)");
  http->add_option("--max-connections", http_args.max_connections, "open connections at once (default 512)");
  http->add_option("--max-sessions", http_args.max_sessions, "open sessions at once (default 8)");
  http->add_option("--read-timeout", http_args.read_timeout,
                   "seconds a request's header and body may take to arrive (default 10)");
  http->add_option("--queue-timeout", http_args.queue_timeout,
                   "seconds a run may wait beyond its own timeout before its request answers 504 (default 30)");
  http->add_option("--grace", http_args.grace, "seconds runs in flight get to finish after SIGTERM (default 10)");
  http->add_option("--threads", http_args.threads, "threads serving connections (default 2)");
  http->add_option("--sessions-per-token", http_args.sessions_per_token,
                   "with --token-file: open sessions one token may hold (default half of --max-sessions, at least 1; "
                   "0: no limit per token)");
  http->add_option("--runs-per-token", http_args.runs_per_token,
                   "with --token-file: runs and session calls one token may have in flight (default half of "
                   "--max-concurrent, at least 1; 0: no limit per token)");
  http->add_flag("--session-id-header", http_args.session_id_header,
                 "a new session takes its id from the X-Session-Id header when given (set by a proxy that "
                 "hashes on it, such as nginx with $request_id)");
  add_policy_options(http, http_policy);

  spr::cli::BatchArgs batch_args;
  PolicyArgs batch_policy;
  PoolArgs batch_pool;
  auto* batch = app.add_subcommand("batch", "run a JSON-lines cases file; one result line per case, in input order");
  batch->add_option("cases", batch_args.cases, "cases file (JSON lines), or - for standard input")->required();
  batch->add_option("-o,--output", batch_args.output, "results file (default -: standard output)");
  add_pool_options(batch, batch_pool);
  batch->add_option("--repeat", batch_args.repeat, "runs per case (passed: all of them passed)");
  batch->add_option("--shard", batch_args.shard, "I/N: only the cases whose position modulo N is I");
  batch->add_option("--summary-json", batch_args.summary_json, "also write the summary as JSON to this file");
  batch->add_flag("--resume", batch_args.resume, "skip the cases already in the output, append the rest, re-order");
  batch->add_flag("-q,--quiet", batch_args.quiet, "no progress line and no summary on stderr");
  add_policy_options(batch, batch_policy);

  std::string merge_out, merge_cases;
  std::vector<std::string> merge_shards;
  auto* merge = app.add_subcommand("batch-merge", "merge batch --shard outputs into one file in input order");
  merge->add_option("output", merge_out, "the merged results file")->required();
  merge->add_option("shards", merge_shards, "the shards' results files")->required();
  merge->add_option("--cases", merge_cases, "the cases file: order and completeness by its ids");

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
    std::cerr << "safe-py-runner: unknown command '" << argv[1] << "' (commands: run, serve, batch, batch-merge, http, doctor; see --help)"
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
    if (*run) return cmd_run(code, file, input, input_file, stdin_file, run_files, run_policy);
    if (*serve) return cmd_serve(serve_pool, subinterpreter_threads, serve_policy, allow_overrides);
    if (*http) return cmd_http(http_args, http_policy);
    if (*doctor) return cmd_doctor(doctor_policy, doctor_json);
    if (*batch) {
      check_pool(batch_pool);
      batch_args.workers = batch_pool.workers;
      batch_args.preload = preload_list(batch_pool.preload);
      batch_args.start_timeout_seconds = batch_pool.start_timeout;
      return spr::cli::batch(batch_args, build_policy(batch_policy));
    }
    if (*merge) return spr::cli::batch_merge(merge_out, merge_shards, merge_cases);
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
