// Every CPython on this machine kind as python_executable, and a venv of each (issue 20): the run sees
// exactly that build (its sys.version), the sys.path, sys.executable and prefixes that build's `python3 -s`
// shows, computes what that python3 computes with its standard library, and is confined as any other run.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"
#include "tests/security/escape_helpers.hpp"

using spr::json;
using spr_test::describe;
using spr_test::run;

namespace fs = std::filesystem;

namespace {

// The Pythons CI has (Debian 12 with pyenv's shared builds). A missing one fails: it is said, not skipped.
const std::vector<std::string> kExpected = {
    "/usr/bin/python3",
    "/root/.pyenv/versions/3.9.18/bin/python3",
    "/root/.pyenv/versions/3.10.13/bin/python3",
    "/root/.pyenv/versions/3.11.7/bin/python3",
    "/root/.pyenv/versions/3.12.1/bin/python3",
    "/root/.pyenv/versions/3.13.0/bin/python3",
};

// A venv of `python` with a module in its site-packages and a .pth naming another directory.
struct Venv {
  spr_test::TempPath dir;
  std::string python;
  explicit Venv(const std::string& base) : dir("venv") {
    const auto r = spr_test::run_program({base, "-m", "venv", "--without-pip", dir.path.string()}, "", 300);
    REQUIRE_MESSAGE(r.exit_code == 0, base << ": " << r.err);
    python = (dir.path / "bin" / "python3").string();
    const json version = json::parse(
        spr_test::run_program({base, "-c", "import sys; print('\"%d.%d\"' % sys.version_info[:2])"}).out);
    const fs::path site = dir.path / "lib" / ("python" + version.get<std::string>()) / "site-packages";
    std::ofstream(site / "venv_mod.py") << "WHERE = 'venv'\n";
    fs::create_directories(dir.path / "extra");
    std::ofstream(dir.path / "extra" / "pth_mod.py") << "WHERE = 'pth'\n";
    std::ofstream(site / "extra.pth") << (dir.path / "extra").string() << "\n";
  }
};

// The same code runs in the sandbox and in the python3 itself: what a run sees of its interpreter, and what the
// standard library computes (sqlite3 and ssl where that build has them, None where it has not).
const char* const kProbe = R"(import sys, json, math, datetime, decimal, zlib, hashlib
try:
    import sqlite3
    answer = sqlite3.connect(':memory:').execute('select 6 * 7').fetchone()[0]
except ImportError:
    answer = None
try:
    import ssl
    openssl = ssl.OPENSSL_VERSION
except ImportError:
    openssl = None
result = [sys.version, [p for p in sys.path if p], sys.executable,
          [sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix],
          math.sqrt(16), str(datetime.date(2024, 1, 2) + datetime.timedelta(days=40)),
          str(decimal.Decimal('1.1') + decimal.Decimal('2.2')), zlib.crc32(b'x'),
          json.loads(json.dumps({'a': [1, 2.5, None]})), hashlib.sha256(b'spr').hexdigest(), answer, openssl]
)";

// kProbe's result in `python` itself, asked by the test (not by the engine), without user site-packages.
json self_report(const std::string& python) {
  const auto r = spr_test::run_program({python, "-s", "-c", std::string(kProbe) + "print(json.dumps(result))\n"}, "", 120);
  REQUIRE_MESSAGE(r.exit_code == 0, python << ": " << r.err);
  return json::parse(r.out);
}

void check_runs_as(const std::string& python) {
  const json self = self_report(python);
  auto p = spr_test::policy();
  p.python_executable = python;
  p.blocked_imports = {};  // ssl imports socket
  const auto r = run(kProbe, json::object(), p);
  INFO(python << ": " << describe(r));
  REQUIRE(r.ok);
  CHECK(r.result[0] == self[0]);  // the same build, not only the same X.Y
  CHECK(r.result[1] == self[1]);  // the same sys.path
  CHECK(r.result[2] == self[2]);  // sys.executable
  CHECK(r.result[3] == self[3]);  // sys.prefix, exec_prefix, base_prefix, base_exec_prefix
  CHECK(r.result == self);        // and the standard library's answers
  CHECK(r.result[4] == 4.0);
  CHECK(r.result[10] == 42);      // every Python of this machine kind has sqlite3 and ssl
  CHECK(r.result[11].is_string());
}

