// Sessions: a dedicated worker process per session, its calls one at a time, its end never a hang.
#include <fcntl.h>
#include <signal.h>

#include <algorithm>

#include "common/outcome.hpp"
#include "common/run_deadline.hpp"
#include "common/protocol.hpp"
#include "detail/cancel.hpp"
#include "detail/session_host.hpp"
#include "spr/runner.hpp"

namespace spr {

namespace detail {

namespace {

// Outcomes after which the session's process is not trusted to hold a usable namespace.
bool ends_session(const RunResult& r) {
  switch (r.error_kind) {
    case ErrorKind::timeout:
    case ErrorKind::memory:
    case ErrorKind::cpu_time:
    case ErrorKind::worker_crashed:
    case ErrorKind::worker_unavailable:
    case ErrorKind::protocol_error:
      return true;
    default:
      return false;
  }
}

// The call that ended the session keeps its output and flags; its kind says the session is gone.
RunResult lost(RunResult r, const std::string& why) {
  r.ok = false;
  r.result = nullptr;
  r.error_kind = ErrorKind::session_lost;
  r.error = outcome::session_lost(why).error;
  if (r.exit_code == 0) r.exit_code = 1;
  return r;
}

// Two spawns that give interchangeable session workers (a spare of one serves the other).
bool same_worker(const SpawnOptions& a, const SpawnOptions& b) {
  return a.worker_path == b.worker_path && a.start == b.start && a.inherit_stderr == b.inherit_stderr;
}

RunnerPolicy call_policy(const RunnerPolicy& base, const RunOptions& o) {
  RunnerPolicy p = base;
  if (o.timeout_seconds) p.timeout_seconds = *o.timeout_seconds;
  p.timeout_seconds = floored_timeout(p.timeout_seconds);  // as for one-off runs
  if (o.max_output_kb) p.max_output_kb = *o.max_output_kb;
  if (o.max_result_kb) p.max_result_kb = *o.max_result_kb;
  p.validate();
  return p;
}

}  // namespace

void SessionState::end(const std::string& why) {
  std::unique_ptr<WorkerProcess> doomed;
  {
    std::lock_guard<std::mutex> lk(mu);
    if (!ended.empty()) return;
    ended = why;
    if (!worker) return;
    if (busy) {
      kill_process(pidfd.get(), pid);  // the running call notices, reaps it and answers session_lost
    } else {
      doomed = std::move(worker);
    }
  }
  // `doomed` is killed and reaped here, outside the lock.
}

SessionHost::SessionHost(std::size_t max_sessions, double idle_seconds)
    : max_(max_sessions), idle_seconds_(idle_seconds) {
  thread_ = std::thread([this] { loop(); });
}

SessionHost::~SessionHost() {
  stop();
}

bool SessionHost::stopped() {
  std::lock_guard<std::mutex> lk(mu_);
  return stopping_;
}

std::size_t SessionHost::live_locked() {
  std::size_t n = 0;
  std::vector<std::weak_ptr<SessionState>> kept;
  for (auto& w : sessions_) {
    auto s = w.lock();
    if (!s) continue;
    std::lock_guard<std::mutex> lk(s->mu);
    if (s->ended.empty()) {
      ++n;
      kept.push_back(w);
    }
  }
  sessions_.swap(kept);
  return n;
}

std::shared_ptr<SessionState> SessionHost::open(const RunnerPolicy& policy, SpawnOptions options, Post post) {
  auto job = std::make_shared<SpawnJob>();
  job->options = std::move(options);
  job->options.start.once = false;
  job->options.start.session_memory_mb = policy.memory_limit_mb;
  auto fut = job->result.get_future();
  std::unique_ptr<WorkerProcess> w;
  auto same_kind = [](const SpawnOptions& a, const SpawnOptions& b) { return same_worker(a, b); };
  {
    std::unique_lock<std::mutex> lk(mu_);
    if (stopping_) throw WorkerError("the runner is shutting down");
    if (live_locked() + opening_ >= max_)
      throw SessionLimitError("session limit reached: " + std::to_string(max_) +
                              " sessions are open (RunnerOptions::max_sessions); close one first");
    ++opening_;
    const bool kind_wanted = spare_wanted_ && same_kind(*spare_wanted_, job->options);
    if (kind_wanted && spare_starting_) cv_.wait(lk, [&] { return !spare_starting_ || stopping_; });
    if (stopping_) {
      --opening_;
      throw WorkerError("the runner is shutting down");
    }
    if (kind_wanted && spare_ && spare_->alive())
      w = std::move(spare_);
    else
      jobs_.push_back(job);
    spare_.reset();  // of another kind: not kept
    spare_wanted_ = job->options;
  }
  cv_.notify_all();
  if (!w) {
    try {
      w = fut.get();
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu_);
      --opening_;
      throw;
    }
  }
  auto s = std::make_shared<SessionState>();
  s->pid = w->pid();
  s->pidfd.reset(w->pidfd() >= 0 ? ::fcntl(w->pidfd(), F_DUPFD_CLOEXEC, 0) : -1);
  s->worker = std::move(w);
  s->policy = policy;
  s->grace_seconds = job->options.grace_seconds;
  s->host = weak_from_this();
  s->post = std::move(post);
  bool shut;
  {
    std::lock_guard<std::mutex> lk(mu_);
    --opening_;
    shut = stopping_;
    if (!shut) sessions_.push_back(s);
  }
  if (shut) {
    s->end("the runner shut down");
    throw WorkerError("the runner is shutting down");
  }
  return s;
}

void SessionHost::loop() {
  std::unique_lock<std::mutex> lk(mu_);
  const auto period = std::min(seconds(idle_seconds_ / 4), seconds(1));
  while (!stopping_) {
    if (!jobs_.empty()) {
      auto job = jobs_.front();
      jobs_.pop_front();
      lk.unlock();
      try {
        job->result.set_value(WorkerProcess::spawn(job->options));
      } catch (...) {
        job->result.set_exception(std::current_exception());
      }
      lk.lock();
      continue;
    }
    if (spare_wanted_ && !spare_) {
      const SpawnOptions o = *spare_wanted_;
      spare_starting_ = true;
      lk.unlock();
      std::unique_ptr<WorkerProcess> w;
      try {
        w = WorkerProcess::spawn(o);
      } catch (const std::exception&) {
      }
      lk.lock();
      spare_starting_ = false;
      cv_.notify_all();
      if (!spare_wanted_ || !w)
        spare_wanted_.reset();  // a failed spawn is not retried in a loop
      else if (same_worker(*spare_wanted_, o))
        spare_ = std::move(w);
      continue;
    }
    cv_.wait_for(lk, period, [&] { return stopping_ || !jobs_.empty() || (spare_wanted_ && !spare_); });
    if (stopping_) break;
    std::vector<std::shared_ptr<SessionState>> idle;
    const auto now = Clock::now();
    for (auto& w : sessions_) {
      auto s = w.lock();
      if (!s) continue;
      std::lock_guard<std::mutex> slk(s->mu);
      if (s->ended.empty() && !s->busy && now - s->last_used > seconds(idle_seconds_)) idle.push_back(s);
    }
    lk.unlock();
    for (auto& s : idle) s->end("the session was idle for more than " + format_seconds(idle_seconds_) + "s");
    idle.clear();
    lk.lock();
  }
  for (auto& job : jobs_)
    job->result.set_exception(std::make_exception_ptr(WorkerError("the runner is shutting down")));
  jobs_.clear();
  std::unique_ptr<WorkerProcess> spare = std::move(spare_);
  lk.unlock();
  // `spare` is killed and reaped here, on the thread that spawned it.
}

void SessionHost::stop() {
  std::vector<std::shared_ptr<SessionState>> all;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_ && !thread_.joinable()) return;
    stopping_ = true;
    for (auto& w : sessions_)
      if (auto s = w.lock()) all.push_back(s);
    sessions_.clear();
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  for (auto& s : all) s->end("the runner shut down");
}

