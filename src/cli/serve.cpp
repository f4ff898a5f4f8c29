// `serve`: one-off runs on Runner::submit; each named session on a thread of its own, so its calls
// run in the order they came; `cancel` and `close_session` act at once, beside the runs.
#include "cli/serve.hpp"

#include <condition_variable>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "common/frame.hpp"
#include "common/wire.hpp"
#include "detail/cancel.hpp"
#include "detail/runner_access.hpp"

namespace spr::cli {

namespace {

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
};

class Server {
 public:
  Server(Runner& runner, const RunnerPolicy& base, std::ostream& out) : runner_(runner), base_(base), out_(out) {}

  void emit(const json& id, json body) {
    body["id"] = id;
    std::string line = detail::dump_json(body);
    std::lock_guard<std::mutex> lk(out_mu_);
    out_ << line << '\n' << std::flush;
  }

  void emit_result(const json& id, const RunResult& r) { emit(id, r.to_json()); }

  void bad(const json& id, const std::string& msg) {
    RunResult r = detail::failure(ErrorKind::bad_input, msg);
    r.isolation = base_.isolation;
    emit_result(id, r);
  }

  // One request line.
  void handle(const std::string& line) {
    json req;
    try {
      req = detail::parse_json(line);
    } catch (const std::exception& e) {
      bad(nullptr, std::string("malformed request line: ") + e.what());
      return;
    }
    if (!req.is_object()) {
      bad(nullptr, "malformed request line: expected a JSON object");
      return;
    }
    json id = req.value("id", json());
    if (auto c = req.find("call_result"); c != req.end()) return call_answer(id, *c, false);
    if (auto c = req.find("call_error"); c != req.end()) return call_answer(id, *c, true);
    if (auto c = req.find("cancel"); c != req.end()) return cancel(id, *c);
    if (auto c = req.find("close_session"); c != req.end()) {
      if (!c->is_string()) return bad(id, "'close_session' must be a session name (string)");
      return close_session(id, c->get<std::string>());
    }
    auto code = req.find("code");
    if (code == req.end() || !code->is_string()) return bad(id, "request needs a string field 'code'");
    Job job{
        id, code->get<std::string>(), req.value("input_data", json::object()), base_, json::object(), {}, false, false,
        {}};
    if (auto in = req.find("stdin"); in != req.end() && !in->is_null()) {
      if (!in->is_string()) return bad(id, "'stdin' must be a string");
      job.options.stdin_text = in->get<std::string>();
    }
    if (auto p = req.find("policy"); p != req.end() && !p->is_null()) {
      try {
        job.policy = RunnerPolicy::from_json(*p, base_);
      } catch (const PolicyError& e) {
        return bad(id, std::string("invalid policy: ") + e.what());
      }
      // The operator's policy is a ceiling unless serve was started with --allow-policy-overrides.
      if (runner_.options().policy_is_ceiling)
        if (std::string why = job.policy.looser_than(base_); !why.empty())
          return bad(id, "policy loosens the operator's (serve --allow-policy-overrides permits it): " + why);
      job.policy_overrides = *p;
    }
    if (auto s = req.find("session"); s != req.end() && !s->is_null()) {
      if (!s->is_string() || s->get<std::string>().empty()) return bad(id, "'session' must be a non-empty string");
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
      if (std::string why = declare_functions(job, *f); !why.empty()) return bad(id, why);
    }
    if (!job.session) return submit(std::move(job));
    std::lock_guard<std::mutex> lk(mu_);
    in_flight_[id.dump()] = job.options.cancel;
    SessionQueue& q = sessions_[*job.session];
    q.jobs.push_back(std::move(job));
    if (!q.thread.joinable()) {
      const std::string name = *q.jobs.back().session;
      q.thread = std::thread([this, name] { session_loop(name); });
    }
    q.cv.notify_one();
  }

