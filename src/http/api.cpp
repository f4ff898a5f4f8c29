// The HTTP service's endpoints: request bodies checked field by field, runs admitted up to a bound,
// answered asynchronously (one-off runs through Runner::submit's completion callback, session calls on
// a small pool because they block), each with a deadline.
#include "http/api.hpp"

#include <sys/random.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <cstdlib>
#include <initializer_list>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

#include "common/frame.hpp"
#include "common/outcome.hpp"
#include "common/run_deadline.hpp"
#include "common/protocol.hpp"
#include "detail/batch.hpp"
#include "detail/cancel.hpp"
#include "detail/json_cost.hpp"
#include "detail/request_line.hpp"
#include "detail/runner_access.hpp"
#include "http/fair_queue.hpp"
#include "http/piston.hpp"

extern const char kSprPlaygroundHtml[];

namespace spr::http {

namespace {

constexpr std::size_t kMaxRunIdBytes = 128;
constexpr double kReadyTimeoutSeconds = 5;
// A batch's answer lines wait while this much is queued for a client that reads slowly.
constexpr std::size_t kMaxBatchBacklogBytes = 4u << 20;
constexpr long kMaxBatchRepeat = 100;

json error_body(const std::string& kind, const std::string& message) {
  return {{"error", message}, {"error_kind", kind}};
}

void send_json(const ExchangePtr& ex, int status, const json& body, const std::string& kind = "", Headers h = {}) {
  ex->send(status, detail::dump_json(body) + "\n", "application/json", std::move(h), kind);
}

void send_error(const ExchangePtr& ex, int status, const std::string& kind, const std::string& message,
                Headers h = {}) {
  send_json(ex, status, error_body(kind, message), kind, std::move(h));
}

void bad_input(const ExchangePtr& ex, const std::string& message) {
  send_error(ex, 400, "bad_input", message);
}

// The first key of `body` not in `known` ("" when none).
std::string unknown_field(const json& body, std::initializer_list<const char*> known) {
  for (const auto& [key, value] : body.items())
    if (std::none_of(known.begin(), known.end(), [&key = key](const char* k) { return key == k; })) return key;
  return {};
}

// The value of the query parameter `name` (undecoded), or nullopt when it is absent.
std::optional<std::string> query_value(const std::string& query, const std::string& name) {
  std::size_t pos = 0;
  while (pos <= query.size()) {
    std::size_t end = query.find('&', pos);
    if (end == std::string::npos) end = query.size();
    const std::string item = query.substr(pos, end - pos);
    if (item.compare(0, name.size() + 1, name + "=") == 0) return item.substr(name.size() + 1);
    if (item == name) return std::string();
    pos = end + 1;
  }
  return std::nullopt;
}

// "stream=1" or "stream=true" among the query's parameters.
bool wants_stream(const std::string& query) {
  const auto v = query_value(query, "stream");
  return v && (*v == "1" || *v == "true");
}

// 128 bits from the kernel's CSPRNG, as 32 hex digits.
std::string random_id() {
  unsigned char bytes[16];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0) {
      const int err = errno;
      if (err == EINTR) continue;
      throw std::runtime_error(std::string("getrandom: ") + std::strerror(err));
    }
    got += static_cast<std::size_t>(n);
  }
  static const char* digits = "0123456789abcdef";
  std::string id;
  for (unsigned char b : bytes) {
    id += digits[b >> 4];
    id += digits[b & 15];
  }
  return id;
}

// Runs of different tokens never share a worker: a token is a party, and in `namespace` and
// `subinterpreter` mode a worker runs one party's runs one after another. The run's trust_domain is
// prefixed with its token's number, whatever the request or the operator's policy named.
void bind_to_token(RunnerPolicy& p, const ExchangePtr& ex) {
  const auto& t = ex->request().token;
  if (!t) return;
  p.trust_domain = "http-token-" + std::to_string(*t) + (p.trust_domain.empty() ? "" : "/" + p.trust_domain);
}

std::string owner_key(const ExchangePtr& ex) {
  const auto& t = ex->request().token;
  return t ? std::to_string(*t) : std::string("-");
}

// Splits "/v1/sessions/ID/run" into {"v1", "sessions", "ID", "run"}.
std::vector<std::string> segments(const std::string& path) {
  std::vector<std::string> out;
  std::size_t pos = 1;
  while (pos <= path.size()) {
    std::size_t end = path.find('/', pos);
    if (end == std::string::npos) end = path.size();
    out.push_back(path.substr(pos, end - pos));
    pos = end + 1;
  }
  return out;
}

}  // namespace