// One call: the session's process is attached to the cancel token while it runs.
// Why a session ends when frames wait on its socket before a call is sent (session_call, variables).
constexpr const char* kOutOfStep = "the session's process wrote a message nobody asked for";

RunResult session_call(SessionState& st, const std::string& code, const json& input, const RunOptions& o,
                       Clock::time_point arrived) {
  RunnerPolicy policy = call_policy(st.policy, o);
  std::unique_lock<std::mutex> call(st.call_mu);
  const auto start = Clock::now();  // the session's earlier calls have ended: this one's own time begins
  RunResult r;
  WorkerProcess* w = nullptr;
  std::uint64_t id = 0;
  std::unique_ptr<WorkerProcess> out_of_step;  // killed and reaped outside the lock
  {
    std::lock_guard<std::mutex> lk(st.mu);
    if (!st.ended.empty()) {
      r = lost(outcome::failure(ErrorKind::session_lost, ""), st.ended);
    } else if (auto refused = refused_before_start(code, o.stdin_text, policy, &o.cancel)) {
      r = std::move(*refused);
    } else if (!o.files.empty() || !o.collect.empty()) {
      // Refused rather than dropped: a session call has no run directory of its own.
      r = outcome::bad_files("session calls take no files or collect patterns (use Runner::run)");
    } else if (!st.worker->quiet()) {
      // Something is readable before we asked: an earlier call wrote frames of its own (replies forged
      // for calls not yet made). The process is out of step; it answers nothing more.
      st.ended = kOutOfStep;
      r = lost(outcome::failure(ErrorKind::session_lost, ""), st.ended);
      out_of_step = std::move(st.worker);
    } else {
      st.busy = true;
      w = st.worker.get();
      id = st.next_id++;
    }
  }
  if (w) {
    bool cancelled = false, ran = false;
    if (!attach(o.cancel, w->pid(), w->pidfd())) {
      cancelled = true;  // before it started: the session lives on
    } else {
      ran = true;
      RunExtras extras;
      if (o.on_output) extras.on_output = &o.on_output;
      extras.want_repr = o.want_repr;
      if (!o.input_json.empty()) extras.input_json = &o.input_json;
      HostCalls host(st.functions, &o.functions);
      if (!host.empty()) extras.host = &host;
      // A session worker runs in its own process, never a fork child: one grace.
      const double slack = reply_slack(st.grace_seconds, Isolation::process);
      r = w->run(id, code, input, policy, Clock::now() + seconds(policy.timeout_seconds + slack), o.stdin_text,
                 extras);
      cancelled = detach(o.cancel);
    }
    std::unique_ptr<WorkerProcess> doomed;
    {
      std::lock_guard<std::mutex> lk(st.mu);
      st.busy = false;
      st.last_used = Clock::now();
      if (cancelled) {
        if (ran && st.ended.empty()) st.ended = "a call was cancelled";
        r = cancelled_result();
      } else if (!st.ended.empty()) {
        r = lost(std::move(r), st.ended);
      } else if (ends_session(r) || !w->alive()) {
        st.ended = r.error.value_or("the session's process ended");
        r = lost(std::move(r), st.ended);
      }
      if (!st.ended.empty()) doomed = std::move(st.worker);
    }
  }
  r.isolation = Isolation::process;
  r.duration = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - start);
  r.queued = std::chrono::duration_cast<std::chrono::microseconds>(start - std::min(arrived, start));
  return r;
}

}  // namespace detail

