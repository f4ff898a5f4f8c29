// Files in and out of a run (RunOptions::files / collect): round trips, the cap, refused names, links.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include "helpers.hpp"

using spr::json;
using spr_test::describe;
using spr_test::TempPath;

namespace {

// `open` is blocked by default; these runs read and write their own directory.
spr::RunnerPolicy file_policy() {
  spr::RunnerPolicy p = spr_test::policy();
  p.blocked_builtins = {"eval", "exec", "compile", "breakpoint"};
  return p;
}

spr::RunResult run_files(const std::string& code, const spr::Files& files, const std::vector<std::string>& collect,
                         const spr::RunnerPolicy& p) {
  spr::RunOptions o;
  o.files = files;
  o.collect = collect;
  return spr_test::runner().run(code, json::object(), p, o);
}

const std::string kBinary("\x89PNG\r\n\x1a\n\x00\xff\xfe", 11);

}  // namespace

TEST_CASE("files: text and bytes go in, matching files come back") {
  const std::string code =
      "t = open('in.txt', encoding='utf-8').read()\n"
      "b = open('data/blob.bin', 'rb').read()\n"
      "open('out.txt', 'w', encoding='utf-8').write(t.upper())\n"
      "open('out.bin', 'wb').write(b[::-1])\n"
      "open('skip.log', 'w').write('not collected')\n"
      "result = [t, len(b)]\n";
  const spr::RunResult r = run_files(code, {{"in.txt", "h\xc3\xa9llo\n"}, {"data/blob.bin", kBinary}},
                                     {"out.*", "data/*.bin"}, file_policy());
  INFO(describe(r));
  REQUIRE(r.ok);
  CHECK(r.result == json::array({"h\xc3\xa9llo\n", 11}));
  CHECK(r.files.size() == 3);
  CHECK(r.files.at("out.txt") == "H\xc3\x89LLO\n");
  CHECK(r.files.at("out.bin") == std::string(kBinary.rbegin(), kBinary.rend()));
  CHECK(r.files.at("data/blob.bin") == kBinary);
  CHECK(r.files_left_out.empty());
  // The JSON form: text as a string, bytes as base64.
  const json j = r.to_json();
  CHECK(j["files"]["out.txt"] == "H\xc3\x89LLO\n");
  CHECK(j["files"]["data/blob.bin"] == json{{"base64", "iVBORw0KGgoA//4="}});
}

TEST_CASE("files: the next run starts without the last run's files") {
  const spr::RunResult a = run_files("open('left.txt', 'w').write('x')", {}, {"*"}, file_policy());
  REQUIRE(a.ok);
  CHECK(a.files.count("left.txt") == 1);
  const spr::RunResult b = run_files("result = 1", {}, {"*"}, file_policy());
  INFO(describe(b));
  REQUIRE(b.ok);
  CHECK(b.files.empty());
}

TEST_CASE("files: max_files_kb caps what comes back and names what was left out") {
  spr::RunnerPolicy p = file_policy();
  p.max_files_kb = 3;
  const spr::RunResult r =
      run_files("result = 1", {{"a.txt", std::string(3000, 'a')}, {"b.txt", std::string(600, 'b')}, {"c.txt", "c"}},
                {"*.txt"}, p);
  INFO(describe(r));
  REQUIRE(r.ok);
  CHECK(r.files.count("a.txt") == 1);
  CHECK(r.files.count("b.txt") == 0);
  CHECK(r.files.count("c.txt") == 1);  // later files that still fit are kept
  CHECK(r.files_left_out == std::vector<std::string>{"b.txt"});
  CHECK(r.to_json()["files_left_out"] == json::array({"b.txt"}));
  p.max_files_kb = 0;
  const spr::RunResult none = run_files("result = 1", {{"a.txt", "a"}}, {"*.txt"}, p);
  CHECK(none.files.empty());
  CHECK(none.files_left_out == std::vector<std::string>{"a.txt"});
}

TEST_CASE("files: names and patterns outside the run directory are refused before the run") {
  TempPath outside("files-escape");
  const std::string rel = "../../../../../../../../.." + outside.str();
  for (const std::string& name : {rel, outside.str(), std::string("a//b"), std::string("a/"), std::string(""),
                                  std::string("a/../b"), std::string("."), std::string("x\0y", 3),
                                  std::string("a/./b"), std::string("..")}) {
    CAPTURE(name);
    const spr::RunResult r = run_files("print('ran')", {{name, "escaped"}}, {}, file_policy());
    CHECK(r.error_kind == spr::ErrorKind::bad_input);
    CHECK(r.stdout_text.empty());
    CHECK(spr_test::contains(r.error.value_or(""), "bad files"));
    CHECK_FALSE(spr_test::fs::exists(outside.path));  // nothing written on the host
  }
  for (const std::string& pattern : {std::string("../*"), std::string("/etc/*"), std::string("a/../*")}) {
    CAPTURE(pattern);
    const spr::RunResult r = run_files("print('ran')", {}, {pattern}, file_policy());
    CHECK(r.error_kind == spr::ErrorKind::bad_input);
    CHECK(r.stdout_text.empty());
  }
}

TEST_CASE("files: a link the run plants to a host file is never followed by collect") {
  TempPath dir("files-secret");
  spr_test::fs::create_directories(dir.path);
  const std::string secret_path = (dir.path / "secret.txt").string();
  const std::string secret = "collect-must-not-read-this-2f9c";
  std::ofstream(secret_path) << secret;
  ::chmod(dir.str().c_str(), 0755);
  ::chmod(secret_path.c_str(), 0644);
  spr::RunnerPolicy p = file_policy();
  p.blocked_imports = {};
  p.allowed_read_paths = {dir.str()};
  // The run can read the file itself (so a collect that followed the link would find it), and plants
  // links to it and to its directory under names collect asks for.
  const std::string code = "import os\n"
                           "result = len(open(" + json(secret_path).dump() + ").read())\n"
                           "os.symlink(" + json(secret_path).dump() + ", 'leak.txt')\n"
                           "os.symlink(" + json(dir.str()).dump() + ", 'leakdir')\n"
                           "open('own.txt', 'w').write('mine')\n";
  const spr::RunResult r = run_files(code, {}, {"*", "*/*"}, p);
  INFO(describe(r));
  REQUIRE(r.ok);
  CHECK(r.result == static_cast<int>(secret.size()));
  CHECK(r.files.count("own.txt") == 1);
  CHECK(r.files.count("leak.txt") == 0);
  CHECK(r.files.count("leakdir/secret.txt") == 0);
  CHECK_FALSE(spr_test::contains(r.to_json().dump(), secret));
  for (const auto& [name, content] : r.files) CHECK_FALSE(spr_test::contains(content, secret));
}

TEST_CASE("files: a ceiling without scratch_dir refuses files") {
  spr::RunnerOptions o = spr_test::runner_options();
  o.workers = 1;
  o.policy_is_ceiling = true;
  spr::Runner ceiling(o);
  spr::RunOptions with_files;
  with_files.files = {{"a.txt", "a"}};
  CHECK_THROWS_AS(ceiling.run("result = 1", json::object(), o.policy, with_files), spr::PolicyError);
}
