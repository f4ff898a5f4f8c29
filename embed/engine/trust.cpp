// Trusted code by identity: a co_extra mark that only this file sets, on code objects the engine
// loaded itself. Python code cannot set co_extra, and code.replace()/marshal never copy it.
#include "trust.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

#include <marshal.h>
#include <climits>
#include <cerrno>
#include <cstdlib>

#include "common/fd.hpp"
#include "interp_state.hpp"

namespace spr::embed::trust {

namespace {

char kMark;  // its address is the mark
bool g_armed = false;  // set once, before any run
thread_local bool t_suspended = false;  // a trusted section of the engine on this thread
std::vector<std::string> g_runtime_roots;

// The code-extra API was private until 3.12 renamed it PyUnstable_* and deprecated the old names.
#if PY_VERSION_HEX >= 0x030C0000
Py_ssize_t request_extra_index(freefunc f) { return PyUnstable_Eval_RequestCodeExtraIndex(f); }
int get_extra(PyObject* code, Py_ssize_t index, void** extra) { return PyUnstable_Code_GetExtra(code, index, extra); }
int set_extra(PyObject* code, Py_ssize_t index, void* extra) { return PyUnstable_Code_SetExtra(code, index, extra); }
#else
Py_ssize_t request_extra_index(freefunc f) { return _PyEval_RequestCodeExtraIndex(f); }
int get_extra(PyObject* code, Py_ssize_t index, void** extra) { return _PyCode_GetExtra(code, index, extra); }
int set_extra(PyObject* code, Py_ssize_t index, void* extra) { return _PyCode_SetExtra(code, index, extra); }
#endif

void no_free(void*) {}

Py_ssize_t index_for_current() {
  InterpState& st = state();
  if (st.trust_index < 0) st.trust_index = request_extra_index(no_free);
  return st.trust_index;
}

void mark(PyObject* code, Py_ssize_t index, int depth = 0) {
  if (!code || !PyCode_Check(code) || depth > 100) return;
  void* extra = nullptr;
  if (get_extra(code, index, &extra) == 0 && extra == &kMark) return;
  if (set_extra(code, index, &kMark) != 0) {
    PyErr_Clear();
    return;
  }
  PyObject* consts = reinterpret_cast<PyCodeObject*>(code)->co_consts;
  if (consts && PyTuple_Check(consts))
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(consts); ++i) mark(PyTuple_GET_ITEM(consts, i), index, depth + 1);
}

// A regular file opened for reading by the engine (Landlock still decides what it may read), with its stat.
// Not open when it cannot be opened, is not a regular file, or is larger than 256 MiB.
detail::Fd open_regular(const std::string& path, struct stat& st) {
  detail::Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > (256 << 20)) return {};
  return fd;
}

// The whole file, as large as its stat said (a file that shrank meanwhile fails).
bool read_all(const detail::Fd& fd, const struct stat& st, std::string& out) {
  out.resize(static_cast<std::size_t>(st.st_size));
  return detail::read_full(fd.get(), out.data(), out.size());
}

bool read_file(const std::string& path, std::string& out) {
  struct stat st {};
  const detail::Fd fd = open_regular(path, st);
  return fd && read_all(fd, st, out);
}

std::uint32_t le32(const std::string& b, std::size_t at) {
  return static_cast<std::uint32_t>(static_cast<unsigned char>(b[at])) |
         static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 1])) << 8 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 2])) << 16 |
         static_cast<std::uint32_t>(static_cast<unsigned char>(b[at + 3])) << 24;
}

