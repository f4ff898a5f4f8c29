// The HTTP service's endpoints (our /v1 API, Piston's /api/v2, health, metrics, the playground) on a Runner.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "http/exchange.hpp"
#include "http/metrics.hpp"
#include "spr/runner.hpp"

namespace spr::http {

struct ApiOptions {
  std::size_t max_in_flight = 64;     // runs and session calls admitted at once (running or waiting); then 429
  double queue_timeout_seconds = 30;  // a request's deadline is its run's timeout + kill grace + this
  std::size_t blocking_threads = 10;  // for session opens, calls and closes, which block
  // A new session takes its id from the X-Session-Id header (32 hex digits, as nginx's $request_id)
  // when there is one, so a proxy that hashes on it sends the session's later requests to this server.
  bool session_id_from_header = false;
  std::size_t max_batches = 2;  // POST /v1/batch requests running at once; then 429
  // Shares of one bearer token (requests without a token, when no token file is given, are one party and have
  // no share): open sessions, and runs, session calls and batches admitted at once. 0: no share beyond the
  // server's own limits. Over its share a token gets 429 while other tokens still find room.
  std::size_t sessions_per_token = 0;
  std::size_t runs_per_token = 0;
};

class FairQueue;

class Api {
 public:
  Api(Runner& runner, RunnerPolicy base, ApiOptions options);
  ~Api();  // stop()
  Api(const Api&) = delete;
  Api& operator=(const Api&) = delete;

  void handle(const ExchangePtr& ex);
  // Runs and session calls admitted and not answered.
  std::size_t in_flight() const;
  // From now on, every request but /healthz is answered 503 (the server is draining).
  void begin_drain();
  // Closes every session and joins the helper threads; runs in flight answer as the Runner stops them.
  void stop();

  Metrics& metrics() { return metrics_; }
  std::function<std::size_t()> connections;  // for /metrics

 private:
  struct SessionEntry;
  class Deadlines;
  class BlockingPool;
  struct RunCall;
  struct BatchCall;

  void run(const ExchangePtr& ex, json& body, bool stream);
  void piston_execute(const ExchangePtr& ex, const json& body);
  void session_open(const ExchangePtr& ex, const json& body);
  void session_run(const ExchangePtr& ex, const std::string& id, json& body, bool stream);
  void session_variables(const ExchangePtr& ex, const std::string& id);
  void session_close(const ExchangePtr& ex, const std::string& id);
  void cancel(const ExchangePtr& ex, const std::string& id);
  void batch(const ExchangePtr& ex);
  void ready(const ExchangePtr& ex);
  void metrics_page(const ExchangePtr& ex);

  bool admit(const ExchangePtr& ex, bool piston);
  // Under mu_: takes a run slot for `ex` (the server's and its token's); else the message of the 429, slot untaken.
  std::string take_slot(const ExchangePtr& ex);
  // Admits a run or session call, registers its client id, starts its NDJSON stream and arms its
  // deadline (`timeout_seconds` + kill grace + queue timeout); nullptr when it has already answered.
  std::shared_ptr<RunCall> start_call(const ExchangePtr& ex, const std::string& client_id, RunOptions& options,
                                      bool stream, double timeout_seconds);
  // Gives back the slot admit() or take_slot() took for `ex`; called before its answer is sent, so a client that
  // sends its next request as soon as it has the answer finds its share free.
  void release(const ExchangePtr& ex);
  // Hands a run of `token` (nullopt: no token file) to the Runner in its token's turn (FairQueue), as RunnerAccess::submit does: `on_done` once with
  // its result, or with the cancel's when it is cancelled while it waits. When the Runner refuses it (shutting down,
  // an invalid policy) `on_refused` is called instead, with the failure as a result (worker_unavailable, bad_input).
  void queue_run(std::optional<std::size_t> token, std::string code, json input, RunnerPolicy policy, RunOptions options,
                 std::function<void(const RunResult&)> on_done, std::function<void(const RunResult&)> on_refused);
  std::shared_ptr<SessionEntry> find_session(const ExchangePtr& ex, const std::string& id);
  // Registers a client-chosen run id (for POST /v1/runs/{id}/cancel); false when it is in use.
  bool register_run(const ExchangePtr& ex, const std::string& id, const CancelToken& token);
  void unregister_run(const ExchangePtr& ex, const std::string& id);
  RunnerPolicy request_policy(const json& overrides) const;  // throws PolicyError
  // The body's "policy" over the operator's (a ceiling), bound to the request's token; nullopt once it has
  // answered bad_input.
  std::optional<RunnerPolicy> body_policy(const ExchangePtr& ex, const json& body) const;

  Runner& runner_;
  RunnerPolicy base_;
  ApiOptions options_;
  Metrics metrics_;
  std::string python_version_;
  mutable std::mutex mu_;
  std::size_t in_flight_ = 0;
  bool draining_ = false;
  std::map<std::string, std::shared_ptr<SessionEntry>> sessions_;  // by id
  std::map<std::string, CancelToken> runs_;                        // by owner token and client id
  std::map<std::size_t, std::size_t> token_in_flight_;             // run slots held, by token
  std::map<std::size_t, std::size_t> token_opening_;               // session opens admitted, not done, by token
  std::vector<std::shared_ptr<BatchCall>> batches_;              // running, or ended and not joined yet
  std::unique_ptr<FairQueue> fair_;  // runs waiting for a worker, in turn across tokens
  std::unique_ptr<Deadlines> deadlines_;
  std::unique_ptr<BlockingPool> pool_;
};

}  // namespace spr::http