// Cancels what is still running when its deadline passes; one thread for every deadline.
class Api::Deadlines {
 public:
  Deadlines() : thread_([this] { loop(); }) {}
  ~Deadlines() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  std::uint64_t add(double seconds, std::function<void()> fn) {
    const auto at = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                           std::chrono::duration<double>(seconds));
    std::lock_guard<std::mutex> lk(mu_);
    const std::uint64_t id = next_++;
    queue_.emplace(at, Entry{id, std::move(fn)});
    cv_.notify_all();
    return id;
  }
  void remove(std::uint64_t id) {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = queue_.begin(); it != queue_.end(); ++it)
      if (it->second.id == id) {
        queue_.erase(it);
        return;
      }
  }

 private:
  struct Entry {
    std::uint64_t id;
    std::function<void()> fn;
  };
  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    while (!stop_) {
      if (queue_.empty()) {
        cv_.wait(lk);
      } else if (queue_.begin()->first <= std::chrono::steady_clock::now()) {
        auto fn = std::move(queue_.begin()->second.fn);
        queue_.erase(queue_.begin());
        lk.unlock();
        fn();  // cancels a run: its answer may come on this thread
        lk.lock();
      } else {
        // A copy: wait_until reads its argument again after waking, and remove() may have freed the entry.
        const auto next = queue_.begin()->first;
        cv_.wait_until(lk, next);
      }
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::multimap<std::chrono::steady_clock::time_point, Entry> queue_;
  std::uint64_t next_ = 1;
  bool stop_ = false;
  std::thread thread_;
};

// Threads for the calls that block (opening, calling and closing sessions). Tasks are admitted runs
// (bounded by max_in_flight) or session opens and closes, so the queue stays small.
class Api::BlockingPool {
 public:
  explicit BlockingPool(std::size_t threads) {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { loop(); });
  }
  ~BlockingPool() { stop(); }
  void post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }
  // Runs what is queued, then joins.
  void stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void loop() {
    std::unique_lock<std::mutex> lk(mu_);
    for (;;) {
      cv_.wait(lk, [&] { return stop_ || !tasks_.empty(); });
      if (tasks_.empty()) return;
      auto task = std::move(tasks_.front());
      tasks_.pop_front();
      lk.unlock();
      task();
      lk.lock();
    }
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

struct Api::SessionEntry {
  Session session;
  std::optional<std::size_t> owner;  // the token that opened it
};

// One admitted run or session call, from admission to its answer.
struct Api::RunCall {
  ExchangePtr ex;
  bool stream = false;
  bool piston = false;
  std::string client_id;
  std::uint64_t deadline = 0;
  double deadline_seconds = 0;
  std::atomic<bool> deadline_passed{false};
  std::mutex mu;
  std::string output;       // Piston: stdout and stderr interleaved as they came
  std::string streamed[2];  // Piston: each stream's chunks, to check `output` against the result
};

// One POST /v1/batch: its cases run on the Runner from a thread of its own, answer lines in input order.
struct Api::BatchCall {
  std::unique_ptr<detail::Batch> batch;
  std::thread thread;
  std::atomic<bool> stopped{false};  // drain or shutdown: take no more cases
  std::atomic<bool> ended{false};
};

Api::Api(Runner& runner, RunnerPolicy base, ApiOptions options)
    : runner_(runner),
      base_(std::move(base)),
      options_(options),
      python_version_(runner.python_version()),
      fair_(std::make_unique<FairQueue>(runner.options().workers)),
      deadlines_(std::make_unique<Deadlines>()),
      pool_(std::make_unique<BlockingPool>(std::max<std::size_t>(2, options.blocking_threads))) {
  // Every admitted run gets a thread of the Runner's: one token's runs spread over many pools (each its own
  // scratch size, say) cannot hold them all while another token's run waits past its deadline (red team round 14).
  // A batch holds one slot and submits up to max_in_flight cases of its own beside them. Threads are added only
  // when every one is busy.
  detail::RunnerAccess::allow_submitted_at_once(runner_, options_.max_in_flight * (1 + options_.max_batches));
}

Api::~Api() {
  stop();
}

void Api::stop() {
  std::map<std::string, std::shared_ptr<SessionEntry>> sessions;
  std::vector<std::shared_ptr<BatchCall>> batches;
  {
    std::lock_guard<std::mutex> lk(mu_);
    sessions.swap(sessions_);
    batches.swap(batches_);
  }
  for (auto& b : batches) {
    b->stopped = true;
    b->batch->stop();
  }
  for (auto& b : batches)
    if (b->thread.joinable()) b->thread.join();
  for (auto& [id, s] : sessions) s->session.close();
  if (pool_) pool_->stop();
}

void Api::begin_drain() {
  std::lock_guard<std::mutex> lk(mu_);
  draining_ = true;
  // A batch takes no more cases; what has finished is written, then its summary (interrupted).
  for (auto& b : batches_) {
    b->stopped = true;
    b->batch->stop();
  }
}

std::size_t Api::in_flight() const {
  std::lock_guard<std::mutex> lk(mu_);
  return in_flight_;
}

std::string Api::take_slot(const ExchangePtr& ex) {
  if (in_flight_ >= options_.max_in_flight)
    return "every run slot is taken (" + std::to_string(options_.max_in_flight) + "); retry later";
  if (const auto& t = ex->request().token) {
    std::size_t& held = token_in_flight_[*t];
    if (options_.runs_per_token && held >= options_.runs_per_token)
      return "this token's runs in flight are its share (" + std::to_string(held) + " of the server's " +
             std::to_string(options_.max_in_flight) + "); retry later";
    ++held;
  }
  ++in_flight_;
  return {};
}

bool Api::admit(const ExchangePtr& ex, bool piston) {
  std::string msg;
  {
    std::lock_guard<std::mutex> lk(mu_);
    msg = take_slot(ex);
  }
  if (msg.empty()) return true;
  metrics_.refused("overloaded");
  if (piston)
    send_json(ex, 429, {{"message", msg}}, "overloaded", {{"Retry-After", "1"}});
  else
    send_error(ex, 429, "overloaded", msg, {{"Retry-After", "1"}});
  return false;
}

void Api::release(const ExchangePtr& ex) {
  std::lock_guard<std::mutex> lk(mu_);
  --in_flight_;
  if (const auto& t = ex->request().token)
    if (auto it = token_in_flight_.find(*t); it != token_in_flight_.end() && --it->second == 0) token_in_flight_.erase(it);
}

void Api::queue_run(std::optional<std::size_t> token, std::string code, json input, RunnerPolicy policy,
                    RunOptions options, std::function<void(const RunResult&)> on_done,
                    std::function<void(const RunResult&)> on_refused) {
  struct Pending {
    std::string code;
    json input;
    RunnerPolicy policy;
    RunOptions options;
    std::function<void(const RunResult&)> on_done, on_refused;
    std::chrono::steady_clock::time_point queued_at = std::chrono::steady_clock::now();
  };
  auto p = std::make_shared<Pending>(Pending{std::move(code), std::move(input), std::move(policy), std::move(options),
                                             std::move(on_done), std::move(on_refused)});
  const detail::PoolKey key = detail::key_of(p->policy);
  const Isolation isolation = p->policy.isolation;
  CancelToken cancel = p->options.cancel;
  auto start = [this, p, key, isolation] {
    // The wait here is the run's queued time as much as the Runner's own.
    const auto waited =
        std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - p->queued_at);
    auto done = [this, p, key, waited](const RunResult& r) {
      fair_->finished(key);
      if (waited.count() <= 0) return p->on_done(r);
      RunResult with_wait = r;
      with_wait.queued += waited;
      p->on_done(with_wait);
    };
    RunResult refused;
    try {
      detail::RunnerAccess::submit(runner_, std::move(p->code), std::move(p->input), std::move(p->policy),
                                   std::move(p->options), std::move(done));
      return;
    } catch (const PolicyError& e) {
      refused = outcome::bad_input(std::string("invalid policy: ") + e.what());
    } catch (const std::exception& e) {
      // A Runner that is shutting down.
      refused = outcome::failure(ErrorKind::worker_unavailable, e.what());
    }
    fair_->finished(key);
    refused.isolation = isolation;
    p->on_refused(refused);
  };
  const std::uint64_t ticket = fair_->push(token.value_or(FairQueue::kNoToken), key, std::move(start));
  // Cancelled (or past its deadline) while it waits: answered at once, as the Runner answers a queued run. Held
  // weakly: the token outlives the run in the registry of run ids, and the run holds the token.
  detail::on_cancel(cancel, [this, ticket, isolation, weak = std::weak_ptr<Pending>(p)] {
    const auto pending = weak.lock();
    if (!pending || !fair_->remove(ticket)) return;
    RunResult r = detail::cancelled_result();
    r.isolation = isolation;
    pending->on_done(r);
  });
}