Session::~Session() {
  close();
}
Session::Session(Session&&) noexcept = default;
Session& Session::operator=(Session&& o) noexcept {
  if (this != &o) {
    close();
    state_ = std::move(o.state_);
  }
  return *this;
}

RunResult Session::run(const std::string& code, const json& input_data, const RunOptions& options) {
  if (!state_) throw std::logic_error("run() on an empty Session");
  detail::check_function_names(options.functions);
  return detail::session_call(*state_, code, input_data, options, detail::Clock::now());
}

RunHandle Session::submit(std::string code, json input_data, RunOptions options) {
  if (!state_) throw std::logic_error("submit() on an empty Session");
  detail::check_function_names(options.functions);
  auto done = std::make_shared<detail::Completion>();
  auto fut = done->promise.get_future();
  CancelToken token = options.cancel;
  detail::on_cancel(token, [done] {
    RunResult r = detail::cancelled_result();
    r.isolation = Isolation::process;
    done->complete(std::move(r));
  });
  auto st = state_;
  auto host = st->host.lock();
  bool posted = false;
  if (host && !host->stopped()) {
    try {
      st->post([st, done, c = std::move(code), i = std::move(input_data), o = std::move(options),
                arrived = detail::Clock::now()] {
        if (!done->done()) done->complete(detail::session_call(*st, c, i, o, arrived));
      });
      posted = true;
    } catch (const std::logic_error&) {
    }
  }
  if (!posted) {
    RunResult r = outcome::session_lost("the runner shut down");
    r.isolation = Isolation::process;
    done->complete(std::move(r));
  }
  return RunHandle(std::move(fut), std::move(token));
}

json Session::variables() {
  if (!state_) return nullptr;
  detail::SessionState& st = *state_;
  std::lock_guard<std::mutex> call(st.call_mu);
  detail::WorkerProcess* w;
  std::uint64_t id;
  {
    std::lock_guard<std::mutex> lk(st.mu);
    if (!st.ended.empty() || !st.worker) return nullptr;
    if (!st.worker->quiet()) {  // frames an earlier call wrote of its own: out of step, as in session_call
      st.ended = detail::kOutOfStep;
      std::unique_ptr<detail::WorkerProcess> doomed = std::move(st.worker);
      return nullptr;
    }
    w = st.worker.get();
    id = st.next_id++;
    st.busy = true;
  }
  std::optional<json> vars = w->variables(id, detail::Clock::now() + std::chrono::seconds(5));
  std::unique_ptr<detail::WorkerProcess> doomed;
  std::lock_guard<std::mutex> lk(st.mu);
  st.busy = false;
  st.last_used = detail::Clock::now();
  if (vars && st.ended.empty()) return std::move(*vars);
  if (st.ended.empty()) st.ended = "the session's process did not answer";
  doomed = std::move(st.worker);
  return nullptr;
}

void Session::close() {
  if (state_) state_->end("the session was closed");
}

bool Session::alive() const {
  if (!state_) return false;
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->ended.empty();
}

int Session::pid() const {
  if (!state_) return -1;
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->worker ? static_cast<int>(state_->worker->pid()) : -1;
}

const RunnerPolicy& Session::policy() const {
  if (!state_) throw std::logic_error("policy() on an empty Session");
  return state_->policy;
}

}  // namespace spr
