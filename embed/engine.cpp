// The in-process engine: isolated CPython initialisation, the bootstrap, and one run in a fresh namespace.
#include "engine.hpp"

#include <ftw.h>
#include <limits.h>
#include <locale.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <sstream>

#include "audit.hpp"
#include "common/outcome.hpp"
#include "capture.hpp"
#include "codec.hpp"
#include "deadline.hpp"
#include "guard.hpp"
#include "interp_state.hpp"
#include "libdeps.hpp"
#include "memory.hpp"
#include "py.hpp"
#include "trust.hpp"

extern const char kSprBootstrapSource[];
extern const char kSprPreloadList[];

namespace spr::embed {

namespace {

constexpr const char* kUserFilename = "<string>";
bool g_initialized = false;

// PyConfig must be cleared on every path.
struct ConfigGuard {
  PyConfig config;
  ConfigGuard() { PyConfig_InitIsolatedConfig(&config); }
  ~ConfigGuard() { PyConfig_Clear(&config); }
  ConfigGuard(const ConfigGuard&) = delete;
  ConfigGuard& operator=(const ConfigGuard&) = delete;
};

std::string status_text(const PyStatus& s, const char* what) {
  std::string out = what;
  if (s.func) out += std::string(" (") + s.func + ")";
  if (s.err_msg) out += std::string(": ") + s.err_msg;
  return out;
}

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

std::string current_error_text() {
  py::FetchedError e = py::FetchedError::fetch();
  if (!e) return "unknown error";
  return py::str(e.type.get()) + ": " + py::str(e.value.get());
}

bool run_bootstrap(bool main_interpreter) {
  audit::Trusted trusted;
  py::Ref code(Py_CompileString(kSprBootstrapSource, "<frozen spr_bootstrap>", Py_file_input));
  if (!code) return false;
  py::Ref module(PyModule_New("_spr_bootstrap"));
  if (!module) return false;
  PyObject* d = PyModule_GetDict(module.get());  // borrowed
  if (PyDict_SetItemString(d, "__builtins__", PyEval_GetBuiltins()) < 0) return false;
  py::Ref r(PyEval_EvalCode(code.get(), d, d));
  if (!r) return false;
  py::Ref install(PyObject_GetAttrString(module.get(), "install"));
  if (!install) return false;
  py::Ref done(PyObject_CallFunctionObjArgs(install.get(), main_interpreter ? Py_True : Py_False, nullptr));
  if (!done) return false;
  state().bootstrap = module.release();
  return true;
}

// Which sections of bootstrap_py/preload.txt an interpreter imports.
enum class Preload { sub_interpreter, main, main_warm };

void preload(Preload which) {
  audit::Trusted trusted;
  std::istringstream in(kSprPreloadList);
  std::string line;
  bool wanted = false;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      wanted = line == "[every interpreter]" || (line == "[main]" && which != Preload::sub_interpreter) ||
               (line == "[warm]" && which == Preload::main_warm);
      continue;
    }
    if (!wanted) continue;
    py::Ref m(PyImport_ImportModule(line.c_str()));
    if (!m) PyErr_Clear();  // a module missing from this Python build is not fatal
  }
}

// RunnerOptions::preload: the operator asked for these, so a failure stops the worker with the reason.
std::string preload_requested(const std::vector<std::string>& modules) {
  audit::Trusted trusted;
  for (const auto& name : modules) {
    py::Ref m(PyImport_ImportModule(name.c_str()));
    if (!m) return "preloading '" + name + "' failed: " + current_error_text();
  }
  return {};
}

