// Unit tests of RunnerPolicy: the original's defaults, JSON and TOML forms, and its error messages.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <limits>
#include <fstream>
#include <string>
#include <vector>

#include "spr/runner.hpp"

using spr::json;
using spr::PolicyError;
using spr::RunnerPolicy;
using Strings = std::vector<std::string>;

namespace {

// The message of the PolicyError `f` throws; fails the test when it throws nothing or something else.
template <class F>
std::string policy_error(F&& f) {
  try {
    f();
  } catch (const PolicyError& e) {
    return e.what();
  } catch (const std::exception& e) {
    FAIL("expected PolicyError, got another exception: " << e.what());
  } catch (...) {
    FAIL("expected PolicyError, got a non-standard exception");
  }
  FAIL("expected PolicyError, nothing was thrown");
  return {};
}

const char* kEveryFieldToml = R"(
mode = "allow"
timeout_seconds = 2.5
memory_limit_mb = 128
max_output_kb = 64
max_result_kb = 32
max_stdin_kb = 8
max_files_kb = 48
max_host_calls = 7
max_host_call_kb = 16
cpu_time_seconds = 1.5
blocked_imports = ["os", "sys"]
allowed_imports = ["math", "json"]
blocked_builtins = ["eval"]
allowed_builtins = ["print", "len"]
blocked_globals = ["secret"]
allowed_globals = ["x", "y"]
isolation = "namespace"
allow_network = true
allow_unix_sockets = true
allowed_read_paths = ["/usr/share"]
scratch_dir = true
scratch_limit_mb = 32
trust_domain = "tenant-7"
python_executable = "/usr/bin/python3"

[extra_globals]
name = "spr"
n = 3
ratio = 0.5
flags = [true, false]
nested = { a = 1 }
)";

void check_every_field(const RunnerPolicy& p) {
  CHECK(p.mode == spr::Mode::allow);
  CHECK(p.timeout_seconds == 2.5);
  CHECK(p.memory_limit_mb == 128);
  CHECK(p.max_output_kb == 64);
  CHECK(p.max_result_kb == 32);
  CHECK(p.max_stdin_kb == 8);
  CHECK(p.max_files_kb == 48);
  CHECK(p.max_host_calls == 7);
  CHECK(p.max_host_call_kb == 16);
  CHECK(p.cpu_time_seconds == 1.5);
  CHECK(p.blocked_imports == Strings{"os", "sys"});
  CHECK(p.allowed_imports == Strings{"math", "json"});
  CHECK(p.blocked_builtins == Strings{"eval"});
  CHECK(p.allowed_builtins == Strings{"print", "len"});
  CHECK(p.blocked_globals == Strings{"secret"});
  CHECK(p.allowed_globals == Strings{"x", "y"});
  CHECK(p.isolation == spr::Isolation::namespace_);
  CHECK(p.allow_network);
  CHECK(p.allow_unix_sockets);
  CHECK(p.allowed_read_paths == Strings{"/usr/share"});
  CHECK(p.scratch_dir);
  CHECK(p.scratch_limit_mb == 32);
  CHECK(p.trust_domain == "tenant-7");
  CHECK(p.python_executable == "/usr/bin/python3");
  CHECK(p.extra_globals ==
        json({{"name", "spr"}, {"n", 3}, {"ratio", 0.5}, {"flags", {true, false}}, {"nested", {{"a", 1}}}}));
}

}  // namespace

TEST_CASE("policy: defaults equal the original's table") {
  const RunnerPolicy p;
  CHECK(p.mode == spr::Mode::restrict);
  CHECK(p.timeout_seconds == 5.0);
  CHECK(p.memory_limit_mb == 256);
  CHECK(p.max_output_kb == 128);
  CHECK(p.max_result_kb == 1024);
  CHECK(p.max_stdin_kb == 1024);
  CHECK(p.cpu_time_seconds == 0);
  CHECK(p.blocked_imports == Strings{"os", "subprocess", "socket", "ctypes", "importlib"});
  CHECK(p.allowed_imports.empty());
  CHECK(p.blocked_builtins == Strings{"eval", "exec", "open", "compile", "breakpoint"});
  CHECK(p.allowed_builtins.empty());
  CHECK(p.blocked_globals.empty());
  CHECK(p.allowed_globals.empty());
  CHECK(p.extra_globals == json::object());
  CHECK(p.isolation == spr::Isolation::fork);
  CHECK_FALSE(p.allow_network);
  CHECK_FALSE(p.allow_unix_sockets);
  CHECK(p.allowed_read_paths.empty());
  CHECK_FALSE(p.scratch_dir);
  CHECK_NOTHROW(p.validate());
}

