// WorkerPool: leases, give back and discard, keys kept apart, one-shot leases, shutdown with leases out.
#include <doctest/doctest.h>
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "detail/worker_pool.hpp"

using spr::Isolation;
using spr::RunnerPolicy;
using spr::detail::key_of;
using spr::detail::PoolKey;
using spr::detail::SpawnOptions;
using spr::detail::WorkerPool;
using spr::detail::WorkerProcess;

namespace {

// Starts the real worker for `key` and counts the starts.
struct Starter {
  std::atomic<int> starts{0};
  WorkerPool::Spawn fn() {
    return [this](const PoolKey& key) {
      ++starts;
      SpawnOptions so = spawn_options_of(key);
      so.worker_path = SPR_TEST_WORKER;
      return WorkerProcess::spawn(so);
    };
  }
};

PoolKey fork_key(bool network = false) {
  RunnerPolicy p;
  p.isolation = Isolation::fork;
  p.allow_network = network;
  return key_of(p);
}

PoolKey process_key() {
  RunnerPolicy p;
  p.isolation = Isolation::process;
  return key_of(p);
}

// The process's state letter from /proc ('Z' killed but not reaped), or 0 when there is no such process.
char proc_state(pid_t pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!std::getline(f, stat)) return 0;
  const auto close = stat.rfind(')');
  return close == std::string::npos || close + 2 >= stat.size() ? 0 : stat[close + 2];
}

bool reaped(pid_t pid) {
  return ::kill(pid, 0) == -1 && errno == ESRCH;
}

template <class F>
bool eventually(F f) {
  for (int i = 0; i < 500; ++i) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return f();
}

