// Session worker: runs each request in the namespace the earlier ones left, and lists its variables.
#include "session_loop.hpp"

#include <unistd.h>

#include <cerrno>
#include <string>

#include "audit.hpp"
#include "codec.hpp"
#include "common/capture_layout.hpp"
#include "common/frame.hpp"
#include "common/wire.hpp"
#include "engine.hpp"
#include "harden/harden.hpp"
#include "memory.hpp"
#include "py.hpp"

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

void reply(json j, const json& id, const json& nonce) {
  j["id"] = id;
  j["nonce"] = nonce;
  if (detail::write_frame(detail::kProtocolFd, detail::dump_json(j)) != detail::IoStatus::ok) _exit(0);
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

void serve_session(bool allow_network) {
  py::Ref main_module(PyModule_New("__main__"));
  {
    audit::Trusted trusted;
    py::Ref ast(PyImport_ImportModule("ast"));  // split_last_expression finds it in sys.modules
    PyErr_Clear();
  }
  if (!main_module) _exit(70);
  PyObject* globals = PyModule_GetDict(main_module.get());  // borrowed
  const std::int64_t base = memory::in_use();
  std::string frame;
  for (;;) {
    // A short spin first, as the pool's workers do: back-to-back calls skip the wake-up.
    const auto s = detail::read_frame(detail::kProtocolFd, frame, detail::Clock::time_point::max(),
                                      detail::kMaxFrameBytes, kIdleSpinMicroseconds);
    if (s != detail::IoStatus::ok) _exit(0);  // supervisor closed (or spoke nonsense): never finalise, just go
    json id = nullptr, nonce = nullptr;
    RunResult r;
    try {
      json req = detail::parse_json(frame);
      id = req.at("id");
      nonce = req.at("nonce");
      if (req.value("op", std::string("run")) == "variables") {
        reply({{"variables", variables(globals)}}, id, nonce);
        continue;
      }
      Request rq;
      rq.id = id.get<std::uint64_t>();
      rq.code = req.at("code").get<std::string>();
      rq.input_data = req.value("input_data", json::object());
      if (auto in = req.find("stdin"); in != req.end() && in->is_string()) rq.stdin_text = in->get<std::string>();
      rq.policy = detail::policy_from_wire(req.at("policy"));
      rq.policy.isolation = Isolation::namespace_;
      rq.policy.allow_network = rq.policy.allow_network && allow_network;
      rq.session_main = main_module.get();
      rq.want_repr = req.value("repr", false);
      // The session's memory limit spans its calls: each call may grow only into what is left.
      const std::int64_t left = (rq.policy.memory_limit_mb << 20) - (memory::in_use() - base);
      if (left < (1 << 20)) {
        r = outcome::memory();
      } else {
        rq.policy.memory_limit_mb = left >> 20;
        r = run(rq);
      }
    } catch (const std::exception& e) {
      r = outcome::bad_request(e.what());
    }
    reply(detail::reply_from_result(r), id, nonce);
  }
}

}  // namespace spr::embed