TEST_CASE("policy: to_json lists every field with its default") {
  const json j = RunnerPolicy{}.to_json();
  CHECK(j["mode"] == "restrict");
  CHECK(j["timeout_seconds"] == 5.0);
  CHECK(j["memory_limit_mb"] == 256);
  CHECK(j["max_output_kb"] == 128);
  CHECK(j["max_result_kb"] == 1024);
  CHECK(j["max_stdin_kb"] == 1024);
  CHECK(j["blocked_imports"] == json({"os", "subprocess", "socket", "ctypes", "importlib"}));
  CHECK(j["blocked_builtins"] == json({"eval", "exec", "open", "compile", "breakpoint"}));
  CHECK(j["allowed_imports"] == json::array());
  CHECK(j["extra_globals"] == json::object());
  CHECK(j["isolation"] == "fork");
  CHECK(j["trust_domain"] == "");
  CHECK(j["python_executable"] == "");
  CHECK(j["allow_unix_sockets"] == false);
  CHECK(j["scratch_limit_mb"] == 64);
  CHECK(j["max_host_calls"] == 10000);
  CHECK(j["max_host_call_kb"].is_null());  // unset: max_result_kb
  CHECK(RunnerPolicy{}.host_call_kb() == 1024);
  CHECK(j["max_files_kb"] == 1024);
  CHECK(j.size() == 25);
}

TEST_CASE("policy: from_json sets every field") {
  const json j = {{"mode", "allow"},
                  {"timeout_seconds", 2.5},
                  {"memory_limit_mb", 128},
                  {"max_output_kb", 64},
                  {"max_result_kb", 32},
                  {"max_stdin_kb", 8},
                  {"max_files_kb", 48},
                  {"max_host_calls", 7},
                  {"max_host_call_kb", 16},
                  {"cpu_time_seconds", 1.5},
                  {"blocked_imports", {"os", "sys"}},
                  {"allowed_imports", {"math", "json"}},
                  {"blocked_builtins", {"eval"}},
                  {"allowed_builtins", {"print", "len"}},
                  {"blocked_globals", {"secret"}},
                  {"allowed_globals", {"x", "y"}},
                  {"extra_globals",
                   {{"name", "spr"}, {"n", 3}, {"ratio", 0.5}, {"flags", {true, false}}, {"nested", {{"a", 1}}}}},
                  {"isolation", "namespace"},
                  {"allow_network", true},
                  {"allow_unix_sockets", true},
                  {"allowed_read_paths", {"/usr/share"}},
                  {"scratch_dir", true},
                  {"scratch_limit_mb", 32},
                  {"trust_domain", "tenant-7"},
                  {"python_executable", "/usr/bin/python3"}};
  const RunnerPolicy p = RunnerPolicy::from_json(j);
  check_every_field(p);
  SUBCASE("and to_json gives them back") { CHECK(p.to_json() == j); }
  SUBCASE("and from_json(to_json()) is the same policy") { check_every_field(RunnerPolicy::from_json(p.to_json())); }
}

TEST_CASE("policy: from_json applies only the fields given, on top of the base") {
  RunnerPolicy base;
  base.timeout_seconds = 9;
  base.blocked_imports = {"json"};
  const RunnerPolicy p = RunnerPolicy::from_json(json{{"memory_limit_mb", 64}}, base);
  CHECK(p.memory_limit_mb == 64);
  CHECK(p.timeout_seconds == 9);
  CHECK(p.blocked_imports == Strings{"json"});
  CHECK(RunnerPolicy::from_json(json::object()).to_json() == RunnerPolicy{}.to_json());
}

TEST_CASE("policy: every isolation name is accepted") {
  CHECK(RunnerPolicy::from_json(json{{"isolation", "namespace"}}).isolation == spr::Isolation::namespace_);
  CHECK(RunnerPolicy::from_json(json{{"isolation", "fork"}}).isolation == spr::Isolation::fork);
  CHECK(RunnerPolicy::from_json(json{{"isolation", "process"}}).isolation == spr::Isolation::process);
  CHECK(spr::to_string(spr::Isolation::namespace_) == "namespace");
  CHECK(spr::to_string(spr::Mode::allow) == "allow");
  CHECK(spr::to_string(spr::Mode::restrict) == "restrict");
}