RunnerPolicy Api::request_policy(const json& overrides) const {
  RunnerPolicy p = overrides.is_null() ? base_ : RunnerPolicy::from_json(overrides, base_);
  // The operator's policy is a ceiling, as in `serve`: a request may tighten it, never loosen it.
  if (runner_.options().policy_is_ceiling)
    if (std::string why = p.looser_than(base_); !why.empty())
      throw PolicyError("the policy loosens the operator's: " + why);
  return p;
}

std::optional<RunnerPolicy> Api::body_policy(const ExchangePtr& ex, const json& body) const {
  try {
    auto p = body.find("policy");
    if (p != body.end() && !p->is_null() && !p->is_object()) {
      bad_input(ex, "'policy' must be an object");
      return std::nullopt;
    }
    RunnerPolicy policy = request_policy(p == body.end() ? json() : *p);
    bind_to_token(policy, ex);
    return policy;
  } catch (const PolicyError& e) {
    bad_input(ex, std::string("invalid policy: ") + e.what());
    return std::nullopt;
  }
}

bool Api::register_run(const ExchangePtr& ex, const std::string& id, const CancelToken& token) {
  std::lock_guard<std::mutex> lk(mu_);
  return runs_.emplace(owner_key(ex) + "/" + id, token).second;
}

void Api::unregister_run(const ExchangePtr& ex, const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  runs_.erase(owner_key(ex) + "/" + id);
}

std::shared_ptr<Api::SessionEntry> Api::find_session(const ExchangePtr& ex, const std::string& id) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return nullptr;
  // Another token's session is not found either: ids are not to be probed across clients.
  if (it->second->owner != ex->request().token) return nullptr;
  if (!it->second->session.alive()) {
    sessions_.erase(it);
    return nullptr;
  }
  return it->second;
}

