// Runner: pools of warm workers per isolation mode, a spawner thread, deadlines and recovery.
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <signal.h>
#include <thread>
#include <tuple>

#include "common/frame.hpp"
#include "common/wire.hpp"
#include "detail/python_env.hpp"
#include "detail/worker_process.hpp"
#include "spr/runner.hpp"

namespace spr {

using detail::Clock;
using detail::WorkerProcess;

namespace {
Clock::duration seconds(double s) {
  return std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}
}  // namespace

// Workers are hardened when they start: a pool serves one isolation mode, network setting, Python
// environment and read set (Landlock can only narrow, so the read set is fixed at the worker's start).
struct PoolKey {
  Isolation isolation;
  bool network;
  std::string python;              // python_executable as given ("" = the default python3)
  std::vector<std::string> reads;  // allowed_read_paths, sorted
  bool operator<(const PoolKey& o) const {
    return std::tie(isolation, network, python, reads) < std::tie(o.isolation, o.network, o.python, o.reads);
  }
};

PoolKey key_of(const RunnerPolicy& p) {
  PoolKey k{p.isolation, p.allow_network, p.python_executable, p.allowed_read_paths};
  std::sort(k.reads.begin(), k.reads.end());
  k.reads.erase(std::unique(k.reads.begin(), k.reads.end()), k.reads.end());
  return k;
}

struct Runner::Impl {
  RunnerOptions options;
  std::filesystem::path worker_path;
  std::atomic<std::uint64_t> next_id{1};

  struct Pool {
    std::deque<std::unique_ptr<WorkerProcess>> idle;
    std::size_t live = 0;       // idle + busy + being spawned
    std::string last_error;     // why the last spawn failed, for callers that then get none
    int failures_in_a_row = 0;
  };
  std::mutex mu;
  std::condition_variable cv;           // a worker became idle, or a spawn failed
  std::map<PoolKey, Pool> pools;
  std::set<WorkerProcess*> busy;  // running a request now; shutdown kills them so callers return at once
  bool stopping = false;

  // Workers are spawned from this one long-lived thread: PR_SET_PDEATHSIG fires when the
  // spawning *thread* exits, so spawning from callers' threads would kill workers early.
  std::thread spawner;
  std::condition_variable spawn_cv;
  std::deque<PoolKey> spawn_queue;
  json last_hello;

  // submit(): a small executor so that futures do not each need a thread.
  std::vector<std::thread> executors;
  std::deque<std::packaged_task<RunResult()>> tasks;
  std::condition_variable task_cv;

  explicit Impl(RunnerOptions o) : options(std::move(o)) {
    options.policy.validate();
    if (options.workers == 0) throw PolicyError("RunnerOptions::workers must be at least 1");
    worker_path = detail::find_worker(options.worker_path);
    spawner = std::thread([this] { spawn_loop(); });
  }

  ~Impl() { stop(); }

