// Black-box tests of the safe-py-runner CLI: the real binary, its JSON on stdout and its exit status.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "helpers.hpp"

using nlohmann::json;
using spr_test::contains;
using spr_test::ProcResult;
using spr_test::TempPath;

namespace {

// The CLI runs with an environment of our choosing: the worker's path and a secret that must never leak.
// A sanitizer build's options go along, so that a report of the CLI's is written where the suite's are.
std::vector<std::string> cli_env() {
  std::vector<std::string> env = {std::string("SPR_WORKER=") + SPR_TEST_WORKER,
                                  std::string("SPR_TEST_SECRET=") + spr_test::kSecret, "PATH=/usr/bin:/bin"};
  for (const char* name : {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS", "TSAN_OPTIONS"})
    if (const char* v = std::getenv(name)) env.push_back(std::string(name) + "=" + v);
  return env;
}

std::string mode() { return spr_test::mode_name(); }

ProcResult cli(std::vector<std::string> args, const std::string& stdin_text = "", double timeout = 60) {
  args.insert(args.begin(), SPR_TEST_CLI);
  return spr_test::run_program(args, stdin_text, timeout, cli_env());
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(line);
  return out;
}

std::string describe(const ProcResult& p) {
  return "exit " + std::to_string(p.exit_code) + (p.timed_out ? " (killed: timed out)" : "") + "\nstdout: " +
         p.out.substr(0, 2000) + "\nstderr: " + p.err.substr(0, 2000);
}

// `run` must print exactly one JSON object on one line; returns it.
json one_json(const ProcResult& p) {
  INFO(describe(p));
  REQUIRE_FALSE(p.timed_out);
  const auto lines = lines_of(p.out);
  REQUIRE(lines.size() == 1);
  json j;
  REQUIRE_NOTHROW(j = json::parse(lines[0]));
  REQUIRE(j.is_object());
  return j;
}

ProcResult run_cli(const std::string& code, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"run", "--isolation", mode(), "-c", code};
  args.insert(args.end(), extra.begin(), extra.end());
  return cli(args);
}

}  // namespace

TEST_SUITE("cli") {

TEST_CASE("run -c: one JSON object, exit 0 when ok") {
  const auto p = run_cli("print('hi')\nresult = 1 + 1");
  const json j = one_json(p);
  CHECK(p.exit_code == 0);
  CHECK(j["ok"] == true);
  CHECK(j["result"] == 2);
  CHECK(j["stdout"] == "hi\n");
  CHECK(j["error"].is_null());
  CHECK(j["exit_code"] == 0);
  CHECK(j["isolation"] == mode());
  for (const char* key : {"stderr", "timed_out", "resource_exceeded", "error_kind", "stdout_truncated",
                          "stderr_truncated", "duration_ms", "queued_ms"})
    CHECK_MESSAGE(j.contains(key), key);
}

TEST_CASE("run FILE, run - and run with no code argument read the code") {
  const std::string code = "result = 'from ' + where\n";
  SUBCASE("a file") {
    TempPath file("code.py");
    file.write(code);
    const auto p = cli({"run", "--isolation", mode(), "--input", R"({"where": "file"})", file.str()});
    CHECK(p.exit_code == 0);
    CHECK(one_json(p)["result"] == "from file");
  }
  SUBCASE("- is standard input") {
    const auto p = cli({"run", "--isolation", mode(), "--input", R"({"where": "stdin"})", "-"}, code);
    CHECK(p.exit_code == 0);
    CHECK(one_json(p)["result"] == "from stdin");
  }
  SUBCASE("no FILE is standard input too") {
    const auto p = cli({"run", "--isolation", mode(), "--input", R"({"where": "default"})"}, code);
    CHECK(p.exit_code == 0);
    CHECK(one_json(p)["result"] == "from default");
  }
}

TEST_CASE("run --input and --input-file give input_data") {
  SUBCASE("--input") {
    const auto p = run_cli("import math\nresult = math.sqrt(input_data['x'])", {"--input", R"({"x": 81})"});
    CHECK(p.exit_code == 0);
    CHECK(one_json(p)["result"] == 9.0);
  }
  SUBCASE("--input-file") {
    TempPath input("input.json");
    input.write(R"({"x": 16, "name": "file"})");
    const auto p = run_cli("result = [x, name]", {"--input-file", input.str()});
    CHECK(p.exit_code == 0);
    CHECK(one_json(p)["result"] == json({16, "file"}));
  }
  SUBCASE("no input is {}") {
    const auto p = run_cli("result = input_data");
    CHECK(one_json(p)["result"] == json::object());
  }
  SUBCASE("a small input decodes as a large one does: exact integers, key order, 1e400") {
    // One decoder whatever the size: before, a small input went through a C++ tree (a 20-digit integer
    // became a float, keys came sorted, 1e400 was refused by the worker and the run waited out its timeout).
    const auto p = run_cli("result = [big == 99999999999999999999, list(input_data)[:2], str(huge)]",
                           {"--input", R"({"big": 99999999999999999999, "b": 1, "huge": 1e400})"});
    INFO(describe(p));
    REQUIRE(p.exit_code == 0);
    const json r = one_json(p)["result"];
    CHECK(r[0] == true);
    CHECK(r[1] == json({"big", "b"}));
    CHECK(r[2] == "inf");
  }
  SUBCASE("a large --input-file arrives whole and exact") {
    // Large enough for the worker to take input_data's text apart from the request (no tree in between):
    // escapes, non-ASCII text, nesting, floats and a 100-bit integer come back as they went in.
    json rows = json::array();
    for (int i = 0; i < 20000; ++i)
      rows.push_back({{"id", i}, {"name", "caf\u00e9 \"" + std::to_string(i) + "\"\n"}, {"v", i * 0.25}, {"tags", {i % 3, nullptr, true}}});
    TempPath input("large.json");
    input.write(R"({"rows": )" + rows.dump() + R"(, "big": 1267650600228229401496703205376})");
    const auto p = run_cli("result = [len(rows), rows[7], rows[-1]['name'], big == 2 ** 100]",
                           {"--input-file", input.str(), "--timeout", "60"});
    INFO(describe(p));
    REQUIRE(p.exit_code == 0);
    const json r = one_json(p)["result"];
    CHECK(r[0] == 20000);
    CHECK(r[1] == rows[7]);
    CHECK(r[2] == rows[19999]["name"]);
    CHECK(r[3] == true);
  }
}

TEST_CASE("run --policy FILE applies a TOML policy") {
  TempPath policy("policy.toml");
  policy.write("[policy]\nblocked_imports = [\"json\"]\nmax_output_kb = 64\n");
  const auto p = run_cli("import json", {"--policy", policy.str()});
  const json j = one_json(p);
  CHECK(p.exit_code == 1);
  CHECK(j["ok"] == false);
  CHECK(j["error"] == "ImportError: Import 'json' is blocked by policy");
  CHECK(j["error_kind"] == "blocked_import");
  SUBCASE("top-level keys work too, and flags override the file") {
    TempPath top("policy-top.toml");
    top.write("timeout_seconds = 30\nblocked_imports = []\n");
    const auto p2 = run_cli("while True:\n    pass", {"--policy", top.str(), "--timeout", "0.3"});
    const json j2 = one_json(p2);
    CHECK(p2.exit_code == 124);
    CHECK(j2["error"] == "Execution timed out after 0.3s");
  }
}

TEST_CASE("run: the exit status follows the result") {
  SUBCASE("error -> 1") {
    const auto p = run_cli("raise ValueError('nope')");
    const json j = one_json(p);
    CHECK(p.exit_code == 1);
    CHECK(j["error"] == "ValueError: nope");
    CHECK(contains(j["stderr"].get<std::string>(), "Traceback"));
  }
  SUBCASE("syntax error -> 1") {
    const auto p = run_cli("def (:");
    const json j = one_json(p);
    CHECK(p.exit_code == 1);
    CHECK(j["error_kind"] == "syntax");
  }
  SUBCASE("SystemExit(3) -> 3") {
    const auto p = run_cli("raise SystemExit(3)");
    const json j = one_json(p);
    CHECK(p.exit_code == 3);
    CHECK(j["exit_code"] == 3);
    CHECK(j["error"] == "SystemExit: 3");
  }
  SUBCASE("SystemExit(0) -> 0") {
    const auto p = run_cli("result = 4\nraise SystemExit(0)");
    CHECK(p.exit_code == 0);
    CHECK(one_json(p)["result"] == 4);
  }
  SUBCASE("--timeout 0.3 -> 124") {
    const auto p = run_cli("print('partial')\nwhile True:\n    pass", {"--timeout", "0.3"});
    const json j = one_json(p);
    CHECK(p.exit_code == 124);
    CHECK(j["timed_out"] == true);
    CHECK(j["error"] == "Execution timed out after 0.3s");
    CHECK(j["stdout"] == "partial\n");
  }
  SUBCASE("--memory-mb 64 -> 2") {
    const auto p = run_cli("x = bytearray(150 * 1024 * 1024)", {"--memory-mb", "64"});
    const json j = one_json(p);
    CHECK(p.exit_code == 2);
    CHECK(j["resource_exceeded"] == true);
    CHECK(j["error"] == "Memory limit exceeded");
  }
  SUBCASE("--max-output-kb 1 truncates") {
    const auto p = run_cli("print('\\u00e9' * 2000)", {"--max-output-kb", "1"});
    const json j = one_json(p);
    CHECK(p.exit_code == 0);
    CHECK(j["stdout_truncated"] == true);
    CHECK(j["stdout"].get<std::string>().size() <= 1024);
  }
}

TEST_CASE("run --isolation selects each mode") {
  for (const char* m : {"namespace", "fork", "process"}) {
    CAPTURE(m);
    const auto p = cli({"run", "--isolation", m, "-c", "result = 'ran'"});
    const json j = one_json(p);
    CHECK(p.exit_code == 0);
    CHECK(j["isolation"] == m);
    CHECK(j["result"] == "ran");
  }
}

TEST_CASE("run: the caller's environment does not reach the code") {
  const auto p = run_cli(
      "import random\nprint(dict(random._os.environ))\n"
      "import pathlib\nresult = pathlib.Path('/proc/self/environ').read_bytes().decode('latin-1')");
  INFO(describe(p));
  CHECK_FALSE(contains(p.out, spr_test::kSecret));
  CHECK_FALSE(contains(p.err, spr_test::kSecret));
}

TEST_CASE("run: code writing to the raw fds cannot add to the CLI's stdout or stderr") {
  const auto p = run_cli(
      "import random\nos = random._os\n"
      "for fd in (1, 2):\n"
      "    try:\n"
      "        os.write(fd, b'FORGED-OUTPUT {\"ok\": true, \"result\": 42}\\n')\n"
      "    except Exception:\n"
      "        pass\n"
      "result = 'real'");
  INFO(describe(p));
  const json j = one_json(p);
  CHECK(j["result"] == "real");
  CHECK_FALSE(contains(p.out, "FORGED-OUTPUT"));
  CHECK_FALSE(contains(p.err, "FORGED-OUTPUT"));
}

TEST_CASE("usage and data errors") {
  SUBCASE("an unknown flag -> 64, one line on stderr, nothing on stdout") {
    const auto p = cli({"run", "--no-such-flag", "-c", "result = 1"});
    INFO(describe(p));
    CHECK(p.exit_code == 64);
    CHECK(p.out.empty());
    CHECK(lines_of(p.err).size() == 1);
  }
  SUBCASE("no subcommand -> 64") {
    const auto p = cli({});
    INFO(describe(p));
    CHECK(p.exit_code == 64);
  }
  SUBCASE("an unknown command -> 64, named as such") {
    const auto p = cli({"frob", "-c", "result = 1"});
    INFO(describe(p));
    CHECK(p.exit_code == 64);
    CHECK(p.out.empty());
    CHECK(contains(p.err, "unknown command 'frob'"));
    CHECK(lines_of(p.err).size() == 1);
  }
  SUBCASE("both -c and FILE -> 64") {
    const auto p = cli({"run", "-c", "result = 1", "/dev/null"});
    INFO(describe(p));
    CHECK(p.exit_code == 64);
    CHECK(p.out.empty());
  }
  SUBCASE("--input with NaN or a lone surrogate -> 65, as any text that is not JSON") {
    for (const char* bad : {"[NaN]", R"({"s": "\ud800"})"}) {
      const auto p = cli({"run", "-c", "result = 1", "--input", bad});
      INFO(describe(p));
      CHECK(p.exit_code == 65);
      CHECK(p.out.empty());
    }
  }
  SUBCASE("invalid --input JSON -> 65") {
    const auto p = cli({"run", "-c", "result = 1", "--input", "{not json"});
    INFO(describe(p));
    CHECK(p.exit_code == 65);
    CHECK(p.out.empty());
    CHECK_FALSE(p.err.empty());
  }
  SUBCASE("an unreadable code file -> 65") {
    const auto p = cli({"run", "/nonexistent/spr-code.py"});
    INFO(describe(p));
    CHECK(p.exit_code == 65);
    CHECK(p.out.empty());
    CHECK(contains(p.err, "/nonexistent/spr-code.py"));
  }
  SUBCASE("an unreadable input file -> 65") {
    const auto p = cli({"run", "-c", "result = 1", "--input-file", "/nonexistent/spr-input.json"});
    INFO(describe(p));
    CHECK(p.exit_code == 65);
  }
  SUBCASE("an invalid policy file -> 65") {
    TempPath policy("bad-policy.toml");
    policy.write("[policy]\nmode = \"loose\"\n");
    const auto p = cli({"run", "-c", "result = 1", "--policy", policy.str()});
    INFO(describe(p));
    CHECK(p.exit_code == 65);
    CHECK(p.out.empty());
    CHECK(contains(p.err, "mode must be 'allow' or 'restrict'"));
  }
  SUBCASE("a missing policy file -> 65") {
    const auto p = cli({"run", "-c", "result = 1", "--policy", "/nonexistent/policy.toml"});
    INFO(describe(p));
    CHECK(p.exit_code == 65);
  }
  SUBCASE("an invalid --timeout -> 65") {
    const auto p = cli({"run", "-c", "result = 1", "--timeout", "-2"});
    INFO(describe(p));
    CHECK(p.exit_code == 65);
  }
  SUBCASE("-1 is refused like any other negative value (issue 11)") {
    for (const char* flag : {"--timeout", "--memory-mb", "--max-output-kb"}) {
      CAPTURE(flag);
      const auto p = cli({"run", "-c", "result = 1", flag, "-1"});
      INFO(describe(p));
      CHECK(p.exit_code == 65);
      CHECK(p.out.empty());
    }
  }
  SUBCASE("a worker that exists but cannot start -> 69") {
    const auto p = spr_test::run_program({SPR_TEST_CLI, "run", "-c", "result = 1"}, "", 60,
                                         {"SPR_WORKER=/bin/false", "PATH=/usr/bin:/bin"});
    INFO(describe(p));
    CHECK(p.exit_code == 69);
    CHECK(one_json(p)["error_kind"] == "worker_unavailable");
  }
}

TEST_CASE("SystemExit(n) beyond 255 exits 1; the JSON keeps n") {
  const auto p = run_cli("raise SystemExit(300)");
  const json j = one_json(p);
  CHECK(p.exit_code == 1);
  CHECK(j["exit_code"] == 300);
  CHECK(j["error"] == "SystemExit: 300");
}

TEST_CASE("SystemExit(-1) exits 1; the JSON keeps -1") {
  const auto p = run_cli("raise SystemExit(-1)");
  INFO(describe(p));
  const json j = one_json(p);
  CHECK(p.exit_code == 1);  // a shell would read -1 as 255
  CHECK(j["ok"] == false);
  CHECK(j["exit_code"] == -1);
  CHECK(j["error"] == "SystemExit: -1");
}

TEST_CASE("--max-result-kb caps the result's JSON") {
  const std::string code = "result = 'x' * 4096";
  const auto small = run_cli(code, {"--max-result-kb", "1"});
  INFO(describe(small));
  const json j = one_json(small);
  CHECK(j["ok"] == false);
  CHECK(j["error_kind"] == "result_too_large");
  CHECK(j["result"].is_null());
  CHECK(small.exit_code == 1);
  // The same result under a larger cap (and under the default) comes back whole: the flag is what refused it.
  const auto large = run_cli(code, {"--max-result-kb", "8"});
  INFO(describe(large));
  CHECK(one_json(large)["result"].get<std::string>().size() == 4096);
}

TEST_CASE("policy flags: mode, import and builtin lists, network, scratch dir, CPU time") {
  SUBCASE("--mode allow --allowed-imports") {
    const auto p = run_cli("import math, os\nresult = math.floor(2.5)", {"--mode", "allow", "--allowed-imports", "math,os"});
    const json j = one_json(p);
    CHECK(j["ok"] == true);
    CHECK(j["result"] == 2);
    const auto q = run_cli("import json", {"--mode", "allow", "--allowed-imports", "math"});
    CHECK(one_json(q)["error"] == "ImportError: Import 'json' is not allowed by policy");
  }
  SUBCASE("--blocked-imports replaces the default list; '' empties it") {
    const json j = one_json(run_cli("import json", {"--blocked-imports", "json,pickle"}));
    CHECK(j["error"] == "ImportError: Import 'json' is blocked by policy");
    const json k = one_json(run_cli("import os\nresult = os.sep", {"--blocked-imports", ""}));
    CHECK(k["ok"] == true);
    CHECK(k["result"] == "/");
  }
  SUBCASE("--blocked-builtins and --allowed-builtins") {
    const json j = one_json(run_cli("result = len('ab')", {"--blocked-builtins", "len"}));
    CHECK(j["error"] == "NameError: name 'len' is not defined");
    const json k = one_json(run_cli("result = eval('6 * 7')", {"--mode", "allow", "--allowed-builtins", "eval"}));
    CHECK(k["ok"] == true);
    CHECK(k["result"] == 42);
  }
  SUBCASE("--scratch-dir gives a writable working directory") {
    const json j = one_json(run_cli("import io\nwith io.open('f.txt', 'w') as f:\n    f.write('x')\nresult = 1",
                                    {"--scratch-dir", "--blocked-builtins", ""}));
    CHECK(j["ok"] == true);
    const json k = one_json(run_cli("import io\nio.open('f.txt', 'w')", {"--blocked-builtins", ""}));
    CHECK(k["ok"] == false);
  }
  SUBCASE("--cpu-time") {
    const json j = one_json(run_cli("while True:\n    pass", {"--cpu-time", "0.3", "--timeout", "10"}));
    CHECK(j["ok"] == false);
    CHECK(j["error_kind"] == "cpu_time");
  }
  SUBCASE("--allow-network is accepted and a bad --mode is refused") {
    CHECK(one_json(run_cli("result = 1", {"--allow-network"}))["ok"] == true);
    const auto p = cli({"run", "-c", "result = 1", "--mode", "loose"});
    CHECK(p.exit_code == 65);
    CHECK(contains(p.err, "mode must be 'allow' or 'restrict'"));
  }
}

TEST_CASE("serve: JSON lines in, one response per request with its id") {
  const std::string input =
      "{\"id\": 1, \"code\": \"result = 1\"}\n"
      "this is not json\n"
      "{\"id\": \"two\", \"code\": \"result = x * 2\", \"input_data\": {\"x\": 21}}\n"
      "\n"
      "{\"id\": 3, \"code\": \"raise SystemExit(3)\"}\n"
      "{\"id\": 4, \"code\": \"import os\", \"policy\": {\"timeout_seconds\": 2}}\n"
      "{\"id\": 5, \"nocode\": true}\n"
      "{\"id\": 6, \"code\": \"result = 1\", \"policy\": {\"mode\": \"bogus\"}}\n";
  const auto p = cli({"serve", "--isolation", mode()}, input);
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  CHECK_FALSE(p.timed_out);
  std::map<std::string, json> by_id;
  std::vector<json> null_ids;
  for (const auto& line : lines_of(p.out)) {
    json j;
    REQUIRE_NOTHROW(j = json::parse(line));
    REQUIRE(j.is_object());
    REQUIRE(j.contains("id"));
    if (j["id"].is_null()) null_ids.push_back(j);
    else by_id[j["id"].dump()] = j;
  }
  CHECK(lines_of(p.out).size() == 7);
  REQUIRE(by_id.count("1"));
  REQUIRE(by_id.count("\"two\""));
  REQUIRE(by_id.count("3"));
  REQUIRE(by_id.count("4"));
  CHECK(by_id["1"]["ok"] == true);
  CHECK(by_id["1"]["result"] == 1);
  CHECK(by_id["\"two\""]["result"] == 42);
  CHECK(by_id["3"]["exit_code"] == 3);
  CHECK(by_id["3"]["error"] == "SystemExit: 3");
  CHECK(by_id["4"]["error_kind"] == "blocked_import");
  REQUIRE(null_ids.size() == 1);
  CHECK(null_ids[0]["ok"] == false);
  CHECK(null_ids[0]["error_kind"] == "bad_input");
  REQUIRE(by_id.count("5"));
  CHECK(by_id["5"]["error_kind"] == "bad_input");
  REQUIRE(by_id.count("6"));
  CHECK(by_id["6"]["error_kind"] == "bad_input");
  CHECK(contains(by_id["6"]["error"].get<std::string>(), "mode must be 'allow' or 'restrict'"));
}

TEST_CASE("serve: the operator's --policy is a ceiling; requests may only tighten it") {
  const std::string canary = "/tmp/spr-ceiling-" + std::to_string(getpid());
  const std::string policy_file = "/tmp/spr-ceiling-policy-" + std::to_string(getpid()) + ".toml";
  {
    std::ofstream f(policy_file);
    f << "[policy]\ntimeout_seconds = 2\nblocked_imports = [\"os\", \"subprocess\", \"socket\", \"ctypes\", \"importlib\", \"pickle\"]\n";
  }
  // The loosening request prints once its import of os went through, so its output shows the override applied.
  const std::string loosen = "{\"id\": 1, \"code\": \"import os\\nprint('imported os', flush=True)\\nos.system('touch " +
                             canary + "')\", \"policy\": {\"blocked_imports\": [], \"allow_network\": true}}\n";
  const std::string tighten = "{\"id\": 2, \"code\": \"result = 7\", \"policy\": {\"timeout_seconds\": 1, "
                              "\"blocked_imports\": [\"os\", \"subprocess\", \"socket\", \"ctypes\", \"importlib\", "
                              "\"pickle\", \"json\"]}}\n";
  const std::string longer = "{\"id\": 3, \"code\": \"result = 1\", \"policy\": {\"timeout_seconds\": 10}}\n";
  const auto p = cli({"serve", "--isolation", mode(), "--policy", policy_file}, loosen + tighten + longer);
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  std::map<std::string, json> by_id;
  for (const auto& line : lines_of(p.out)) {
    json j = json::parse(line);
    by_id[j["id"].dump()] = j;
  }
  REQUIRE(by_id.count("1"));
  CHECK(by_id["1"]["error_kind"] == "bad_input");
  CHECK(contains(by_id["1"]["error"].get<std::string>(), "blocked_imports"));
  CHECK(by_id["2"]["result"] == 7);
  CHECK(by_id["3"]["error_kind"] == "bad_input");
  // With the operator's explicit consent, the same loosening request runs (and is stopped only by
  // the sandbox's other layers, not by the policy).
  const auto q =
      cli({"serve", "--isolation", mode(), "--policy", policy_file, "--allow-policy-overrides"}, loosen + longer);
  INFO(describe(q));
  std::map<std::string, json> allowed;
  for (const auto& line : lines_of(q.out)) {
    json j = json::parse(line);
    allowed[j["id"].dump()] = j;
  }
  REQUIRE(allowed.count("1"));
  CHECK(allowed["1"]["error_kind"] != "bad_input");
  CHECK(contains(allowed["1"]["stdout"].get<std::string>(), "imported os"));  // the loosened policy was applied
  REQUIRE(allowed.count("3"));
  CHECK(allowed["3"]["ok"] == true);
  CHECK(access(canary.c_str(), F_OK) != 0);  // and still nothing reached the host's /tmp
  std::remove(policy_file.c_str());
}

TEST_CASE("serve --allow-policy-overrides: a request's python_executable never runs a file it names (issue 17)") {
  // What an earlier run could leave in a directory it may write: a "python" that marks the host when run,
  // and a venv around it. The supervisor must not execute either, in or out of the sandbox.
  TempPath dir("planted-python");
  std::filesystem::create_directories(dir.path / "venv" / "bin");
  const std::string marker = (dir.path / "marker").string();
  const auto plant = [&](const std::filesystem::path& file) {
    std::ofstream(file) << "#!/bin/sh\ntouch " << marker << "\necho '{\"version\": \"3.11\", \"path\": []}'\n";
    std::filesystem::permissions(file, std::filesystem::perms::owner_all);
  };
  plant(dir.path / "python3");
  plant(dir.path / "venv" / "bin" / "python3");
  std::ofstream(dir.path / "venv" / "pyvenv.cfg") << "home = " << (dir.path / "venv" / "bin").string() << "\n";
  std::string reqs;
  int id = 0;
  for (const auto& exe : {dir.path / "python3", dir.path / "venv" / "bin" / "python3"})
    reqs += json{{"id", ++id}, {"code", "result = 1"}, {"policy", {{"python_executable", exe.string()}}}}.dump() + "\n";
  const auto p = cli({"serve", "--isolation", mode(), "--allow-policy-overrides"}, reqs);
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  const auto lines = lines_of(p.out);
  CHECK(lines.size() == 2);
  for (const auto& line : lines) {
    const json j = json::parse(line);
    CHECK(j["ok"] == false);
    CHECK(j["error_kind"] == "worker_unavailable");
  }
  CHECK(access(marker.c_str(), F_OK) != 0);
}

TEST_CASE("serve: a request line over 64 MiB is refused without being kept, and serving goes on") {
  // A well-formed request: without the cap it would run.
  const std::string input = "{\"id\": 1, \"code\": \"result = 1  #" + std::string((64u << 20) + 16, 'x') +
                            "\"}\n{\"id\": 2, \"code\": \"result = 2\"}\n";
  const auto p = cli({"serve", "--isolation", mode()}, input, 120);
  CHECK(p.exit_code == 0);
  const auto out = lines_of(p.out);
  REQUIRE(out.size() == 2);
  std::map<std::string, json> by_id;
  for (const auto& line : out) {
    const json j = json::parse(line);
    by_id[j["id"].dump()] = j;
  }
  REQUIRE(by_id.count("null"));
  CHECK(by_id["null"]["error_kind"] == "bad_input");
  CHECK(contains(by_id["null"]["error"].get<std::string>(), "longer than 64 MiB"));
  CHECK(by_id.count("1") == 0);
  REQUIRE(by_id.count("2"));
  CHECK(by_id["2"]["result"] == 2);
}

TEST_CASE("serve: empty input ends cleanly") {
  const auto p = cli({"serve", "--isolation", mode()}, "");
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  CHECK(p.out.empty());
}

TEST_CASE("--help and --version exit 0") {
  const auto help = cli({"--help"});
  CHECK(help.exit_code == 0);
  CHECK(contains(help.out, "run"));
  CHECK(contains(help.out, "serve"));
  CHECK(contains(help.out, "doctor"));
  // serve --help shows the request and answer line format, not only the flags.
  const auto serve_help = cli({"serve", "--help"});
  CHECK(serve_help.exit_code == 0);
  for (const char* key : {"\"code\": str", "\"stdin\": str", "\"policy\"", "\"session\"", "\"cancel\"",
                          "\"close_session\"", "\"error_kind\"", "\"duration_ms\"", "\"queued_ms\"", "bad_input",
                          "\"files\"", "\"collect\"", "\"call_result\"", "\"files_left_out\""})
    CHECK_MESSAGE(contains(serve_help.out, key), key);
  const auto run_help = cli({"run", "--help"});
  CHECK(run_help.exit_code == 0);
  CHECK(contains(run_help.out, "--timeout"));
  const auto version = cli({"--version"});
  INFO(describe(version));
  CHECK(version.exit_code == 0);
  CHECK(contains(version.out, "safe-py-runner"));
}

TEST_CASE("doctor --json reports every mode's layers (issue 11: subinterpreter too, real version)") {
  const auto p = cli({"doctor", "--json"});
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  json j;
  REQUIRE_NOTHROW(j = json::parse(p.out));
  REQUIRE(j.contains("modes"));
  for (const char* m : {"namespace", "subinterpreter", "fork", "process"}) {
    CAPTURE(m);
    REQUIRE(j["modes"].contains(m));
    CHECK(j["modes"][m]["available"] == true);
    CHECK(j["modes"][m]["layers"].is_array());
    CHECK_FALSE(j["modes"][m]["layers"].empty());
  }
  CHECK(j.contains("python"));
  CHECK(j["version"] == SPR_TEST_VERSION);
  CHECK(j["policy"]["max_stdin_kb"] == 1024);  // the policy in force, whole
  CHECK(j["policy"]["max_output_kb"] == 128);
  CHECK(j["all_layers_active"].is_boolean());
  // The Pythons python_executable may name: pyenv's 3.9.18 on this machine kind has its own worker (issue 20),
  // except in a build with the default Python's worker only (make check-sanitize), which lists none of them.
  REQUIRE(j["pythons"].is_array());
  bool has_39 = false;
  for (const auto& py : j["pythons"]) has_39 = has_39 || py.get<std::string>().rfind("3.9.18 /root/.pyenv/", 0) == 0;
  CHECK(has_39 == static_cast<bool>(SPR_TEST_OTHER_PYTHONS));
  // The default first, then the others by version as numbers (3.9 before 3.13).
  std::vector<std::vector<int>> versions;
  for (std::size_t i = 1; i < j["pythons"].size(); ++i) {
    std::vector<int> v(3, 0);
    std::sscanf(j["pythons"][i].get<std::string>().c_str(), "%d.%d.%d", &v[0], &v[1], &v[2]);
    versions.push_back(v);
  }
  CAPTURE(j["pythons"].dump());
  CHECK(std::is_sorted(versions.begin(), versions.end()));
  const auto text = cli({"doctor"});
  CHECK(contains(text.out, "every CPython 3.9 to 3.13"));
}

TEST_CASE("doctor --json shows each mode's worker start plan, built from the policy in force (issue 17)") {
  TempPath dir("doctor-read");
  spr_test::fs::create_directories(dir.path);
  ::chmod(dir.str().c_str(), 0755);
  TempPath policy("doctor-policy.toml");
  policy.write("[policy]\nallowed_read_paths = [\"" + dir.str() + "\"]\nscratch_limit_mb = 21\nmemory_limit_mb = 200\n");
  const auto p = cli({"doctor", "--json", "--policy", policy.str()});
  INFO(describe(p));
  REQUIRE(p.exit_code == 0);
  json j;
  REQUIRE_NOTHROW(j = json::parse(p.out));
  const unsigned outside = ::geteuid() == 0 ? 65534u : static_cast<unsigned>(::geteuid());
  for (const char* m : {"namespace", "subinterpreter", "fork", "process"}) {
    CAPTURE(m);
    const json& ws = j["modes"][m]["worker_start"];
    REQUIRE(ws.is_object());
    CHECK(ws["isolation"] == m);
    bool read_bound = false, scratch = false;
    for (const auto& mount : ws["mounts"]) {
      read_bound = read_bound || (mount["path"] == dir.str() && mount["how"] == "bind, read-only");
      scratch = scratch || (mount["what"] == "scratch" && mount["size_mb"] == 21);
    }
    CHECK(read_bound);  // the policy's allowed_read_paths are among the mounts
    CHECK(scratch);     // and its scratch_limit_mb is the tmpfs's size
    CHECK(ws["identity"]["outside_uid"] == outside);
    CHECK(ws["pid_namespace"] == true);
    CHECK(ws["seccomp"]["fork"] == (std::string(m) == "fork"));
    CHECK(ws["seccomp"]["network"] == false);
  }
  // A process-mode worker serves one run: the run's own memory limit is its OS backstop.
  CHECK(j["modes"]["process"]["worker_start"]["rlimits"]["memory_backstop_mb"] == 200);
  CHECK(j["modes"]["process"]["worker_start"]["once"] == true);
}

// A worker keeps its library scan (the shared libraries the environment's extension modules load) in a
// directory of this user's between starts; SAFE_PY_RUNNER_CACHE_DIR names it, set but empty turns it off.
TEST_CASE("workers keep their library scan in the cache directory the environment names, and nowhere when told not to") {
  TempPath home("cache-home");
  spr_test::fs::create_directories(home.path);
  const std::string dir = (home.path / "made" / "cache").string();
  auto env_with = [&](const std::string& cache_dir) {
    auto env = cli_env();
    env.push_back("HOME=" + home.str());
    env.push_back("SAFE_PY_RUNNER_CACHE_DIR=" + cache_dir);
    return env;
  };
  auto run = [&](const std::string& cache_dir, std::vector<std::string> args) {
    args.insert(args.begin(), SPR_TEST_CLI);
    return spr_test::run_program(args, "", 120, env_with(cache_dir));
  };
  SUBCASE("named") {
    for (int i = 0; i < 2; ++i) {  // the second start reads what the first one kept
      const auto p = run(dir, {"run", "--isolation", mode(), "-c", "import _ssl\nresult = 1"});
      INFO(describe(p));
      CHECK(p.exit_code == 0);
      CHECK(one_json(p)["result"] == 1);
    }
    struct stat st{};
    REQUIRE(::stat(dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    std::vector<spr_test::fs::path> files;
    for (const auto& e : spr_test::fs::directory_iterator(dir)) files.push_back(e.path());
    REQUIRE(files.size() == 1);
    CHECK(files[0].filename().string().rfind("libdeps-", 0) == 0);
    REQUIRE(::stat(files[0].c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    const auto d = run(dir, {"doctor", "--json"});
    REQUIRE(d.exit_code == 0);
    CHECK(json::parse(d.out)["modes"]["fork"]["worker_start"]["cache_dir"] == dir);
  }
  SUBCASE("set but empty: none, not even under HOME") {
    const auto p = run("", {"run", "--isolation", mode(), "-c", "result = 1"});
    INFO(describe(p));
    CHECK(p.exit_code == 0);
    CHECK(spr_test::fs::is_empty(home.path));
    const auto d = run("", {"doctor", "--json"});
    REQUIRE(d.exit_code == 0);
    CHECK(json::parse(d.out)["modes"]["fork"]["worker_start"]["cache_dir"] == "");
  }
}

TEST_CASE("doctor on a kernel that refuses the mount namespace: the own root is reported off, loudly") {
  // The test worker installed under this name behaves as such a kernel (EPERM from unshare(CLONE_NEWNS)).
  const std::vector<std::string> env = {std::string("SPR_WORKER=") + SPR_TEST_WORKERS_DIR + "/spr-worker-fail-mountns",
                                        "PATH=/usr/bin:/bin"};
  const auto p = spr_test::run_program({SPR_TEST_CLI, "doctor", "--json"}, "", 120, env);
  INFO(describe(p));
  REQUIRE(p.exit_code == 0);
  json j;
  REQUIRE_NOTHROW(j = json::parse(p.out));
  CHECK(j["all_layers_active"] == false);
  for (const char* m : {"namespace", "fork"}) {
    CAPTURE(m);
    std::map<std::string, bool> active;
    for (const auto& l : j["modes"][m]["layers"]) active[l["name"].get<std::string>()] = l["active"].get<bool>();
    CHECK(active.at("root") == false);
    CHECK(active.at("landlock") == true);  // the other layers still apply
    CHECK(active.at("seccomp") == true);
  }
  const auto text = spr_test::run_program({SPR_TEST_CLI, "doctor"}, "", 120, env);
  CHECK(contains(text.out, "[off] root"));
  CHECK(contains(text.out, "Some layers are off on this machine"));
}

// `make run` builds the default Python's worker only: doctor says which other Pythons have none beside it.
TEST_CASE("doctor marks the Pythons whose worker is not built beside the default one") {
  auto pythons = [](const std::string& worker) {
    const auto p = spr_test::run_program({SPR_TEST_CLI, "doctor", "--json"}, "", 120,
                                         {"SPR_WORKER=" + worker, "PATH=/usr/bin:/bin"});
    INFO(describe(p));
    REQUIRE(p.exit_code == 0);
    return json::parse(p.out)["pythons"].get<std::vector<std::string>>();
  };
  const std::string marker = " (its worker is not built)";
  // The build's own worker: an entry is marked exactly when its worker file is missing.
  const std::filesystem::path built = SPR_TEST_WORKER;
  const auto listed = pythons(built.string());
  REQUIRE(!listed.empty());
  CHECK(!contains(listed[0], marker));  // the default one: the worker itself
  for (std::size_t i = 1; i < listed.size(); ++i) {
    CAPTURE(listed[i]);
    const std::string version = listed[i].substr(0, listed[i].find(' '));
    const bool exists = std::filesystem::exists(built.parent_path() / ("spr-worker-python" + version));
    CHECK(contains(listed[i], marker) == !exists);
  }
  // The same worker alone in a folder: every other Python is marked.
  TempPath dir("alone");
  std::filesystem::create_directory(dir.str());
  const std::filesystem::path alone = std::filesystem::path(dir.str()) / "spr-worker";
  std::filesystem::copy_file(built, alone);
  const auto marked = pythons(alone.string());
  REQUIRE(marked.size() == listed.size());
  CHECK(!contains(marked[0], marker));
  for (std::size_t i = 1; i < marked.size(); ++i) CHECK(contains(marked[i], marker));
}

TEST_CASE("doctor prints a summary a person can read") {
  const auto p = cli({"doctor"});
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  CHECK(contains(p.out, std::string("safe-py-runner ") + SPR_TEST_VERSION + ", embedding Python 3."));
  for (const char* m : {"namespace:", "subinterpreter:", "fork:", "process:"}) CHECK(contains(p.out, m));
  CHECK(contains(p.out, "layers active"));
  CHECK(contains(p.out, "start: binds sys.path, allowed_read_paths and devices read-only"));
  CHECK(contains(p.out, "stdin 1024 KiB"));
  CHECK_THROWS(json::parse(p.out));
}

}  // TEST_SUITE

TEST_CASE("run --stdin-file feeds input(); without it input() meets EOF") {
  TempPath in("stdin");
  in.write("alice\nbob\n");
  const auto j = one_json(run_cli("result = [input(), input()]", {"--stdin-file", in.str()}));
  CHECK(j["ok"] == true);
  CHECK(j["result"] == json::array({"alice", "bob"}));
  const auto e = one_json(run_cli("input()"));
  CHECK(e["error"] == "EOFError: EOF when reading a line");
}

TEST_CASE("run --stdin-file: max_stdin_kb caps it, not max_output_kb; too large exits 65 before any run") {
  TempPath in("stdin");
  in.write(std::string(4096, 'x'));
  const auto j = one_json(run_cli("import sys\nresult = len(sys.stdin.read())", {"--stdin-file", in.str(),
                                                                                 "--max-output-kb", "1"}));
  CHECK(j["ok"] == true);
  CHECK(j["result"] == 4096);
  const auto big = run_cli("print('ran')", {"--stdin-file", in.str(), "--max-stdin-kb", "2"});
  INFO(describe(big));
  CHECK(big.exit_code == 65);
  CHECK(big.out.empty());  // no result: the code never ran
  CHECK(contains(big.err, "max_stdin_kb"));
  CHECK(contains(big.err, "4096 bytes"));
  const auto bad = run_cli("result = 1", {"--max-stdin-kb", "-1"});
  CHECK(bad.exit_code == 65);
}

TEST_CASE("run --python picks the interpreter whose packages the code sees") {
  const auto j = one_json(run_cli("import sys\nresult = sys.executable", {"--python", SPR_TEST_PYTHON}));
  CHECK(j["ok"] == true);
  CHECK(j["result"] == SPR_TEST_PYTHON);
  const auto bad = one_json(run_cli("result = 1", {"--python", "/nonexistent/python3"}));
  CHECK(bad["error_kind"] == "worker_unavailable");
  CHECK(contains(bad["error"].get<std::string>(), "/nonexistent/python3"));
}

TEST_CASE("--start-timeout reaches the pool of serve and batch, and is checked") {
  // No worker sends its hello within a millisecond: the option is what the pool waits for.
  const auto served = cli({"serve", "--workers", "1", "--isolation", mode(), "--start-timeout", "0.001"},
                          json{{"id", 1}, {"code", "result = 1"}}.dump() + "\n", 60);
  INFO(describe(served));
  REQUIRE(served.exit_code == 0);
  const json answer = json::parse(served.out);
  CHECK(answer["error_kind"] == "worker_unavailable");
  TempPath cases("cli-start-timeout");
  { std::ofstream(cases.path) << json{{"id", "a"}, {"code", "result = 1"}}.dump() << "\n"; }
  const auto batch = cli({"batch", cases.path.string(), "--isolation", mode(), "--start-timeout", "0.001"}, "", 60);
  INFO(describe(batch));
  CHECK(batch.exit_code == 69);
  for (const char* bad : {"0", "-1", "nan", "3601"}) {
    const auto p = cli({"serve", "--start-timeout", bad}, "", 30);
    INFO(bad << ": " << describe(p));
    CHECK(p.exit_code == 64);
    CHECK(contains(p.err, "--start-timeout"));
  }
}

TEST_CASE("serve --preload: requests carry stdin, preloaded modules import, the policy still applies") {
  const json rows = json::array({json{{"x", 1.5}}, json{{"x", 2}}});
  const std::string reqs =
      json{{"id", 1}, {"code", "import pandas as pd\nresult = float(pd.DataFrame(input_data['rows'])['x'].sum())"},
           {"input_data", {{"rows", rows}}}}.dump() + "\n" +
      json{{"id", 2}, {"code", "result = input()"}, {"stdin", "from the request"}}.dump() + "\n" +
      json{{"id", 3}, {"code", "import socket"}}.dump() + "\n" +
      json{{"id", 4}, {"code", "result = 1"}, {"stdin", 5}}.dump() + "\n";
  // A worker that imports pandas may take longer than the default 10 s to start under a sanitizer or load.
  const std::string start_timeout = std::to_string(10 * spr_test::time_scale());
  const auto p = cli({"serve", "--workers", "1", "--isolation", mode(), "--preload", "numpy,pandas,socket",
                      "--start-timeout", start_timeout}, reqs, 120);
  INFO(describe(p));
  REQUIRE(p.exit_code == 0);
  std::map<int, json> by_id;
  for (const auto& line : lines_of(p.out)) {
    json j = json::parse(line);
    by_id[j["id"].get<int>()] = j;
  }
  REQUIRE(by_id.size() == 4);
  CHECK(by_id[1]["result"] == 3.5);
  CHECK(by_id[2]["result"] == "from the request");
  CHECK(by_id[3]["error_kind"] == "blocked_import");
  CHECK(by_id[4]["error_kind"] == "bad_input");
}

TEST_CASE("run --out-dir: a run's file names never replace a file already there, nor bring back dot files") {
  TempPath out("cli-outdir-kept");
  spr_test::fs::create_directories(out.path / ".git");
  const auto put = [](const spr_test::fs::path& p, const std::string& text) { std::ofstream(p) << text; };
  const auto text_of = [](const spr_test::fs::path& p) {
    std::ifstream f(p);
    return std::string(std::istreambuf_iterator<char>(f), {});
  };
  put(out.path / ".git" / "config", "host config");
  put(out.path / "notes.txt", "host notes");
  // The run chooses its names: a dot file, a file under a dot folder, and the name of a file already there.
  const std::string code = "import pathlib\n"
                           "pathlib.Path('.git').mkdir()\n"
                           "pathlib.Path('.git/config').write_text('from the run')\n"
                           "pathlib.Path('.bashrc').write_text('from the run')\n"
                           "pathlib.Path('notes.txt').write_text('from the run')\n";
  const std::vector<std::string> args = {"--collect", "*", "--collect", "*/*", "--out-dir", out.str()};
  const ProcResult kept = run_cli(code, args);
  INFO(describe(kept));
  CHECK(kept.exit_code == 65);
  CHECK(contains(kept.err, "--replace"));
  // Nothing of the run is lost: the JSON carries the files it could not write.
  const json j = one_json(kept);
  CHECK(j["files"] == json{{"notes.txt", "from the run"}});
  CHECK(text_of(out.path / "notes.txt") == "host notes");
  CHECK(text_of(out.path / ".git" / "config") == "host config");
  CHECK_FALSE(spr_test::fs::exists(out.path / ".bashrc"));
  // --replace overwrites what `*` matched, and still nothing whose name starts with a dot.
  std::vector<std::string> replacing = args;
  replacing.push_back("--replace");
  const ProcResult replaced = run_cli(code, replacing);
  INFO(describe(replaced));
  CHECK(replaced.exit_code == 0);
  CHECK(text_of(out.path / "notes.txt") == "from the run");
  CHECK(text_of(out.path / ".git" / "config") == "host config");
  CHECK_FALSE(spr_test::fs::exists(out.path / ".bashrc"));
  // A pattern that spells the dot asks for dot files.
  const json dots = one_json(run_cli(code, {"--collect", ".*"}));
  CHECK(dots["files"].contains(".bashrc"));
}

TEST_CASE("run --file, --collect and --out-dir move files in and out of a run") {
  TempPath in("cli-files-in"), out("cli-files-out"), outside("cli-files-outside");
  in.write("3,4\n");
  const std::vector<std::string> args = {"--blocked-builtins", "eval,exec", "--file", "nums.csv=" + in.str(),
                                         "--collect", "*.txt", "--collect", "*.bin", "--out-dir", out.str()};
  const std::string code = "a, b = open('nums.csv').read().split(',')\n"
                           "open('sum.txt', 'w').write(str(int(a) + int(b)))\n"
                           "open('raw.bin', 'wb').write(bytes([0, 255]))\n";
  const ProcResult p = run_cli(code, args);
  const json j = one_json(p);
  INFO(describe(p));
  CHECK(p.exit_code == 0);
  CHECK(j["files_written"] == json::array({"raw.bin", "sum.txt"}));
  CHECK_FALSE(j.contains("files"));
  std::ifstream sum(out.path / "sum.txt");
  CHECK(std::string(std::istreambuf_iterator<char>(sum), {}) == "7");
  CHECK(spr_test::fs::file_size(out.path / "raw.bin") == 2);
  // A link in the output folder is refused, never written through.
  spr_test::fs::remove(out.path / "sum.txt");
  spr_test::fs::create_symlink(outside.path, out.path / "sum.txt");
  std::vector<std::string> replacing = args;
  replacing.push_back("--replace");  // raw.bin is there from the first run
  const ProcResult linked = run_cli(code, replacing);
  CHECK(linked.exit_code == 65);
  CHECK(contains(linked.err, "sum.txt"));
  CHECK_FALSE(spr_test::fs::exists(outside.path));
  // Without --out-dir the files are in the JSON: text as text, bytes as base64.
  const json k = one_json(run_cli("open('r.bin', 'wb').write(bytes([0, 255]))",
                                  {"--blocked-builtins", "eval", "--collect", "*.bin"}));
  CHECK(k["files"]["r.bin"] == json{{"base64", "AP8="}});
  // A name outside the run directory is refused before anything runs.
  const ProcResult bad = run_cli("print('ran')", {"--file", "../x=" + in.str()});
  CHECK(bad.exit_code == 65);
  CHECK(bad.out.empty());
  CHECK(contains(bad.err, "'..' component"));
}
