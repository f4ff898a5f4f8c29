// safe-py-runner CLI: `run` one snippet, `serve` JSON lines, `doctor` the sandbox layers.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <condition_variable>
#include <deque>
#include <fstream>
#include <iostream>
#include <mutex>
#include <sstream>
#include <thread>

#include "common/frame.hpp"
#include "common/wire.hpp"
#include "spr/runner.hpp"

namespace {

constexpr int kExitUsage = 64;  // sysexits.h EX_USAGE
constexpr int kExitData = 65;   // sysexits.h EX_DATAERR

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

struct PolicyArgs {
  std::string file;
  double timeout = -1;
  long long memory_mb = -1;
  long long max_output_kb = -1;
  std::string isolation;
};

void add_policy_options(CLI::App* cmd, PolicyArgs& a) {
  cmd->add_option("--policy", a.file, "TOML policy file ([policy] table or top-level keys)");
  cmd->add_option("--timeout", a.timeout, "wall-clock limit in seconds (fractions allowed)");
  cmd->add_option("--memory-mb", a.memory_mb, "memory one run may allocate, in MiB");
  cmd->add_option("--max-output-kb", a.max_output_kb, "cap on stdout and on stderr, each, in KiB");
  cmd->add_option("--isolation", a.isolation, "namespace, subinterpreter, fork (default) or process");
}

spr::RunnerPolicy build_policy(const PolicyArgs& a) {
  spr::RunnerPolicy p;
  try {
    if (!a.file.empty()) p = spr::RunnerPolicy::from_file(a.file);
    spr::json o = spr::json::object();
    if (a.timeout != -1) o["timeout_seconds"] = a.timeout;
    if (a.memory_mb != -1) o["memory_limit_mb"] = a.memory_mb;
    if (a.max_output_kb != -1) o["max_output_kb"] = a.max_output_kb;
    if (!a.isolation.empty()) o["isolation"] = a.isolation;
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

int exit_status(const spr::RunResult& r) {
  if (r.ok) return 0;
  return r.exit_code >= 1 && r.exit_code <= 255 ? r.exit_code : 1;
}

int cmd_run(const std::string& code_arg, const std::string& file, const std::string& input,
            const std::string& input_file, const PolicyArgs& pa) {
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
  spr::RunResult r = runner.run(code, data, p);
  std::cout << spr::detail::dump_json(r.to_json()) << std::endl;
  return exit_status(r);
}

int cmd_serve(std::size_t workers, const PolicyArgs& pa) {
  if (workers == 0 || workers > 256) throw CliError{kExitUsage, "--workers must be between 1 and 256"};
  spr::RunnerPolicy base = build_policy(pa);
  spr::Runner runner(runner_options(base, workers));
  std::mutex out_mu;
  auto emit = [&](const spr::json& id, spr::json body) {
    body["id"] = id;
    std::string line = spr::detail::dump_json(body);
    std::lock_guard<std::mutex> lk(out_mu);
    std::cout << line << '\n' << std::flush;
  };
  auto bad = [&](const spr::json& id, const std::string& msg) {
    spr::RunResult r = spr::detail::failure(spr::ErrorKind::bad_input, msg);
    r.isolation = base.isolation;
    emit(id, r.to_json());
  };

  struct Job {
    spr::json id;
    std::string code;
    spr::json input;
    spr::RunnerPolicy policy;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::deque<Job> queue;
  bool done = false;
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < workers * 2; ++i) {
    threads.emplace_back([&] {
      for (;;) {
        Job job;
        {
          std::unique_lock<std::mutex> lk(mu);
          cv.wait(lk, [&] { return done || !queue.empty(); });
          if (queue.empty()) return;
          job = std::move(queue.front());
          queue.pop_front();
        }
        spr::RunResult r = runner.run(job.code, job.input, job.policy);
        emit(job.id, r.to_json());
      }
    });
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    spr::json req;
    try {
      req = spr::detail::parse_json(line);
    } catch (const std::exception& e) {
      bad(nullptr, std::string("malformed request line: ") + e.what());
      continue;
    }
    if (!req.is_object()) {
      bad(nullptr, "malformed request line: expected a JSON object");
      continue;
    }
    spr::json id = req.value("id", spr::json());
    auto code = req.find("code");
    if (code == req.end() || !code->is_string()) {
      bad(id, "request needs a string field 'code'");
      continue;
    }
    Job job{id, code->get<std::string>(), req.value("input_data", spr::json::object()), base};
    if (auto p = req.find("policy"); p != req.end() && !p->is_null()) {
      try {
        job.policy = spr::RunnerPolicy::from_json(*p, base);
      } catch (const spr::PolicyError& e) {
        bad(id, std::string("invalid policy: ") + e.what());
        continue;
      }
    }
    {
      std::lock_guard<std::mutex> lk(mu);
      queue.push_back(std::move(job));
    }
    cv.notify_one();
  }
  {
    std::lock_guard<std::mutex> lk(mu);
    done = true;
  }
  cv.notify_all();
  for (auto& t : threads) t.join();
  return 0;
}

int cmd_doctor(const PolicyArgs& pa) {
  spr::RunnerPolicy p = build_policy(pa);
  spr::Runner runner(runner_options(p, 1));
  spr::json out = {{"version", spr::version()}, {"python", runner.python_version()}, {"modes", spr::json::object()}};
  bool all = true;
  for (auto iso : {spr::Isolation::namespace_, spr::Isolation::fork, spr::Isolation::process}) {
    spr::json layers = runner.hardening(iso);
    for (const auto& l : layers) all = all && l.value("active", false);
    out["modes"][spr::to_string(iso)] = layers;
  }
  out["all_layers_active"] = all;
  std::cout << out.dump(2) << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"safe-py-runner: run untrusted Python snippets in hardened, supervised workers"};
  app.set_version_flag("--version", std::string("safe-py-runner ") + spr::version());
  app.require_subcommand(1);

  std::string code, file, input, input_file;
  PolicyArgs run_policy, serve_policy, doctor_policy;
  auto* run = app.add_subcommand("run", "run one snippet and print one JSON result");
  run->add_option("-c,--code", code, "the code to run");
  run->add_option("file", file, "file with the code, or - for standard input (the default)");
  run->add_option("--input", input, "input_data as JSON");
  run->add_option("--input-file", input_file, "file holding input_data as JSON");
  add_policy_options(run, run_policy);

  std::size_t workers = 2;
  auto* serve = app.add_subcommand("serve", "answer JSON-lines requests from stdin on stdout");
  serve->add_option("--workers", workers, "warm workers (default 2)");
  add_policy_options(serve, serve_policy);

  auto* doctor = app.add_subcommand("doctor", "print which sandbox layers are active on this machine");
  add_policy_options(doctor, doctor_policy);

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "safe-py-runner: " << e.what() << " (see --help)" << std::endl;  // one line
    return kExitUsage;
  }
  try {
    if (*run) return cmd_run(code, file, input, input_file, run_policy);
    if (*serve) return cmd_serve(workers, serve_policy);
    if (*doctor) return cmd_doctor(doctor_policy);
  } catch (const CliError& e) {
    std::cerr << "safe-py-runner: " << e.message << std::endl;
    return e.code;
  } catch (const spr::PolicyError& e) {
    std::cerr << "safe-py-runner: invalid policy: " << e.what() << std::endl;
    return kExitData;
  } catch (const spr::WorkerError& e) {
    std::cerr << "safe-py-runner: " << e.what() << std::endl;
    return 69;  // EX_UNAVAILABLE
  }
  return kExitUsage;
}