TEST_CASE("policy: from_toml with every field, top-level keys") { check_every_field(RunnerPolicy::from_toml(kEveryFieldToml)); }

TEST_CASE("policy: from_toml with every field, in a [policy] table") {
  std::string text = kEveryFieldToml;
  // Same keys under [policy]; the extra_globals table becomes [policy.extra_globals].
  const auto pos = text.find("[extra_globals]");
  REQUIRE(pos != std::string::npos);
  text.replace(pos, std::string("[extra_globals]").size(), "[policy.extra_globals]");
  text = "[policy]\n" + text;
  check_every_field(RunnerPolicy::from_toml(text));
}

TEST_CASE("policy: TOML integers are accepted for a number field") {
  const RunnerPolicy p = RunnerPolicy::from_toml("[policy]\ntimeout_seconds = 2\n");
  CHECK(p.timeout_seconds == 2.0);
  CHECK(p.memory_limit_mb == 256);
}

TEST_CASE("policy: an empty TOML document gives the defaults, with the lists it leaves out empty (issue 11)") {
  RunnerPolicy expected;
  expected.blocked_imports.clear();
  expected.blocked_builtins.clear();
  CHECK(RunnerPolicy::from_toml("").to_json() == expected.to_json());
  const RunnerPolicy p = RunnerPolicy::from_toml("[policy]\nblocked_builtins = ['eval']\n");
  CHECK(p.blocked_imports.empty());
  CHECK(p.blocked_builtins == Strings{"eval"});
}

TEST_CASE("policy: error messages are the original's") {
  SUBCASE("mode") {
    CHECK(policy_error([] { RunnerPolicy::from_json(json{{"mode", "open"}}); }) ==
          "mode must be 'allow' or 'restrict'");
    CHECK(policy_error([] { RunnerPolicy::from_toml("mode = 'permissive'\n"); }) ==
          "mode must be 'allow' or 'restrict'");
    CHECK(policy_error([] { RunnerPolicy::from_json(json{{"mode", 1}}); }) == "mode must be 'allow' or 'restrict'");
  }
  SUBCASE("a list field that is not a list") {
    CHECK(policy_error([] { RunnerPolicy::from_toml("blocked_imports = 'os'\n"); }) ==
          "'blocked_imports' must be a list of strings");
    CHECK(policy_error([] { RunnerPolicy::from_json(json{{"blocked_imports", "os"}}); }) ==
          "'blocked_imports' must be a list of strings");
    CHECK(policy_error([] { RunnerPolicy::from_json(json{{"allowed_builtins", 3}}); }) ==
          "'allowed_builtins' must be a list of strings");
  }
  SUBCASE("a list field holding a non-string") {
    CHECK(policy_error([] { RunnerPolicy::from_toml("blocked_imports = ['os', 1]\n"); }) ==
          "'blocked_imports' must contain only strings");
    CHECK(policy_error([] { RunnerPolicy::from_json(json{{"blocked_imports", {"os", nullptr}}}); }) ==
          "'blocked_imports' must contain only strings");
    CHECK(policy_error([] { RunnerPolicy::from_toml("[policy]\nblocked_globals = [['x']]\n"); }) ==
          "'blocked_globals' must contain only strings");
  }
  SUBCASE("extra_globals that is not a table") {
    CHECK(policy_error([] { RunnerPolicy::from_toml("extra_globals = 3\n"); }) ==
          "'extra_globals' must be a TOML table");
    CHECK(policy_error([] { RunnerPolicy::from_toml("[policy]\nextra_globals = [1, 2]\n"); }) ==
          "'extra_globals' must be a TOML table");
  }
  SUBCASE("an unknown key names the key") {
    const std::string toml_msg = policy_error([] { RunnerPolicy::from_toml("[policy]\ntimeout = 3\n"); });
    CHECK(toml_msg.find("'timeout'") != std::string::npos);
    const std::string json_msg = policy_error([] { RunnerPolicy::from_json(json{{"no_such_field", 1}}); });
    CHECK(json_msg.find("'no_such_field'") != std::string::npos);
    const std::string top_msg = policy_error([] { RunnerPolicy::from_toml("[policy]\nmode = 'allow'\n[other]\nx = 1\n"); });
    CHECK(top_msg.find("'other'") != std::string::npos);
  }
  SUBCASE("invalid TOML") {
    const std::string msg = policy_error([] { RunnerPolicy::from_toml("mode = = 'allow'\n"); });
    CHECK(msg.find("TOML") != std::string::npos);
  }
  SUBCASE("a non-object JSON policy") {
    CHECK_THROWS_AS(RunnerPolicy::from_json(json::array()), PolicyError);
  }
}

