// Sub-interpreter isolation mode. On 3.12+ each run's interpreter has its own GIL and obmalloc
// (Py_NewInterpreterFromConfig); on 3.10/3.11 the legacy Py_NewInterpreter shares the GIL.
#include "subinterpreter_pool.hpp"

#include <poll.h>

#include <utility>

#include "trust.hpp"
#include "common/outcome.hpp"
#include "deadline.hpp"
#include "engine.hpp"

namespace spr::embed {

namespace {

// Leaves `to` current. 3.12+ sub-interpreters have their own GIL, so switching releases one
// lock and takes the other; the legacy mode shares one GIL and only swaps thread states.
void switch_to(PyThreadState* to) {
#if PY_VERSION_HEX >= 0x030C0000
  if (PyThreadState_Get() != to) {
    PyEval_SaveThread();
    PyEval_RestoreThread(to);
  }
#else
  PyThreadState_Swap(to);
#endif
}

void end_interpreter(PyThreadState* main, PyThreadState* ts) {
  switch_to(ts);
  // A failed thread start leaves its pre-allocated thread state linked (CPython 3.11), and
  // Py_EndInterpreter aborts on any thread state but the current one. Seccomp guarantees no such
  // thread ever ran in this worker, so the leftovers are inert: delete them.
  PyInterpreterState* interp = PyThreadState_GetInterpreter(ts);
  for (PyThreadState* t = PyInterpreterState_ThreadHead(interp); t != nullptr;) {
    PyThreadState* next = PyThreadState_Next(t);
    if (t != ts) {
      PyThreadState_Clear(t);
      PyThreadState_Delete(t);
    }
    t = next;
  }
  Py_EndInterpreter(ts);  // leaves no thread state current
#if PY_VERSION_HEX >= 0x030C0000
  PyEval_RestoreThread(main);
#else
  PyThreadState_Swap(main);
#endif
}

}  // namespace

ActiveInterpreter::ActiveInterpreter(PyThreadState* ts, InterpState* state)
    : previous_ts_(PyThreadState_Get()), previous_state_(&embed::state()) {
  switch_to(ts);
  use_state(state);
}

ActiveInterpreter::~ActiveInterpreter() {
  use_state(previous_state_);
  switch_to(previous_ts_);
}

Subinterpreter Subinterpreter::create(PyThreadState* main, std::string& error) {
  trust::Trusted trusted;  // creating interpreters is denied to user code, not to us
  PyThreadState* ts = nullptr;
#if PY_VERSION_HEX >= 0x030C0000
  PyInterpreterConfig cfg = {};
  cfg.use_main_obmalloc = 0;
  cfg.allow_fork = 0;
  cfg.allow_exec = 0;
  cfg.allow_threads = 1;
  cfg.allow_daemon_threads = 0;
  cfg.check_multi_interp_extensions = 1;
  cfg.gil = PyInterpreterConfig_OWN_GIL;
  PyStatus st = Py_NewInterpreterFromConfig(&ts, &cfg);
  if (PyStatus_Exception(st) || !ts) {
    switch_to(main);
    error = std::string("creating a sub-interpreter failed") + (st.err_msg ? std::string(": ") + st.err_msg : "");
    return {};
  }
#else
  ts = Py_NewInterpreter();
  if (!ts) {
    PyThreadState_Swap(main);
    error = "creating a sub-interpreter failed";
    return {};
  }
#endif
  switch_to(main);  // the new interpreter is made current by its creation; the scope below owns that
  Subinterpreter made;
  made.main_ = main;
  made.ts_ = ts;  // owned from here: an early return ends it
  {
    ActiveInterpreter active(made.ts_, &made.state_);
    error = init_current_interpreter();
  }
  if (!error.empty()) return {};
  return made;
}

Subinterpreter::Subinterpreter(Subinterpreter&& other) noexcept
    : main_(other.main_), ts_(std::exchange(other.ts_, nullptr)), state_(std::move(other.state_)) {}

Subinterpreter& Subinterpreter::operator=(Subinterpreter&& other) noexcept {
  if (this != &other) {
    end();
    main_ = other.main_;
    ts_ = std::exchange(other.ts_, nullptr);
    state_ = std::move(other.state_);
  }
  return *this;
}

void Subinterpreter::end() {
  if (!ts_) return;
  trust::Trusted trusted;
  end_interpreter(main_, std::exchange(ts_, nullptr));
  state_ = InterpState{};  // its objects died with the interpreter
}

// Ended interpreters still waiting beyond this many are ended at once (memory stays bounded).
constexpr std::size_t kMaxRetired = 2;
// A request arriving within this long of the last reply is taken as back to back.
constexpr int kBackToBackMs = 2;

std::string SubinterpreterPool::start() {
  main_ = PyThreadState_Get();
  return build_one();
}

std::string SubinterpreterPool::build_one() {
  error_.clear();
  Subinterpreter made = Subinterpreter::create(main_, error_);
  if (made) ready_.push_back(std::move(made));
  return error_;
}

RunResult SubinterpreterPool::run(const protocol::Request& req) {
  if (ready_.empty() && !build_one().empty())
    return outcome::failure(ErrorKind::worker_unavailable, "subinterpreter mode unavailable: " + error_);
  used_ = std::move(ready_.front());
  ready_.pop_front();
  ActiveInterpreter active(used_.thread_state(), used_.state());
  RunResult r = embed::run(req);
  deadline::cancel_interval_timers();
  return r;
}

void SubinterpreterPool::retire() {
  if (!used_) return;
  retired_.push_back(std::move(used_));
  while (retired_.size() > kMaxRetired) retired_.pop_front();
}

void SubinterpreterPool::work_while_idle(int fd) {
  if (retired_.empty() && ready_.size() >= pool_size_) return;
  auto request_waiting = [fd](int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) != 0;  // an error also ends the idle work: the read reports it
  };
  // A request that follows its reply this closely is back to back: serve it first.
  if (request_waiting(kBackToBackMs)) return;
  while (!request_waiting(0)) {
    if (!retired_.empty()) {
      retired_.pop_front();
    } else if (ready_.size() < pool_size_) {
      if (!build_one().empty()) return;  // reported on the next run
    } else {
      return;
    }
  }
}

}  // namespace spr::embed