// A hang guard for waits on worker starts (each a second or more on a loaded machine), scaled like the
// suite's other limits (SPR_TEST_TIME_SCALE); it returns as soon as `f` holds.
template <class F>
bool eventually_started(F f) {
  const char* s = std::getenv("SPR_TEST_TIME_SCALE");
  const double scale = s && std::atof(s) > 1 ? std::atof(s) : 1.0;
  const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double>(60 * scale);
  while (std::chrono::steady_clock::now() < until) {
    if (f()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return f();
}

}  // namespace

TEST_CASE("WorkerPool: a first run starts one worker; the rest come up after it gave its worker back") {
  Starter s;
  WorkerPool pool({3, 10}, s.fn());
  const PoolKey key = fork_key();
  pool.prespawn(key);
  REQUIRE(eventually_started([&] { return pool.idle(key) == 1; }));
  CHECK(pool.counts().busy == 0);  // no other worker being started for a run that has not asked
  CHECK(s.starts == 1);
  std::string error;
  {
    auto w = pool.lease(key, error);
    REQUIRE_MESSAGE(w, error);
    CHECK(pool.counts().busy == 1);  // the leased one only: nothing competes with the first run
    CHECK(s.starts == 1);
  }
  // Given back: the rest of the pool comes up in the background.
  CHECK(eventually_started([&] { return pool.idle(key) == 3; }));
  CHECK(s.starts == 3);
}

TEST_CASE("WorkerPool: callers waiting at once each get a worker started for them") {
  Starter s;
  WorkerPool pool({2, 10}, s.fn());
  const PoolKey key = fork_key();
  std::string error;
  auto first = pool.lease(key, error);  // no prespawn: this lease starts the first worker
  REQUIRE_MESSAGE(first, error);
  CHECK(s.starts == 1);
  std::string error2;
  auto second = pool.lease(key, error2);  // the first is out: a second start for this caller
  REQUIRE_MESSAGE(second, error2);
  CHECK(first->pid() != second->pid());
  CHECK(s.starts == 2);
}

TEST_CASE("key_of: pools split by what a worker is fixed to at its start") {
  RunnerPolicy a;
  a.isolation = Isolation::namespace_;
  a.allowed_read_paths = {"/usr", "/etc"};
  RunnerPolicy b = a;
  b.allowed_read_paths = {"/etc", "/usr", "/etc"};
  CHECK_FALSE(key_of(a) < key_of(b));  // the same read set in another order
  CHECK_FALSE(key_of(b) < key_of(a));
  b.trust_domain = "tenant-b";
  CHECK((key_of(a) < key_of(b) || key_of(b) < key_of(a)));  // namespace workers keep state: per domain
  RunnerPolicy c = a;
  c.memory_limit_mb = 100;
  RunnerPolicy d = a;
  d.memory_limit_mb = 120;
  CHECK_FALSE(key_of(c) < key_of(d));  // one memory class (128 MB)
  CHECK_FALSE(key_of(d) < key_of(c));
  d.memory_limit_mb = 300;
  CHECK(key_of(c) < key_of(d));
  RunnerPolicy f;
  f.isolation = Isolation::fork;
  RunnerPolicy g = f;
  g.trust_domain = "other";
  CHECK_FALSE(key_of(f) < key_of(g));  // a fork run leaves nothing behind: domains share a pool
  CHECK_FALSE(key_of(f).once);
  RunnerPolicy p;
  p.isolation = Isolation::process;
  p.memory_limit_mb = 200;
  p.cpu_time_seconds = 3;
  const PoolKey k = key_of(p);
  CHECK(k.once);
  CHECK(k.memory_backstop_mb == 200);  // the run's own limits are the one-shot worker's backstops
  CHECK(k.cpu_backstop_seconds == 3);
}

TEST_CASE("WorkerPool: a healthy worker comes back to its pool; a dead one is discarded and replaced") {
  Starter s;
  WorkerPool pool({1, 10}, s.fn());
  const PoolKey key = fork_key();
  std::string error;
  pid_t first = -1;
  {
    auto w = pool.lease(key, error);
    REQUIRE_MESSAGE(w, error);
    first = w->pid();
    CHECK(w->alive());
  }
  CHECK(pool.idle(key) == 1);
  pid_t second = -1;
  {
    auto w = pool.lease(key, error);
    REQUIRE_MESSAGE(w, error);
    CHECK(w->pid() == first);  // the same warm worker, not a new one
    CHECK(pool.idle(key) == 0);
    w->kill_and_reap();  // as a cancelled run's worker is
  }
  CHECK(reaped(first));
  {
    auto w = pool.lease(key, error);  // the replacement, started after the discard
    REQUIRE_MESSAGE(w, error);
    second = w->pid();
  }
  CHECK(second != first);
  CHECK(s.starts == 2);
}

TEST_CASE("WorkerPool: keys are kept apart") {
  Starter s;
  WorkerPool pool({1, 10}, s.fn());
  const PoolKey a = fork_key(false), b = fork_key(true);
  std::string error;
  pid_t pa = -1, pb = -1;
  {
    auto wa = pool.lease(a, error);
    REQUIRE_MESSAGE(wa, error);
    auto wb = pool.lease(b, error);
    REQUIRE_MESSAGE(wb, error);
    pa = wa->pid();
    pb = wb->pid();
    CHECK(pa != pb);
  }
  CHECK(pool.idle(a) == 1);
  CHECK(pool.idle(b) == 1);
  auto wb = pool.lease(b, error);
  REQUIRE_MESSAGE(wb, error);
  CHECK(wb->pid() == pb);
  CHECK(pool.idle(a) == 1);  // a's idle worker was not handed to b
}

TEST_CASE("WorkerPool: a process-mode lease is a one-shot worker, discarded after its run") {
  Starter s;
  WorkerPool pool({2, 10}, s.fn());
  const PoolKey key = process_key();
  pool.prespawn(key);  // nothing idles for a one-shot key
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  CHECK(s.starts == 0);
  std::string error;
  pid_t first = -1;
  {
    auto w = pool.lease(key, error);
    REQUIRE_MESSAGE(w, error);
    first = w->pid();
    CHECK(s.starts == 1);
  }
  CHECK(reaped(first));  // given back alive, still killed and reaped
  CHECK(pool.idle(key) == 0);
  auto w = pool.lease(key, error);
  REQUIRE_MESSAGE(w, error);
  CHECK(w->pid() != first);
  CHECK(s.starts == 2);
}

TEST_CASE("WorkerPool: shutdown kills idle and leased workers; later leases fail; a holder reaps its own") {
  Starter s;
  WorkerPool pool({1, 10}, s.fn());
  const PoolKey a = fork_key(false), b = fork_key(true);
  std::string error;
  pid_t idle_pid = -1;
  {
    auto w = pool.lease(b, error);
    REQUIRE_MESSAGE(w, error);
    idle_pid = w->pid();
  }
  auto warm = pool.lease(a, error);
  REQUIRE_MESSAGE(warm, error);
  auto once = pool.lease(process_key(), error);
  REQUIRE_MESSAGE(once, error);
  const pid_t warm_pid = warm->pid(), once_pid = once->pid();
  std::thread stopper([&] { pool.shutdown(); });
  stopper.join();
  CHECK(pool.stopping());
  CHECK(reaped(idle_pid));
  // Leased workers are killed at once but left for their holders to reap.
  CHECK(eventually([&] { return proc_state(warm_pid) == 'Z'; }));
  CHECK(eventually([&] { return proc_state(once_pid) == 'Z'; }));
  error.clear();
  CHECK_FALSE(pool.lease(a, error));
  CHECK(error.find("shutting down") != std::string::npos);
  warm.give_back();
  once.give_back();
  CHECK(reaped(warm_pid));
  CHECK(reaped(once_pid));
  CHECK(pool.idle(a) == 0);  // not put back after shutdown
}

TEST_CASE("WorkerPool: failed starts are answered with their reason; a cancelled lease gets nothing") {
  std::atomic<int> tries{0};
  WorkerPool pool({1, 10}, [&](const PoolKey&) -> std::unique_ptr<WorkerProcess> {
    ++tries;
    throw std::runtime_error("no worker here");
  });
  std::string error;
  CHECK_FALSE(pool.lease(fork_key(), error));
  CHECK(error == "no worker available: no worker here");
  CHECK(tries >= 3);
  error.clear();
  CHECK_FALSE(pool.lease(process_key(), error));
  CHECK(error == "no worker here");  // a one-shot start's own error
  spr::CancelToken token;
  token.cancel();
  error.clear();
  const int before = tries;
  CHECK_FALSE(pool.lease(process_key(), error, &token));
  CHECK(error.empty());
  CHECK(tries == before);  // nothing started for a cancelled lease
}

TEST_CASE("WorkerPool: callers waiting for a busy worker are served in the order they came") {
  Starter s;
  WorkerPool pool({1, 10}, s.fn());
  const PoolKey key = fork_key();
  std::string error;
  auto a = pool.lease(key, error);
  REQUIRE_MESSAGE(a, error);
  // Four callers start waiting, one after another; each holds the worker a moment, then gives it back.
  constexpr int kWaiters = 4;
  std::mutex mu;
  std::vector<int> served;
  std::vector<std::thread> waiters;
  for (int i = 0; i < kWaiters; ++i) {
    waiters.emplace_back([&, i] {
      std::string e;
      auto w = pool.lease(key, e);
      {
        std::lock_guard<std::mutex> lk(mu);
        served.push_back(w ? i : -1);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    });
    REQUIRE(eventually([&] { return pool.waiting(key) == static_cast<std::size_t>(i + 1); }));
  }
  a.give_back();
  // A caller that comes now, while they wait, queues behind them instead of taking the worker; it gives up
  // (cancelled) once the first of them is served, three holds before its turn.
  spr::CancelToken later;
  std::thread canceller([&] {
    for (;;) {
      {
        std::lock_guard<std::mutex> lk(mu);
        if (!served.empty()) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    later.cancel();
  });
  std::string error_late;
  auto late = pool.lease(key, error_late, &later);
  canceller.join();
  for (auto& t : waiters) t.join();
  CHECK_FALSE(late);
  CHECK(error_late.empty());
  CHECK(served == std::vector<int>{0, 1, 2, 3});
  CHECK(pool.waiting(key) == 0);  // the cancelled caller left the queue
  CHECK(s.starts == 1);
}

TEST_CASE("WorkerPool: a caller waits for a worker out on a long run, past the start timeout") {
  Starter s;
  // A wait on worker starts alone would give up after 2 x 0.25 s.
  WorkerPool pool({1, 0.25}, s.fn());
  const PoolKey key = fork_key();
  pool.prespawn(key);
  REQUIRE(eventually_started([&] { return pool.idle(key) == 1; }));
  std::string error;
  auto a = pool.lease(key, error);
  REQUIRE_MESSAGE(a, error);
  WorkerPool::Lease b;
  std::string error_b;
  std::thread waiter([&] { b = pool.lease(key, error_b); });
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));  // the run holding `a` outlasts the start timeout
  const pid_t pid = a->pid();
  a.give_back();
  waiter.join();
  REQUIRE_MESSAGE(b, error_b);
  CHECK(b->pid() == pid);
}

TEST_CASE("WorkerPool: pools of one mode stay within workers x max_pools_per_mode, fork pools too") {
  // Red team round 14: a client that varied its scratch size run after run left one warm fork worker per size.
  Starter s;
  WorkerPool::Options o;
  o.workers = 1;
  o.max_pools_per_mode = 2;
  WorkerPool pool(o, s.fn());
  for (const std::int64_t scratch : {33, 34, 35, 36, 37}) {
    RunnerPolicy p;
    p.isolation = Isolation::fork;
    p.scratch_limit_mb = scratch;  // a pool of its own
    std::string error;
    auto w = pool.lease(key_of(p), error);
    REQUIRE_MESSAGE(w, error);
  }
  const auto live = [&] {
    const auto c = pool.counts();
    return c.idle + c.busy;
  };
  CHECK(s.starts == 5);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // background refills, if any, are queued by now
  CHECK(eventually_started([&] { return pool.counts().busy == 0; }));
  CHECK_MESSAGE(live() <= 2, live(), " warm workers for 5 pools");
}