TEST_CASE("policy: validate() rejects out-of-range values") {
  SUBCASE("zero timeout is accepted, as in the original (issue 11)") {
    RunnerPolicy p;
    p.timeout_seconds = 0;
    CHECK_NOTHROW(p.validate());
  }
  SUBCASE("negative timeout") {
    RunnerPolicy p;
    p.timeout_seconds = -1;
    CHECK_THROWS_AS(p.validate(), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"timeout_seconds", -0.5}}), PolicyError);
  }
  SUBCASE("non-finite timeout") {
    RunnerPolicy p;
    p.timeout_seconds = std::numeric_limits<double>::quiet_NaN();
    CHECK_THROWS_AS(p.validate(), PolicyError);
    p.timeout_seconds = std::numeric_limits<double>::infinity();
    CHECK_THROWS_AS(p.validate(), PolicyError);
  }
  SUBCASE("zero memory") {
    RunnerPolicy p;
    p.memory_limit_mb = 0;
    CHECK_THROWS_AS(p.validate(), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_toml("memory_limit_mb = 0\n"), PolicyError);
  }
  SUBCASE("negative memory") {
    RunnerPolicy p;
    p.memory_limit_mb = -5;
    CHECK_THROWS_AS(p.validate(), PolicyError);
  }
  SUBCASE("unknown isolation") {
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"isolation", "vm"}}), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_toml("isolation = 'thread'\n"), PolicyError);
  }
  SUBCASE("wrong types") {
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"timeout_seconds", "5"}}), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"timeout_seconds", true}}), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"memory_limit_mb", 1.5}}), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"allow_network", 1}}), PolicyError);
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"allow_unix_sockets", "yes"}}), PolicyError);
  }
  SUBCASE("relative read path") {
    CHECK_THROWS_AS(RunnerPolicy::from_json(json{{"allowed_read_paths", {"etc"}}}), PolicyError);
  }
}

TEST_CASE("policy: from_file reads TOML and fails cleanly on a missing file") {
  namespace fs = std::filesystem;
  const fs::path path = fs::temp_directory_path() / ("spr-policy-" + std::to_string(::getpid()) + ".toml");
  SUBCASE("an existing file") {
    std::ofstream(path) << "[policy]\ntimeout_seconds = 1.25\nblocked_imports = ['json']\n";
    const RunnerPolicy p = RunnerPolicy::from_file(path);
    CHECK(p.timeout_seconds == 1.25);
    CHECK(p.blocked_imports == Strings{"json"});
  }
  SUBCASE("an invalid file names the file and the field") {
    std::ofstream(path) << "[policy]\nmode = 'loose'\n";
    const std::string msg = policy_error([&] { RunnerPolicy::from_file(path); });
    CHECK(msg.find(path.string()) != std::string::npos);
    CHECK(msg.find("mode must be 'allow' or 'restrict'") != std::string::npos);
  }
  SUBCASE("a missing file") {
    const fs::path missing = fs::temp_directory_path() / "spr-no-such-policy-file-xyz.toml";
    REQUIRE_FALSE(fs::exists(missing));
    CHECK_THROWS_AS(RunnerPolicy::from_file(missing), PolicyError);
  }
  std::error_code ec;
  fs::remove(path, ec);
}