// Code from a .pyc image (16-byte header), or nullptr without an exception when it does not fit.
PyObject* from_pyc(const std::string& pyc, const struct stat* source) {
  if (pyc.size() < 16 || le32(pyc, 0) != static_cast<std::uint32_t>(PyImport_GetMagicNumber())) return nullptr;
  const std::uint32_t flags = le32(pyc, 4);
  if (source) {
    if (flags == 0) {  // timestamp-based: must match the source it was compiled from
      if (le32(pyc, 8) != static_cast<std::uint32_t>(source->st_mtime) ||
          le32(pyc, 12) != static_cast<std::uint32_t>(source->st_size))
        return nullptr;
    } else if (flags & 2) {
      return nullptr;  // hash-based and checked: compile the source instead of hashing it here
    }
  }
  PyObject* code = nullptr;
  {
    // The engine's own read of a runtime file the run cannot write (3.11 raises "marshal.loads" here
    // too, which a run may never pass: unguarded, every import in a run compiled its source again).
    trust::Trusted trusted;
    code = PyMarshal_ReadObjectFromString(pyc.data() + 16, static_cast<Py_ssize_t>(pyc.size() - 16));
  }
  if (!code) {
    PyErr_Clear();
    return nullptr;
  }
  if (!PyCode_Check(code)) {
    Py_DECREF(code);
    return nullptr;
  }
  return code;
}

std::string cache_path(const std::string& source) {
  const std::size_t slash = source.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : source.substr(0, slash);
  std::string name = slash == std::string::npos ? source : source.substr(slash + 1);
  if (name.size() < 4 || name.compare(name.size() - 3, 3, ".py") != 0) return {};
  name.resize(name.size() - 3);
  // The real sys (borrowed), not an import that the guard might answer with the run's view.
  PyObject* impl = PySys_GetObject("implementation");
  py::Ref tag(impl ? PyObject_GetAttrString(impl, "cache_tag") : nullptr);
  if (!tag || !PyUnicode_Check(tag.get())) {
    PyErr_Clear();
    return {};
  }
  return dir + "/__pycache__/" + name + "." + py::utf8(tag.get()) + ".pyc";
}

// get_code(self, fullname) for SourceFileLoader and SourcelessFileLoader.
PyObject* engine_get_code(PyObject* self, PyObject* args) {
  PyObject* fullname = nullptr;
  if (!PyArg_ParseTuple(args, "U:get_code", &fullname)) return nullptr;
  py::Ref path_obj(PyObject_GetAttrString(self, "path"));
  if (!path_obj) return nullptr;
  if (!PyUnicode_Check(path_obj.get())) {
    PyErr_SetString(PyExc_ImportError, "loader path is not a string");
    return nullptr;
  }
  const std::string path = py::utf8(path_obj.get());
  // The engine reads the file itself: the read rules that apply to open() apply here too.
  if (PySys_Audit("open", "Osi", path_obj.get(), "r", 0) < 0) return nullptr;
  std::string resolved;
  const bool exists = real_path(path, resolved);
  const bool runtime = exists && path_under(resolved, runtime_roots());
  const bool bytecode_only = path.size() > 4 && path.compare(path.size() - 4, 4, ".pyc") == 0;
  std::string bytes;
  struct stat st {};
  const detail::Fd fd = exists ? open_regular(resolved, st) : detail::Fd();
  const auto cannot_read = [&] {
    PyErr_Format(PyExc_ImportError, "cannot read %U", path_obj.get());
    return nullptr;
  };
  if (!fd) return cannot_read();
  PyObject* code = nullptr;
  if (bytecode_only) {
    if (!read_all(fd, st, bytes)) return cannot_read();
    // Code from bytes is arbitrary bytecode: only the runtime's own files.
    if (!runtime) {
      PyErr_Format(PyExc_ImportError, "bytecode-only module %U is outside the Python runtime: refused", fullname);
      return nullptr;
    }
    code = from_pyc(bytes, nullptr);
    if (!code) {
      PyErr_Format(PyExc_ImportError, "bad bytecode file %U", path_obj.get());
      return nullptr;
    }
  } else {
    // A runtime module whose cached bytecode matches its source (mtime and size, as CPython's loader checks)
    // needs only the source's stat: its text is read only when it has to be compiled.
    if (runtime) {
      std::string pyc;
      if (const std::string cp = cache_path(resolved); !cp.empty() && read_file(cp, pyc)) code = from_pyc(pyc, &st);
    }
    if (!code) {
      if (!read_all(fd, st, bytes)) return cannot_read();
      if (bytes.find('\0') != std::string::npos) {
        PyErr_Format(PyExc_ImportError, "source file %U contains NUL bytes", path_obj.get());
        return nullptr;
      }
      // The source as the engine read it; the compiler generates the bytecode (no pyc outside the runtime).
      Trusted trusted;
      code = Py_CompileStringExFlags(bytes.c_str(), path.c_str(), Py_file_input, nullptr, -1);
      if (!code) return nullptr;
    }
  }
  if (runtime) mark(code, index_for_current());
  return code;
}

