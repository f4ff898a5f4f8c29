// Sub-interpreter isolation mode. On 3.12+ each run's interpreter has its own GIL and obmalloc
// (Py_NewInterpreterFromConfig); on 3.10/3.11 the legacy Py_NewInterpreter shares the GIL.
#include "subinterp_runner.hpp"

#include "audit.hpp"
#include "deadline.hpp"
#include "common/wire.hpp"

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

std::string SubinterpRunner::start() {
  main_ = PyThreadState_Get();
  return build_spare();
}

std::string SubinterpRunner::build_spare() {
  if (spare_) return {};
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
    spare_error_ = std::string("creating a sub-interpreter failed") + (st.err_msg ? std::string(": ") + st.err_msg : "");
    return spare_error_;
  }
#else
  ts = Py_NewInterpreter();
  if (!ts) {
    PyThreadState_Swap(main_);
    spare_error_ = "creating a sub-interpreter failed";
    return spare_error_;
  }
#endif
  spare_state_ = InterpState{};
  use_state(&spare_state_);
  std::string err = init_current_interpreter();
  use_state(nullptr);
  if (!err.empty()) {
    end_interpreter(main_, ts);
    spare_error_ = err;
    return err;
  }
  switch_to(main_);
  spare_ = ts;
  spare_error_.clear();
  return {};
}

RunResult SubinterpRunner::run(const Request& req) {
  if (!spare_ && !build_spare().empty()) {
    return detail::failure(ErrorKind::worker_unavailable, "subinterpreter mode unavailable: " + spare_error_);
  }
  used_ = spare_;
  used_state_ = spare_state_;
  spare_ = nullptr;
  switch_to(used_);
  use_state(&used_state_);
  RunResult r = embed::run(req);
  deadline::cancel_interval_timers();
  use_state(nullptr);
  switch_to(main_);
  return r;
}

void SubinterpRunner::recycle() {
  if (used_) {
    audit::Trusted trusted;
    end_interpreter(main_, used_);
    used_ = nullptr;
    used_state_ = InterpState{};
  }
  build_spare();
}

}  // namespace spr::embed
