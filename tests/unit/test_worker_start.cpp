// Unit tests of the worker's start plan: the command line carries every field, and a bad one is refused.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common/worker_start.hpp"

using spr::detail::WorkerStart;

namespace {

// A plan with every field off its default.
WorkerStart full_plan(spr::Isolation iso) {
  WorkerStart s;
  s.isolation = iso;
  s.once = true;
  s.subinterpreter_pool = 5;
  s.subinterpreter_threads = 3;
  s.harden = false;
  s.allow_network = true;
  s.allow_unix_sockets = true;
  s.memory_backstop_mb = 384;
  s.cpu_backstop_seconds = 2.5;
  s.python = "/opt/venv/bin/python3";
  s.prefix = "/opt/venv";
  s.sys_path = {"/opt/py/lib/python3.12", "/opt/py/lib/python3.12/site-packages"};
  s.preload = {"numpy", "json"};
  s.read_paths = {"/data/a", "/data/with space"};
  s.scratch = "/tmp/spr-abc123";
  s.scratch_limit_mb = 17;
  s.session_memory_mb = 96;
  return s;
}

}  // namespace

TEST_SUITE("unit.worker_start") {

TEST_CASE("to_argv then from_argv gives back every field") {
  const WorkerStart s = full_plan(spr::Isolation::subinterpreter);
  const WorkerStart back = WorkerStart::from_argv(s.to_argv());
  CHECK(back == s);
  CHECK(back.to_argv() == s.to_argv());
  // Each field was off its default, so a field to_argv dropped would have failed the comparison above.
  CHECK_FALSE(back == WorkerStart{});
  // The pool size travels only for subinterpreter workers; the rest of a fork plan round-trips as well.
  WorkerStart f = full_plan(spr::Isolation::fork);
  f.subinterpreter_pool = WorkerStart{}.subinterpreter_pool;
  f.subinterpreter_threads = WorkerStart{}.subinterpreter_threads;
  CHECK(WorkerStart::from_argv(f.to_argv()) == f);
  CHECK(WorkerStart::from_argv(WorkerStart{}.to_argv()) == WorkerStart{});
}

TEST_CASE("from_argv refuses an unknown argument, a missing value and a malformed one") {
  const auto refused = [](std::vector<std::string> args) -> std::string {
    try {
      (void)WorkerStart::from_argv(args);
    } catch (const std::invalid_argument& e) {
      return e.what();
    }
    return "accepted";
  };
  CHECK(refused({"--isolation", "fork", "--no-seccomp"}) == "unknown argument --no-seccomp");
  CHECK(refused({"--isolation", "chroot"}) == "unknown isolation chroot");
  CHECK(refused({"--read"}) == "missing value for --read");
  CHECK(refused({"--scratch-limit-mb", "64x"}) == "bad value for --scratch-limit-mb: 64x");
  CHECK(refused({"--scratch-limit-mb", "0"}) == "bad value for --scratch-limit-mb: 0");
  CHECK(refused({"--memory-backstop-mb", "-1"}) == "bad value for --memory-backstop-mb: -1");
  CHECK(refused({"--cpu-backstop-seconds", "nan"}) == "bad value for --cpu-backstop-seconds: nan");
  CHECK(refused({"--session", ""}) == "bad value for --session: ");
  CHECK(refused({"--subinterpreter-pool", "99999999999999999999"}) ==
        "bad value for --subinterpreter-pool: 99999999999999999999");
}

TEST_CASE("to_json shows the plan's mounts and what seccomp allows, per mode") {
  WorkerStart s;
  s.isolation = spr::Isolation::namespace_;
  s.read_paths = {"/srv/data"};
  s.scratch_limit_mb = 32;
  const auto j = s.to_json();
  bool read_bound = false, scratch = false;
  for (const auto& m : j["mounts"]) {
    read_bound = read_bound || (m["path"] == "/srv/data" && m["how"] == "bind, read-only");
    scratch = scratch || (m["what"] == "scratch" && m["size_mb"] == 32);
  }
  CHECK(read_bound);
  CHECK(scratch);
  CHECK(j["seccomp"]["fork"] == false);
  CHECK(j["seccomp"]["threads"] == false);
  CHECK(j["rlimits"]["processes"] == WorkerStart::kMaxTasks);
  s.isolation = spr::Isolation::fork;
  CHECK(s.to_json()["seccomp"]["fork"] == true);
  CHECK(s.to_json()["seccomp"]["threads"] == true);
}

}  // TEST_SUITE
