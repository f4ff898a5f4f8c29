// Runner: policy checks, deadlines and recovery over the worker pool; the submit() executor; sessions.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>

#include "common/frame.hpp"
#include "common/run_files.hpp"
#include "common/outcome.hpp"
#include "common/run_deadline.hpp"
#include "common/protocol.hpp"
#include "detail/cancel.hpp"
#include "detail/python_env.hpp"
#include "detail/runner_access.hpp"
#include "detail/session_host.hpp"
#include "detail/spawn.hpp"
#include "detail/worker_pool.hpp"
#include "detail/worker_process.hpp"
#include "spr/runner.hpp"

namespace spr {

using detail::Clock;
using detail::PoolKey;
using detail::WorkerProcess;

using detail::seconds;

struct Runner::Impl {
  RunnerOptions options;
  std::filesystem::path worker_path;
  std::string cache_dir;  // the workers' (RunnerOptions::cache_dir resolved); "" = none
  std::atomic<std::uint64_t> next_id{1};
  std::shared_ptr<detail::SessionHost> sessions;
  detail::WorkerPool pool;
  // options.functions, shared with every run's host calls (a late host function may outlive the runner).
  std::shared_ptr<const HostFunctions> functions;

  // submit(): a small executor so that futures do not each need a thread.
  std::mutex mu;
  bool stopping = false;
  std::vector<std::thread> executors;
  std::size_t idle_executors = 0;  // executors waiting for a task
  std::size_t executor_floor = 0;  // RunnerAccess::allow_submitted_at_once
  std::deque<std::function<void()>> tasks;
  std::condition_variable task_cv;

  // RunnerOptions::cache_dir, or the environment's choice; only an absolute path is taken.
  static std::string worker_cache_dir(const RunnerOptions& o) {
    if (!o.worker_cache) return {};
    std::string dir = o.cache_dir.string();
    if (dir.empty()) {
      const char* given = std::getenv("SAFE_PY_RUNNER_CACHE_DIR");
      const char* xdg = std::getenv("XDG_CACHE_HOME");
      const char* home = std::getenv("HOME");
      if (given) dir = given;
      else if (xdg && xdg[0] == '/') dir = std::string(xdg) + "/safe-py-runner";
      else if (home && home[0] == '/') dir = std::string(home) + "/.cache/safe-py-runner";
    }
    return !dir.empty() && dir[0] == '/' ? dir : std::string();
  }

  static RunnerOptions checked(RunnerOptions o) {
    o.policy.validate();
    detail::check_function_names(o.functions);
    if (o.workers == 0) throw PolicyError("RunnerOptions::workers must be at least 1");
    return o;
  }

  explicit Impl(RunnerOptions o)
      : options(checked(std::move(o))),
        worker_path(detail::find_worker(options.worker_path)),
        cache_dir(worker_cache_dir(options)),
        sessions(std::make_shared<detail::SessionHost>(options.max_sessions, options.session_idle_seconds)),
        pool({options.workers, options.start_timeout_seconds},
             [this](const PoolKey& key) {
               detail::SpawnOptions so = spawn_options(key);
               so.stop_fd = pool.stop_fd();
               return WorkerProcess::spawn(so);
             }),
        functions(options.functions.empty() ? nullptr : std::make_shared<const HostFunctions>(options.functions)) {}