namespace {

void session_lost(const ExchangePtr& ex) {
  send_error(ex, 404, "session_lost",
             "no open session with this id here: it ended (closed, timed out, crashed or idle too long) or was "
             "held by a server that stopped");
}

// The body of a call, common to /v1/run and /v1/sessions/{id}/run.
struct CallBody {
  std::string code;
  json input = json::object();
  RunOptions options;
  std::string client_id;
};

// Fills `out` from the body's code, input_data, stdin and id; the message of the first bad field, or "".
std::string read_call(json& body, CallBody& out) {
  auto code = body.find("code");
  if (code == body.end() || !code->is_string()) return "the body needs a string field 'code'";
  out.code = code->get<std::string>();
  // Moved, not copied: the request's tree is held once (the body itself is bounded by its parse cost).
  if (auto in = body.find("input_data"); in != body.end() && !in->is_null()) out.input = std::move(*in);
  if (auto in = body.find("stdin"); in != body.end() && !in->is_null()) {
    if (!in->is_string()) return "'stdin' must be a string";
    out.options.stdin_text = in->get<std::string>();
  }
  if (std::string why = detail::request_files(body, out.options); !why.empty()) return why;
  if (auto id = body.find("id"); id != body.end() && !id->is_null()) {
    if (!id->is_string() || id->get<std::string>().empty() || id->get<std::string>().size() > kMaxRunIdBytes)
      return "'id' must be a string of 1 to " + std::to_string(kMaxRunIdBytes) + " bytes";
    out.client_id = id->get<std::string>();
  }
  return {};
}

}  // namespace

void Api::handle(const ExchangePtr& ex) {
  const Request& q = ex->request();
  const auto method_not_allowed = [&](const char* allow) {
    send_error(ex, 405, "method_not_allowed", "use " + std::string(allow) + " here", {{"Allow", allow}});
  };
  if (q.path == "/healthz") {
    if (q.method != "GET") return method_not_allowed("GET");
    return send_json(ex, 200, {{"status", "ok"}});
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (draining_) {
      metrics_.refused("draining");
      return send_error(ex, 503, "draining", "the server is shutting down", {{"Retry-After", "1"}});
    }
  }
  const std::vector<std::string> seg = segments(q.path);
  // Routes without a body.
  if (q.path == "/") {
    if (q.method != "GET") return method_not_allowed("GET");
    return ex->send(200, kSprPlaygroundHtml, "text/html; charset=utf-8",
                    {{"Content-Security-Policy",
                      "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'"}},
                    "");
  }
  if (q.path == "/readyz") return q.method == "GET" ? ready(ex) : method_not_allowed("GET");
  if (q.path == "/metrics") return q.method == "GET" ? metrics_page(ex) : method_not_allowed("GET");
  if (q.path == "/api/v2/runtimes") {
    if (q.method != "GET") return method_not_allowed("GET");
    return send_json(ex, 200, piston::runtimes(python_version_));
  }
  const bool session_path = seg.size() >= 3 && seg[0] == "v1" && seg[1] == "sessions" && !seg[2].empty();
  if (session_path && seg.size() == 3) {
    if (q.method != "DELETE") return method_not_allowed("DELETE");
    return session_close(ex, seg[2]);
  }
  if (session_path && seg.size() == 4 && seg[3] == "variables") {
    if (q.method != "GET") return method_not_allowed("GET");
    return session_variables(ex, seg[2]);
  }

  // Routes with a JSON body.
  const bool is_run = q.path == "/v1/run";
  const bool is_piston = q.path == "/api/v2/execute";
  const bool is_open = q.path == "/v1/sessions";
  const bool is_session_run = session_path && seg.size() == 4 && seg[3] == "run";
  const bool is_cancel = seg.size() == 4 && seg[0] == "v1" && seg[1] == "runs" && !seg[2].empty() && seg[3] == "cancel";
  const bool is_batch = q.path == "/v1/batch";
  if (!is_run && !is_piston && !is_open && !is_session_run && !is_cancel && !is_batch)
    return send_error(ex, 404, "not_found", "no such endpoint: " + q.method + " " + q.path);
  if (q.method != "POST") return method_not_allowed("POST");
  if (is_cancel) return cancel(ex, seg[2]);
  if (is_batch) return batch(ex);
  json body = json::object();
  if (!q.body.empty() || !is_open) {
    // The body's parsed tree is bounded as serve bounds a line: 16 MiB of `{},` would take 2 GB.
    if (std::string why = detail::parse_cost_refusal(q.body, detail::cost_budget(q.body.size())); !why.empty()) {
      const std::string msg = "the body is too large once parsed: " + why;
      if (is_piston) return send_json(ex, 400, {{"message", msg}}, "bad_input");
      return bad_input(ex, msg);
    }
    try {
      body = detail::parse_json(q.body);
    } catch (const std::exception& e) {
      const std::string msg = std::string("the body is not valid JSON: ") + e.what();
      if (is_piston) return send_json(ex, 400, {{"message", msg}}, "bad_input");
      return bad_input(ex, msg);
    }
  }
  if (is_piston) return piston_execute(ex, body);
  if (!body.is_object()) return bad_input(ex, "the body must be a JSON object");
  if (is_run) return run(ex, body, wants_stream(q.query));
  if (is_open) return session_open(ex, body);
  return session_run(ex, seg[2], body, wants_stream(q.query));
}

