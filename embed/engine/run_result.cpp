// A run's RunResult from what its code did: its exception classified, its `result` encoded.
#include "run_result.hpp"

#include <cerrno>

#include <algorithm>
#include <vector>

#include "audit.hpp"
#include "capture.hpp"
#include "codec.hpp"
#include "common/outcome.hpp"
#include "deadline.hpp"
#include "guard.hpp"
#include "interp_state.hpp"
#include "memory.hpp"

namespace spr::embed::run_result {

namespace {

std::string type_name(PyObject* type) {
  if (type && PyType_Check(type)) return reinterpret_cast<PyTypeObject*>(type)->tp_name;
  return "Exception";
}

// The supervisor refuses `error` fields over 64 KiB; the full text is in stderr.
std::string clip_line(std::string line) {
  constexpr std::size_t kMaxErrorBytes = 16 << 10;
  if (line.size() <= kMaxErrorBytes) return line;
  std::size_t cut = kMaxErrorBytes;
  while (cut > 0 && (static_cast<unsigned char>(line[cut]) & 0xC0) == 0x80) --cut;  // a character boundary
  line.resize(cut);
  return line + "...";
}

}  // namespace

std::string one_line(const py::FetchedError& e) {
  std::string name = type_name(e.type.get());
  if (auto dot = name.rfind('.'); dot != std::string::npos) name = name.substr(dot + 1);
  return clip_line(name + ": " + py::str(e.value.get()));
}

#if PY_VERSION_HEX >= 0x030D0000
// 3.13 prints an uncaught exception with its traceback module (PyErr_Display's C fallback there has neither
// source lines nor carets): the same module here, loaded before any run (engine.cpp, preload).
void print_traceback(const py::FetchedError& e, bool only_exception) {
  py::Ref tb_mod(PyImport_ImportModule("traceback"));
  py::Ref lines(!tb_mod ? nullptr
                : only_exception
                    ? PyObject_CallMethod(tb_mod.get(), "format_exception_only", "OO", e.type.get(), e.value.get())
                    : PyObject_CallMethod(tb_mod.get(), "format_exception", "OOO", e.type.get(), e.value.get(),
                                          e.traceback ? e.traceback.get() : Py_None));
  std::string out;
  py::Ref it(lines ? PyObject_GetIter(lines.get()) : nullptr);
  while (it) {
    py::Ref line(PyIter_Next(it.get()));
    if (!line) break;
    out += py::utf8(line.get());
  }
  PyErr_Clear();
  write_stderr(out.empty() ? one_line(e) + "\n" : out);
}
#else
void print_traceback(const py::FetchedError& e, bool only_exception) {
  PyObject* err = state().err;  // the engine's stream into the captured stderr
  if (!err || !e.value || !PyExceptionInstance_Check(e.value.get())) {
    write_stderr(one_line(e) + "\n");
    return;
  }
  // CPython's own printer, python3's output for an uncaught exception: chains, groups, notes, source lines
  // and carets, repeated frames folded. It imports nothing, so no module is loaded for it before a run. It
  // writes to sys.stderr: the engine's stream for the call, whatever the run made of sys.stderr.
  // `only_exception` (a compile error): the exception alone, as traceback.format_exception_only gives it,
  // without the frames of the engine's own code.
  py::Ref saved_stream = py::Ref::borrow(PySys_GetObject("stderr"));
  py::Ref saved_tb(only_exception ? PyException_GetTraceback(e.value.get()) : nullptr);
  if (only_exception) PyException_SetTraceback(e.value.get(), Py_None);
  if (PySys_SetObject("stderr", err) == 0)
    PyErr_Display(e.type.get(), e.value.get(), only_exception ? nullptr : e.traceback.get());
  PyErr_Clear();
  if (PySys_SetObject("stderr", saved_stream.get()) != 0) PyErr_Clear();
  if (only_exception) PyException_SetTraceback(e.value.get(), saved_tb ? saved_tb.get() : Py_None);
  PyErr_Clear();
}
#endif

void write_stderr(const std::string& s) { capture::append(1, s.data(), s.size()); }

void become(RunResult& r, RunResult o) {
  o.isolation = r.isolation;
  o.repr = std::move(r.repr);
  r = std::move(o);
}

void over_time(const RunnerPolicy& p, RunResult& r) {
  become(r, deadline::wall_fired() ? outcome::timeout(p.timeout_seconds) : outcome::cpu_time(p.cpu_time_seconds));
}

namespace {

// Applies SystemExit's rules: None/0 is success, an int is the exit code, anything else is printed.
void system_exit(const py::FetchedError& e, RunResult& r) {
  py::Ref code(e.value ? PyObject_GetAttrString(e.value.get(), "code") : nullptr);
  PyErr_Clear();
  if (!code || code.get() == Py_None) {
    r.ok = true;
    return;
  }
  if (PyLong_Check(code.get())) {
    long n = PyLong_AsLong(code.get());
    if (n == -1 && PyErr_Occurred()) {
      PyErr_Clear();
      n = 1;
    }
    if (n == 0) {
      r.ok = true;
      return;
    }
    r.error = "SystemExit: " + py::str(code.get());
    r.exit_code = static_cast<int>(n);
  } else {
    const std::string msg = py::str(code.get());
    write_stderr(msg + "\n");
    r.error = clip_line("SystemExit: " + msg);
    r.exit_code = 1;
  }
  r.error_kind = ErrorKind::system_exit;
}

// The knob behind an OSError the sandbox's OS layers raised, or nullptr when it is not one.
const char* os_refusal(const py::FetchedError& e) {
  if (!PyErr_GivenExceptionMatches(e.type.get(), PyExc_PermissionError) || !e.value) return nullptr;
  py::Ref no(PyObject_GetAttrString(e.value.get(), "errno"));
  PyErr_Clear();
  const long n = no && PyLong_Check(no.get()) ? PyLong_AsLong(no.get()) : 0;
  PyErr_Clear();
  if (n == EACCES) return "files outside the runtime are readable under 'allowed_read_paths', writable with 'scratch_dir'";
  if (n == EPERM)
    return "the system-call filter allows no new processes and no change to a file's mode, owner, times or "
           "extended attributes; network sockets need 'allow_network', unix sockets 'allow_unix_sockets'";
  return nullptr;
}

// A thread start the worker's seccomp filter refused (namespace and subinterpreter mode).
bool thread_refused(const py::FetchedError& e, const RunnerPolicy& p) {
  if (p.isolation == Isolation::fork || p.isolation == Isolation::process) return false;
  if (!PyErr_GivenExceptionMatches(e.type.get(), PyExc_RuntimeError) || !e.value) return false;
  return py::str(e.value.get()) == "can't start new thread";
}

// The name of a builtin the policy removed, when `e` is the NameError its use raised.
std::string blocked_builtin(const py::FetchedError& e, const RunnerPolicy& p) {
  if (!PyErr_GivenExceptionMatches(e.type.get(), PyExc_NameError) || !e.value) return {};
  py::Ref name(PyObject_GetAttrString(e.value.get(), "name"));
  PyErr_Clear();
  if (!name || !PyUnicode_Check(name.get())) return {};
  const std::string n = py::utf8(name.get());
  if (!PyDict_GetItemString(PyEval_GetBuiltins(), n.c_str())) return {};  // not a builtin at all
  return builtin_removed(p, n) ? n : std::string();
}

}  // namespace

void from_exception(const py::FetchedError& e, const RunnerPolicy& p, RunResult& r) {
  PyObject* t = e.type.get();
  r.ok = false;
  r.exit_code = 1;
  if (PyErr_GivenExceptionMatches(t, PyExc_SystemExit)) {
    system_exit(e, r);
    return;
  }
  if (deadline::wall_fired() || deadline::cpu_fired()) {
    over_time(p, r);
    return;
  }
  // Once the limit has refused memory, formatting a traceback (Python code walking frames that still hold
  // that memory) can itself fail while CPython normalizes the MemoryError, and that is a fatal error (abort)
  // of the worker: a line, then.
  if (memory::refused())
    write_stderr(one_line(e) + "\n");
  else
    print_traceback(e, false);
  if (PyErr_GivenExceptionMatches(t, PyExc_MemoryError)) {
    become(r, outcome::memory());
    return;
  }
  // CPython (3.10 to 3.13) grows its frame stack with the arena allocator and, when that returns NULL, fails the
  // call without setting MemoryError: deep recursion under a raised recursion limit ends as this SystemError
  // once memory::refused() has refused the next chunk. It is the memory limit, not the code's exception.
  if (PyErr_GivenExceptionMatches(t, PyExc_SystemError) && memory::refused()) {
    write_stderr("note: the memory limit refused CPython's frame stack (recursion too deep for memory_limit_mb)\n");
    become(r, outcome::memory());
    return;
  }
  r.error = one_line(e);
  if (PyErr_GivenExceptionMatches(t, PyExc_ImportError) && guard::blocked_import_raised()) {
    r.error_kind = ErrorKind::blocked_import;
    // The error line stays the original's; the knob is named on stderr.
    write_stderr(std::string("note: refused by the import policy (") +
                 (p.mode == Mode::allow ? "allowed_imports" : "blocked_imports") + ")\n");
  } else if (PyErr_GivenExceptionMatches(t, PyExc_PermissionError) && audit::denials() > 0) {
    r.error_kind = ErrorKind::denied;
  } else if (const char* knob = os_refusal(e)) {
    // The OS layers refused (Landlock: EACCES; seccomp and dropped capabilities: EPERM).
    r.error_kind = ErrorKind::denied;
    *r.error += std::string(" (refused by the sandbox: ") + knob + ")";
  } else if (thread_refused(e, p)) {
    // CPython 3.11 raises no audit event for a new thread; the seccomp filter refused it.
    r.error_kind = ErrorKind::denied;
    *r.error += " (refused by the sandbox: threads need the 'fork' or 'process' isolation mode)";
  } else if (const std::string name = blocked_builtin(e, p); !name.empty()) {
    // The error line stays python3's; the policy is named in the traceback and the kind.
    r.error_kind = ErrorKind::denied;
    write_stderr("note: the builtin '" + name + "' is removed by the policy (" +
                 (p.mode == Mode::allow ? "not in allowed_builtins" : "listed in blocked_builtins") + ")\n");
  } else {
    r.error_kind = ErrorKind::exception;
  }
}

void encode(PyObject* result, const RunnerPolicy& p, RunResult& r) {
  const std::uint64_t max_bytes = static_cast<std::uint64_t>(p.max_result_kb) * 1024;
  codec::Encoded enc = codec::from_python(result ? result : Py_None, max_bytes);
  if (enc.status == codec::Status::cyclic) {
    // JSON cannot hold a cycle: the whole value as str(), as the README promises.
    py::Ref text(PyObject_Str(result));
    PyErr_Clear();
    enc = codec::from_python(text ? text.get() : Py_None, max_bytes);
  }
  PyErr_Clear();
  switch (enc.status) {
    case codec::Status::ok:
      r.result = std::move(enc.value);
      r.exit_code = 0;
      break;
    case codec::Status::too_large: become(r, outcome::result_too_large(p.max_result_kb)); break;
    case codec::Status::too_deep:
      become(r, outcome::result_unencodable("nested deeper than " + std::to_string(codec::kMaxDepth) + " levels"));
      break;
    case codec::Status::cyclic: become(r, outcome::result_unencodable("the value contains itself")); break;
  }
}

bool builtin_removed(const RunnerPolicy& p, const std::string& name) {
  const auto listed = [&](const std::vector<std::string>& v) { return std::find(v.begin(), v.end(), name) != v.end(); };
  return p.mode == Mode::allow ? !listed(p.allowed_builtins) : listed(p.blocked_builtins);
}

}  // namespace spr::embed::run_result
