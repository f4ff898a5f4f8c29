// Starting workers: a host application's own forks neither hold a worker's start nor inherit its descriptors,
// and a program that cannot be executed is reported, reaped and leaves no descriptor behind.
#include <doctest/doctest.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "blackbox/helpers.hpp"
#include "detail/spawn.hpp"
#include "detail/worker_process.hpp"
#include "proc_stats.hpp"

namespace {

// A decoy process of the host application: a plain fork that sleeps until killed, or a fork that execs sleep.
// Made with the raw system call, so it may be made inside a fork handler (glibc's fork would wait for its lock).
pid_t raw_fork_decoy(bool exec_sleep) {
  const long pid = ::syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0);
  if (pid == 0) {
    if (exec_sleep) {
      char arg0[] = "sleep", arg1[] = "3600";
      char* argv[] = {arg0, arg1, nullptr};
      char* envp[] = {nullptr};
      ::syscall(SYS_execve, "/bin/sleep", argv, envp);
    }
    for (;;) ::syscall(SYS_pause);
  }
  return static_cast<pid_t>(pid);
}

// Decoys forked by this test, killed and reaped when it ends.
struct Decoys {
  std::mutex mu;
  std::vector<std::pair<pid_t, bool>> made;  // (pid, execs sleep)
  void add(pid_t pid, bool exec_sleep) {
    if (pid <= 0) return;
    std::lock_guard<std::mutex> lk(mu);
    made.emplace_back(pid, exec_sleep);
  }
  void kill_all() {
    std::lock_guard<std::mutex> lk(mu);
    for (auto& [pid, e] : made)
      if (pid > 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        pid = -1;
      }
  }
  ~Decoys() { kill_all(); }
};

Decoys* g_decoys = nullptr;        // while a test arms the fork handler
std::atomic<bool> g_armed{false};  // the next fork() in this process also makes decoys, once

// Runs in the thread that calls fork(), once the caller has made whatever it wants the child to see: a spawn
// built on fork (and a pipe) has its pipe open here. Two decoys are made at exactly this point, as another
// thread of the host application could.
void on_fork_prepare() {
  if (!g_armed.exchange(false) || !g_decoys) return;
  g_decoys->add(raw_fork_decoy(false), false);
  g_decoys->add(raw_fork_decoy(true), true);
}

bool alive(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(f, stat)) return false;
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// What each descriptor of `pid` refers to ("pipe:[123]", "socket:[456]", "/dev/null", ...).
std::set<std::string> fd_targets(pid_t pid) {
  std::set<std::string> out;
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.') continue;
    char buf[512];
    const ssize_t n = ::readlink((dir + "/" + e->d_name).c_str(), buf, sizeof buf - 1);
    if (n > 0) out.emplace(buf, static_cast<std::size_t>(n));
  }
  ::closedir(d);
  return out;
}

std::string comm_of(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/comm");
  std::string s;
  std::getline(f, s);
  return s;
}

int zombie_children() {
  int n = 0;
  for (const auto& p : spr_test::processes()) n += p.ppid == ::getpid() && p.state == 'Z';
  return n;
}

}  // namespace