std::shared_ptr<Api::RunCall> Api::start_call(const ExchangePtr& ex, const std::string& client_id, RunOptions& options,
                                              bool stream, double timeout_seconds) {
  if (!admit(ex, false)) return nullptr;
  auto rc = std::make_shared<RunCall>();
  rc->ex = ex;
  rc->stream = stream;
  rc->client_id = client_id;
  if (!rc->client_id.empty() && !register_run(ex, rc->client_id, options.cancel)) {
    release(ex);
    send_error(ex, 409, "conflict", "a run with id '" + rc->client_id + "' is already in flight");
    return nullptr;
  }
  if (stream) {
    ex->stream_begin("application/x-ndjson");
    options.on_output = [ex](OutputStream s, const std::string& data) {
      ex->stream_write(detail::dump_json({{"stream", to_string(s)}, {"data", data}}) + "\n");
    };
  }
  rc->deadline_seconds = timeout_seconds + runner_.options().kill_grace_seconds + options_.queue_timeout_seconds;
  rc->deadline = deadlines_->add(rc->deadline_seconds, [rc, token = options.cancel]() mutable {
    rc->deadline_passed = true;
    token.cancel();
  });
  return rc;
}

void Api::run(const ExchangePtr& ex, json& body, bool stream) {
  if (auto f = unknown_field(body, {"code", "input_data", "stdin", "files", "collect", "policy", "id"}); !f.empty())
    return bad_input(ex, "unknown field '" + f + "'");
  CallBody call;
  if (std::string why = read_call(body, call); !why.empty()) return bad_input(ex, why);
  std::optional<RunnerPolicy> chosen = body_policy(ex, body);
  if (!chosen) return;
  RunnerPolicy& policy = *chosen;
  if ((!call.options.files.empty() || !call.options.collect.empty()) && runner_.options().policy_is_ceiling &&
      !runner_.options().policy.scratch_dir)
    return bad_input(ex, "'files' and 'collect' need a run directory, which the operator's policy does not allow "
                         "(scratch_dir)");
  auto rc = start_call(ex, call.client_id, call.options, stream, policy.timeout_seconds);
  if (!rc) return;
  auto on_done = [this, rc](const RunResult& r) {
    deadlines_->remove(rc->deadline);
    if (!rc->client_id.empty()) unregister_run(rc->ex, rc->client_id);
    metrics_.run_finished(r);
    const bool late = rc->deadline_passed && r.error_kind == ErrorKind::cancelled;
    const std::string kind = late ? "deadline" : r.error_kind == ErrorKind::none ? "" : to_string(r.error_kind);
    release(rc->ex);
    if (rc->stream) {
      rc->ex->stream_write(detail::dump_json({{"result", r.to_json()}}) + "\n");
      rc->ex->stream_end(kind);
    } else if (late) {
      send_error(rc->ex, 504, "deadline",
                 "the request's deadline (" + detail::format_seconds(rc->deadline_seconds) +
                     " s) passed before its run ended; the run was stopped");
    } else {
      send_json(rc->ex, 200, r.to_json(), kind);
    }
  };
  // An invalid policy (already checked) or a Runner that is shutting down.
  auto on_refused = [this, rc](const RunResult& r) {
    deadlines_->remove(rc->deadline);
    if (!rc->client_id.empty()) unregister_run(rc->ex, rc->client_id);
    release(rc->ex);
    const std::string kind = to_string(r.error_kind);
    if (rc->stream) {
      rc->ex->stream_write(detail::dump_json({{"error", r.error.value_or("")}, {"error_kind", kind}}) + "\n");
      rc->ex->stream_end(kind);
    } else {
      send_error(rc->ex, r.error_kind == ErrorKind::bad_input ? 400 : 503, kind, r.error.value_or(""));
    }
  };
  queue_run(ex->request().token, std::move(call.code), std::move(call.input), std::move(policy),
            std::move(call.options), std::move(on_done), std::move(on_refused));
}