  ~Impl() { stop(); }

  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) return;
      stopping = true;
    }
    task_cv.notify_all();
    pool.shutdown();
    sessions->stop();
    for (auto& t : executors)
      if (t.joinable()) t.join();
  }

  // Throws WorkerError when the key's Python cannot be served (not a build this library has a worker for).
  detail::SpawnOptions spawn_options(const PoolKey& key) const {
    detail::SpawnOptions so = detail::spawn_options_of(key);
    const detail::PythonEnv env = detail::resolve_python(key.python);
    if (!env.error.empty()) throw WorkerError(env.error);
    // The default build's worker is the one found (or configured); another build's sits next to it.
    so.worker_path = env.worker == "spr-worker" ? worker_path : worker_path.parent_path() / env.worker;
    if (!detail::executable_file(so.worker_path.c_str()))
      throw WorkerError("python_executable " + env.executable + " (Python " + env.version + ") needs " +
                        so.worker_path.string() + ", which is not an executable file");
    so.start.python = env.executable;
    so.start.prefix = env.prefix;
    so.start.sys_path = env.path;
    so.python_build = env.build;
    so.start.preload = options.preload;
    so.start.cache_dir = cache_dir;
    so.grace_seconds = options.kill_grace_seconds;
    so.start.subinterpreter_pool = options.subinterpreter_pool;
    so.start.subinterpreter_threads = options.subinterpreter_threads;
    so.start_timeout_seconds = options.start_timeout_seconds;
    so.inherit_stderr = options.worker_stderr;
    return so;
  }

  // Runs on `w`, attached to the cancel token; a cancelled run's worker is killed and reaped here.
  RunResult run_on(WorkerProcess& w, std::uint64_t id, const std::string& code, const json& input,
                   const RunnerPolicy& policy, Clock::time_point deadline, const std::string& stdin_text,
                   const RunOptions* opts, bool input_checked) {
    detail::HostCalls host(functions, opts ? &opts->functions : nullptr);
    detail::RunExtras extras;
    if (!host.empty()) extras.host = &host;
    if (opts && !opts->files.empty()) extras.files = &opts->files;
    if (opts && !opts->collect.empty()) extras.collect = &opts->collect;
    if (opts && !opts->input_json.empty()) extras.input_json = &opts->input_json;
    extras.input_json_checked = input_checked;
    // A fork parent keeps only this policy decoded for its children: another is a caller's, which the next
    // caller's run must not find in its memory (red team round 20).
    extras.operator_policy = options.policy.extra_globals.empty() && policy == options.policy;
    if (!opts) return w.run(id, code, input, policy, deadline, stdin_text, extras);
    if (!detail::attach(opts->cancel, w.pid(), w.pidfd(), w.ending_flag())) return detail::cancelled_result();
    extras.on_output = &opts->on_output;
    extras.cancel = &opts->cancel;
    RunResult r = w.run(id, code, input, policy, deadline, stdin_text, extras);
    if (detail::detach(opts->cancel)) {
      w.kill_and_reap();
      r = detail::cancelled_result();
    }
    return r;
  }

  // Throws PolicyError for an invalid policy, or one that loosens a ceiling policy.
  void check(const RunnerPolicy& policy, const RunOptions* opts = nullptr) const {
    policy.validate();
    if (opts) detail::check_function_names(opts->functions);
    if (!options.policy_is_ceiling) return;
    if (std::string why = policy.looser_than(options.policy); !why.empty())
      throw PolicyError("the runner's policy is a ceiling: " + why);
  }

  // Files in or out need the run's directory: the run gets it as scratch_dir gives it, and a ceiling
  // without scratch_dir refuses such a run.
  static bool wants_directory(const RunOptions* opts) { return opts && (!opts->files.empty() || !opts->collect.empty()); }

  RunResult run(const std::string& code, const json& input, const RunnerPolicy& policy, const std::string& stdin_text,
                const RunOptions* opts = nullptr, bool input_checked = false) {
    if (wants_directory(opts) && !policy.scratch_dir) {
      if (options.policy_is_ceiling && !options.policy.scratch_dir)
        throw PolicyError("'files' and 'collect' need a run directory, which the runner's policy does not allow "
                          "(scratch_dir)");
      RunnerPolicy with_directory = policy;
      with_directory.scratch_dir = true;
      return run(code, input, with_directory, stdin_text, opts, input_checked);
    }
    check(policy, opts);
    return run_checked(code, input, policy, stdin_text, opts, Clock::now(), input_checked);
  }

  // run() for a policy check() has passed (submit() checks when the run is queued); `arrived` is when the
  // caller asked for it: what passes from then until a worker takes it is the result's `queued`.
  RunResult run_checked(const std::string& code, const json& input, const RunnerPolicy& policy,
                        const std::string& stdin_text, const RunOptions* opts, Clock::time_point arrived,
                        bool input_checked = false) {
    if (policy.timeout_seconds != detail::floored_timeout(policy.timeout_seconds)) {
      RunnerPolicy floored = policy;
      floored.timeout_seconds = detail::floored_timeout(policy.timeout_seconds);
      return run_checked(code, input, floored, stdin_text, opts, arrived, input_checked);
    }
    const std::string files_refused =
        opts ? detail::run_files::check_request(opts->files, opts->collect,
                                                static_cast<std::size_t>(policy.scratch_limit_mb) << 20)
             : std::string();
    auto start = Clock::now();
    const std::uint64_t id = next_id++;
    const double slack = detail::reply_slack(options.kill_grace_seconds, policy.isolation);
    RunResult r;
    if (pool.stopping()) {
      r = outcome::failure(ErrorKind::worker_unavailable, "the runner is shutting down");
    } else if (auto refused = detail::refused_before_start(code, stdin_text, policy, opts ? &opts->cancel : nullptr)) {
      r = std::move(*refused);
    } else if (!files_refused.empty()) {
      r = outcome::bad_files(files_refused);
    } else {
      // Process mode leases a one-shot worker: started for this run, discarded after it.
      std::string error;
      auto w = pool.lease(detail::key_of(policy), error, opts ? &opts->cancel : nullptr);
      start = Clock::now();  // the wait for a worker (or for the news that none comes) is queued time
      if (!w && opts && opts->cancel.cancelled()) {
        r = detail::cancelled_result();
      } else if (!w) {
        r = outcome::failure(ErrorKind::worker_unavailable, error);
      } else {
        r = run_on(*w, id, code, input, policy, Clock::now() + seconds(policy.timeout_seconds + slack), stdin_text,
                   opts, input_checked);
      }
    }
    if (!r.ok && r.error_kind == ErrorKind::worker_crashed) {
      if (pool.stopping()) r = outcome::failure(ErrorKind::worker_unavailable, "the runner shut down during the run");
    }
    r.isolation = policy.isolation;
    r.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
    r.queued = std::chrono::duration_cast<std::chrono::microseconds>(start - std::min(arrived, start));
    return r;
  }

  // Who is told of a submitted run's end (RunnerAccess::submit): a run that started reports its own
  // result when it ends (a cancelled one then answers `cancelled` with its duration); one cancelled
  // before it started reports the cancel's result at once. Once either way.
  struct Report {
    std::mutex mu;
    bool started = false, reported = false;
    std::function<void(const RunResult&)> on_done;
    bool start() {  // false: the cancel was reported, the run must not start
      std::lock_guard<std::mutex> lk(mu);
      started = !reported;
      return started;
    }
    void tell(const RunResult& r, bool from_run) {
      {
        std::lock_guard<std::mutex> lk(mu);
        if (reported || (started && !from_run)) return;
        reported = true;
      }
      on_done(r);
    }
  };

  // A cancel makes the future ready at once; the run, if it started, is stopped and its result dropped.
  RunHandle submit(std::string code, json input, RunnerPolicy policy, RunOptions opts,
                   std::function<void(const RunResult&)> on_done = {}) {
    if (wants_directory(&opts) && !policy.scratch_dir) {
      if (options.policy_is_ceiling && !options.policy.scratch_dir)
        throw PolicyError("'files' and 'collect' need a run directory, which the runner's policy does not allow "
                          "(scratch_dir)");
      policy.scratch_dir = true;
    }
    check(policy, &opts);
    auto done = std::make_shared<detail::Completion>();
    auto fut = done->promise.get_future();
    auto report = on_done ? std::make_shared<Report>() : nullptr;
    if (report) report->on_done = std::move(on_done);
    CancelToken token = opts.cancel;
    post([this, done, report, c = std::move(code), i = std::move(input), p = std::move(policy), o = std::move(opts),
          arrived = Clock::now()] {
      if (done->done() || (report && !report->start())) return;
      RunResult r = run_checked(c, i, p, o.stdin_text, &o, arrived);
      if (report) report->tell(r, true);
      done->complete(std::move(r));
    });
    const Isolation iso = policy.isolation;
    detail::on_cancel(token, [done, report, iso] {
      RunResult r = detail::cancelled_result();
      r.isolation = iso;
      if (report) report->tell(r, false);
      done->complete(std::move(r));
    });
    return RunHandle(std::move(fut), std::move(token));
  }

  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lk(mu);
      if (stopping) throw std::logic_error("submit() on a Runner that was shut down");
      tasks.push_back(std::move(task));
      // One more thread whenever every thread is busy, up to what a runner's pools can run at once
      // (WorkerPool::runs_at_once): a submitted run waits for a worker in its pool's queue (first come, first
      // served), not here behind runs of other pools. (With workers x kRunsPerWorker
      // threads in all, one HTTP token's runs on two pools held every thread while another token's worker
      // was idle, past that token's deadline: red team round 13.)
      const std::size_t cap = std::max(pool.runs_at_once(), executor_floor);
      if (tasks.size() > idle_executors && executors.size() < cap) executors.emplace_back([this] { exec_loop(); });
    }
    task_cv.notify_one();
  }

  void exec_loop() {
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      ++idle_executors;
      task_cv.wait(lk, [&] { return stopping || !tasks.empty(); });
      --idle_executors;
      if (tasks.empty()) return;  // stopping and drained
      auto t = std::move(tasks.front());
      tasks.pop_front();
      lk.unlock();
      t();
      lk.lock();
    }
  }

  json hello(const PoolKey& key) {
    std::string error;
    auto w = pool.lease(key, error);
    if (!w) throw WorkerError(error);
    return w->hello();
  }
};

