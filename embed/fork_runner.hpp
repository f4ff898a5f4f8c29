// Fork isolation mode: each run gets a fresh child of the warm worker, which runs it and exits.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "engine.hpp"

namespace spr::embed {

class ForkRunner {
 public:
  ForkRunner(int statm_fd, int devnull_fd, double grace_seconds)
      : statm_fd_(statm_fd), devnull_fd_(devnull_fd), grace_(grace_seconds) {}
  // Builds the child's seccomp program ahead of time (nothing may allocate after fork).
  void prepare();
  // Runs `req` (whose request frame is `frame`) in a child; returns the reply frame's JSON text.
  // The worker must be single-threaded.
  std::string run(const Request& req, const std::string& frame, const json& id, const json& nonce);
  // After the reply went out: reaps the used child and forks the next spare, so neither the fork
  // nor the child's set-up and warm-up sit on the next caller's path.
  void after_reply(const Request& req);
  // Forks the first spare (call once the worker is hardened: the child inherits every layer).
  void warm() {
    if (spare_.pid < 0) fork_spare();
  }

 private:
  struct Spare {
    pid_t pid = -1;
    int request_fd = -1;  // parent writes the request frame
    int reply_fd = -1;    // parent reads the reply frame
  };
  bool fork_spare();
  [[noreturn]] void child_main(int request_fd, int reply_fd);
  void discard(Spare& s, bool kill_it);
  std::uint64_t address_space_now() const;

  int statm_fd_;
  int devnull_fd_;  // opened for writing before Landlock; becomes the child's fd 2
  double grace_;
  bool child_filter_ = false;
  Spare spare_;
  Spare used_;
  std::vector<pid_t> exiting_;  // used children that replied; reaped without waiting
  json last_policy_ = nullptr;  // copied into each spare: a repeated policy is not parsed again
  RunnerPolicy last_parsed_;
};

}  // namespace spr::embed