  // End of input: let every run answer, then close the sessions.
  void finish() {
    {
      std::unique_lock<std::mutex> lk(mu_);
      done_ = true;
      for (auto& [name, q] : sessions_) q.cv.notify_all();
      answered_cv_.wait(lk, [&] { return submitted_ == 0; });
    }
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& [name, q] : sessions_) threads.push_back(std::move(q.thread));
    }
    for (auto& t : threads)
      if (t.joinable()) t.join();
  }

 private:
  struct SessionQueue {
    std::deque<Job> jobs;
    std::condition_variable cv;
    std::thread thread;
    std::optional<Session> session;  // opened by its thread on first use
  };

  // A one-off run: answered when it ends, or at once when a cancel comes before it starts.
  void submit(Job job) {
    const std::string key = job.id.dump();
    {
      std::lock_guard<std::mutex> lk(mu_);
      in_flight_[key] = job.options.cancel;
      ++submitted_;
    }
    auto done = [this, id = job.id](const RunResult& r) {
      answered(id, r);
      std::lock_guard<std::mutex> lk(mu_);
      if (--submitted_ == 0) answered_cv_.notify_all();
    };
    try {
      detail::RunnerAccess::submit(runner_, std::move(job.code), std::move(job.input), std::move(job.policy),
                                   std::move(job.options), std::move(done));
    } catch (const PolicyError& e) {
      {
        std::lock_guard<std::mutex> lk(mu_);
        in_flight_.erase(key);
        end_calls_locked(key);
        --submitted_;
      }
      bad(job.id, std::string("invalid policy: ") + e.what());
    }
  }

  void answered(const json& id, const RunResult& r) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      in_flight_.erase(id.dump());
      end_calls_locked(id.dump());
    }
    emit_result(id, r);
  }

  // Host functions: a call of the run goes out as a line, and waits for the client's answer line.
  struct Answer {
    bool error = false;
    json value;
    std::string message;
  };
  struct RequestCalls {
    bool ended = false;  // the request was answered: no call of it waits any more
    std::map<std::uint64_t, std::shared_ptr<std::promise<Answer>>> waiting;  // by call_id
  };

  // "functions": ["name", ...]: each name becomes a host function of the run that asks the client.
  std::string declare_functions(Job& job, const json& names) {
    if (!names.is_array()) return "'functions' must be a list of names";
    auto calls = std::make_shared<RequestCalls>();
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
    calls_[job.id.dump()] = calls;
    return {};
  }

  // A call still waiting when its run ends (timed out, cancelled) is released; its answer is dropped.
  void end_calls_locked(const std::string& key) {
    auto it = calls_.find(key);
    if (it == calls_.end()) return;
    it->second->ended = true;
    for (auto& [n, p] : it->second->waiting) p->set_value(Answer{true, json(), "the run has ended"});
    calls_.erase(it);
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

  void session_loop(const std::string& name) {
    std::unique_lock<std::mutex> lk(mu_);
    SessionQueue& q = sessions_[name];  // std::map: the reference stays valid
    for (;;) {
      q.cv.wait(lk, [&] { return done_ || !q.jobs.empty(); });
      if (q.jobs.empty()) {
        if (done_) break;
        continue;
      }
      Job job = std::move(q.jobs.front());
      q.jobs.pop_front();
      if (job.close) {
        // Later requests with this name open a new session.
        std::optional<Session> s = std::move(q.session);
        q.session.reset();
        lk.unlock();
        s.reset();  // closes, kills and reaps
        emit(job.id, {{"close_session", name}, {"ok", true}});
        lk.lock();
        continue;
      }
      const bool open = q.session.has_value();
      lk.unlock();
      RunResult r;
      if (!open) {
        try {
          Session s = runner_.open_session(job.policy);
          lk.lock();
          q.session.emplace(std::move(s));
          lk.unlock();
        } catch (const std::exception& e) {
          r = detail::failure(ErrorKind::worker_unavailable,
                              std::string("cannot open session '") + name + "': " + e.what());
          r.isolation = Isolation::process;
          answered(job.id, r);
          lk.lock();
          continue;
        }
      }
      lk.lock();
      Session* s = &*q.session;
      lk.unlock();
      try {
        r = s->run(job.code, job.input, call_options(job));
      } catch (const PolicyError& e) {
        r = detail::failure(ErrorKind::bad_input, std::string("invalid policy: ") + e.what());
        r.isolation = Isolation::process;
      }
      answered(job.id, r);
      lk.lock();
    }
    std::optional<Session> s = std::move(q.session);
    q.session.reset();
    lk.unlock();
    if (s) s->close();
  }

  // A queued request is answered at once; a running one is stopped and answers from its thread.
  void cancel(const json& id, const json& target) {
    const std::string key = target.dump();
    std::optional<Job> removed;
    std::optional<CancelToken> token;
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto it = sessions_.begin(); !removed && it != sessions_.end(); ++it) {
        auto& jobs = it->second.jobs;
        for (auto j = jobs.begin(); j != jobs.end(); ++j)
          if (j->id.dump() == key) {
            removed = std::move(*j);
            jobs.erase(j);
            break;
          }
      }
      if (auto it = in_flight_.find(key); it != in_flight_.end()) {
        token = it->second;
        if (removed) in_flight_.erase(it);
      }
    }
    // Outside mu_: a one-off run that had not started is answered from within cancel().
    if (token) token->cancel();
    if (removed) {
      RunResult r = detail::cancelled_result();
      r.isolation = removed->session ? Isolation::process : removed->policy.isolation;
      emit_result(removed->id, r);
    }
    emit(id, {{"cancel", target}, {"ok", removed || token}});
  }

  // Queued behind the session's earlier calls; answered once the session is closed.
  void close_session(const json& id, const std::string& name) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      auto it = sessions_.find(name);
      if (it != sessions_.end() && (it->second.session || !it->second.jobs.empty())) {
        Job job;
        job.id = id;
        job.close = true;
        it->second.jobs.push_back(std::move(job));
        it->second.cv.notify_one();
        return;
      }
    }
    emit(id, {{"close_session", name}, {"ok", false}});
  }

  Runner& runner_;
  RunnerPolicy base_;
  std::ostream& out_;
  std::mutex out_mu_;
  std::mutex mu_;
  std::map<std::string, SessionQueue> sessions_;
  std::map<std::string, CancelToken> in_flight_;  // by the dumped request id
  std::map<std::string, std::shared_ptr<RequestCalls>> calls_;  // requests with host functions, by dumped id
  std::size_t submitted_ = 0;                     // one-off runs not answered yet
  std::condition_variable answered_cv_;           // submitted_ fell to 0
  bool done_ = false;
};

}  // namespace