void Api::piston_execute(const ExchangePtr& ex, const json& body) {
  const auto bad = [&](const std::string& message) { send_json(ex, 400, {{"message", message}}, "bad_input"); };
  piston::Execute e;
  try {
    e = piston::parse_execute(body, base_, python_version_);
    if (runner_.options().policy_is_ceiling)
      if (std::string why = e.policy.looser_than(base_); !why.empty())
        return bad("the limits loosen the operator's policy: " + why);
    if (!e.files.empty() && runner_.options().policy_is_ceiling && !base_.scratch_dir)
      return bad("files beside files[0] need a run directory, which the operator's policy does not allow (scratch_dir)");
  } catch (const piston::BadRequest& err) {
    return bad(err.what());
  }
  bind_to_token(e.policy, ex);
  if (!admit(ex, true)) return;
  auto rc = std::make_shared<RunCall>();
  rc->ex = ex;
  rc->piston = true;
  RunOptions options;
  options.stdin_text = std::move(e.stdin_text);
  options.files = std::move(e.files);
  options.on_output = [rc](OutputStream stream, const std::string& data) {
    std::lock_guard<std::mutex> lk(rc->mu);
    rc->output += data;
    rc->streamed[stream == OutputStream::out ? 0 : 1] += data;
  };
  rc->deadline_seconds =
      e.policy.timeout_seconds + runner_.options().kill_grace_seconds + options_.queue_timeout_seconds;
  rc->deadline = deadlines_->add(rc->deadline_seconds, [rc, token = options.cancel]() mutable {
    rc->deadline_passed = true;
    token.cancel();
  });
  auto on_done = [this, rc](const RunResult& r) {
    deadlines_->remove(rc->deadline);
    metrics_.run_finished(r);
    std::string output;
    {
      std::lock_guard<std::mutex> lk(rc->mu);
      // The interleaving is used only when its chunks are exactly the result's streams (streamed
      // bytes were seen to differ from them: NUL bytes read as a run ended); else stdout then stderr.
      if (rc->streamed[0] == r.stdout_text && rc->streamed[1] == r.stderr_text) output = rc->output;
    }
    release(rc->ex);
    if (rc->deadline_passed && r.error_kind == ErrorKind::cancelled)
      send_json(rc->ex, 504, {{"message", "the request's deadline passed before its run ended; the run was stopped"}},
                "deadline");
    else
      send_json(rc->ex, 200, piston::execute_answer(r, output, python_version_),
                r.error_kind == ErrorKind::none ? "" : to_string(r.error_kind));
  };
  auto on_refused = [this, rc](const RunResult& r) {
    deadlines_->remove(rc->deadline);
    release(rc->ex);
    send_json(rc->ex, r.error_kind == ErrorKind::bad_input ? 400 : 503, {{"message", r.error.value_or("")}},
              to_string(r.error_kind));
  };
  queue_run(ex->request().token, std::move(e.code), json::object(), std::move(e.policy), std::move(options),
            std::move(on_done), std::move(on_refused));
}

void Api::session_open(const ExchangePtr& ex, const json& body) {
  if (auto f = unknown_field(body, {"policy"}); !f.empty()) return bad_input(ex, "unknown field '" + f + "'");
  std::optional<RunnerPolicy> chosen = body_policy(ex, body);
  if (!chosen) return;
  RunnerPolicy& policy = *chosen;
  std::string id;
  if (options_.session_id_from_header && !ex->request().session_id.empty()) {
    id = ex->request().session_id;
    if (id.size() != 32 || id.find_first_not_of("0123456789abcdef") != std::string::npos)
      return bad_input(ex, "X-Session-Id must be 32 lower-case hex digits (128 random bits)");
    std::lock_guard<std::mutex> lk(mu_);
    if (sessions_.count(id)) return send_error(ex, 409, "conflict", "a session with this id is open");
  }
  const std::optional<std::size_t> token = ex->request().token;
  if (token && options_.sessions_per_token) {
    std::string why;
    {
      std::lock_guard<std::mutex> lk(mu_);
      // Its sessions still open (one closed, idle too long or crashed no longer counts), and its opens under way.
      const auto opening = token_opening_.find(*token);
      std::size_t held = opening == token_opening_.end() ? 0 : opening->second;
      for (const auto& [sid, e] : sessions_) held += e->owner == token && e->session.alive();
      if (held >= options_.sessions_per_token)
        why = "this token's open sessions are its share (" + std::to_string(held) + " of the server's " +
              std::to_string(runner_.options().max_sessions) + "); close one first";
      else
        ++token_opening_[*token];
    }
    if (!why.empty()) {
      metrics_.refused("session_limit");
      return send_error(ex, 429, "session_limit", why, {{"Retry-After", "5"}});
    }
  }
  // Whatever the open's fate, the token's open under way ends with the lock that records its session.
  auto opened = [this, token] {
    if (!token || !options_.sessions_per_token) return;
    if (auto it = token_opening_.find(*token); it != token_opening_.end() && --it->second == 0) token_opening_.erase(it);
  };
  if (!admit(ex, false)) {
    std::lock_guard<std::mutex> lk(mu_);
    opened();
    return;
  }
  pool_->post([this, ex, policy, id, opened]() mutable {
    try {
      std::shared_ptr<SessionEntry> entry;
      try {
        entry = std::make_shared<SessionEntry>(SessionEntry{runner_.open_session(policy), ex->request().token});
      } catch (...) {
        std::lock_guard<std::mutex> lk(mu_);
        opened();
        throw;
      }
      if (id.empty()) id = random_id();
      bool taken = false;
      {
        std::lock_guard<std::mutex> lk(mu_);
        opened();
        taken = !sessions_.emplace(id, entry).second;
      }
      if (taken) entry->session.close();
      release(ex);
      if (taken)
        send_error(ex, 409, "conflict", "a session with this id is open");
      else
        send_json(ex, 201, {{"id", id}});
    } catch (const SessionLimitError& e) {
      release(ex);
      metrics_.refused("session_limit");
      send_error(ex, 429, "session_limit", e.what(), {{"Retry-After", "5"}});
    } catch (const PolicyError& e) {
      release(ex);
      bad_input(ex, std::string("invalid policy: ") + e.what());
    } catch (const std::exception& e) {
      release(ex);
      send_error(ex, 503, "worker_unavailable", e.what());
    }
  });
}

