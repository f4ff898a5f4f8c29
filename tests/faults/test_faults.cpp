// Fault injection: a worker that dies, hangs, lies or never starts gives the right RunResult,
// the pool recovers, and nothing is left behind (zombies, orphans, descriptors).
#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <set>
#include <sstream>
#include <thread>

#include "proc_stats.hpp"
#include "spr/runner.hpp"

using spr_test::open_fds;
using spr_test::processes;

namespace {

const std::string kBuiltFaulty = std::string(SPR_TEST_WORKERS_DIR) + "/spr-worker-faulty";

// A copy of the test worker that only this test process starts (ctest runs the modes side by side): every
// process made from it, wherever it was re-parented (a grandchild whose parent died goes to init, out of
// reach of a walk down from us), is found by its executable's inode.
struct OwnWorker {
  std::filesystem::path dir;
  std::string faulty, nohello;
  struct stat exe {};
  OwnWorker() {
    std::string templ = "/tmp/spr-faults-XXXXXX";
    REQUIRE(::mkdtemp(templ.data()) != nullptr);
    dir = templ;
    REQUIRE(::chmod(dir.c_str(), 0755) == 0);  // a worker that drops its identity still reaches its program
    faulty = (dir / "spr-worker-faulty").string();
    nohello = (dir / "spr-worker-nohello").string();  // the test worker acts on its own name
    std::filesystem::copy_file(kBuiltFaulty, faulty);
    REQUIRE(::chmod(faulty.c_str(), 0755) == 0);
    std::filesystem::create_symlink("spr-worker-faulty", nohello);
    REQUIRE(::stat(faulty.c_str(), &exe) == 0);
  }
  ~OwnWorker() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};
const OwnWorker& own_worker() {
  static const OwnWorker w;
  return w;
}

spr::Isolation test_mode() {
  const char* m = getenv("SPR_TEST_ISOLATION");
  return spr::RunnerPolicy::from_json({{"isolation", m ? m : "fork"}}).isolation;
}

// How many times longer than on a quiet machine waits may take (SPR_TEST_TIME_SCALE: load, sanitizers).
double time_scale() {
  const char* s = getenv("SPR_TEST_TIME_SCALE");
  return s && std::atof(s) > 1 ? std::atof(s) : 1.0;
}

spr::RunnerOptions options(const std::string& worker) {
  spr::RunnerOptions o;
  o.worker_path = worker;
  o.workers = 1;
  o.policy.isolation = test_mode();
  o.policy.timeout_seconds = 2;
  // Scaled: in process mode every run starts a worker, and under ASan at load 7 a start took longer than 2 s.
  o.start_timeout_seconds = 2 * time_scale();
  return o;
}

// Our children that are zombies, and processes in a group led by one of our (ex-)workers.
int zombies() {
  int n = 0;
  for (const auto& p : processes()) n += p.ppid == getpid() && p.state == 'Z';
  return n;
}

int descendants() {
  std::set<int> ours = {getpid()};
  bool grew = true;
  auto all = processes();
  while (grew) {
    grew = false;
    for (const auto& p : all)
      if (ours.count(p.ppid) && !ours.count(p.pid)) grew = ours.insert(p.pid).second;
  }
  return static_cast<int>(ours.size()) - 1;
}

// Live processes anywhere on the host running this test's copy of the worker (a zombie has no executable).
int worker_processes(char state = 0) {
  int n = 0;
  for (const auto& p : processes()) {
    struct stat st {};
    if (::stat(("/proc/" + std::to_string(p.pid) + "/exe").c_str(), &st) != 0) continue;
    if (st.st_dev != own_worker().exe.st_dev || st.st_ino != own_worker().exe.st_ino) continue;
    n += state == 0 || p.state == state;
  }
  return n;
}

// Waits until `done` holds; the limit is a hang guard (scaled with the load), not a speed check.
template <typename Done>
bool wait_until(Done done) {
  const auto guard = std::chrono::steady_clock::now() + std::chrono::duration<double>(60 * time_scale());
  while (!done()) {
    if (std::chrono::steady_clock::now() > guard) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

// Nothing left behind: no zombie of ours, no descendant, no process of our worker anywhere, our descriptors
// back to `fds_before`. A killed process takes a moment to go: waited for, then checked.
void check_nothing_left(int fds_before) {
  wait_until([&] {
    return zombies() == 0 && descendants() == 0 && worker_processes() == 0 && open_fds() == fds_before;
  });
  CHECK(zombies() == 0);
  CHECK(descendants() == 0);
  CHECK(worker_processes() == 0);
  CHECK(open_fds() == fds_before);
}

}  // namespace

TEST_CASE("each fault gives its error kind and the pool recovers") {
  struct Row {
    const char* fault;
    spr::ErrorKind kind;
  };
  const Row rows[] = {
      {"sigkill", spr::ErrorKind::worker_crashed},  {"segv", spr::ErrorKind::worker_crashed},
      {"abort", spr::ErrorKind::worker_crashed},    {"exit", spr::ErrorKind::worker_crashed},
      {"hang", spr::ErrorKind::timeout},            {"truncated", spr::ErrorKind::worker_crashed},
      {"garbage", spr::ErrorKind::protocol_error},  {"huge", spr::ErrorKind::protocol_error},
      {"grandchild", spr::ErrorKind::worker_crashed},
  };
  const int fds_before = open_fds();
  {
    spr::Runner runner(options(own_worker().faulty));
    REQUIRE(runner.run("result = 1").ok);
    for (const auto& row : rows) {
      const std::string fault = row.fault;
      CAPTURE(fault);
      spr::RunResult r = runner.run(std::string("#spr-fault: ") + row.fault + "\nresult = 1");
      CHECK_FALSE(r.ok);
      CHECK(r.error_kind == row.kind);
      REQUIRE(r.error.has_value());
      CHECK_FALSE(r.error->empty());
      spr::RunResult next = runner.run("result = 2");
      CHECK(next.ok);
      CHECK(next.result == 2);
    }
  }
  check_nothing_left(fds_before);
}

TEST_CASE("a worker that never says hello is reported, not waited for forever") {
  const int fds_before = open_fds();
  {
    spr::Runner runner(options(own_worker().nohello));
    auto t0 = std::chrono::steady_clock::now();
    spr::RunResult r = runner.run("result = 1");
    CHECK_FALSE(r.ok);
    CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
    CHECK(r.error->find("hello") != std::string::npos);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::duration<double>(30 * time_scale()));
  }
  check_nothing_left(fds_before);
}

TEST_CASE("shutting the runner down does not wait for a starting worker's hello (issue 20: a short program's exit)") {
  // The pool starts its workers in the background; a program that exits right after its first run must
  // not wait for the rest to come up. With an hour to say hello, only the stop can end the start: a
  // runner that waited would hold this test until ctest's limit.
  const int fds_before = open_fds();
  {
    auto o = options(own_worker().nohello);
    o.start_timeout_seconds = 3600;
    o.policy.isolation = spr::Isolation::fork;  // warm workers start in the background (process mode starts none)
    spr::Runner runner(o);
    // Wait until the worker's process exists: the pool is then inside the start, waiting for the hello.
    REQUIRE(wait_until([] { return worker_processes() > 0; }));
  }
  check_nothing_left(fds_before);
}

TEST_CASE("a missing or non-executable worker binary is a WorkerError at construction") {
  CHECK_THROWS_AS(spr::Runner(options("/nonexistent/spr-worker")), spr::WorkerError);
  char path[] = "/tmp/spr-not-exec-XXXXXX";
  int fd = mkstemp(path);
  REQUIRE(fd >= 0);
  close(fd);
  CHECK_THROWS_AS(spr::Runner(options(path)), spr::WorkerError);
  unlink(path);
}

TEST_CASE("destroying the runner with runs in flight answers them and leaves nothing behind") {
  const int fds_before = open_fds();
  std::vector<std::future<spr::RunResult>> futures;
  {
    auto o = options(own_worker().faulty);
    o.policy.timeout_seconds = 30;
    spr::Runner runner(o);
    REQUIRE(runner.run("result = 1").ok);
    for (int i = 0; i < 3; ++i) futures.push_back(runner.submit("while True: pass", spr::json::object(), o.policy));
    REQUIRE(wait_until([] { return worker_processes('R') > 0; }));  // a run is spinning
    auto t0 = std::chrono::steady_clock::now();
    runner.shutdown();
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
  }
  for (auto& f : futures) {
    spr::RunResult r = f.get();
    CHECK_FALSE(r.ok);
    CHECK(r.error_kind == spr::ErrorKind::worker_unavailable);
  }
  check_nothing_left(fds_before);
}

TEST_CASE("running out of file descriptors is an error result, and the runner recovers") {
  spr::Runner runner(options(own_worker().faulty));
  REQUIRE(runner.run("result = 1").ok);
  std::vector<int> hog;
  for (int fd; (fd = dup(0)) >= 0;) hog.push_back(fd);  // every descriptor taken
  runner.run("#spr-fault: sigkill\n");                  // its replacement must be spawned while starved
  spr::RunResult starved = runner.run("result = 1");
  for (int fd : hog) close(fd);
  CHECK_FALSE(starved.ok);
  CHECK((starved.error_kind == spr::ErrorKind::worker_unavailable ||
         starved.error_kind == spr::ErrorKind::worker_crashed));
  spr::RunResult later = runner.run("result = 3");
  CHECK(later.ok);
  CHECK(later.result == 3);
}