namespace {

// The longest request line kept: one request's code, input and stdin. A longer line is read to its end
// without being held, and answered as malformed.
constexpr std::size_t kMaxLineBytes = 64u << 20;

// One line of `in` into `line`, without the newline; false at the end of input. `too_long`: the line
// went past kMaxLineBytes and only its first kMaxLineBytes bytes are in `line`.
bool read_line(std::istream& in, std::string& line, bool& too_long) {
  line.clear();
  too_long = false;
  std::streambuf* sb = in.rdbuf();
  for (;;) {
    const int c = sb->sbumpc();
    if (c == std::char_traits<char>::eof()) return !line.empty() || too_long;
    if (c == '\n') return true;
    if (line.size() < kMaxLineBytes)
      line.push_back(static_cast<char>(c));
    else
      too_long = true;
  }
}

}  // namespace

void serve(Runner& runner, const RunnerPolicy& base, std::istream& in, std::ostream& out) {
  Server server(runner, base, out);
  std::string line;
  bool too_long = false;
  while (read_line(in, line, too_long)) {
    if (too_long) {
      line.clear();
      line.shrink_to_fit();
      server.bad(nullptr, "malformed request line: longer than " + std::to_string(kMaxLineBytes >> 20) + " MiB");
      continue;
    }
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    server.handle(line);
  }
  server.finish();
}

}  // namespace spr::cli