void Api::session_run(const ExchangePtr& ex, const std::string& id, json& body, bool stream) {
  if (auto f = unknown_field(body, {"code", "input_data", "stdin", "repr", "timeout_seconds", "id"}); !f.empty())
    return bad_input(ex, "unknown field '" + f + "'");
  CallBody call;
  if (std::string why = read_call(body, call); !why.empty()) return bad_input(ex, why);
  if (auto r = body.find("repr"); r != body.end() && !r->is_null()) {
    if (!r->is_boolean()) return bad_input(ex, "'repr' must be true or false");
    call.options.want_repr = r->get<bool>();
  }
  std::shared_ptr<SessionEntry> entry = find_session(ex, id);
  if (!entry) return session_lost(ex);
  double timeout = entry->session.policy().timeout_seconds;
  if (auto t = body.find("timeout_seconds"); t != body.end() && !t->is_null()) {
    try {
      timeout = request_policy({{"timeout_seconds", *t}}).timeout_seconds;  // within the operator's ceiling
    } catch (const PolicyError& e) {
      return bad_input(ex, std::string("invalid timeout_seconds: ") + e.what());
    }
    call.options.timeout_seconds = timeout;
  }
  // Calls of one session run one at a time: a call's deadline counts its wait behind the others.
  auto rc = start_call(ex, call.client_id, call.options, stream, timeout);
  if (!rc) return;
  pool_->post([this, rc, entry, call = std::move(call)] {
    RunResult r = entry->session.run(call.code, call.input, call.options);
    deadlines_->remove(rc->deadline);
    if (!rc->client_id.empty()) unregister_run(rc->ex, rc->client_id);
    metrics_.run_finished(r);
    const std::string kind = r.error_kind == ErrorKind::none ? "" : to_string(r.error_kind);
    release(rc->ex);
    if (rc->stream) {
      rc->ex->stream_write(detail::dump_json({{"result", r.to_json()}}) + "\n");
      rc->ex->stream_end(kind);
    } else {
      send_json(rc->ex, 200, r.to_json(), kind);
    }
  });
}

void Api::session_variables(const ExchangePtr& ex, const std::string& id) {
  std::shared_ptr<SessionEntry> entry = find_session(ex, id);
  if (!entry) return session_lost(ex);
  if (!admit(ex, false)) return;
  pool_->post([this, ex, entry] {
    json v = entry->session.variables();
    release(ex);
    if (v.is_null())
      session_lost(ex);
    else
      send_json(ex, 200, {{"variables", v}});
  });
}

void Api::session_close(const ExchangePtr& ex, const std::string& id) {
  std::shared_ptr<SessionEntry> entry = find_session(ex, id);
  if (!entry) return session_lost(ex);
  {
    std::lock_guard<std::mutex> lk(mu_);
    sessions_.erase(id);
  }
  pool_->post([ex, entry] {
    entry->session.close();  // kills and reaps its process
    send_json(ex, 200, {{"closed", true}});
  });
}

void Api::cancel(const ExchangePtr& ex, const std::string& id) {
  std::optional<CancelToken> token;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (auto it = runs_.find(owner_key(ex) + "/" + id); it != runs_.end()) token = it->second;
  }
  if (!token) return send_error(ex, 404, "not_found", "no run with id '" + id + "' is in flight");
  token->cancel();  // the run answers `cancelled` to its own request
  send_json(ex, 200, {{"cancelled", true}});
}

