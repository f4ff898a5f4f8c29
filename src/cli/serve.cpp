// `serve`: one-off runs on Runner::submit; named sessions on a bounded pool of threads, each session's
// calls in the order they came; `cancel` and `close_session` act at once, beside the runs. Memory is
// bounded per request (a line's parsed cost is measured before it is built) and across requests
// (reading stops while too many wait).
#include "cli/serve.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "detail/json_cost.hpp"
#include "common/frame.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "detail/cancel.hpp"
#include "detail/request_line.hpp"
#include "detail/runner_access.hpp"

namespace spr::cli {

namespace {

// Read-ahead: reading stops while this many requests wait unanswered beyond those that can run now, or
// while the waiting ones' parsed forms hold this much; it goes on as they are answered.
constexpr std::size_t kMaxWaiting = 64;
constexpr std::size_t kMaxWaitingCost = 64u << 20;
// Session calls run on at most this many threads (and never more than max_sessions).
constexpr std::size_t kMaxSessionThreads = 64;
// A request line up to this long may keep the reading role while its run runs inline (see read_loop).
constexpr std::size_t kKeepRoleBytes = 64 << 10;

// Whole lines from a file descriptor through one buffer: a read(2) brings many lines at once.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd), buf_(kChunk) {}

  int fd() const { return fd_; }
  // Bytes read from the descriptor and not yet returned as lines.
  bool buffered() const { return pos_ < end_; }

  // One line into `line`, without its newline; false at the end of input. `too_long`: the line went
  // past detail::kMaxRequestLineBytes and was read to its end without being kept (`line` is then empty).
  bool next(std::string& line, bool& too_long) {
    line.clear();
    too_long = false;
    bool any = false;
    for (;;) {
      if (pos_ == end_ && !fill()) return any;
      any = true;
      const char* start = buf_.data() + pos_;
      const auto* nl = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
      const std::size_t n = nl ? static_cast<std::size_t>(nl - start) : end_ - pos_;
      if (!too_long && line.size() + n <= detail::kMaxRequestLineBytes) {
        line.append(start, n);
      } else if (!too_long) {
        too_long = true;
        std::string().swap(line);
      }
      pos_ += n + (nl ? 1 : 0);
      if (nl) return true;
    }
  }

 private:
  static constexpr std::size_t kChunk = 256 << 10;
  bool fill() {
    for (;;) {
      const ssize_t r = ::read(fd_, buf_.data(), buf_.size());
      if (r > 0) {
        pos_ = 0;
        end_ = static_cast<std::size_t>(r);
        return true;
      }
      if (r == 0 || errno != EINTR) return false;
    }
  }
  int fd_;
  std::vector<char> buf_;
  std::size_t pos_ = 0, end_ = 0;
};

using InFlight = std::multimap<std::string, CancelToken>;  // by the dumped request id; ids may repeat

// Host functions: a call of the run goes out as a line, and waits for the client's answer line.
struct Answer {
  bool error = false;
  json value;
  std::string message;
};
struct RequestCalls {
  std::string key;     // the request's dumped id, its entry in Server::calls_
  bool ended = false;  // the request was answered: no call of it waits any more
  std::map<std::uint64_t, std::shared_ptr<std::promise<Answer>>> waiting;  // by call_id
};

struct Job {
  json id;
  std::string code;
  json input;
  RunnerPolicy policy;
  json policy_overrides;  // as given, for a session's later calls
  std::optional<std::string> session;
  bool stream = false;
  bool repr = false;
  RunOptions options;
  bool close = false;  // a close_session request, queued behind the session's earlier calls
  std::size_t cost = 0;  // its share of the read-ahead budget
  InFlight::iterator slot;  // its own cancel entry (a session call's; a one-off's is held by its callback)
  std::shared_ptr<RequestCalls> calls;  // its host calls waiting for the client, when it declared functions
};

class Server {
 public:
  Server(Runner& runner, const RunnerPolicy& base, int in_fd, int out_fd)
      : runner_(runner),
        base_(base),
        reader_(in_fd),
        out_fd_(out_fd),
        max_running_(runner.options().workers * 2 + session_threads_cap() + 1) {}

