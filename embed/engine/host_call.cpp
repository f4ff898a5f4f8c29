// Host functions inside a run: each call is checked for JSON form and size, framed to the supervisor, and answered.
#include "host_call.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "run_local.hpp"
#include "trust.hpp"
#include "codec.hpp"
#include "common/capture_layout.hpp"
#include "common/frame.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"

namespace spr::embed::host_call {

namespace {

// One run's host functions. A worker runs one request at a time, so one state serves every mode.
struct RunState {
  bool active = false;
  std::uint64_t id = 0;
  std::uint64_t calls = 0;
  std::vector<std::string> functions;
  std::uint64_t max_bytes = 0;
  long long max_kb = 0;
  py::Ref error_type;  // HostFunctionError of the run's interpreter
  py::Ref module;      // the run's `host` module
  py::Ref saved_host;  // what sys.modules['host'] was before the run (normally nothing)
  bool limit = false;
  std::string limit_why;
};

// A run's calls and channel, shared by the threads it starts (their calls hold the interpreter's lock
// from frame out to answer in, so they go one at a time); each own-GIL run thread has its own socket.
struct Channel {
  RunState run;
  int write_fd = detail::kProtocolFd;
  int read_fd = detail::kProtocolFd;
  bool write_socket = true;  // the supervisor's socket (not a fork child's pipe)
};
RunLocal<Channel> g_channel;
RunState& run() { return g_channel().run; }

// What in `o` has no JSON form ("" when all of it has one): the same types the result codec keeps
// as themselves. Depth is bounded by the codec afterwards; this walk stops at the same bound.
std::string non_json(PyObject* o, int depth) {
  if (depth > codec::kMaxDepth) return {};  // the codec reports the depth itself
  if (o == Py_None || PyBool_Check(o) || PyUnicode_Check(o)) return {};
  if (PyLong_Check(o)) {
    int overflow = 0;
    (void)PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow > 0) {
      (void)PyLong_AsUnsignedLongLong(o);
      if (!PyErr_Occurred()) return {};
      PyErr_Clear();
    }
    return overflow == 0 ? std::string() : "an int beyond 64 bits";
  }
  if (PyFloat_Check(o)) return std::isfinite(PyFloat_AS_DOUBLE(o)) ? std::string() : "a float that is not finite";
  if (PyList_Check(o) || PyTuple_Check(o)) {
    const Py_ssize_t n = PyList_Check(o) ? PyList_GET_SIZE(o) : PyTuple_GET_SIZE(o);
    for (Py_ssize_t i = 0; i < n; ++i) {
      if (PyList_Check(o) && i >= PyList_GET_SIZE(o)) break;
      PyObject* item = PyList_Check(o) ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
      std::string why = non_json(item, depth + 1);
      if (!why.empty()) return why;
    }
    return {};
  }
  if (PyDict_Check(o)) {
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(o, &pos, &k, &v)) {
      if (!PyUnicode_Check(k)) return std::string("a dict key of type ") + Py_TYPE(k)->tp_name;
      std::string why = non_json(v, depth + 1);
      if (!why.empty()) return why;
    }
    return {};
  }
  return std::string("a ") + Py_TYPE(o)->tp_name;
}

PyObject* fail(PyObject* type, const std::string& message) {
  PyErr_SetString(type, message.c_str());
  return nullptr;
}

PyObject* over_limit(const std::string& why) {
  if (!run().limit) {
    run().limit = true;
    run().limit_why = why;
  }
  return fail(PyExc_RuntimeError, outcome::host_call_limit(run().limit_why).error.value_or(""));
}

// The frame out and its answer back. The GIL stays held: a run's threads (fork and process mode)
// then never interleave two calls' frames on the one channel.
PyObject* round_trip(const std::string& name, json args, json kwargs) {
  protocol::HostCall c;
  c.id = run().id;
  c.call = ++run().calls;
  c.name = name;
  c.args = std::move(args);
  c.kwargs = std::move(kwargs);
  std::string text = protocol::encode(c);
  if (detail::write_frame(g_channel().write_fd, text, g_channel().write_socket) != detail::IoStatus::ok)
    return fail(PyExc_RuntimeError, "host function '" + name + "' cannot be called: the host is gone");
  text.clear();
  const detail::IoStatus s = detail::read_frame(g_channel().read_fd, text, detail::Clock::time_point::max());
  if (s != detail::IoStatus::ok)
    return fail(PyExc_RuntimeError, "host function '" + name + "' got no answer (" + detail::to_string(s) + ")");
  protocol::HostReturn r;
  try {
    r = protocol::decode_as<protocol::HostReturn>(text);
  } catch (const std::exception& e) {
    return fail(PyExc_RuntimeError, "host function '" + name + "' got a malformed answer: " + e.what());
  }
  if (r.id != c.id || r.call != c.call)
    return fail(PyExc_RuntimeError, "host function '" + name + "' got the answer to another call");
  if (r.limit) return over_limit(r.error.value_or("the host refused the call"));
  if (r.error) {
    PyErr_SetString(run().error_type ? run().error_type.get() : PyExc_RuntimeError, r.error->c_str());
    return nullptr;
  }
  return codec::to_python(r.value);
}