  void stop() {
    std::deque<std::unique_ptr<WorkerProcess>> doomed;
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) return;
      stopping = true;
      for (auto& [iso, pool] : pools)
        for (auto& w : pool.idle) doomed.push_back(std::move(w));
      for (WorkerProcess* w : busy) ::kill(-w->pid(), SIGKILL);  // their owners reap them
    }
    cv.notify_all();
    spawn_cv.notify_all();
    task_cv.notify_all();
    doomed.clear();  // kills and reaps
    if (spawner.joinable()) spawner.join();
    for (auto& t : executors)
      if (t.joinable()) t.join();
  }

  // Throws WorkerError when the key's Python cannot be served (probe failed, no worker for its version).
  detail::SpawnOptions spawn_options(const PoolKey& key, bool once) const {
    detail::SpawnOptions so;
    so.worker_path = worker_path;
    const std::string exe = key.python.empty() ? detail::default_python() : key.python;
    const detail::PythonEnv& env = detail::probe_python(exe);
    if (env.version.empty()) {
      // The default python3 may be absent where only the library is installed: the worker's own path then.
      if (!key.python.empty()) throw WorkerError(env.error);
    } else {
      std::string error;
      so.worker_path = detail::worker_for(worker_path, env, error);
      if (so.worker_path.empty()) throw WorkerError(error);
      so.python = exe;
      so.sys_path = env.path;
    }
    so.preload = options.preload;
    so.read_paths = key.reads;
    so.isolation = key.isolation;
    so.allow_network = key.network;
    so.once = once;
    so.grace_seconds = options.kill_grace_seconds;
    so.subinterpreter_pool = options.subinterpreter_pool;
    so.start_timeout_seconds = options.start_timeout_seconds;
    so.inherit_stderr = options.worker_stderr;
    return so;
  }

  void spawn_loop() {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      spawn_cv.wait(lk, [&] { return stopping || !spawn_queue.empty(); });
      if (stopping) return;
      PoolKey iso = spawn_queue.front();
      spawn_queue.pop_front();
      lk.unlock();
      std::unique_ptr<WorkerProcess> w;
      std::string error;
      try {
        w = WorkerProcess::spawn(spawn_options(iso, false));
      } catch (const std::exception& e) {
        error = e.what();
      }
      lk.lock();
      Pool& pool = pools[iso];
      if (w) {
        last_hello = w->hello();
        pool.failures_in_a_row = 0;
        if (stopping) {
          lk.unlock();
          w.reset();
          lk.lock();
          return;
        }
        pool.idle.push_back(std::move(w));
      } else {
        pool.last_error = error;
        ++pool.failures_in_a_row;
        --pool.live;
      }
      cv.notify_all();
    }
  }

  // Caller holds mu. Tops the pool up to `workers`.
  void fill(PoolKey iso) {
    Pool& pool = pools[iso];
    while (pool.live < options.workers) {
      ++pool.live;
      spawn_queue.push_back(iso);
    }
    spawn_cv.notify_one();
  }

  std::unique_ptr<WorkerProcess> acquire(PoolKey iso, std::string& error) {
    std::unique_lock<std::mutex> lk(mu);
    const auto give_up = Clock::now() + seconds(options.start_timeout_seconds * 2);
    for (;;) {
      if (stopping) {
        error = "the runner is shutting down";
        return nullptr;
      }
      Pool& pool = pools[iso];
      if (!pool.idle.empty()) {
        auto w = std::move(pool.idle.front());
        pool.idle.pop_front();
        busy.insert(w.get());
        return w;
      }
      // Several spawns in a row failed and none is pending: answer now instead of waiting.
      if (pool.failures_in_a_row >= 3 && pool.live == 0) {
        error = pool.last_error;
        pool.failures_in_a_row = 0;  // the next caller tries again
        return nullptr;
      }
      fill(iso);
      if (cv.wait_until(lk, give_up) == std::cv_status::timeout && pools[iso].idle.empty()) {
        error = "no worker became available in time" +
                (pools[iso].last_error.empty() ? std::string() : ": " + pools[iso].last_error);
        return nullptr;
      }
    }
  }

  void release(PoolKey iso, std::unique_ptr<WorkerProcess> w) {
    std::unique_ptr<WorkerProcess> dead;
    {
      std::lock_guard<std::mutex> lk(mu);
      Pool& pool = pools[iso];
      busy.erase(w.get());
      if (w->alive() && !stopping) {
        pool.idle.push_back(std::move(w));
      } else {
        dead = std::move(w);
        --pool.live;
        if (!stopping) fill(iso);  // the replacement comes up off the caller's path
      }
    }
    cv.notify_all();  // one condition variable serves every pool: wake them all, each rechecks its own
    // `dead` is reaped here, outside the lock.
  }

  RunResult run(const std::string& code, const json& input, const RunnerPolicy& policy, const std::string& stdin_text) {
    policy.validate();
    if (policy.timeout_seconds == 0) {
      // The original waits max(1, timeout) seconds; 0 gets its floor, and the error says "after 1s".
      RunnerPolicy floored = policy;
      floored.timeout_seconds = 1;
      return run(code, input, floored, stdin_text);
    }
    const std::size_t stdin_cap = static_cast<std::size_t>(policy.max_output_kb) * 1024;
    if (stdin_text.size() > stdin_cap) {
      RunResult r = detail::failure(ErrorKind::bad_input, "stdin is " + std::to_string(stdin_text.size()) +
                                                              " bytes, more than max_output_kb allows (" +
                                                              std::to_string(policy.max_output_kb) + " KB)");
      r.isolation = policy.isolation;
      return r;
    }
    const auto start = Clock::now();
    const std::uint64_t id = next_id++;
    // Fork mode: the worker kills its child at timeout + grace; we wait one more grace for its reply.
    const double slack = options.kill_grace_seconds * (policy.isolation == Isolation::fork ? 2 : 1) + 0.05;
    RunResult r;
    bool shut_down;
    {
      std::lock_guard<std::mutex> lk(mu);
      shut_down = stopping;
    }
    if (shut_down) {
      r = detail::failure(ErrorKind::worker_unavailable, "the runner is shutting down");
    } else if (auto bad = detail::non_utf8_code_result(code)) {
      r = std::move(*bad);  // CPython refuses such a source file; replacing bytes would run other code
    } else if (policy.isolation == Isolation::process) {
      std::unique_ptr<WorkerProcess> w;
      try {
        w = WorkerProcess::spawn(spawn_options(key_of(policy), true));
      } catch (const std::exception& e) {
        r = detail::failure(ErrorKind::worker_unavailable, e.what());
      }
      bool shut = false;
      if (w) {
        std::lock_guard<std::mutex> lk(mu);
        shut = stopping;
        if (!shut) busy.insert(w.get());
      }
      if (shut) {
        r = detail::failure(ErrorKind::worker_unavailable, "the runner is shutting down");
      } else if (w) {
        r = w->run(id, code, input, policy, Clock::now() + seconds(policy.timeout_seconds + slack), stdin_text);
        std::lock_guard<std::mutex> lk(mu);
        busy.erase(w.get());
      }
    } else {
      std::string error;
      const PoolKey key = key_of(policy);
      auto w = acquire(key, error);
      if (!w) {
        r = detail::failure(ErrorKind::worker_unavailable, "no worker available: " + error);
      } else {
        r = w->run(id, code, input, policy, Clock::now() + seconds(policy.timeout_seconds + slack), stdin_text);
        release(key, std::move(w));
      }
    }
    if (!r.ok && r.error_kind == ErrorKind::worker_crashed) {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) r = detail::failure(ErrorKind::worker_unavailable, "the runner shut down during the run");
    }
    r.isolation = policy.isolation;
    r.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    return r;
  }

  std::future<RunResult> submit(std::string code, json input, RunnerPolicy policy) {
    policy.validate();
    std::packaged_task<RunResult()> task(
        [this, c = std::move(code), i = std::move(input), p = std::move(policy)] { return run(c, i, p, {}); });
    auto fut = task.get_future();
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) throw std::logic_error("submit() on a Runner that was shut down");
      tasks.push_back(std::move(task));
      const std::size_t want = options.workers * 2;
      if (executors.size() < want && !tasks.empty()) executors.emplace_back([this] { exec_loop(); });
    }
    task_cv.notify_one();
    return fut;
  }

  void exec_loop() {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      task_cv.wait(lk, [&] { return stopping || !tasks.empty(); });
      if (tasks.empty()) return;  // stopping and drained
      auto t = std::move(tasks.front());
      tasks.pop_front();
      lk.unlock();
      t();
      lk.lock();
    }
  }

  json hello(PoolKey iso) {
    std::string error;
    auto w = acquire(iso, error);
    if (!w) throw WorkerError("no worker available: " + error);
    json h = w->hello();
    release(iso, std::move(w));
    return h;
  }
};

