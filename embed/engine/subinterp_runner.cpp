// Sub-interpreter isolation mode. On 3.12+ each run's interpreter has its own GIL and obmalloc
// (Py_NewInterpreterFromConfig); on 3.10/3.11 the legacy Py_NewInterpreter shares the GIL.
#include "subinterp_runner.hpp"

#include <poll.h>

#include "audit.hpp"
#include "common/outcome.hpp"
#include "deadline.hpp"

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

// Ended interpreters still waiting beyond this many are ended at once (memory stays bounded).
constexpr std::size_t kMaxRetired = 2;
// A request arriving within this long of the last reply is taken as back to back.
constexpr int kBackToBackMs = 2;

std::string SubinterpRunner::start() {
  main_ = PyThreadState_Get();
  return build_one();
}

std::string SubinterpRunner::build_one() {
  audit::Trusted trusted;  // creating interpreters is denied to user code, not to us
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
    switch_to(main_);
    error_ = std::string("creating a sub-interpreter failed") + (st.err_msg ? std::string(": ") + st.err_msg : "");
    return error_;
  }
#else
  ts = Py_NewInterpreter();
  if (!ts) {
    PyThreadState_Swap(main_);
    error_ = "creating a sub-interpreter failed";
    return error_;
  }
#endif
  switch_to(main_);  // the new interpreter is made current by its creation; the scope below owns that
  Ready r;
  r.ts = ts;
  std::string err;
  {
    ActiveInterpreter active(ts, &r.state);
    err = init_current_interpreter();
  }
  if (!err.empty()) {
    end_interpreter(main_, ts);
    error_ = err;
    return err;
  }
  ready_.push_back(std::move(r));
  error_.clear();
  return {};
}

void SubinterpRunner::end_one() {
  if (retired_.empty()) return;
  audit::Trusted trusted;
  end_interpreter(main_, retired_.front());
  retired_.pop_front();
}

RunResult SubinterpRunner::run(const Request& req) {
  if (ready_.empty() && !build_one().empty())
    return outcome::failure(ErrorKind::worker_unavailable, "subinterpreter mode unavailable: " + error_);
  used_ = std::move(ready_.front());
  ready_.pop_front();
  ActiveInterpreter active(used_.ts, &used_.state);
  RunResult r = embed::run(req);
  deadline::cancel_interval_timers();
  return r;
}

void SubinterpRunner::retire() {
  if (!used_.ts) return;
  retired_.push_back(used_.ts);
  used_ = Ready{};
  while (retired_.size() > kMaxRetired) end_one();
}

void SubinterpRunner::work_while_idle(int fd) {
  if (retired_.empty() && ready_.size() >= pool_size_) return;
  auto request_waiting = [fd](int timeout_ms) {
    pollfd p{fd, POLLIN, 0};
    return poll(&p, 1, timeout_ms) != 0;  // an error also ends the idle work: the read reports it
  };
  // A request that follows its reply this closely is back to back: serve it first.
  if (request_waiting(kBackToBackMs)) return;
  while (!request_waiting(0)) {
    if (!retired_.empty()) {
      end_one();
    } else if (ready_.size() < pool_size_) {
      if (!build_one().empty()) return;  // reported on the next run
    } else {
      return;
    }
  }
}

}  // namespace spr::embed
