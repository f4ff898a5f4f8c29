// Fork isolation mode: each run gets a fresh child of the warm worker, which runs it and dies.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/fd.hpp"
#include "common/frame.hpp"
#include "isolation_runner.hpp"
#include "worker_protocol.hpp"

struct rusage;

namespace spr::embed {

// The parent side never parses, compiles or keeps a run's code, input or output: request bytes go
// to the child as they came, reply bytes are checked in place and forwarded, and every buffer that
// held them is wiped after use. A snippet that reads its whole process memory finds no other run.
// (It keeps the operator's policy decoded for the children, never a caller's own nor one with extra_globals:
// PolicyText, protocol::Request::operator_policy.)
class ForkRunner : public IsolationRunner {
 public:
  ForkRunner(int statm_fd, int devnull_fd, WorkerScope scope)
      : statm_fd_(statm_fd), devnull_fd_(devnull_fd), scope_(scope) {}
  ForkRunner(const ForkRunner&) = delete;
  ForkRunner& operator=(const ForkRunner&) = delete;

  // Builds the child's seccomp program ahead of time (nothing may allocate after fork) and makes
  // SIGIO harmless to the worker. Returns "" or why fork mode cannot run (then no run may start).
  std::string prepare();
  // Used once hardened and single-threaded. While idle, a spare child is forked and warmed.
  void while_idle(int fd) override;
  // Runs one request frame in a child; the frame is wiped once the child has it.
  void handle(std::string& frame, std::string& reply) override { run(frame, reply); }
  void after_reply() override;
  void warm_heap_grew() override;
  // Test builds only (spr-worker-faulty): the next child treats its set-up call named `call` as failed.
  void fail_setup_for_test(const std::string& call);

 private:
  struct Child {
    pid_t pid = -1;
    detail::Fd request;  // the parent writes the request frame here
    detail::Fd reply;    // and reads the reply frame here
    bool warm = false;   // it runs (or ran) our warm-up before its request
  };
  // What the parent takes from a request: numbers and its id, never code or input.
  struct Limits {
    std::string id;                 // as the request spells it: the child's reply must spell it so
    std::uint64_t id_number = 0;    // for the replies the parent makes
    double timeout_seconds = 5, cpu_time_seconds = 0;
    double kill_after_seconds = 0;  // the request's (detail::kill_after), else timeout + the default grace
    std::uint64_t memory_limit_mb = 256, max_output_kb = 128, max_result_kb = 1024, max_files_kb = 1024;
    std::uint64_t max_host_call_kb = 1024;  // the policy's, or max_result_kb when it has none
    bool host_functions = false;            // the request names host functions: call frames may come
  };

  // `warm`: a spare, which runs our warm-up before it waits for its request. `held`: the request, already
  // in this process's memory, which the child takes from its copy once the parent says go. `running`: the
  // child of the run in progress, whose pipes the new child closes (it is forked ahead, during that run).
  bool fork_child(Child& c, bool warm, std::string* held = nullptr, const Child* running = nullptr);
  // Every set-up step is checked: after a failure the child answers its request without running it.
  [[noreturn]] void child_main(int request_fd, int reply_fd, bool warm, std::string* held, const int running_fds[2],
                               const char* fail_for_test);
  // Runs one request frame; returns the reply frame's text (in `reply`, the buffer reused).
  void run(std::string& frame, std::string& reply);
  bool set_limits(pid_t pid, const Limits& l) const;
  // A frame's shape, checked once and given to both checks below: valid JSON, and (as our writer makes
  // them) member names unique and written without escapes.
  enum class Shape { invalid, unplain, plain };
  static Shape shape_of(std::string_view frame);
  // Empty when the reply is acceptable, else why not.
  static std::string check_reply(std::string_view reply, Shape shape, const Limits& l);
  // A frame from the child that is a host call of this run (checked in place, never decoded).
  static bool is_host_call(std::string_view frame, Shape shape, const Limits& l);
  detail::IoStatus relay_host_call(Child& c, std::string& frame, detail::Clock::time_point deadline);
  // `over_cpu`: the child used more CPU than its limit (whatever its status says).
  std::string parent_reply(const Limits& l, int status, bool timed_out, bool protocol, const std::string& why,
                           bool over_cpu = false) const;
  void retire(Child& c);  // SIGKILL, close, reap later
  // SIGKILL, reap now (its CPU into `used` when given), close; returns its wait status.
  int end_now(Child& c, rusage* used = nullptr);
  void reap(bool block);
  std::uint64_t address_space_now() const;

  int statm_fd_;
  int devnull_fd_;  // opened for writing before Landlock; becomes the child's fd 2
  WorkerScope scope_;  // what the worker's sandbox allows; a request can only narrow it
  bool child_filter_ = false;
  pid_t parent_ = -1;  // the worker, as its children must see it (getppid) to know it is alive
  Child spare_;
  PolicyText policy_;  // the operator's policy, decoded here once for the children that follow
  std::string test_fault_;  // fail_setup_for_test
  std::vector<pid_t> exiting_;  // killed, not yet reaped
};

}  // namespace spr::embed