Runner::Runner(RunnerOptions options) : impl_(std::make_unique<Impl>(std::move(options))) {
  impl_->pool.prespawn(detail::key_of(impl_->options.policy));  // none for process mode's one-shot workers
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
  PoolKey key = detail::warm_key_of(policy);
  key.isolation = Isolation::namespace_;
  auto state = impl_->sessions->open(policy, impl_->spawn_options(key),
                                     [impl = impl_.get()](std::function<void()> f) { impl->post(std::move(f)); });
  state->functions = impl_->functions;
  return Session(std::move(state));
}

RunHandle detail::RunnerAccess::submit(Runner& runner, std::string code, json input_data, RunnerPolicy policy,
                                       RunOptions options, std::function<void(const RunResult&)> on_done) {
  return runner.impl_->submit(std::move(code), std::move(input_data), std::move(policy), std::move(options),
                              std::move(on_done));
}

void detail::RunnerAccess::allow_submitted_at_once(Runner& runner, std::size_t runs) {
  std::lock_guard<std::mutex> lk(runner.impl_->mu);
  runner.impl_->executor_floor = std::max(runner.impl_->executor_floor, runs);
}

std::size_t detail::RunnerAccess::runs_at_once(Runner& runner) { return runner.impl_->pool.runs_at_once(); }