  // Reads and handles request lines until the input ends. Run by the calling thread and, once a run has
  // been taken inline, by one standby thread: whoever holds the reading role reads the next line. A
  // one-off run that finds nothing else of its kind in flight is run by the thread that read it (no
  // hand-off to another thread on its path). A short one keeps the reading role while it runs, passing it
  // to the standby thread only when more input arrives or the run has to wait for a worker (detail::
  // set_watch); so a client that waits for each answer never wakes the standby thread, and cancels and
  // later requests are still read while a run runs.
  void read_loop() {
    std::string line;
    bool too_long = false;
    std::unique_lock<std::mutex> role(reader_mu_, std::defer_lock);
    for (;;) {
      if (!role.owns_lock()) role.lock();
      if (input_done_) return;
      wait_for_room();
      if (!reader_.next(line, too_long)) {
        input_done_ = true;
        return;
      }
      if (too_long) {
        bad(nullptr, "malformed request line: longer than " + std::to_string(detail::kMaxRequestLineBytes >> 20) + " MiB");
        continue;
      }
      if (detail::blank_line(line)) continue;
      const bool short_line = line.size() <= kKeepRoleBytes;
      std::optional<Job> job = handle(line);
      if (line.capacity() > (1u << 20)) std::string().swap(line);  // a big line's buffer is not kept
      if (!job) continue;
      if (!claim_inline(*job)) {
        submit(std::move(*job));
        continue;
      }
      start_standby();
      // Passed on at once: a run whose host calls wait for answer lines, a large request (its sending is not
      // watched), or when more input is already buffered.
      if (job->calls || !short_line || reader_.buffered())
        role.unlock();
      else
        detail::set_watch(job->options.cancel, reader_.fd(), [&role] { role.unlock(); });
      run_inline(*job);
      detail::set_watch(job->options.cancel, -1, nullptr);
    }
  }

  void emit(const json& id, json body) {
    body["id"] = id;
    write_line(detail::dump_json(body) + '\n');
  }

  void emit_result(const json& id, const RunResult& r) { write_line(detail::result_line(id, r)); }

  // One answer line, written with one write(2) (more only when the pipe takes part of it).
  void write_line(const std::string& line) {
    std::lock_guard<std::mutex> lk(out_mu_);
    for (std::size_t done = 0; done < line.size();) {
      const ssize_t w = ::write(out_fd_, line.data() + done, line.size() - done);
      if (w > 0) {
        done += static_cast<std::size_t>(w);
      } else if (w < 0 && errno != EINTR) {
        return;  // nobody reads our answers any more; the runs still end by their limits
      }
    }
  }

  void bad(const json& id, const std::string& msg) {
    RunResult r = outcome::failure(ErrorKind::bad_input, msg);
    r.isolation = base_.isolation;
    emit_result(id, r);
  }

  std::nullopt_t refuse(const json& id, const std::string& msg) {
    bad(id, msg);
    return std::nullopt;
  }

  // Blocks while the read-ahead is full: the next line is read once enough requests have been answered.
  void wait_for_room() {
    std::unique_lock<std::mutex> lk(mu_);
    room_cv_.wait(lk, [&] { return has_room_locked(); });
  }