// sys.path as the chosen python3 sees it (site-packages and .pth entries included), in its order.
std::string set_sys_path(const std::vector<std::string>& entries, const std::string& executable) {
  py::Ref list(PyList_New(0));
  if (!list) return "out of memory";
  for (const auto& e : entries) {
    if (e.empty()) continue;  // python3's "" (the script's directory): a run has none
    py::Ref s(PyUnicode_DecodeFSDefault(e.c_str()));
    if (!s || PyList_Append(list.get(), s.get()) < 0) return current_error_text();
  }
  if (PySys_SetObject("path", list.get()) < 0) return current_error_text();
  if (!executable.empty()) {
    py::Ref exe(PyUnicode_DecodeFSDefault(executable.c_str()));
    if (!exe || PySys_SetObject("executable", exe.get()) < 0) return current_error_text();
  }
  return {};
}

std::vector<std::string> compute_runtime_paths() {
  std::vector<std::string> out;
  py::Ref sys(PyImport_ImportModule("sys"));
  py::Ref path(sys ? PyObject_GetAttrString(sys.get(), "path") : nullptr);
  if (path && PyList_Check(path.get())) {
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(path.get()); ++i) {
      std::string p = real(py::utf8(PyList_GET_ITEM(path.get(), i)));
      if (!p.empty()) out.push_back(p);
    }
  }
  PyErr_Clear();
  return out;
}

std::vector<std::string> g_runtime_paths;
std::vector<std::string> g_support_paths;

// The time-zone database zoneinfo reads (the tzdata package, when installed, lies in site-packages).
constexpr const char* kZoneInfoDirs[] = {"/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo"};

bool contains(const std::vector<std::string>& v, const char* s) { return std::find(v.begin(), v.end(), s) != v.end(); }

InterpState g_main_state;
InterpState* g_state = &g_main_state;

// The run's globals: builtins, input_data, result, the input keys, then extra_globals, filtered.
// As in the original, extra_globals come last: a name in both takes the operator's value, not the
// untrusted input's, and only input keys must be identifiers that do not start with `_`.
// The namespace is the dict of a module named __main__, which the run installs as sys.modules['__main__']
// (pickle finds the snippet's classes there); `__builtins__` is a module, as in python3. A session
// keeps its __main__ module: builtins, names and extra_globals are set on its first call only, and
// later input keys still never replace an extra_globals name.
PyObject* make_globals(const Request& req, py::Ref& main_module) {
  const RunnerPolicy& p = req.policy;
  main_module = req.session_main ? py::Ref::borrow(req.session_main) : py::Ref(PyModule_New("__main__"));
  py::Ref input(codec::to_python(req.input_data));
  if (!main_module || !input) return nullptr;
  py::Ref g = py::Ref::borrow(PyModule_GetDict(main_module.get()));
  const bool first = PyDict_GetItemString(g.get(), "__builtins__") == nullptr;
  if (first) {
    py::Ref builtins_dict(guard::make_run_builtins(p));
    py::Ref builtins(PyModule_New("builtins"));
    if (!builtins_dict || !builtins) return nullptr;
    if (PyDict_Update(PyModule_GetDict(builtins.get()), builtins_dict.get()) < 0) return nullptr;
    PyDict_SetItemString(g.get(), "__builtins__", builtins.get());
    py::Ref name(PyUnicode_FromString("__main__"));
    PyDict_SetItemString(g.get(), "__name__", name.get());
    PyDict_SetItemString(g.get(), "__doc__", Py_None);
  }
  PyDict_SetItemString(g.get(), "input_data", input.get());
  PyDict_SetItemString(g.get(), "result", Py_None);
  auto admitted = [&](const std::string& key) {
    if (p.mode == Mode::allow) return std::find(p.allowed_globals.begin(), p.allowed_globals.end(), key) != p.allowed_globals.end();
    return std::find(p.blocked_globals.begin(), p.blocked_globals.end(), key) == p.blocked_globals.end();
  };
  if (PyDict_Check(input.get())) {
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (PyDict_Next(input.get(), &pos, &k, &v)) {
      const std::string key = py::utf8(k);
      if (key.empty() || key[0] == '_' || key == "input_data" || key == "result" || !admitted(key)) continue;
      if (!PyUnicode_IsIdentifier(k)) continue;
      if (!first && p.extra_globals.contains(key)) continue;
      if (PyDict_SetItem(g.get(), k, v) < 0) return nullptr;
    }
  }
  for (auto it = p.extra_globals.begin(); first && it != p.extra_globals.end(); ++it) {
    // __builtins__ is the engine's: a JSON value there would only break the run.
    if (it.key() == "__builtins__" || !admitted(it.key())) continue;
    py::Ref k(PyUnicode_FromStringAndSize(it.key().data(), static_cast<Py_ssize_t>(it.key().size())));
    py::Ref v(codec::to_python(it.value()));
    if (!k || !v || PyDict_SetItem(g.get(), k.get(), v.get()) < 0) return nullptr;
  }
  return g.release();
}

