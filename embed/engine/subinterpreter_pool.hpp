// Sub-interpreter isolation mode: each run gets a fresh sub-interpreter from a pool built while idle.
#pragma once

#include <cstddef>
#include <deque>
#include <string>

#include "interp_state.hpp"
#include "py.hpp"
#include "common/protocol.hpp"

namespace spr::embed {

// Makes a sub-interpreter's thread state and the engine's state for it current for the scope, and
// the ones current before current again when it ends, on every path (pybind11's
// subinterpreter_scoped_activate). On 3.12+ each interpreter has its own GIL: switching releases
// one lock and takes the other.
class ActiveInterpreter {
 public:
  ActiveInterpreter(PyThreadState* ts, InterpState* state);
  ~ActiveInterpreter();
  ActiveInterpreter(const ActiveInterpreter&) = delete;
  ActiveInterpreter& operator=(const ActiveInterpreter&) = delete;

 private:
  PyThreadState* previous_ts_;
  InterpState* previous_state_;
};

// One sub-interpreter the engine made, with the engine's state for it: the handle owns both and ends
// the interpreter when it is destroyed (pybind11's subinterpreter is the model). Made, used and
// destroyed on the thread that holds `main`, the interpreter it was made from.
class Subinterpreter {
 public:
  Subinterpreter() = default;
  // A new interpreter with the engine initialised in it; an empty handle and `error` set when it fails.
  static Subinterpreter create(PyThreadState* main, std::string& error);
  Subinterpreter(Subinterpreter&& other) noexcept;
  Subinterpreter& operator=(Subinterpreter&& other) noexcept;
  Subinterpreter(const Subinterpreter&) = delete;
  Subinterpreter& operator=(const Subinterpreter&) = delete;
  ~Subinterpreter() { end(); }

  explicit operator bool() const { return ts_ != nullptr; }
  PyThreadState* thread_state() const { return ts_; }
  InterpState* state() { return &state_; }

 private:
  void end();
  PyThreadState* main_ = nullptr;
  PyThreadState* ts_ = nullptr;
  InterpState state_;
};

class SubinterpreterPool {
 public:
  explicit SubinterpreterPool(std::size_t pool_size = 2) : pool_size_(pool_size ? pool_size : 1) {}
  // Builds the first interpreter. Returns "" or the reason sub-interpreters are unavailable.
  std::string start();
  RunResult run(const protocol::Request& req);
  // After the reply went out: the interpreter the last run used is queued for ending.
  void retire();
  // True while a used interpreter has not been ended yet (its objects may still own descriptors).
  bool has_retired() const { return !retired_.empty(); }
  // Ends every retired interpreter now (on the request path: only when a run left descriptors open).
  void end_retired() { retired_.clear(); }
  // While nothing is waiting on `fd`: ends retired interpreters and fills the pool, one at a time,
  // so neither cost sits on a caller's path unless requests come back to back.
  void work_while_idle(int fd);

 private:
  std::string build_one();
  std::size_t pool_size_;
  PyThreadState* main_ = nullptr;
  // Destroyed last to first: the used one, the retired ones, then the ready ones are ended.
  std::deque<Subinterpreter> ready_;
  std::deque<Subinterpreter> retired_;
  Subinterpreter used_;
  std::string error_;
};

}  // namespace spr::embed