std::pair<std::size_t, std::size_t> detail::RunnerAccess::worker_counts(Runner& runner) {
  const auto c = runner.impl_->pool.counts();
  return {c.idle, c.busy};
}

RunResult detail::RunnerAccess::run_checked_input(Runner& runner, const std::string& code, const RunnerPolicy& policy,
                                                  const RunOptions& options) {
  return runner.impl_->run(code, json::object(), policy, options.stdin_text, &options, true);
}

json detail::RunnerAccess::worker_start(Runner& runner, Isolation isolation) {
  RunnerPolicy p = runner.impl_->options.policy;
  p.isolation = isolation;
  return runner.impl_->spawn_options(detail::key_of(p)).start.to_json();
}

std::filesystem::path detail::RunnerAccess::worker_path(Runner& runner) { return runner.impl_->worker_path; }

const RunnerOptions& Runner::options() const { return impl_->options; }

json Runner::hardening(Isolation isolation) {
  RunnerPolicy p = impl_->options.policy;
  p.isolation = isolation;
  PoolKey key = detail::warm_key_of(p);  // a process-mode worker without a run's backstops
  key.once = isolation == Isolation::process;
  return impl_->hello(key).value("hardening", json::array());
}

std::string Runner::python_version() {
  RunnerPolicy p = impl_->options.policy;
  if (p.isolation == Isolation::process) p.isolation = Isolation::fork;
  return impl_->hello(detail::key_of(p)).value("python", std::string("?"));
}

void Runner::shutdown() { impl_->stop(); }

RunResult run_code(const std::string& code, const json& input_data, const RunnerPolicy& policy) {
  static Runner runner;  // started on first use, stopped at exit
  return runner.run(code, input_data, policy);
}


}  // namespace spr