  // One request line: answered, queued for its session, or returned as a one-off run to start.
  std::optional<Job> handle(const std::string& line) {
    detail::RequestCost cost;
    // A short line cannot pass its budget (detail::kMaxCostPerByte): only long ones get the extra pass.
    if (line.size() * detail::kMaxCostPerByte > detail::kCostFloorBytes) {
      cost = detail::measure_request(line, detail::cost_budget(line.size()));
      if (cost.over)
        return refuse(cost.id, "request too large once parsed: its " + std::to_string(line.size()) +
                                " bytes would take more than " + std::to_string(detail::cost_budget(line.size()) >> 20) +
                                " MiB (values nested or packed too densely)");
    } else {
      cost.bytes = line.size() * detail::kMaxCostPerByte;
    }
    std::string error;
    std::optional<json> parsed = detail::parse_request_line(line, error);
    if (!parsed) return refuse(nullptr, error);
    json& req = *parsed;
    json id = req.value("id", json());
    if (std::string why = detail::id_error(id); !why.empty()) return refuse(nullptr, why);
    if (auto c = req.find("call_result"); c != req.end()) {
      call_answer(id, *c, false);
      return std::nullopt;
    }
    if (auto c = req.find("call_error"); c != req.end()) {
      call_answer(id, *c, true);
      return std::nullopt;
    }
    if (auto c = req.find("cancel"); c != req.end()) {
      cancel(id, *c);
      return std::nullopt;
    }
    if (auto c = req.find("close_session"); c != req.end()) {
      if (!c->is_string()) return refuse(id, "'close_session' must be a session name (string)");
      close_session(id, c->get<std::string>());
      return std::nullopt;
    }
    auto code = req.find("code");
    if (code == req.end() || !code->is_string()) return refuse(id, "request needs a string field 'code'");
    Job job;
    job.id = id;
    job.code = std::move(code->get_ref<std::string&>());
    if (auto in = req.find("input_data"); in != req.end())
      job.input = std::move(*in);
    else
      job.input = json::object();
    job.policy = base_;
    job.policy_overrides = json::object();
    job.cost = cost.bytes;
    if (auto in = req.find("stdin"); in != req.end() && !in->is_null()) {
      if (!in->is_string()) return refuse(id, "'stdin' must be a string");
      job.options.stdin_text = std::move(in->get_ref<std::string&>());
    }
    if (std::string why = detail::request_files(req, job.options); !why.empty()) return refuse(id, why);
    if (auto p = req.find("policy"); p != req.end() && !p->is_null()) {
      // The operator's policy is a ceiling unless serve was started with --allow-policy-overrides.
      const bool ceiling = runner_.options().policy_is_ceiling;
      if (std::string why = detail::request_policy(*p, base_, ceiling, job.policy); !why.empty())
        return refuse(id, ceiling && why.rfind("policy loosens", 0) == 0
                              ? why + " (serve --allow-policy-overrides permits it)"
                              : why);
      job.policy_overrides = std::move(*p);
    }
    if (auto s = req.find("session"); s != req.end() && !s->is_null()) {
      if (!s->is_string() || s->get<std::string>().empty()) return refuse(id, "'session' must be a non-empty string");
      job.session = s->get<std::string>();
    }
    job.stream = req.value("stream", json(false)) == json(true);
    job.repr = req.value("repr", json(false)) == json(true);
    if (job.stream) {
      job.options.on_output = [this, id](OutputStream s, const std::string& data) {
        emit(id, {{"stream", to_string(s)}, {"data", data}});
      };
    }
    job.options.want_repr = job.repr;
    if (auto f = req.find("functions"); f != req.end() && !f->is_null()) {
      if (std::string why = declare_functions(job, *f); !why.empty()) return refuse(id, why);
    }
    if (!job.session) return job;
    std::lock_guard<std::mutex> lk(mu_);
    const std::string name = *job.session;
    job.slot = in_flight_.emplace(job.id.dump(), job.options.cancel);
    take_locked(job.cost);
    enqueue_locked(name, std::move(job));
    return std::nullopt;
  }