TEST_CASE("spawn: a host application's forks neither hold a worker's start nor inherit its descriptors") {
  static const int registered = ::pthread_atfork(on_fork_prepare, nullptr, nullptr);
  REQUIRE(registered == 0);
  Decoys decoys;
  g_decoys = &decoys;
  const std::set<std::string> before = fd_targets(::getpid());
  std::atomic<bool> returned{false};
  // Another thread of the host application forks decoys while the runner starts its worker and runs.
  std::thread forker([&] {
    for (int i = 0; i < 16 && !returned; ++i) {
      decoys.add(raw_fork_decoy(i % 2 == 1), i % 2 == 1);
      std::this_thread::yield();
    }
  });
  g_armed = true;
  auto run = std::async(std::launch::async, [] {
    spr::RunnerOptions o;
    o.workers = 1;
    o.worker_path = SPR_TEST_WORKER;
    spr::Runner runner(o);
    spr::RunnerPolicy p;
    p.isolation = spr::Isolation::fork;
    return runner.run("result = 1", spr::json::object(), p);
  });
  // Generous, and a failure when reached: the run's start must not wait for any decoy to exit.
  const bool in_time = run.wait_for(std::chrono::duration<double>(60 * spr_test::time_scale())) ==
                       std::future_status::ready;
  std::vector<std::pair<pid_t, bool>> made;
  bool all_alive = true;
  {
    std::lock_guard<std::mutex> lk(decoys.mu);
    made = decoys.made;
    for (const auto& [pid, e] : made) all_alive = all_alive && alive(pid);
  }
  returned = true;
  forker.join();
  g_armed = false;
  CHECK_MESSAGE(in_time, "the run did not return while the decoys lived");
  CHECK(all_alive);  // no decoy's exit let the run through
  REQUIRE_FALSE(made.empty());
  // A decoy that exec'd holds only what this process itself held before the runner started (its stdio): none of
  // a worker's pipe or socket ends.
  for (const auto& [pid, exec_sleep] : made) {
    if (!exec_sleep || pid <= 0) continue;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(30 * spr_test::time_scale());
    while (comm_of(pid) != "sleep" && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    CHECK(comm_of(pid) == "sleep");
    for (const std::string& target : fd_targets(pid)) {
      CAPTURE(target);
      CHECK(before.count(target) == 1);
    }
  }
  if (!in_time) decoys.kill_all();  // the start was held by a decoy: let it finish
  const spr::RunResult r = run.get();
  g_decoys = nullptr;
  CHECK(r.ok);
  CHECK(r.result == spr::json(1));
}

TEST_CASE("spawn: a program that cannot be executed is reported, reaped, and leaves no descriptor") {
  spr_test::TempPath bad("bad-worker");
  bad.write("#!/nonexistent/interpreter\n");  // executable by mode, but execve fails (ENOENT: no interpreter)
  REQUIRE(::chmod(bad.str().c_str(), 0755) == 0);
  const int fds_before = spr_test::open_fds();
  const int zombies_before = zombie_children();

  spr::detail::SpawnPlan plan;
  plan.path = bad.str();
  plan.argv = {bad.str()};
  plan.fds = {{0, 0}, {1, 1}, {2, 2}};
  try {
    spr::detail::spawn_program(plan);
    FAIL("spawn of a program whose interpreter does not exist succeeded");
  } catch (const std::system_error& e) {
    CHECK(e.code().value() == ENOENT);
    CHECK(std::string(e.what()).find("execve") != std::string::npos);
  }

  // Through the worker's start: a WorkerError naming the program and the reason.
  spr::detail::SpawnOptions so;
  so.worker_path = bad.path;
  std::string message;
  try {
    spr::detail::WorkerProcess::spawn(so);
  } catch (const spr::WorkerError& e) {
    message = e.what();
  }
  CAPTURE(message);
  CHECK(message.find("cannot start " + bad.str()) != std::string::npos);
  CHECK(message.find("No such file or directory") != std::string::npos);

  CHECK(zombie_children() == zombies_before);
  CHECK(spr_test::open_fds() == fds_before);
}

TEST_CASE("spawn: the program starts with no signal blocked or ignored and umask 022, whatever the host's") {
  // A host that blocks signals for sigwait(), ignores SIGCHLD and runs with umask 077 (found by a red team: the
  // worker's SIGALRM deadline never fired and its waits failed with ECHILD; every subinterpreter worker died).
  sigset_t block, old_mask;
  sigemptyset(&block);
  sigaddset(&block, SIGALRM);
  sigaddset(&block, SIGTERM);
  REQUIRE(::pthread_sigmask(SIG_BLOCK, &block, &old_mask) == 0);
  struct sigaction ign {}, old_chld {}, old_hup {};
  ign.sa_handler = SIG_IGN;
  REQUIRE(::sigaction(SIGCHLD, &ign, &old_chld) == 0);
  REQUIRE(::sigaction(SIGHUP, &ign, &old_hup) == 0);
  struct sigaction old_rt {};
  REQUIRE(::sigaction(SIGRTMIN + 1, &ign, &old_rt) == 0);
  const mode_t old_umask = ::umask(077);

  int out[2];
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  spr::detail::SpawnPlan plan;
  plan.path = "/bin/sh";
  plan.argv = {"sh", "-c", "grep -E '^Sig(Blk|Ign):' /proc/self/status; umask"};
  plan.fds = {{0, 0}, {out[1], 1}, {2, 2}};
  plan.die_with_parent = false;
  pid_t pid = -1;
  std::string error;
  try {
    pid = spr::detail::spawn_program(plan);
  } catch (const std::system_error& e) {
    error = e.what();
  }
  ::close(out[1]);
  std::string text;
  char buf[512];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  // SIGCHLD is ignored here: the child may be reaped by the kernel, so waitpid may say ECHILD.
  if (pid > 0) ::waitpid(pid, nullptr, 0);

  ::umask(old_umask);
  ::sigaction(SIGRTMIN + 1, &old_rt, nullptr);
  ::sigaction(SIGHUP, &old_hup, nullptr);
  ::sigaction(SIGCHLD, &old_chld, nullptr);
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);

  REQUIRE(error.empty());
  CAPTURE(text);
  CHECK(text.find("SigBlk:\t0000000000000000") != std::string::npos);
  CHECK(text.find("SigIgn:\t0000000000000000") != std::string::npos);
  CHECK(text.find("0022") != std::string::npos);
}

namespace {

// The nice value a program spawned from a thread at nice `host_nice` starts with (its /proc stat, field 19), from a
// thread of its own so that the value set here goes with it. nullopt when this process may not take `host_nice`.
std::optional<int> spawned_nice(int host_nice) {
  std::optional<int> seen;
  std::thread([&] {
    errno = 0;
    // Linux: PRIO_PROCESS with 0 is the calling thread.
    if (::setpriority(PRIO_PROCESS, 0, host_nice) != 0 || ::getpriority(PRIO_PROCESS, 0) != host_nice) return;
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return;
    spr::detail::SpawnPlan plan;
    plan.path = "/bin/sh";
    plan.argv = {"sh", "-c", "read -r stat < /proc/self/stat; set -- ${stat#*) }; shift 16; echo \"$1\""};
    plan.fds = {{0, 0}, {out[1], 1}, {2, 2}};
    plan.die_with_parent = false;
    const pid_t pid = spr::detail::spawn_program(plan);
    ::close(out[1]);
    std::string text;
    char buf[64];
    for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) > 0;) text.append(buf, static_cast<std::size_t>(n));
    ::close(out[0]);
    ::waitpid(pid, nullptr, 0);
    seen = std::atoi(text.c_str());
  }).join();
  return seen;
}

}  // namespace

TEST_CASE("spawn: a host's raised priority (negative nice) is not passed on; a lowered one is") {
  // As root (the suite's unit tests run as root): a supervisor started at nice -5 gave its workers -5.
  const std::optional<int> raised = spawned_nice(-5);
  if (::geteuid() == 0) REQUIRE(raised.has_value());
  if (raised) CHECK(*raised == 0);
  // The control: a lowered priority reaches the program as it is (so the check above can fail).
  const int lower = std::min(::getpriority(PRIO_PROCESS, 0) + 7, 19);
  const std::optional<int> lowered = spawned_nice(lower);
  REQUIRE(lowered.has_value());
  CHECK(*lowered == lower);
}
