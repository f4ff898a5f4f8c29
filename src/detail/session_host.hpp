// The supervisor's side of sessions: one dedicated worker per session, the limit, idle expiry.
#pragma once

#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "detail/worker_process.hpp"
#include "spr/session.hpp"

namespace spr::detail {

class SessionHost;

struct SessionState {
  std::mutex call_mu;  // held for a whole call: calls run one at a time
  std::mutex mu;       // guards the fields below, briefly
  std::unique_ptr<WorkerProcess> worker;
  pid_t pid = -1;
  Fd pidfd;  // our copy: end() can kill the process while a call (which may reap it) is running
  RunnerPolicy policy;
  std::string ended;  // why the session ended; empty while it lives
  bool busy = false;
  Clock::time_point last_used = Clock::now();
  std::uint64_t next_id = 1;
  double grace_seconds = 0.25;  // hard deadline of a call = its timeout + this
  std::weak_ptr<SessionHost> host;
  std::function<void(std::function<void()>)> post;  // the runner's executor, for submit()
  std::shared_ptr<const HostFunctions> functions;    // the runner's host functions (a call may add its own)

  // Ends the session for `why` (the first reason wins). A running call's process is killed and
  // reaped by that call; an idle one is killed and reaped here.
  void end(const std::string& why);
};

class SessionHost : public std::enable_shared_from_this<SessionHost> {
 public:
  using Post = std::function<void(std::function<void()>)>;
  SessionHost(std::size_t max_sessions, double idle_seconds);
  ~SessionHost();
  SessionHost(const SessionHost&) = delete;
  SessionHost& operator=(const SessionHost&) = delete;

  // `options`: how a worker of the policy's kind is spawned. Throws SessionLimitError, WorkerError.
  std::shared_ptr<SessionState> open(const RunnerPolicy& policy, SpawnOptions options, Post post);
  // Ends every session and joins the thread. Idempotent.
  void stop();
  bool stopped();

 private:
  struct SpawnJob {
    SpawnOptions options;
    std::promise<std::unique_ptr<WorkerProcess>> result;
  };
  void loop();
  std::size_t live_locked();

  std::size_t max_;
  double idle_seconds_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
  std::size_t opening_ = 0;
  std::deque<std::shared_ptr<SpawnJob>> jobs_;
  std::vector<std::weak_ptr<SessionState>> sessions_;
  // A started session worker that has run nothing, for the next open of the same kind (network and
  // memory cap): opening then costs no process start. Made after the first open of that kind.
  std::unique_ptr<WorkerProcess> spare_;
  std::optional<SpawnOptions> spare_wanted_;
  bool spare_starting_ = false;  // the thread is starting the spare now: an open of its kind waits for it
  // Workers are spawned from this long-lived thread: PR_SET_PDEATHSIG fires when the spawning thread
  // exits. It also closes idle sessions.
  std::thread thread_;
};

}  // namespace spr::detail