void Api::batch(const ExchangePtr& ex) {
  const Request& q = ex->request();
  detail::BatchOptions bo;
  bo.ceiling = base_;
  // With a token, the ceiling names its trust domain, so no case can leave it.
  bind_to_token(bo.ceiling, ex);
  bo.workers = runner_.options().workers;
  if (auto r = query_value(q.query, "repeat")) {
    char* end = nullptr;
    const long k = std::strtol(r->c_str(), &end, 10);
    if (r->empty() || *end != '\0' || k < 1 || k > kMaxBatchRepeat)
      return bad_input(ex, "'repeat' must be a whole number from 1 to " + std::to_string(kMaxBatchRepeat));
    bo.repeat = static_cast<int>(k);
  }
  // The body is the batch command's cases file: one JSON case object a line. Ids are checked before
  // anything runs (the same id twice is refused, as in the CLI); a bad line is answered in its place.
  auto in = std::make_shared<std::istringstream>(q.body);
  auto index = std::make_shared<detail::CaseIndex>();
  try {
    *index = detail::CaseIndex::scan(*in);
  } catch (const detail::BatchInputError& e) {
    return bad_input(ex, std::string("refused before running: ") + e.what());
  }
  if (index->size() == 0) return bad_input(ex, "the body has no cases (JSON Lines: one case object a line)");
  auto call = std::make_shared<BatchCall>();
  {
    std::lock_guard<std::mutex> lk(mu_);
    std::size_t running = 0;
    for (auto it = batches_.begin(); it != batches_.end();) {
      if ((*it)->ended) {
        (*it)->thread.join();  // it has returned, or is about to
        it = batches_.erase(it);
      } else {
        ++running;
        ++it;
      }
    }
    if (running >= options_.max_batches) {
      metrics_.refused("overloaded");
      return send_error(ex, 429, "overloaded",
                        "every batch slot is taken (" + std::to_string(options_.max_batches) + "); retry later",
                        {{"Retry-After", "5"}});
    }
    // The batch counts as one request in flight (its token's too): a drain waits for its summary.
    if (std::string why = take_slot(ex); !why.empty()) {
      metrics_.refused("overloaded");
      return send_error(ex, 429, "overloaded", why, {{"Retry-After", "1"}});
    }
    // With a token share, the batch runs at most what is left of its token's share at once (counting the slot
    // it holds): one batch cannot take every worker and leave another token's runs waiting out their deadline.
    // take_slot() has just counted this batch and kept the token within its share: at least 1.
    if (const auto& t = q.token; t && options_.runs_per_token)
      bo.max_in_flight = options_.runs_per_token - token_in_flight_.at(*t) + 1;
    // A client that reads slowly holds its batch back: no case starts while its answer backlog is full.
    // It holds the exchange weakly: the Batch outlives the call (until the next batch reaps it), and a strong
    // hold would keep the finished call's connection counted, so a drain waited out its whole grace.
    bo.before_case = [weak = std::weak_ptr<Exchange>(ex), stopped = &call->stopped] {
      for (;;) {
        {
          const auto live = weak.lock();
          if (!live || live->stream_broken() || *stopped || live->stream_backlog() <= kMaxBatchBacklogBytes) return;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
    };
    bo.on_run_end = [this](const RunResult& r) { metrics_.run_finished(r); };
    // Its cases wait for workers in turn with every token's runs.
    bo.submit = [this, token = q.token](std::string code, json input, RunnerPolicy policy, RunOptions options,
                                        std::function<void(const RunResult&)> on_done) {
      auto on_refused = on_done;
      queue_run(token, std::move(code), std::move(input), std::move(policy), std::move(options), std::move(on_done),
                std::move(on_refused));
    };
    call->batch = std::make_unique<detail::Batch>(runner_, bo);
    batches_.push_back(call);
  }
  ex->stream_begin("application/x-ndjson");
  call->thread = std::thread([this, call, ex, in, index] {
    // Runs where runs end, under the batch's lock: it only queues. A client that is gone stops the batch.
    auto sink = [&ex](std::string_view line) {
      if (ex->stream_broken()) return false;
      ex->stream_write(std::string(line));
      return true;
    };
    detail::BatchSummary summary;
    try {
      summary = call->batch->run(*in, *index, {}, sink);
    } catch (const std::exception& e) {
      // The Runner shut down under it.
      release(ex);
      ex->stream_write(detail::dump_json(error_body("worker_unavailable", e.what())) + "\n");
      ex->stream_end("worker_unavailable");
      call->ended = true;
      return;
    }
    release(ex);
    ex->stream_write(detail::dump_json({{"summary", summary.to_json()}}) + "\n");
    ex->stream_end(summary.interrupted ? "cancelled" : "");
    call->ended = true;
  });
}

void Api::ready(const ExchangePtr& ex) {
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (std::string why = take_slot(ex); !why.empty())
      return send_json(ex, 503, {{"ready", false}, {"error", why}}, "overloaded");
  }
  RunnerPolicy p = base_;
  p.timeout_seconds = std::min(detail::floored_timeout(p.timeout_seconds), kReadyTimeoutSeconds);
  RunOptions options;
  auto passed = std::make_shared<std::atomic<bool>>(false);
  const std::uint64_t deadline = deadlines_->add(p.timeout_seconds + runner_.options().kill_grace_seconds,
                                                 [passed, token = options.cancel]() mutable {
                                                   *passed = true;
                                                   token.cancel();
                                                 });
  auto on_done = [this, ex, deadline, passed](const RunResult& r) {
    deadlines_->remove(deadline);
    release(ex);
    if (r.ok && r.result == json(1))
      send_json(ex, 200, {{"ready", true}, {"duration_ms", static_cast<double>(r.duration.count()) / 1000.0}});
    else
      send_json(ex, 503,
                {{"ready", false},
                 {"error", *passed ? std::string("no worker answered a trivial run within its deadline")
                                   : r.error.value_or("the trivial run failed")}},
                "not_ready");
  };
  try {
    detail::RunnerAccess::submit(runner_, "result = 1", json::object(), p, std::move(options), std::move(on_done));
  } catch (const std::exception& e) {
    deadlines_->remove(deadline);
    release(ex);
    send_json(ex, 503, {{"ready", false}, {"error", e.what()}}, "not_ready");
  }
}

void Api::metrics_page(const ExchangePtr& ex) {
  Metrics::Gauges g;
  const auto [idle, busy] = detail::RunnerAccess::worker_counts(runner_);
  g.workers_idle = idle;
  g.workers_busy = busy;
  {
    std::lock_guard<std::mutex> lk(mu_);
    for (auto it = sessions_.begin(); it != sessions_.end();)
      it = it->second->session.alive() ? std::next(it) : sessions_.erase(it);
    g.sessions_open = sessions_.size();
    g.runs_in_flight = in_flight_;
  }
  g.connections = connections ? connections() : 0;
  ex->send(200, metrics_.render(g), "text/plain; version=0.0.4; charset=utf-8", {}, "");
}

}  // namespace spr::http
