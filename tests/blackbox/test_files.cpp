// Files in and out of a run (RunOptions::files / collect): round trips, the cap, refused names, links.
#include <doctest/doctest.h>
#include <sys/stat.h>

#include <algorithm>
#include <set>

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

// The collector once kept a descriptor per match until it read them: past the run's descriptor limit
// (about 60 matches) the rest were dropped with nothing said. Every match is returned or named, and what
// the lists cannot hold (256 each) is said by files_truncated.
TEST_CASE("files: every match is returned, named as left out, or counted by files_truncated") {
  for (const int n : {100, 300, 700}) {
    CAPTURE(n);
    const spr::RunResult r = run_files("for i in range(" + std::to_string(n) + "):\n"
                                       "    open('out%03d.txt' % i, 'w').write(str(i))\n",
                                       {}, {"*.txt"}, file_policy());
    INFO(describe(r));
    REQUIRE(r.ok);
    std::set<std::string> named;
    for (const auto& [name, content] : r.files) {
      CHECK(content == std::to_string(std::stoi(name.substr(3, 3))));
      named.insert(name);
    }
    for (const auto& name : r.files_left_out) CHECK(named.insert(name).second);
    CHECK(named.size() == static_cast<std::size_t>(std::min(n, 512)));
    CHECK(r.files.size() == static_cast<std::size_t>(std::min(n, 256)));
    CHECK(r.files_truncated == (n > 512));
    CHECK(r.to_json().contains("files_truncated") == (n > 512));
  }
}

TEST_CASE("files: a matching name that is not UTF-8 is not renamed: files_truncated says it is missing") {
  const spr::RunResult r = run_files("open(b'\\xff.txt', 'w').write('a')\n"
                                     "open(b'\\xfe.txt', 'w').write('b')\n"
                                     "open('ok.txt', 'w').write('c')\n",
                                     {}, {"*.txt"}, file_policy());
  INFO(describe(r));
  REQUIRE(r.ok);
  CHECK(r.files == spr::Files{{"ok.txt", "c"}});
  CHECK(r.files_left_out.empty());
  CHECK(r.files_truncated);
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

namespace {

// The process whose working directory ends in `/name` (a run's, seen from outside through /proc), or "".
std::string proc_with_cwd(const std::string& name) {
  for (const auto& e : spr_test::fs::directory_iterator("/proc")) {
    std::error_code ec;
    const std::string cwd = spr_test::fs::read_symlink(e.path() / "cwd", ec).string();
    if (!ec && cwd.size() > name.size() && cwd.compare(cwd.size() - name.size() - 1, std::string::npos, "/" + name) == 0)
      return e.path().string();
  }
  return {};
}

}  // namespace

// The audit hook refuses os.symlink to a place outside the run directory, but a run that owns its
// process gets past it; the test plants the links itself, from outside, while the run waits.
TEST_CASE("files: a link planted in the run directory to a host file is never followed by collect") {
  TempPath dir("files-secret");
  spr_test::fs::create_directories(dir.path);
  const std::string secret_path = (dir.path / "secret.txt").string();
  const std::string secret = "collect-must-not-read-this-2f9c";
  std::ofstream(secret_path) << secret;
  ::chmod(dir.str().c_str(), 0755);
  ::chmod(secret_path.c_str(), 0644);
  const std::string mark = "wait-" + spr_test::unique_path("m").filename().string();
  spr::RunnerPolicy p = file_policy();
  p.blocked_imports = {};
  p.allowed_read_paths = {dir.str()};
  p.timeout_seconds *= 12;  // the run waits for the test
  // The run can read the file itself (so a collect that followed a link would find it); it waits in a
  // folder named `mark` until the test has planted the links next to that folder.
  const std::string code = "import os, time\n"
                           "result = len(open(" + json(secret_path).dump() + ").read())\n"
                           "open('own.txt', 'w').write('mine')\n"
                           "os.mkdir('" + mark + "')\n"
                           "os.chdir('" + mark + "')\n"
                           "while not os.path.exists('go'):\n"
                           "    time.sleep(0.01)\n"
                           "os.chdir('..')\n";
  spr::RunOptions o;
  o.collect = {"*", "*/*"};
  spr::RunHandle h = spr_test::runner().submit(code, json::object(), p, o);
  std::string proc;
  for (int i = 0; i < 6000 && proc.empty(); ++i) {  // waits for the run to get there, not for a time
    if (h.wait_for(std::chrono::milliseconds(0)) == std::future_status::ready) break;
    proc = proc_with_cwd(mark);
    if (proc.empty()) ::usleep(10000);
  }
  REQUIRE_FALSE(proc.empty());
  const spr_test::fs::path run_dir = spr_test::fs::path(proc) / "cwd" / "..";
  spr_test::fs::create_symlink(secret_path, run_dir / "leak.txt");
  spr_test::fs::create_directory_symlink(dir.path, run_dir / "leakdir");
  std::ofstream(spr_test::fs::path(proc) / "cwd" / "go") << "";
  const spr::RunResult r = h.get();
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