std::string type_name(PyObject* type) {
  if (type && PyType_Check(type)) return reinterpret_cast<PyTypeObject*>(type)->tp_name;
  return "Exception";
}

double thread_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
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

// "ValueError: msg", as the original reports it (the type's name, unqualified).
std::string one_line(const py::FetchedError& e) {
  std::string name = type_name(e.type.get());
  if (auto dot = name.rfind('.'); dot != std::string::npos) name = name.substr(dot + 1);
  return clip_line(name + ": " + py::str(e.value.get()));
}

std::string format_traceback(const py::FetchedError& e, bool only_exception) {
  py::Ref tb_mod(PyImport_ImportModule("traceback"));
  if (!tb_mod) {
    PyErr_Clear();
    return one_line(e) + "\n";
  }
  py::Ref lines(only_exception
                    ? PyObject_CallMethod(tb_mod.get(), "format_exception_only", "OO", e.type.get(), e.value.get())
                    : PyObject_CallMethod(tb_mod.get(), "format_exception", "OOO", e.type.get(), e.value.get(),
                                          e.traceback ? e.traceback.get() : Py_None));
  if (!lines) {
    PyErr_Clear();
    return one_line(e) + "\n";
  }
  std::string out;
  py::Ref it(PyObject_GetIter(lines.get()));
  while (it) {
    py::Ref line(PyIter_Next(it.get()));
    if (!line) break;
    out += py::utf8(line.get());
  }
  PyErr_Clear();
  return out;
}

void write_stderr(const std::string& s) { capture::append(1, s.data(), s.size()); }

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

// `o` becomes the run's outcome; what the run already showed (its isolation, a session's repr) stays.
void become(RunResult& r, RunResult o) {
  o.isolation = r.isolation;
  o.repr = std::move(r.repr);
  r = std::move(o);
}

// Over the wall-clock or the CPU limit, as the timers say.
void classify_over_time(const RunnerPolicy& p, RunResult& r) {
  become(r, deadline::wall_fired() ? outcome::timeout(p.timeout_seconds) : outcome::cpu_time(p.cpu_time_seconds));
}

// The knob behind an OSError the sandbox's OS layers raised, or nullptr when it is not one.
const char* os_refusal(const py::FetchedError& e) {
  if (!PyErr_GivenExceptionMatches(e.type.get(), PyExc_PermissionError) || !e.value) return nullptr;
  py::Ref no(PyObject_GetAttrString(e.value.get(), "errno"));
  PyErr_Clear();
  const long n = no && PyLong_Check(no.get()) ? PyLong_AsLong(no.get()) : 0;
  PyErr_Clear();
  if (n == EACCES) return "files outside the runtime are readable under 'allowed_read_paths', writable with 'scratch_dir'";
  if (n == EPERM) return "the system-call filter allows no new processes, and sockets only with 'allow_network'";
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
  const bool removed = p.mode == Mode::allow ? !contains(p.allowed_builtins, n.c_str()) : contains(p.blocked_builtins, n.c_str());
  return removed ? n : std::string();
}