// The callable of every host function; `self` is its name (a str).
PyObject* call(PyObject* self, PyObject* args, PyObject* kwargs) {
  const std::string name = py::utf8(self);
  if (!run().active || std::find(run().functions.begin(), run().functions.end(), name) == run().functions.end())
    return fail(PyExc_RuntimeError, "host function '" + name + "' is only available during its run");
  if (run().limit) return over_limit(run().limit_why);
  if (run().calls >= static_cast<std::uint64_t>(INT64_MAX)) return over_limit("too many calls");
  const Py_ssize_t n = PyTuple_GET_SIZE(args);
  for (Py_ssize_t i = 0; i < n; ++i) {
    const std::string why = non_json(PyTuple_GET_ITEM(args, i), 0);
    if (!why.empty())
      return fail(PyExc_TypeError, "host function '" + name + "': argument " + std::to_string(i + 1) +
                                       " is not JSON (" + why + ")");
  }
  if (kwargs) {
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(kwargs, &pos, &k, &v)) {
      const std::string why = non_json(v, 0);
      if (!why.empty())
        return fail(PyExc_TypeError, "host function '" + name + "': keyword argument '" + py::utf8(k) +
                                         "' is not JSON (" + why + ")");
    }
  }
  py::Ref empty(kwargs ? nullptr : PyDict_New());
  py::Ref pair(PyTuple_Pack(2, args, kwargs ? kwargs : empty.get()));
  if (!pair) return nullptr;
  codec::Encoded e = codec::from_python(pair.get(), run().max_bytes);
  if (e.status == codec::Status::too_large) return over_limit(outcome::host_call_too_large("arguments", run().max_kb));
  if (e.status == codec::Status::cyclic)
    return fail(PyExc_ValueError, "host function '" + name + "': an argument contains itself");
  if (e.status != codec::Status::ok)
    return fail(PyExc_ValueError, "host function '" + name + "': an argument is nested too deeply");
  return round_trip(name, std::move(e.value[0]), std::move(e.value[1]));
}

PyMethodDef kCall = {"host_function", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(call)),
                     METH_VARARGS | METH_KEYWORDS, "A function of the application that runs this code."};

}  // namespace

void set_channel(int write_fd, int read_fd) {
  g_channel().write_fd = write_fd;
  g_channel().read_fd = read_fd;
  g_channel().write_socket = write_fd == detail::kProtocolFd;
}

void set_socket(int fd) {
  g_channel().write_fd = g_channel().read_fd = fd;
  g_channel().write_socket = true;
}

bool begin_run(std::uint64_t run_id, const std::vector<std::string>& functions, const RunnerPolicy& policy,
               PyObject* globals) {
  end_run();
  if (functions.empty()) return true;
  trust::Trusted trusted;
  run().id = run_id;
  run().functions = functions;
  run().max_kb = static_cast<long long>(policy.host_call_kb());
  run().max_bytes = static_cast<std::uint64_t>(run().max_kb) * 1024;
  run().error_type = py::Ref(PyErr_NewExceptionWithDoc(
      "host.HostFunctionError", "A host function raised; the message is the host's.", PyExc_RuntimeError, nullptr));
  run().module = py::Ref(PyModule_New("host"));
  if (!run().error_type || !run().module) return false;
  if (PyModule_AddObjectRef(run().module.get(), "HostFunctionError", run().error_type.get()) < 0) return false;
  py::Ref module_name(PyUnicode_FromString("host"));
  for (const auto& f : functions) {
    py::Ref name(PyUnicode_FromStringAndSize(f.data(), static_cast<Py_ssize_t>(f.size())));
    if (!name) return false;
    py::Ref fn(PyCFunction_NewEx(&kCall, name.get(), module_name.get()));
    if (!fn || PyObject_SetAttr(run().module.get(), name.get(), fn.get()) < 0 ||
        PyDict_SetItem(globals, name.get(), fn.get()) < 0)
      return false;
  }
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  run().saved_host = py::Ref::borrow(PyDict_GetItemString(modules, "host"));
  if (PyDict_SetItemString(modules, "host", run().module.get()) < 0) return false;
  run().active = true;
  return true;
}

void end_run() {
  if (run().module) {
    PyObject* modules = PyImport_GetModuleDict();
    if (PyDict_GetItemString(modules, "host") == run().module.get() || run().saved_host) {
      if (run().saved_host ? PyDict_SetItemString(modules, "host", run().saved_host.get()) < 0
                           : PyDict_DelItemString(modules, "host") < 0)
        PyErr_Clear();
    }
  }
  run().active = false;
  run().id = 0;
  run().calls = 0;
  run().functions.clear();
  run().error_type.reset();
  run().module.reset();
  run().saved_host.reset();
  run().limit = false;
  run().limit_why.clear();
}

bool active() { return run().active; }
bool limit_hit() { return run().limit; }
const std::string& limit_why() { return run().limit_why; }

}  // namespace spr::embed::host_call
