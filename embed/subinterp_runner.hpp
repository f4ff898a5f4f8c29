// Sub-interpreter isolation mode: each run gets a fresh sub-interpreter built ahead of time.
#pragma once

#include <string>

#include "engine.hpp"
#include "interp_state.hpp"

namespace spr::embed {

class SubinterpRunner {
 public:
  // Builds the first spare. Returns "" or the reason sub-interpreters are unavailable.
  std::string start();
  RunResult run(const Request& req);
  // Ends the interpreter the last run used and builds the next spare; the worker calls it after
  // sending the reply, so creation cost stays off the caller's path when runs are not back to back.
  void recycle();

 private:
  std::string build_spare();
  PyThreadState* main_ = nullptr;
  PyThreadState* spare_ = nullptr;
  PyThreadState* used_ = nullptr;
  InterpState spare_state_, used_state_;
  std::string spare_error_;
};

}  // namespace spr::embed
