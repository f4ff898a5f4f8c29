// Every CPython on this machine kind as python_executable, and a venv of each (issue 20): the run sees
// exactly that build (its sys.version) and exactly the sys.path that build's python3 shows.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "helpers.hpp"

using spr::json;
using spr_test::describe;
using spr_test::run;

namespace fs = std::filesystem;

namespace {

// The Pythons CI has (Debian 12 with pyenv's shared builds). A missing one fails: it is said, not skipped.
const std::vector<std::string> kExpected = {
    "/usr/bin/python3",
    "/root/.pyenv/versions/3.10.13/bin/python3",
    "/root/.pyenv/versions/3.11.7/bin/python3",
    "/root/.pyenv/versions/3.12.1/bin/python3",
    "/root/.pyenv/versions/3.13.0/bin/python3",
};

// What a python3 reports about itself, asked by the test (not by the engine), without user site-packages.
json self_report(const std::string& python) {
  const auto r = spr_test::run_program(
      {python, "-s", "-c", "import json, sys; print(json.dumps([sys.version, [p for p in sys.path if p]]))"}, "",
      120);
  REQUIRE_MESSAGE(r.exit_code == 0, python << ": " << r.err);
  return json::parse(r.out);
}

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

const char* const kProbe =
    "import sys, math, json, datetime, decimal, zlib\n"
    "result = [sys.version, list(sys.path), math.sqrt(16), str(datetime.date(2024, 1, 2)), str(decimal.Decimal('1.5')),\n"
    "          zlib.crc32(b'x')]\n";

void check_runs_as(const std::string& python) {
  const json self = self_report(python);
  auto p = spr_test::policy();
  p.python_executable = python;
  const auto r = run(kProbe, json::object(), p);
  INFO(python << ": " << describe(r));
  REQUIRE(r.ok);
  CHECK(r.result[0] == self[0]);  // the same build, not only the same X.Y
  CHECK(r.result[1] == self[1]);  // the same sys.path
  CHECK(r.result[2] == 4.0);
  CHECK(r.result[3] == "2024-01-02");
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
    check_runs_as(python);
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

TEST_CASE("pythons: a CPython outside 3.10 to 3.13 is refused with the reason, never run") {
  const std::string old = "/root/.pyenv/versions/3.9.18/bin/python3";
  if (!fs::exists(old)) {
    MESSAGE(old << " is not on this machine: nothing to refuse");
    return;
  }
  auto p = spr_test::policy();
  p.python_executable = old;
  const auto r = run("result = 1\n", json::object(), p);
  INFO(describe(r));
  CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
  CHECK(spr_test::contains(r.error.value_or(""), "not a Python this build has a worker for"));
}

}  // TEST_SUITE
