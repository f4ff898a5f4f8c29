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
#include "detail/cancel.hpp"
#include "detail/python_env.hpp"
#include "detail/session_host.hpp"
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
// namespace and subinterpreter workers also carry state from run to run (a run may own its process's
// memory), so their pools are split by trust domain too, and by their OS memory backstop (RLIMIT_AS,
// set once at start): the power of two at or above the run's memory limit.
struct PoolKey {
  Isolation isolation;
  bool network;
  std::string python;              // python_executable as given ("" = the default python3)
  std::vector<std::string> reads;  // allowed_read_paths, sorted
  std::string domain;              // trust_domain (namespace, subinterpreter)
  std::int64_t memory_class_mb = 0;  // namespace, subinterpreter
  bool operator<(const PoolKey& o) const {
    return std::tie(isolation, network, python, reads, domain, memory_class_mb) <
           std::tie(o.isolation, o.network, o.python, o.reads, o.domain, o.memory_class_mb);
  }
};

bool shares_process(Isolation i) { return i == Isolation::namespace_ || i == Isolation::subinterpreter; }

std::int64_t memory_class_mb(std::int64_t limit_mb) {
  std::int64_t c = 64;
  while (c < limit_mb) c *= 2;
  return c;
}

PoolKey key_of(const RunnerPolicy& p) {
  PoolKey k{p.isolation, p.allow_network, p.python_executable, p.allowed_read_paths, {}, 0};
  std::sort(k.reads.begin(), k.reads.end());
  k.reads.erase(std::unique(k.reads.begin(), k.reads.end()), k.reads.end());
  if (shares_process(p.isolation)) {
    k.domain = p.trust_domain;
    k.memory_class_mb = memory_class_mb(p.memory_limit_mb);
  }
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
  std::deque<std::function<void()>> tasks;
  std::shared_ptr<detail::SessionHost> sessions;
  std::condition_variable task_cv;

  explicit Impl(RunnerOptions o) : options(std::move(o)) {
    options.policy.validate();
    if (options.workers == 0) throw PolicyError("RunnerOptions::workers must be at least 1");
    worker_path = detail::find_worker(options.worker_path);
    sessions = std::make_shared<detail::SessionHost>(options.max_sessions, options.session_idle_seconds);
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
    sessions->stop();
    if (spawner.joinable()) spawner.join();
    for (auto& t : executors)
      if (t.joinable()) t.join();
  }

  // Throws WorkerError when the key's Python cannot be served (probe failed, no worker for its version).
  detail::SpawnOptions spawn_options(const PoolKey& key, bool once) const {
    detail::SpawnOptions so;
    so.memory_backstop_mb = key.memory_class_mb;
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

  // Caller holds `lk` on mu. Per-domain pools multiply workers: past a bound, an idle worker of
  // another domain's pool makes room for this one.
  void evict_idle_elsewhere(const PoolKey& key, std::unique_lock<std::mutex>& lk) {
    std::size_t live = 0;
    for (auto& [k, pool] : pools) live += pool.live;
    if (live < options.workers * kMaxPoolsPerMode) return;
    for (auto& [k, pool] : pools) {
      if (k.isolation != key.isolation || pool.idle.empty() || !(k < key || key < k)) continue;
      auto w = std::move(pool.idle.front());
      pool.idle.pop_front();
      --pool.live;
      lk.unlock();
      w.reset();  // kills and reaps
      lk.lock();
      return;
    }
  }
  static constexpr std::size_t kMaxPoolsPerMode = 8;

  // Caller holds mu. Tops the pool up to `workers`.
  void fill(const PoolKey& iso) {
    Pool& pool = pools[iso];
    while (pool.live < options.workers) {
      ++pool.live;
      spawn_queue.push_back(iso);
    }
    spawn_cv.notify_one();
  }

  std::unique_ptr<WorkerProcess> acquire(const PoolKey& iso, std::string& error, const CancelToken* cancel = nullptr) {
    std::unique_lock<std::mutex> lk(mu);
    const auto give_up = Clock::now() + seconds(options.start_timeout_seconds * 2);
    for (;;) {
      if (stopping) {
        error = "the runner is shutting down";
        return nullptr;
      }
      if (cancel && cancel->cancelled()) return nullptr;
      Pool& pool = pools[iso];
      if (!pool.idle.empty()) {
        auto w = std::move(pool.idle.front());
        pool.idle.pop_front();
        if (!w->quiet()) {
          // A stray frame or a hang-up is pending: a run wrote to the reply channel itself. Replace it.
          --pool.live;
          lk.unlock();
          w.reset();
          lk.lock();
          continue;
        }
        busy.insert(w.get());
        return w;
      }
      if (pool.live == 0 && shares_process(iso.isolation)) evict_idle_elsewhere(iso, lk);
      // Several spawns in a row failed and none is pending: answer now instead of waiting.
      if (pool.failures_in_a_row >= 3 && pool.live == 0) {
        error = pool.last_error;
        pool.failures_in_a_row = 0;  // the next caller tries again
        return nullptr;
      }
      fill(iso);
      // A cancellable wait looks at its token every 20 ms.
      const auto until = cancel ? std::min(give_up, Clock::now() + std::chrono::milliseconds(20)) : give_up;
      if (cv.wait_until(lk, until) == std::cv_status::timeout && Clock::now() >= give_up && pools[iso].idle.empty()) {
        error = "no worker became available in time" +
                (pools[iso].last_error.empty() ? std::string() : ": " + pools[iso].last_error);
        return nullptr;
      }
    }
  }

  void release(const PoolKey& iso, std::unique_ptr<WorkerProcess> w) {
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

  // Runs on `w`, attached to the cancel token; a cancelled run's worker is killed and reaped here.
  RunResult run_on(WorkerProcess& w, std::uint64_t id, const std::string& code, const json& input,
                   const RunnerPolicy& policy, Clock::time_point deadline, const std::string& stdin_text,
                   const RunOptions* opts) {
    if (!opts) return w.run(id, code, input, policy, deadline, stdin_text);
    if (!detail::attach(opts->cancel, w.pid(), w.pidfd())) return detail::cancelled_result();
    detail::RunExtras extras;
    extras.on_output = &opts->on_output;
    RunResult r = w.run(id, code, input, policy, deadline, stdin_text, extras);
    if (detail::detach(opts->cancel)) {
      w.kill_and_reap();
      r = detail::cancelled_result();
    }
    return r;
  }

  // Throws PolicyError for an invalid policy, or one that loosens a ceiling policy.
  void check(const RunnerPolicy& policy) const {
    policy.validate();
    if (!options.policy_is_ceiling) return;
    if (std::string why = policy.looser_than(options.policy); !why.empty())
      throw PolicyError("the runner's policy is a ceiling: " + why);
  }

  RunResult run(const std::string& code, const json& input, const RunnerPolicy& policy, const std::string& stdin_text,
                const RunOptions* opts = nullptr) {
    check(policy);
    if (policy.timeout_seconds == 0) {
      // The original waits max(1, timeout) seconds; 0 gets its floor, and the error says "after 1s".
      RunnerPolicy floored = policy;
      floored.timeout_seconds = 1;
      return run(code, input, floored, stdin_text, opts);
    }
    const std::size_t stdin_cap = static_cast<std::size_t>(policy.max_output_kb) * 1024;
    if (stdin_text.size() > stdin_cap) {
      RunResult r = outcome::stdin_too_large(stdin_text.size(), policy.max_output_kb);
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
    } else if (opts && opts->cancel.cancelled()) {
      r = detail::cancelled_result();
    } else if (auto bad = detail::non_utf8_code_result(code)) {
      r = std::move(*bad);  // CPython refuses such a source file; replacing bytes would run other code
    } else if (policy.isolation == Isolation::process) {
      std::unique_ptr<WorkerProcess> w;
      try {
        RunnerPolicy one = policy;
        detail::SpawnOptions so = spawn_options(key_of(one), true);
        // One run per process: its exact limits become the OS backstop.
        so.memory_backstop_mb = policy.memory_limit_mb;
        so.cpu_backstop_seconds = policy.cpu_time_seconds;
        w = WorkerProcess::spawn(so);
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
        r = run_on(*w, id, code, input, policy, Clock::now() + seconds(policy.timeout_seconds + slack), stdin_text,
                   opts);
        std::lock_guard<std::mutex> lk(mu);
        busy.erase(w.get());
      }
    } else {
      std::string error;
      const PoolKey key = key_of(policy);
      auto w = acquire(key, error, opts ? &opts->cancel : nullptr);
      if (!w && opts && opts->cancel.cancelled()) {
        r = detail::cancelled_result();
      } else if (!w) {
        r = detail::failure(ErrorKind::worker_unavailable, "no worker available: " + error);
      } else {
        r = run_on(*w, id, code, input, policy, Clock::now() + seconds(policy.timeout_seconds + slack), stdin_text,
                   opts);
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

  // A cancel makes the future ready at once; the run, if it started, is stopped and its result dropped.
  RunHandle submit(std::string code, json input, RunnerPolicy policy, RunOptions opts) {
    check(policy);
    auto done = std::make_shared<detail::Completion>();
    auto fut = done->promise.get_future();
    CancelToken token = opts.cancel;
    post([this, done, c = std::move(code), i = std::move(input), p = std::move(policy), o = std::move(opts)] {
      if (!done->done()) done->complete(run(c, i, p, {}, &o));
    });
    const Isolation iso = policy.isolation;
    detail::on_cancel(token, [done, iso] {
      RunResult r = detail::cancelled_result();
      r.isolation = iso;
      done->complete(std::move(r));
    });
    return RunHandle(std::move(fut), std::move(token));
  }

  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) throw std::logic_error("submit() on a Runner that was shut down");
      tasks.push_back(std::move(task));
      const std::size_t want = options.workers * 2;
      if (executors.size() < want && !tasks.empty()) executors.emplace_back([this] { exec_loop(); });
    }
    task_cv.notify_one();
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

  json hello(const PoolKey& iso) {
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

RunResult Runner::run(const std::string& code, const json& input_data, const RunnerPolicy& policy,
                      const RunOptions& options) {
  return impl_->run(code, input_data, policy, options.stdin_text, &options);
}

RunHandle Runner::submit(std::string code, json input_data, RunnerPolicy policy) {
  return impl_->submit(std::move(code), std::move(input_data), std::move(policy), RunOptions{});
}

RunHandle Runner::submit(std::string code, json input_data, RunnerPolicy policy, RunOptions options) {
  return impl_->submit(std::move(code), std::move(input_data), std::move(policy), std::move(options));
}

Session Runner::open_session() { return open_session(impl_->options.policy); }

Session Runner::open_session(const RunnerPolicy& policy) {
  impl_->check(policy);  // valid, and within the ceiling when the runner has one
  // A session's worker is hardened like a namespace-mode worker of the same network, Python and reads.
  PoolKey key = key_of(policy);
  key.isolation = Isolation::namespace_;
  return Session(impl_->sessions->open(policy, impl_->spawn_options(key, false),
                                       [impl = impl_.get()](std::function<void()> f) { impl->post(std::move(f)); }));
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