Runner::Runner(RunnerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  std::lock_guard<std::mutex> lk(impl_->mu);
  const RunnerPolicy& p = impl_->options.policy;
  if (p.isolation != Isolation::process) impl_->fill(key_of(p));
}

Runner::~Runner() = default;

RunResult Runner::run(const std::string& code, const json& input_data) {
  return impl_->run(code, input_data, impl_->options.policy, {});
}

RunResult Runner::run(const std::string& code, const json& input_data, const RunnerPolicy& policy) {
  return impl_->run(code, input_data, policy, {});
}

RunResult Runner::run(const std::string& code, const json& input_data, const RunnerPolicy& policy,
                      const std::string& stdin_text) {
  return impl_->run(code, input_data, policy, stdin_text);
}

std::future<RunResult> Runner::submit(std::string code, json input_data, RunnerPolicy policy) {
  return impl_->submit(std::move(code), std::move(input_data), std::move(policy));
}

const RunnerOptions& Runner::options() const { return impl_->options; }

json Runner::hardening(Isolation isolation) {
  if (isolation == Isolation::process) {
    RunnerPolicy p = impl_->options.policy;
    p.isolation = Isolation::process;
    auto w = WorkerProcess::spawn(impl_->spawn_options(key_of(p), true));
    return w->hello().value("hardening", json::array());
  }
  RunnerPolicy p = impl_->options.policy;
  p.isolation = isolation;
  return impl_->hello(key_of(p)).value("hardening", json::array());
}

std::string Runner::python_version() {
  RunnerPolicy p = impl_->options.policy;
  if (p.isolation == Isolation::process) p.isolation = Isolation::fork;
  return impl_->hello(key_of(p)).value("python", std::string("?"));
}

void Runner::shutdown() { impl_->stop(); }

RunResult run_code(const std::string& code, const json& input_data, const RunnerPolicy& policy) {
  static Runner runner;  // started on first use, stopped at exit
  return runner.run(code, input_data, policy);
}


}  // namespace spr
