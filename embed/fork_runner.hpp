// Fork isolation mode: the warm worker forks one child per run; the child runs it and exits.
#pragma once

#include <string>

#include "engine.hpp"

namespace spr::embed {

class ForkRunner {
 public:
  ForkRunner(int statm_fd, int devnull_fd, double grace_seconds)
      : statm_fd_(statm_fd), devnull_fd_(devnull_fd), grace_(grace_seconds) {}
  // Builds the child's seccomp program ahead of time (nothing may allocate after fork).
  void prepare();
  // Runs `req` in a fresh child; returns the reply frame's JSON text. The worker must be single-threaded.
  std::string run(const Request& req, const json& id, const json& nonce);

 private:
  std::uint64_t address_space_now() const;
  int statm_fd_;
  int devnull_fd_;  // opened for writing before Landlock; becomes the child's fd 2
  double grace_;
  bool child_filter_ = false;
};

}  // namespace spr::embed
