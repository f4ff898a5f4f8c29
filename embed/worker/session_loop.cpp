// Session worker: runs each request in the namespace the earlier ones left, and lists its variables.
#include "session_loop.hpp"

#include <unistd.h>

#include <cerrno>
#include <string>

#include "engine/trust.hpp"
#include "engine/codec.hpp"
#include "common/capture_layout.hpp"
#include "common/frame.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "engine/engine.hpp"
#include "harden/harden.hpp"
#include "engine/memory.hpp"
#include "engine/py.hpp"
#include "worker_protocol.hpp"

namespace spr::embed {

namespace {

constexpr std::uint64_t kSlackBytes = 256u << 20;    // the interpreter's own needs beyond the policy's
constexpr std::uint64_t kVariableBytes = 64u << 10;  // cap on one variable's JSON in variables()
constexpr int kPlainDepth = 20;
constexpr int kIdleSpinMicroseconds = 50;

// A value made only of exact JSON-like built-in types: encoding it runs no user code.
bool plain(PyObject* o, int depth, long& budget) {
  if (--budget < 0 || depth > kPlainDepth) return false;
  if (o == Py_None || PyBool_Check(o) || PyLong_CheckExact(o) || PyFloat_CheckExact(o) || PyUnicode_CheckExact(o))
    return true;
  if (PyList_CheckExact(o) || PyTuple_CheckExact(o)) {
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(o);
    PyObject** items = PySequence_Fast_ITEMS(o);
    for (Py_ssize_t i = 0; i < n; ++i)
      if (!plain(items[i], depth + 1, budget)) return false;
    return true;
  }
  if (PyDict_CheckExact(o)) {
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(o, &pos, &k, &v))
      if (!PyUnicode_CheckExact(k) || !plain(v, depth + 1, budget)) return false;
    return true;
  }
  return false;
}

std::string exact_text(PyObject* s) {
  return s && PyUnicode_CheckExact(s) ? py::utf8(s) : std::string("?");
}

// What a REPL would show, for the kinds whose repr is known without calling their __repr__.
std::string describe(PyObject* o) {
  if (PyModule_CheckExact(o)) {
    const char* name = PyModule_GetName(o);
    PyErr_Clear();
    return std::string("<module '") + (name ? name : "?") + "'>";
  }
  if (PyFunction_Check(o))
    return "<function " + exact_text(reinterpret_cast<PyFunctionObject*>(o)->func_qualname) + ">";
  if (PyType_Check(o)) return std::string("<class '") + reinterpret_cast<PyTypeObject*>(o)->tp_name + "'>";
  if (PyCFunction_Check(o))
    return std::string("<built-in function ") + reinterpret_cast<PyCFunctionObject*>(o)->m_ml->ml_name + ">";
  if (PyList_CheckExact(o) || PyTuple_CheckExact(o) || PyDict_CheckExact(o))
    return std::string("<") + Py_TYPE(o)->tp_name + " of " + std::to_string(PyObject_Length(o)) + " items>";
  return std::string("<") + Py_TYPE(o)->tp_name + " object>";
}

json variables(PyObject* globals) {
  json out = json::object();
  PyObject *k, *v;
  Py_ssize_t pos = 0;
  while (PyDict_Next(globals, &pos, &k, &v)) {
    if (!PyUnicode_CheckExact(k)) continue;
    const std::string name = py::utf8(k);
    if (name.rfind("__", 0) == 0) continue;
    json entry = {{"type", Py_TYPE(v)->tp_name}};
    long budget = 100000;
    if (plain(v, 0, budget)) {
      codec::Encoded e = codec::from_python(v, kVariableBytes);
      PyErr_Clear();
      if (e.status == codec::Status::ok)
        entry["value"] = std::move(e.value);
      else
        entry["repr"] = describe(v);
    } else {
      entry["repr"] = describe(v);
    }
    out[name] = std::move(entry);
  }
  return out;
}

}  // namespace

int limit_session_memory(int statm_fd, std::int64_t memory_mb) {
  if (statm_fd < 0 || memory_mb <= 0) return EINVAL;
  char buf[128] = {};
  const ssize_t n = pread(statm_fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return errno ? errno : EIO;
  const std::uint64_t now = std::strtoull(buf, nullptr, 10) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
  harden::RunLimits limits;
  limits.address_space_bytes = now + (static_cast<std::uint64_t>(memory_mb) << 20) + kSlackBytes;
  return harden::apply_rlimits(limits);
}

SessionRunner::SessionRunner(WorkerScope scope) : scope_(scope) {
  main_module_ = PyModule_New("__main__");
  {
    trust::Trusted trusted;
    py::Ref ast(PyImport_ImportModule("ast"));  // split_last_expression finds it in sys.modules
    PyErr_Clear();
  }
  PyErr_Clear();
  base_ = memory::in_use();
}

SessionRunner::~SessionRunner() {
  Py_XDECREF(main_module_);
}

int SessionRunner::read_spin_microseconds() const {
  return kIdleSpinMicroseconds;
}

void SessionRunner::handle(std::string& frame, std::string& reply) {
  Incoming in = decode_request(frame, scope_, &policies_);
  if (in.kind == Incoming::Kind::list_variables && main_module_) {
    try {
      reply = protocol::encode(protocol::Variables{in.id, variables(PyModule_GetDict(main_module_))});
      return;
    } catch (const std::exception& e) {
      in.kind = Incoming::Kind::bad;
      in.refusal = outcome::bad_request(e.what());
    }
  }
  RunResult r;
  if (!main_module_) {
    r = outcome::failure(ErrorKind::worker_crashed, "the session's namespace could not be made");
  } else if (in.kind == Incoming::Kind::bad) {
    r = std::move(in.refusal);
  } else {
    protocol::Request& rq = in.run;
    // The session's memory limit spans its calls: each call may grow only into what is left.
    const std::int64_t left = (rq.policy.memory_limit_mb << 20) - (memory::in_use() - base_);
    if (left < (1 << 20)) {
      r = outcome::memory();
    } else {
      rq.policy.memory_limit_mb = left >> 20;
      r = run(rq, main_module_);
    }
  }
  reply = encode_reply(in.id, std::move(r));
}

}  // namespace spr::embed