TEST_CASE("policy: looser_than names the first field that loosens a ceiling") {
  RunnerPolicy ceiling;
  ceiling.timeout_seconds = 2;
  ceiling.cpu_time_seconds = 1;
  ceiling.allowed_read_paths = {"/usr/share"};
  RunnerPolicy same = ceiling;
  CHECK(same.looser_than(ceiling).empty());

  RunnerPolicy tighter = ceiling;
  tighter.timeout_seconds = 1;
  tighter.memory_limit_mb = 64;
  tighter.cpu_time_seconds = 0.5;
  tighter.blocked_imports.push_back("pickle");
  tighter.isolation = spr::Isolation::process;
  tighter.allowed_read_paths = {"/usr/share/zoneinfo"};
  tighter.extra_globals = {{"k", 1}};
  tighter.trust_domain = "alice";
  CHECK(tighter.looser_than(ceiling).empty());

  auto loosened = [&](auto change) {
    RunnerPolicy p = ceiling;
    change(p);
    return p.looser_than(ceiling);
  };
  CHECK(loosened([](RunnerPolicy& p) { p.timeout_seconds = 3; }).find("'timeout_seconds'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.memory_limit_mb = 512; }).find("'memory_limit_mb'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.max_output_kb = 129; }).find("'max_output_kb'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.max_result_kb = 2048; }).find("'max_result_kb'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.max_stdin_kb = 1025; }).find("'max_stdin_kb'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.max_files_kb = 1025; }).find("'max_files_kb'") == 0);
  CHECK_THROWS_AS(RunnerPolicy::from_json(spr::json{{"max_files_kb", -1}}), spr::PolicyError);
  CHECK(RunnerPolicy::from_toml("max_files_kb = 8").max_files_kb == 8);
  CHECK(RunnerPolicy::from_json(spr::json{{"max_files_kb", 8}}).to_json()["max_files_kb"] == 8);
  CHECK(loosened([](RunnerPolicy& p) { p.max_host_calls = 10001; }).find("'max_host_calls'") == 0);
  // Unset, max_host_call_kb follows max_result_kb: a larger one loosens the ceiling's.
  CHECK(loosened([](RunnerPolicy& p) { p.max_host_call_kb = 1025; }).find("'max_host_call_kb'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.max_host_call_kb = 1024; }).empty());
  CHECK(loosened([](RunnerPolicy& p) { p.cpu_time_seconds = 0; }).find("'cpu_time_seconds'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.blocked_imports = {}; }).find("'blocked_imports'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.blocked_builtins.pop_back(); }).find("'blocked_builtins'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.allowed_imports = {"os"}; }).find("'allowed_imports'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.isolation = spr::Isolation::namespace_; }).find("'isolation'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.allow_network = true; }).find("'allow_network'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.allow_unix_sockets = true; }).find("'allow_unix_sockets'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.scratch_dir = true; }).find("'scratch_dir'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.scratch_limit_mb = 65; }).find("'scratch_limit_mb'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.allowed_read_paths = {"/usr/sharex"}; }).find("'allowed_read_paths'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.allowed_read_paths = {"/usr"}; }).find("'allowed_read_paths'") == 0);
  CHECK(loosened([](RunnerPolicy& p) { p.mode = spr::Mode::allow; }).find("'mode'") == 0);
}

TEST_CASE("allowed_read_paths: '.', '..' and '//' are refused; a ceiling compares where paths lead") {
  for (const char* bad : {"/tmp/ok/..", "/tmp/ok/../etc", "/tmp/./ok", "/tmp//ok", "/tmp/ok/."}) {
    CAPTURE(bad);
    CHECK_THROWS_AS(spr::RunnerPolicy::from_json({{"allowed_read_paths", {bad}}}), spr::PolicyError);
  }
  namespace fs = std::filesystem;
  const fs::path base = fs::temp_directory_path() / ("spr-ceiling-" + std::to_string(::getpid()));
  fs::create_directories(base / "ok");
  fs::create_symlink(base, base / "ok" / "up");  // a link inside the allowed directory, pointing out of it
  spr::RunnerPolicy ceiling;
  ceiling.allowed_read_paths = {(base / "ok").string()};
  spr::RunnerPolicy inside = ceiling, via_link = ceiling;
  inside.allowed_read_paths = {(base / "ok").string()};
  via_link.allowed_read_paths = {(base / "ok" / "up").string()};
  CHECK(inside.looser_than(ceiling).empty());
  CHECK_FALSE(via_link.looser_than(ceiling).empty());
  fs::remove_all(base);
}

TEST_CASE("trust_domain: free under a ceiling without one, pinned by a ceiling that sets one") {
  spr::RunnerPolicy open_ceiling, pinned;
  pinned.trust_domain = "alice";
  spr::RunnerPolicy request;
  request.trust_domain = "mallory";
  CHECK(request.looser_than(open_ceiling).empty());
  CHECK_FALSE(request.looser_than(pinned).empty());
  request.trust_domain = "alice";
  CHECK(request.looser_than(pinned).empty());
}