void classify(const py::FetchedError& e, const RunnerPolicy& p, RunResult& r) {
  PyObject* t = e.type.get();
  r.ok = false;
  r.exit_code = 1;
  if (PyErr_GivenExceptionMatches(t, PyExc_SystemExit)) {
    system_exit(e, r);
    return;
  }
  if (deadline::wall_fired() || deadline::cpu_fired()) {
    classify_over_time(p, r);
    return;
  }
  write_stderr(format_traceback(e, false));
  if (PyErr_GivenExceptionMatches(t, PyExc_MemoryError)) {
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

audit::RunRules rules_for(const RunnerPolicy& p) {
  audit::RunRules rules;
  rules.allow_network = p.allow_network;
  rules.allow_threads = p.isolation == Isolation::fork || p.isolation == Isolation::process;
  const auto blocked = [&](const char* b) {
    return p.mode == Mode::allow ? !contains(p.allowed_builtins, b) : contains(p.blocked_builtins, b);
  };
  rules.block_exec = blocked("exec") && blocked("eval");
  // eval and exec of a string compile it: a run that has either may compile (it gains nothing new).
  rules.block_compile = blocked("compile") && blocked("eval") && blocked("exec");
  for (const auto& path : p.allowed_read_paths) {
    std::string r = real(path);
    if (!r.empty()) rules.read_roots.push_back(r);
  }
  return rules;
}

// The run's private writable directory (policy scratch_dir): created under the worker's scratch
// root, made the working directory, removed with everything in it when the run ends.
class RunDirectory {
 public:
  RunDirectory(bool wanted, std::uint64_t id) {
    if (!wanted) return;
    char cwd[PATH_MAX];
    if (!getcwd(cwd, sizeof cwd)) {
      error_ = strerror(errno);
      return;
    }
    home_ = cwd;
    path_ = home_ + "/run-" + std::to_string(id) + "-" + std::to_string(getpid());
    if (mkdir(path_.c_str(), 0700) != 0 || chdir(path_.c_str()) != 0) {
      error_ = strerror(errno);
      path_.clear();
    }
  }
  ~RunDirectory() {
    if (path_.empty()) return;
    if (chdir(home_.c_str()) != 0) return;
    remove_tree(path_);
  }
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;
  bool ok() const { return !path_.empty(); }
  const std::string& path() const { return path_; }
  const std::string& error() const { return error_; }

  static void remove_tree(const std::string& dir) {
    nftw(dir.c_str(), [](const char* f, const struct stat*, int, struct FTW*) { return ::remove(f); }, 16,
         FTW_DEPTH | FTW_PHYS);
  }

 private:
  std::string home_, path_, error_;
};

constexpr std::size_t kCodeCacheEntries = 64;
constexpr std::size_t kCodeCacheBytes = 4u << 20;

// New reference to the compiled code of `source`, from the interpreter's cache when it was seen before.
// Syntax errors are not cached: they are cheap to reproduce and carry the exception.
PyObject* compile_cached(const std::string& source) {
  InterpState& st = state();
  if (auto it = st.code_cache.find(source); it != st.code_cache.end()) return Py_NewRef(it->second);
  PyObject* code = Py_CompileStringExFlags(source.c_str(), kUserFilename, Py_file_input, nullptr, -1);
  if (!code || source.size() > kCodeCacheBytes / 4) return code;
  if (st.code_cache.size() >= kCodeCacheEntries || st.code_cache_bytes + source.size() > kCodeCacheBytes) {
    for (auto& [k, v] : st.code_cache) Py_DECREF(v);
    st.code_cache.clear();
    st.code_cache_bytes = 0;
  }
  st.code_cache.emplace(source, Py_NewRef(code));
  st.code_cache_bytes += source.size();
  return code;
}

// Sessions: the code without a trailing expression statement, and that expression compiled alone
// (`last`, left null when there is none), split by the bootstrap's trusted helper.
py::Ref compile_split(const std::string& source, py::Ref& last) {
  py::Ref pair;
  {
    audit::Trusted trusted;
    pair = py::Ref(state().bootstrap ? PyObject_CallMethod(state().bootstrap, "split_last_expression", "s", source.c_str())
                                     : nullptr);
  }
  if (!pair || !PyTuple_Check(pair.get()) || PyTuple_GET_SIZE(pair.get()) != 2) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_SystemError, "splitting the last expression failed");
    return py::Ref();
  }
  PyObject* tail = PyTuple_GET_ITEM(pair.get(), 1);
  if (tail != Py_None) last = py::Ref(Py_NewRef(tail));
  return py::Ref(Py_NewRef(PyTuple_GET_ITEM(pair.get(), 0)));
}