// The guard and the OS layers hold in `python`'s worker, judged from the host with the guard's import and
// builtin lists emptied: a host file the run tries to overwrite keeps its bytes, none appears beside it, and a
// listener on the host's loopback sees no connection. The run's own scratch directory stays writable.
void check_confined(const std::string& python) {
  spr_test::TempPath dir("confined");
  fs::create_directories(dir.path);
  fs::permissions(dir.path, fs::perms::all);
  const fs::path canary = dir.path / "canary";
  std::ofstream(canary) << "untouched";
  fs::permissions(canary, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                              fs::perms::group_write | fs::perms::others_read | fs::perms::others_write);
  const auto mtime = fs::last_write_time(canary);
  sec::Listener listener;
  auto p = spr_test::policy();
  p.python_executable = python;
  p.blocked_imports = {};
  p.blocked_builtins = {};
  p.scratch_dir = true;
  const std::string code =
      "import os, socket\n"
      "def attempt(f):\n"
      "    try:\n"
      "        f()\n"
      "    except OSError:\n"
      "        pass\n"
      "attempt(lambda: open(" + json(canary.string()).dump() + ", 'w').write('overwritten'))\n"
      "attempt(lambda: os.open(" + json((dir.path / "created").string()).dump() + ", os.O_CREAT | os.O_WRONLY))\n"
      "def connect():\n"
      "    s = socket.socket()\n"
      "    s.settimeout(5)\n"
      "    s.connect(('127.0.0.1', " + std::to_string(listener.port()) + "))\n"
      "attempt(connect)\n"
      "with open('mine.txt', 'w') as f:\n"
      "    f.write('mine')\n"
      "result = open('mine.txt').read()\n";
  const auto r = run(code, json::object(), p);
  INFO(python << ": " << describe(r));
  CHECK(r.ok);
  CHECK(r.result == "mine");
  std::ifstream in(canary);
  CHECK(std::string(std::istreambuf_iterator<char>(in), {}) == "untouched");
  CHECK(fs::last_write_time(canary) == mtime);
  CHECK_FALSE(fs::exists(dir.path / "created"));
  CHECK(listener.connections(100) == 0);
  // The guard's default lists still refuse, in this Python's worker too.
  auto guarded = spr_test::policy();
  guarded.python_executable = python;
  CHECK(run("import os\n", json::object(), guarded).error_kind == spr::ErrorKind::blocked_import);
  CHECK(run("import ctypes\n", json::object(), guarded).error_kind == spr::ErrorKind::blocked_import);
}

// `python` as python_executable is refused before any run, naming it as one this build has no worker for.
spr::RunResult check_refused(const std::string& python) {
  auto p = spr_test::policy();
  p.python_executable = python;
  const auto r = run("result = 1\n", json::object(), p);
  INFO(python << ": " << describe(r));
  CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
  CHECK(spr_test::contains(r.error.value_or(""), "not a Python this build has a worker for"));
  return r;
}

}  // namespace

TEST_SUITE("pythons") {

TEST_CASE("pythons: every CPython of this machine kind, and a venv of each, is a python_executable") {
  for (const auto& python : kExpected) {
    CAPTURE(python);
    if (!fs::exists(python)) {
      FAIL_CHECK(python << " is missing: CI machines of this kind have it");
      continue;
    }
    if (!SPR_TEST_OTHER_PYTHONS && python != SPR_TEST_PYTHON) {
      // A build with the default Python's worker only refuses the others, by name; never runs them in it.
      check_refused(python);
      MESSAGE(spr_test::mode_name() << ": " << python << ": refused, this build has no worker for it");
      continue;
    }
    check_runs_as(python);
    check_confined(python);
    Venv venv(python);
    check_runs_as(venv.python);
    auto p = spr_test::policy();
    p.python_executable = venv.python;
    const auto r = run("import venv_mod, pth_mod\nresult = [venv_mod.WHERE, pth_mod.WHERE]\n", json::object(), p);
    INFO(describe(r));
    CHECK(r.result == json::array({"venv", "pth"}));
    MESSAGE(spr_test::mode_name() << ": " << python << " and a venv of it: ok");
  }
}

// The standard library's frozen modules (in the interpreter binary) that no interpreter loads at its start:
// ntpath (pathlib's), runpy and what it pulls (importlib.util, importlib.machinery), zipimport.
// On 3.12+ a sub-interpreter unmarshals them from the binary's bytes instead of using built-in code objects.
TEST_CASE("pythons: modules frozen into each CPython load in a run, pathlib's included") {
  const std::string code =
      "import pathlib, ntpath, runpy, zipimport\n"
      "result = [str(pathlib.PurePosixPath('a') / 'b'), str(pathlib.PureWindowsPath('c:/x') / 'y'),\n"
      "          ntpath.join('a', 'b'), callable(runpy.run_path), zipimport.zipimporter.__name__]\n";
  const json expected = {"a/b", "c:\\x\\y", "a\\b", true, "zipimporter"};
  for (const auto& python : kExpected) {
    CAPTURE(python);
    if (!fs::exists(python) || (!SPR_TEST_OTHER_PYTHONS && python != SPR_TEST_PYTHON)) continue;  // the case above says
    auto p = spr_test::policy();
    p.python_executable = python;
    p.blocked_imports = {};
    const auto r = run(code, json::object(), p);
    INFO(describe(r));
    CHECK(r.ok);
    CHECK(r.result == expected);
  }
}

TEST_CASE("pythons: a CPython outside 3.9 to 3.13 is refused with the reason") {
  const std::string old = "/root/.pyenv/versions/3.8.18/bin/python3";
  if (!fs::exists(old)) {
    MESSAGE(old << " is not on this machine: nothing to refuse");
    return;
  }
  const auto r = check_refused(old);
  CHECK(spr_test::contains(r.error.value_or(""), "another CPython 3.9 to 3.13"));
}

}  // TEST_SUITE