// FrozenImporter.exec_module(module): the frozen code comes from the interpreter binary itself.
PyObject* engine_exec_frozen(PyObject*, PyObject* module) {
  py::Ref spec(PyObject_GetAttrString(module, "__spec__"));
  py::Ref name(spec ? PyObject_GetAttrString(spec.get(), "name") : nullptr);
  if (!name) return nullptr;
  if (!PyUnicode_CheckExact(name.get())) {
    PyErr_SetString(PyExc_ImportError, "a frozen module's name must be a str");
    return nullptr;
  }
  PyObject* get_frozen = state().get_frozen_object;  // _imp's own, taken before arming
  if (!get_frozen) {
    PyErr_SetString(PyExc_ImportError, "frozen modules are not available");
    return nullptr;
  }
  py::Ref code;
  {
    // 3.12+ sub-interpreters unmarshal the interpreter binary's frozen bytes (the main interpreter, and
    // 3.11, use code objects built in), which raises "marshal.loads": refused to any run, so the engine
    // reads them in a trusted section. Only C runs inside it (_imp's own function, an exact str), and the
    // collector is off: no finalizer a run wrote may run there.
    const int gc_was = PyGC_Disable();
    Trusted trusted;
    code = py::Ref(PyObject_CallOneArg(get_frozen, name.get()));
    if (gc_was) PyGC_Enable();
  }
  if (!code) return nullptr;
  if (!PyCode_Check(code.get())) {
    PyErr_SetString(PyExc_ImportError, "frozen object is not code");
    return nullptr;
  }
  mark(code.get(), index_for_current());
  PyObject* globals = PyModule_GetDict(module);  // borrowed
  if (!globals) return nullptr;
  py::Ref r(PyEval_EvalCode(code.get(), globals, globals));
  if (!r) return nullptr;
  Py_RETURN_NONE;
}

PyMethodDef kExecFrozen = {"exec_module", engine_exec_frozen, METH_O,
                           "Execute a frozen module; its code (from the interpreter binary) is marked trusted."};

PyMethodDef kGetCode = {"get_code", engine_get_code, METH_VARARGS,
                        "Code of the module, read by the engine (runtime files are marked trusted)."};

}  // namespace

void set_runtime_roots(std::vector<std::string> roots) { g_runtime_roots = std::move(roots); }
const std::vector<std::string>& runtime_roots() { return g_runtime_roots; }
void arm(bool on) { g_armed = on; }
bool armed() { return g_armed && !t_suspended; }
bool suspend(bool on) { return std::exchange(t_suspended, on); }

bool path_under(const std::string& path, const std::vector<std::string>& roots) {
  for (const auto& root : roots) {
    if (root.empty()) continue;
    if (path.compare(0, root.size(), root) != 0) continue;
    if (path.size() == root.size() || path[root.size()] == '/' || root.back() == '/') return true;
  }
  return false;
}

namespace {

// "/a/b/c": absolute, and no empty, "." or ".." step (whose meaning a textual prefix check would miss).
bool plain_absolute(std::string_view p) {
  if (p.size() < 2 || p[0] != '/' || p.back() == '/') return false;
  for (std::size_t start = 1; start <= p.size();) {
    const std::size_t end = std::min(p.find('/', start), p.size());
    const std::string_view step = p.substr(start, end - start);
    if (step.empty() || step == "." || step == "..") return false;
    start = end + 1;
  }
  return true;
}

bool plain_real_path(const std::string& path, std::string& out) {
  char buf[PATH_MAX];
  if (!::realpath(path.c_str(), buf)) return false;
  out = buf;
  return true;
}

}  // namespace