// Evaluates the trailing expression and keeps its repr (cut to `cap` bytes on a character
// boundary), still under the run's deadline and memory limit. New reference, or null on error.
PyObject* show_last(PyObject* last, PyObject* globals, std::size_t cap, RunResult& r) {
  py::Ref value(PyEval_EvalCode(last, globals, globals));
  if (!value) return nullptr;
  if (value.get() != Py_None) {
    py::Ref text(PyObject_Repr(value.get()));
    if (!text) return nullptr;
    std::string s = py::utf8(text.get());
    if (s.size() > cap) {
      std::size_t n = cap;
      while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
      s = s.substr(0, n) + "...";
    }
    r.repr = std::move(s);
  }
  return value.release();
}

// Namespace mode: puts back what a run changed in the real builtins module and interpreter-wide
// settings, so one run's accidents do not break the next (a hostile run is the README's caveat).
void after_namespace_run() {
  InterpState& st = state();
  PyObject* real = PyEval_GetBuiltins();
  bool same = st.builtins_snapshot && PyDict_Size(real) == PyDict_Size(st.builtins_snapshot);
  if (same) {
    PyObject *k, *v;
    Py_ssize_t pos = 0;
    while (same && PyDict_Next(st.builtins_snapshot, &pos, &k, &v)) same = PyDict_GetItemWithError(real, k) == v;
  }
  if (!same && st.builtins_snapshot) {
    PyDict_Clear(real);
    PyDict_Update(real, st.builtins_snapshot);
  }
  if (st.bootstrap) {
    py::Ref r(PyObject_CallMethod(st.bootstrap, "after_namespace_run", nullptr));
  }
  PyErr_Clear();
}

// sys.modules['__main__'] is the run's module for the run's duration, then what it was before.
class MainModule {
 public:
  explicit MainModule(PyObject* module) {
    PyObject* modules = PyImport_GetModuleDict();  // borrowed
    saved_ = py::Ref::borrow(PyDict_GetItemString(modules, "__main__"));
    if (PyDict_SetItemString(modules, "__main__", module) < 0) PyErr_Clear();
  }
  ~MainModule() {
    PyObject* modules = PyImport_GetModuleDict();
    if (saved_ ? PyDict_SetItemString(modules, "__main__", saved_.get()) < 0
               : PyDict_DelItemString(modules, "__main__") < 0)
      PyErr_Clear();
  }
  MainModule(const MainModule&) = delete;
  MainModule& operator=(const MainModule&) = delete;

 private:
  py::Ref saved_;
};

// Fresh text streams for the run (the bootstrap's begin_run): stdout/stderr over the capture, stdin
// over the request's text.
bool begin_streams(const std::string& stdin_text) {
  audit::Trusted trusted;
  py::Ref text(PyUnicode_DecodeUTF8(stdin_text.data(), static_cast<Py_ssize_t>(stdin_text.size()), "replace"));
  if (!text || !state().bootstrap) return false;
  py::Ref r(PyObject_CallMethod(state().bootstrap, "begin_run", "O", text.get()));
  return static_cast<bool>(r);
}

bool install_streams() {
  InterpState& st = state();
  st.out = capture::make_stream(0);
  st.err = capture::make_stream(1);
  if (!st.out || !st.err) return false;
  return PySys_SetObject("stdout", st.out) == 0 && PySys_SetObject("stderr", st.err) == 0 &&
         PySys_SetObject("__stdout__", st.out) == 0 && PySys_SetObject("__stderr__", st.err) == 0;
}

}  // namespace