  // End of input: let every run and session call answer, then close the sessions.
  void finish() {
    std::vector<std::thread> threads;
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_ = true;
      work_cv_.notify_all();
      room_cv_.wait(lk, [&] { return pending_ == 0; });
      threads.swap(threads_);
    }
    if (standby_.joinable()) standby_.join();
    for (auto& t : threads) t.join();
    std::vector<Session> open;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& [name, q] : sessions_)
        if (q.session) open.push_back(std::move(*q.session));
      sessions_.clear();
    }
    for (auto& s : open) s.close();
  }

 private:
  struct SessionQueue {
    std::deque<Job> jobs;
    bool active = false;  // a pool thread is running its front job (opening it, calling, closing)
    bool ready = false;   // in ready_: has jobs and waits for a thread
    std::optional<Session> session;
  };

  std::size_t session_threads_cap() const {
    return std::clamp<std::size_t>(runner_.options().max_sessions, 1, kMaxSessionThreads);
  }

  // Read-ahead accounting: every accepted request holds one place and its cost until it is answered.
  bool has_room_locked() const {
    return pending_ < max_running_ + kMaxWaiting && (pending_cost_ == 0 || pending_cost_ < kMaxWaitingCost);
  }
  void take_locked(std::size_t cost) {
    ++pending_;
    pending_cost_ += cost;
  }
  void release(std::size_t cost) {
    std::lock_guard<std::mutex> lk(mu_);
    release_locked(cost);
  }
  void release_locked(std::size_t cost) {
    --pending_;
    pending_cost_ -= std::min(cost, pending_cost_);
    room_cv_.notify_all();
  }

  void enqueue_locked(const std::string& name, Job job) {
    SessionQueue& q = sessions_[name];
    q.jobs.push_back(std::move(job));
    if (!q.active && !q.ready) {
      q.ready = true;
      ready_.push_back(name);
    }
    if (ready_.size() > idle_threads_ && threads_.size() < session_threads_cap())
      threads_.emplace_back([this] { session_loop(); });
    work_cv_.notify_one();
  }

  // A one-off run goes inline when no other one-off is in flight (none inline, none on the executor): the
  // reading thread then runs it at once. Its cancel entry and read-ahead place are taken here.
  bool claim_inline(Job& job) {
    std::lock_guard<std::mutex> lk(mu_);
    if (inline_busy_ || executor_pending_ > 0) return false;
    inline_busy_ = true;
    job.slot = in_flight_.emplace(job.id.dump(), job.options.cancel);
    take_locked(job.cost);
    return true;
  }

  void start_standby() {
    if (!standby_.joinable()) standby_ = std::thread([this] { read_loop(); });
  }

  void run_inline(Job& job) {
    RunResult r;
    try {
      r = runner_.run(job.code, job.input, job.policy, job.options);
    } catch (const PolicyError& e) {
      r = outcome::failure(ErrorKind::bad_input, std::string("invalid policy: ") + e.what());
      r.isolation = job.policy.isolation;
    }
    {
      std::lock_guard<std::mutex> lk(mu_);
      in_flight_.erase(job.slot);
      end_calls_locked(job.calls);
    }
    emit_result(job.id, r);
    std::lock_guard<std::mutex> lk(mu_);
    inline_busy_ = false;
    release_locked(job.cost);
  }

  // A one-off run on the runner's executor: answered when it ends, or at once when a cancel comes before
  // it starts.
  void submit(Job job) {
    InFlight::iterator slot;
    const std::size_t cost = job.cost;
    const std::shared_ptr<RequestCalls> calls = job.calls;
    {
      std::lock_guard<std::mutex> lk(mu_);
      slot = in_flight_.emplace(job.id.dump(), job.options.cancel);
      take_locked(cost);
      ++executor_pending_;
    }
    auto done = [this, id = job.id, slot, cost, calls = job.calls](const RunResult& r) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        in_flight_.erase(slot);
        end_calls_locked(calls);
      }
      emit_result(id, r);
      std::lock_guard<std::mutex> lk(mu_);
      --executor_pending_;
      release_locked(cost);
    };
    try {
      detail::RunnerAccess::submit(runner_, std::move(job.code), std::move(job.input), std::move(job.policy),
                                   std::move(job.options), std::move(done));
    } catch (const PolicyError& e) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        in_flight_.erase(slot);
        end_calls_locked(calls);
        --executor_pending_;
        release_locked(cost);
      }
      bad(job.id, std::string("invalid policy: ") + e.what());
    }
  }

  // A session's call answered: its cancel entry and its read-ahead place go.
  void answered(Job& job, const RunResult& r) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      in_flight_.erase(job.slot);
      end_calls_locked(job.calls);
    }
    emit_result(job.id, r);
    release(job.cost);
  }

  // "functions": ["name", ...]: each name becomes a host function of the run that asks the client.
  std::string declare_functions(Job& job, const json& names) {
    if (!names.is_array()) return "'functions' must be a list of names";
    auto calls = std::make_shared<RequestCalls>();
    calls->key = job.id.dump();
    for (const auto& n : names) {
      if (!n.is_string()) return "'functions' must be a list of names";
      job.options.functions[n.get<std::string>()] = [this, id = job.id, calls](const HostCall& c) -> json {
        auto answer = std::make_shared<std::promise<Answer>>();
        auto got = answer->get_future();
        {
          std::lock_guard<std::mutex> lk(mu_);
          if (calls->ended) throw std::runtime_error("the run has ended");
          calls->waiting[c.call_id] = answer;
        }
        emit(id, {{"call", {{"call_id", c.call_id}, {"name", c.name}, {"args", c.args}, {"kwargs", c.kwargs}}}});
        Answer a = got.get();
        if (a.error) throw std::runtime_error(a.message);
        return std::move(a.value);
      };
    }
    std::lock_guard<std::mutex> lk(mu_);
    // Answers name their request by id: two requests in flight with functions and one id would be ambiguous.
    if (!calls_.emplace(calls->key, calls).second)
      return "a request with 'functions' and id " + calls->key + " is still in flight: give each its own id";
    job.calls = std::move(calls);
    return {};
  }

  // A call still waiting when its run ends (timed out, cancelled) is released; its answer is dropped.
  void end_calls_locked(const std::shared_ptr<RequestCalls>& calls) {
    if (!calls || calls->ended) return;
    calls->ended = true;
    for (auto& [n, p] : calls->waiting) p->set_value(Answer{true, json(), "the run has ended"});
    calls->waiting.clear();
    calls_.erase(calls->key);
  }

  // {"call_result": {"id", "call_id", "value"}} or {"call_error": {"id", "call_id", "message"}}.
  void call_answer(const json& line_id, const json& a, bool error) {
    const char* what = error ? "call_error" : "call_result";
    if (!a.is_object() || !a.contains("id") || !a.contains("call_id") || !a["call_id"].is_number_unsigned())
      return bad(line_id, std::string("'") + what + "' needs the request's 'id' and a 'call_id'");
    Answer answer;
    answer.error = error;
    if (error) {
      auto m = a.find("message");
      if (m == a.end() || !m->is_string()) return bad(line_id, "'call_error' needs a string 'message'");
      answer.message = m->get<std::string>();
    } else {
      answer.value = a.value("value", json());
    }
    std::shared_ptr<std::promise<Answer>> waiting;
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = calls_.find(a["id"].dump());
      if (it != calls_.end()) {
        auto w = it->second->waiting.find(a["call_id"].get<std::uint64_t>());
        if (w != it->second->waiting.end()) {
          waiting = std::move(w->second);
          it->second->waiting.erase(w);
        }
      }
    }
    if (!waiting)
      return bad(line_id, std::string("'") + what + "' answers no call that is waiting (request " + a["id"].dump() +
                              ", call_id " + a["call_id"].dump() + ")");
    waiting->set_value(std::move(answer));
  }

  RunOptions call_options(const Job& job) {
    RunOptions o = job.options;
    const json& p = job.policy_overrides;
    if (p.contains("timeout_seconds")) o.timeout_seconds = job.policy.timeout_seconds;
    if (p.contains("max_output_kb")) o.max_output_kb = job.policy.max_output_kb;
    if (p.contains("max_result_kb")) o.max_result_kb = job.policy.max_result_kb;
    return o;
  }

  // A pool thread: takes the session that waits longest, runs its front job, puts it back if it has more.
  void session_loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      ++idle_threads_;
      work_cv_.wait(lk, [&] { return done_ || !ready_.empty(); });
      --idle_threads_;
      if (ready_.empty()) return;  // done_ and nothing left
      const std::string name = std::move(ready_.front());
      ready_.pop_front();
      SessionQueue& q = sessions_[name];  // std::map: the reference stays valid while `active`
      q.ready = false;
      if (q.jobs.empty()) {  // its jobs were cancelled while it waited
        if (!q.session) sessions_.erase(name);
        continue;
      }
      q.active = true;
      Job job = std::move(q.jobs.front());
      q.jobs.pop_front();
      lk.unlock();
      run_session_job(name, q, job);
      lk.lock();
      q.active = false;
      if (!q.jobs.empty()) {
        q.ready = true;
        ready_.push_back(name);
        work_cv_.notify_one();
      } else if (!q.session) {
        sessions_.erase(name);  // nothing open and nothing queued: the name costs nothing
      }
    }
  }

  // Runs outside mu_; only this thread touches q.session while q.active.
  void run_session_job(const std::string& name, SessionQueue& q, Job& job) {
    if (job.close) {
      // Later requests with this name open a new session.
      std::optional<Session> s = std::move(q.session);
      q.session.reset();
      s.reset();  // closes, kills and reaps
      emit(job.id, {{"close_session", name}, {"ok", true}});
      release(job.cost);
      return;
    }
    RunResult r;
    if (!q.session) {
      try {
        q.session.emplace(runner_.open_session(job.policy));
      } catch (const std::exception& e) {
        r = outcome::failure(ErrorKind::worker_unavailable,
                            std::string("cannot open session '") + name + "': " + e.what());
        r.isolation = Isolation::process;
        answered(job, r);
        return;
      }
    }
    try {
      r = q.session->run(job.code, job.input, call_options(job));
    } catch (const PolicyError& e) {
      r = outcome::failure(ErrorKind::bad_input, std::string("invalid policy: ") + e.what());
      r.isolation = Isolation::process;
    }
    answered(job, r);
  }

  // Queued requests with the id are answered at once; running ones are stopped and answer from their
  // threads. Every request in flight with that id is cancelled.
  void cancel(const json& id, const json& target) {
    const std::string key = target.dump();
    std::vector<Job> removed;
    std::vector<CancelToken> tokens;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& [name, q] : sessions_)
        for (auto j = q.jobs.begin(); j != q.jobs.end();) {
          if (!j->close && j->id.dump() == key) {
            in_flight_.erase(j->slot);
            end_calls_locked(j->calls);
            removed.push_back(std::move(*j));
            j = q.jobs.erase(j);
          } else {
            ++j;
          }
        }
      auto [from, to] = in_flight_.equal_range(key);
      for (auto it = from; it != to; ++it) tokens.push_back(it->second);
    }
    // Outside mu_: a one-off run that had not started is answered from within cancel().
    for (auto& t : tokens) t.cancel();
    for (auto& job : removed) {
      RunResult r = detail::cancelled_result();
      r.isolation = Isolation::process;
      emit_result(job.id, r);
      release(job.cost);
    }
    emit(id, {{"cancel", target}, {"ok", !removed.empty() || !tokens.empty()}});
  }

  // Queued behind the session's earlier calls (an open in progress among them); answered once the
  // session is closed.
  void close_session(const json& id, const std::string& name) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = sessions_.find(name);
      // `active` first: while it is set, a pool thread may be opening the session (q.session is its alone).
      if (it != sessions_.end() && (it->second.active || it->second.session || !it->second.jobs.empty())) {
        Job job;
        job.id = id;
        job.close = true;
        take_locked(0);
        enqueue_locked(name, std::move(job));
        return;
      }
    }
    emit(id, {{"close_session", name}, {"ok", false}});
  }

  Runner& runner_;
  RunnerPolicy base_;
  std::mutex reader_mu_;  // the reading role
  LineReader reader_;
  bool input_done_ = false;  // under reader_mu_
  std::thread standby_;      // the second reader, started by the first inline run
  int out_fd_;
  std::mutex out_mu_;
  std::mutex mu_;
  std::map<std::string, SessionQueue> sessions_;
  std::deque<std::string> ready_;  // sessions with jobs that no thread runs yet, oldest first
  std::vector<std::thread> threads_;
  std::size_t idle_threads_ = 0;
  std::condition_variable work_cv_;  // a session became ready, or the input ended
  InFlight in_flight_;
  std::size_t pending_ = 0;       // requests accepted and not answered yet (runs, calls, closes)
  std::size_t pending_cost_ = 0;  // their parsed forms' estimated bytes
  std::size_t max_running_;       // runs that can be running at once: the rest wait
  std::size_t executor_pending_ = 0;  // one-off runs handed to the runner's executor, not answered yet
  bool inline_busy_ = false;          // a reading thread is running a one-off itself
  std::condition_variable room_cv_;  // pending_ fell
  std::map<std::string, std::shared_ptr<RequestCalls>> calls_;  // requests with host functions, by dumped id
  bool done_ = false;
};

}  // namespace

void serve(Runner& runner, const RunnerPolicy& base, int in_fd, int out_fd) {
  Server server(runner, base, in_fd, out_fd);
  server.read_loop();
  server.finish();
}

}  // namespace spr::cli
