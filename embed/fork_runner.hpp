// Fork isolation mode: each run gets a fresh child of the warm worker, which runs it and dies.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace spr::embed {

// The parent side never parses, compiles or keeps a run's code, input or output: request bytes go
// to the child as they came, reply bytes are checked in place and forwarded, and every buffer that
// held them is wiped after use. A snippet that reads its whole process memory finds no other run.
class ForkRunner {
 public:
  ForkRunner(int statm_fd, int devnull_fd, double grace_seconds, bool allow_network)
      : statm_fd_(statm_fd), devnull_fd_(devnull_fd), grace_(grace_seconds), allow_network_(allow_network) {}
  ForkRunner(const ForkRunner&) = delete;
  ForkRunner& operator=(const ForkRunner&) = delete;

  // Builds the child's seccomp program ahead of time (nothing may allocate after fork).
  void prepare();
  // Answers requests on the protocol fd until the supervisor closes it. Call once hardened and
  // single-threaded. `inspect` (test builds: fault injection) sees each request frame first.
  [[noreturn]] void serve(void (*inspect)(std::string_view frame) = nullptr);

 private:
  struct Child {
    pid_t pid = -1;
    int request_fd = -1;  // the parent writes the request frame here
    int reply_fd = -1;    // and reads the reply frame here
  };
  // What the parent takes from a request: numbers and our own id/nonce, never code or input.
  struct Limits {
    std::string id = "null", nonce;  // JSON text, echoed in replies the parent makes ("": no nonce)
    bool typed = false;              // the request has a "type" field: so do our replies
    double timeout_seconds = 5, cpu_time_seconds = 0;
    std::uint64_t memory_limit_mb = 256, max_output_kb = 128, max_result_kb = 1024;
  };

  // `warm`: a spare, which runs our warm-up before it waits for its request.
  bool fork_child(Child& c, bool warm);
  [[noreturn]] void child_main(int request_fd, int reply_fd, bool warm);
  // Runs one request frame; returns the reply frame's text (in `reply`, the buffer reused).
  void run(std::string& frame, std::string& reply);
  bool set_limits(pid_t pid, const Limits& l) const;
  // Empty when the reply is acceptable, else why not.
  static std::string check_reply(std::string_view reply, const Limits& l);
  std::string parent_reply(const Limits& l, int status, bool timed_out, bool protocol, const std::string& why) const;
  void retire(Child& c);  // SIGKILL, close, reap later
  void reap(bool block);
  std::uint64_t address_space_now() const;

  int statm_fd_;
  int devnull_fd_;  // opened for writing before Landlock; becomes the child's fd 2
  double grace_;
  bool allow_network_;  // the worker's network namespace decides; a request can only narrow it
  bool child_filter_ = false;
  pid_t parent_ = -1;  // the worker, as its children must see it (getppid) to know it is alive
  Child spare_;
  std::vector<pid_t> exiting_;  // killed, not yet reaped
};

}  // namespace spr::embed