std::vector<std::string> g_sys_path;
std::string g_executable;

std::string init_current_interpreter() {
  audit::Trusted trusted;
  if (!g_sys_path.empty() || !g_executable.empty()) {
    if (std::string e = set_sys_path(g_sys_path, g_executable); !e.empty()) return "setting sys.path failed: " + e;
  }
  if (!guard::install_import_hook()) return "installing the import guard failed: " + current_error_text();
  if (!run_bootstrap(false)) return "bootstrap failed: " + current_error_text();
  if (!install_streams()) return "creating the output streams failed: " + current_error_text();
  if (!trust::install_loader_hook()) return "installing the engine's module loader failed: " + current_error_text();
  preload(Preload::sub_interpreter);
  if (!trust::mark_loaded_code()) return "marking the runtime's code failed";
  return {};
}

InterpState& state() { return *g_state; }
void use_state(InterpState* s) { g_state = s ? s : &g_main_state; }

std::string initialize(const EngineOptions& options) {
  if (g_initialized) return {};
  audit::install();  // before Py_Initialize: the hook then covers the whole runtime and cannot be removed
  guard::register_module();

  PyPreConfig pre;
  PyPreConfig_InitIsolatedConfig(&pre);
  pre.utf8_mode = 1;  // the environment is empty; do not depend on a locale
  PyStatus st = Py_PreInitialize(&pre);
  if (PyStatus_Exception(st)) return status_text(st, "Python pre-initialisation failed");
  // What python3 does under LANG=C.UTF-8 (the worker's environment): the character-type locale is
  // set, so locale.getlocale() and C extensions agree with Python's UTF-8 mode.
  setlocale(LC_CTYPE, "C.UTF-8");

  ConfigGuard cfg;
  cfg.config.install_signal_handlers = 0;
  cfg.config.site_import = 0;
  cfg.config.write_bytecode = 0;
  cfg.config.user_site_directory = 0;
  cfg.config.parse_argv = 0;
  cfg.config.buffered_stdio = 0;
#if PY_VERSION_HEX >= 0x030B0000
  cfg.config.safe_path = 1;
#endif
#ifdef SPR_PYTHON_HOME
  if (const char* env_home = SPR_PYTHON_HOME; env_home[0]) {
    st = PyConfig_SetBytesString(&cfg.config, &cfg.config.home, env_home);
    if (PyStatus_Exception(st)) return status_text(st, "setting the Python home failed");
  }
#endif
  st = PyConfig_SetBytesString(&cfg.config, &cfg.config.program_name, "spr-worker");
  if (PyStatus_Exception(st)) return status_text(st, "setting the program name failed");
  st = Py_InitializeFromConfig(&cfg.config);
  if (PyStatus_Exception(st)) return status_text(st, "Python initialisation failed");

  g_sys_path = options.sys_path;
  g_executable = options.executable;
  if (!g_sys_path.empty() || !g_executable.empty()) {
    if (std::string e = set_sys_path(g_sys_path, g_executable); !e.empty()) return "setting sys.path failed: " + e;
  }
  g_runtime_paths = compute_runtime_paths();
  audit::set_runtime_roots(g_runtime_paths);
  g_support_paths = libdeps::needed_by_extensions(g_runtime_paths);
  for (const char* dir : kZoneInfoDirs) {
    std::string r = real(dir);
    if (!r.empty()) g_support_paths.push_back(r);
  }
  audit::set_support_roots(g_support_paths);
  memory::install();
  if (!capture::attach(options.capture_fd)) return "cannot map the output buffer";
  {
    audit::Trusted trusted;
    if (!guard::install_import_hook()) return "installing the import guard failed: " + current_error_text();
    if (!run_bootstrap(true)) return "bootstrap failed: " + current_error_text();
    if (!install_streams()) return "creating the output streams failed: " + current_error_text();
    if (!trust::install_loader_hook()) return "installing the engine's module loader failed: " + current_error_text();
  }
  preload(options.preload ? Preload::main_warm : Preload::main);
  if (std::string e = preload_requested(options.preload_modules); !e.empty()) return e;
  state().builtins_snapshot = PyDict_Copy(PyEval_GetBuiltins());
  // Everything loaded so far is the runtime's and the engine's own; from here on only code the
  // engine reads from the runtime's files is added (trust.cpp). Before gc.freeze(), which hides
  // objects from gc.get_objects().
  if (!trust::mark_loaded_code()) return "marking the runtime's code failed";
  {
    // Objects that exist now are never collected: a forked run child then does not walk (and
    // copy-on-write fault) the whole warm heap when its collector runs.
    audit::Trusted trusted;
    py::Ref gc(PyImport_ImportModule("gc"));
    py::Ref frozen(gc ? PyObject_CallMethod(gc.get(), "freeze", nullptr) : nullptr);
    PyErr_Clear();
  }
  if (!deadline::init()) return "creating the soft-deadline timers failed";
  g_initialized = true;
  audit::arm(true);  // from here on, every audit event is checked
  return {};
}