bool real_path(const std::string& path, std::string& out) {
  constexpr std::size_t kMaxKept = 4096;  // directories of the runtime; past this, resolved each time
  thread_local std::unordered_map<std::string, std::string> resolved_dirs;
  const std::size_t slash = path.rfind('/');
  if (slash == std::string::npos || slash == 0) return plain_real_path(path, out);
  const std::string_view name = std::string_view(path).substr(slash + 1);
  if (name.empty() || name == "." || name == "..") return plain_real_path(path, out);
  const std::string dir = path.substr(0, slash);
  auto it = resolved_dirs.find(dir);
  if (it == resolved_dirs.end()) {
    std::string real;
    if (!plain_absolute(dir) || !path_under(dir, runtime_roots()) || !plain_real_path(dir, real) ||
        !path_under(real, runtime_roots()) || resolved_dirs.size() >= kMaxKept)
      return plain_real_path(path, out);
    it = resolved_dirs.emplace(dir, std::move(real)).first;
  }
  std::string full = it->second;
  full += '/';
  full += name;
  struct stat st {};
  if (::lstat(full.c_str(), &st) != 0) return false;
  if (S_ISLNK(st.st_mode)) return plain_real_path(full, out);
  out = std::move(full);
  return true;
}

bool mark_loaded_code() {
  const Py_ssize_t index = index_for_current();
  if (index < 0) return false;
  py::Ref gc(PyImport_ImportModule("gc"));
  py::Ref objects(gc ? PyObject_CallMethod(gc.get(), "get_objects", nullptr) : nullptr);
  if (!objects || !PyList_Check(objects.get())) {
    PyErr_Clear();
    return false;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects.get()); ++i) {
    PyObject* o = PyList_GET_ITEM(objects.get(), i);
    if (PyFunction_Check(o)) mark(reinterpret_cast<PyFunctionObject*>(o)->func_code, index);
  }
  return true;
}

bool install_loader_hook() {
  py::Ref ext(PyImport_ImportModule("_frozen_importlib_external"));
  if (!ext) return false;
  for (const char* name : {"SourceFileLoader", "SourcelessFileLoader"}) {
    py::Ref cls(PyObject_GetAttrString(ext.get(), name));
    if (!cls || !PyType_Check(cls.get())) return false;
    py::Ref descr(PyDescr_NewMethod(reinterpret_cast<PyTypeObject*>(cls.get()), &kGetCode));
    if (!descr || PyObject_SetAttrString(cls.get(), "get_code", descr.get()) != 0) return false;
  }
  py::Ref imp(PyImport_ImportModule("_imp"));
  if (!imp) return false;
  state().get_frozen_object = PyObject_GetAttrString(imp.get(), "get_frozen_object");
  if (!state().get_frozen_object) return false;
  py::Ref boot(PyImport_ImportModule("_frozen_importlib"));
  py::Ref frozen(boot ? PyObject_GetAttrString(boot.get(), "FrozenImporter") : nullptr);
  py::Ref fn(frozen ? PyCFunction_New(&kExecFrozen, nullptr) : nullptr);
  py::Ref sm(fn ? PyStaticMethod_New(fn.get()) : nullptr);
  return sm && PyObject_SetAttrString(frozen.get(), "exec_module", sm.get()) == 0;
}

bool is_trusted(PyObject* code) {
  const Py_ssize_t index = state().trust_index;
  if (index < 0 || !code) return false;
  void* extra = nullptr;
  if (get_extra(code, index, &extra) != 0) {
    PyErr_Clear();
    return false;
  }
  return extra == &kMark;
}

}  // namespace spr::embed::trust