std::string python_version() { return Py_GetVersion() ? std::string(Py_GetVersion()).substr(0, std::string(Py_GetVersion()).find(' ')) : "?"; }
std::vector<std::string> runtime_paths() { return g_runtime_paths; }
std::vector<std::string> support_paths() { return g_support_paths; }

bool prepare_capture(const Request& req) {
  return capture::begin(req.id, static_cast<std::uint64_t>(req.policy.max_output_kb) * 1024);
}

RunResult run(const Request& req) {
  if (!prepare_capture(req)) return outcome::no_output_buffer();
  return run_prepared(req);
}

RunResult run_prepared(const Request& req) {
  const RunnerPolicy& p = req.policy;
  RunResult r;
  r.isolation = p.isolation;
  guard::reset_run_state();
  audit::reset_denials();
  guard::set_policy(p);
  audit::RunRules rules = rules_for(p);
  RunDirectory run_dir(p.scratch_dir, req.id);
  if (p.scratch_dir) {
    if (!run_dir.ok()) {
      become(r, outcome::setup_failed("scratch directory", run_dir.error()));
      return r;
    }
    rules.scratch = run_dir.path();
  }
  audit::set_rules(std::move(rules));

  py::Ref main_module;
  py::Ref globals(make_globals(req, main_module));
  if (!globals) {
    become(r, outcome::bad_input(current_error_text()));
    return r;
  }
  if (!begin_streams(req.stdin_text)) {
    become(r, outcome::setup_failed("streams", current_error_text()));
    return r;
  }
  MainModule as_main(main_module.get());

  py::Ref code, last;
  if (req.code.find('\0') != std::string::npos) {
    PyErr_SetString(PyExc_SyntaxError, "source code string cannot contain null bytes");
  } else if (req.want_repr) {
    code = compile_split(req.code, last);
  } else {
    code = py::Ref(compile_cached(req.code));
  }
  if (!code) {
    py::FetchedError e = py::FetchedError::fetch();
    if (PyErr_GivenExceptionMatches(e.type.get(), PyExc_MemoryError)) {
      become(r, outcome::memory());
    } else {
      write_stderr(format_traceback(e, true));
      r.error = one_line(e);
      r.error_kind = ErrorKind::syntax;
      r.exit_code = 1;
    }
  } else {
    // Both limits stay armed until the run's last byte of user code: its result's __str__/__repr__
    // during encoding and its objects' __del__ when the globals are cleared run under them too.
    memory::begin_run(static_cast<std::uint64_t>(p.memory_limit_mb) << 20);
    deadline::arm(p.timeout_seconds, p.cpu_time_seconds);
    const auto started = std::chrono::steady_clock::now();
    const double cpu_started = thread_cpu_seconds();
    py::Ref value(PyEval_EvalCode(code.get(), globals.get(), globals.get()));
    if (value && last) value = py::Ref(show_last(last.get(), globals.get(), static_cast<std::size_t>(p.max_result_kb) * 1024, r));
    py::FetchedError e;
    if (!value) e = py::FetchedError::fetch();
    value.reset();
    const auto code_ended = std::chrono::steady_clock::now();
    const double cpu_used = thread_cpu_seconds() - cpu_started;
    // Classifying (the engine's own traceback formatting) is not the run's time: the timers pause
    // for it and resume with what is left for encoding and teardown, where the run's code runs again.
    deadline::disarm();
    const bool fired_in_code = deadline::wall_fired() || deadline::cpu_fired();
    if (fired_in_code && PyErr_CheckSignals() < 0) PyErr_Clear();  // a pending handler runs now, not later
    const bool refused_in_code = memory::refused();
    if (e) {
      classify(e, p, r);
    } else if (deadline::wall_fired() || deadline::cpu_fired()) {
      // The code caught the TimeoutError and finished anyway: it still ran past its limit.
      classify_over_time(p, r);
    } else {
      r.ok = true;
    }
    const auto classified = std::chrono::steady_clock::now();
    if (!fired_in_code) {
      const double wall_left = p.timeout_seconds - std::chrono::duration<double>(code_ended - started).count();
      const double cpu_left = p.cpu_time_seconds > 0 ? std::max(p.cpu_time_seconds - cpu_used, 0.001) : 0;
      deadline::arm(std::max(wall_left, 0.001), cpu_left);
    }
    if (r.ok) {
      PyObject* result = PyDict_GetItemString(globals.get(), "result");  // borrowed
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
    // User __del__ methods run here, still under the audit hook and the limits (a session keeps its namespace).
    if (!req.session_main) PyDict_Clear(globals.get());
    PyErr_Clear();
    deadline::disarm();
    memory::end_run();
    // A handler may still be pending: let it run now, not in the next run.
    if ((deadline::wall_fired() || deadline::cpu_fired()) && PyErr_CheckSignals() < 0) PyErr_Clear();
    // A limit hit while encoding or tearing down still ends the run as over its limit.
    // Also by the clock: a run that blocked the alarm signal never saw its timer fire.
    const bool overran = (code_ended - started) + (std::chrono::steady_clock::now() - classified) >
                         std::chrono::duration<double>(p.timeout_seconds);
    // Only a run that would otherwise succeed is turned into an overrun: one that already failed
    // stays failed (and a loaded machine's scheduling delays in its teardown do not relabel it).
    // And by the CPU clock: a run that blocked SIGVTALRM never saw its CPU timer fire either (the
    // rlimit backstop is coarser: whole seconds).
    const bool cpu_overran = p.cpu_time_seconds > 0 && thread_cpu_seconds() - cpu_started > p.cpu_time_seconds;
    if ((r.ok || r.error_kind == ErrorKind::result_too_large) &&
        (deadline::wall_fired() || deadline::cpu_fired() || overran || cpu_overran)) {
      r.result = nullptr;
      if (overran && !deadline::cpu_fired() && !cpu_overran) {
        r.repr.reset();
        become(r, outcome::timeout(p.timeout_seconds));
      } else {
        classify_over_time(p, r);
      }
    } else if (!refused_in_code && memory::refused() && (r.ok || r.error_kind == ErrorKind::result_too_large)) {
      r.repr.reset();
      become(r, outcome::memory());
    }
  }
  if (!req.session_main) PyDict_Clear(globals.get());
  globals.reset();
  code.reset();
  last.reset();
  PyErr_Clear();
  guard::reset_run_state();
  if (p.isolation == Isolation::namespace_) after_namespace_run();
  r.stdout_text = capture::text(0);
  r.stderr_text = capture::text(1);
  r.stdout_truncated = capture::truncated(0);
  r.stderr_truncated = capture::truncated(1);
  return r;
}

}  // namespace spr::embed
