// The in-process engine: isolated CPython initialisation, the bootstrap, and the steps of one run.
#include "engine.hpp"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/common_interface_defs.h>
#endif

#include <fcntl.h>
#include <limits.h>
#include <locale.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <future>
#include <functional>
#include <sstream>
#include <utility>

#include "audit.hpp"
#include "common/outcome.hpp"
#include "capture.hpp"
#include "codec.hpp"
#include "deadline.hpp"
#include "file_transfer.hpp"
#include "guard.hpp"
#include "host_call.hpp"
#include "interp_state.hpp"
#include "libdeps.hpp"
#include "memory.hpp"
#include "py.hpp"
#include "run_result.hpp"
#include "run_scope.hpp"
#include "trust.hpp"

#include <marshal.h>  // not part of Python.h (py.hpp)

extern const char kSprBootstrapSource[];
// The same module compiled at build time by a Python of this engine's X.Y (cmake/marshal_bootstrap.py).
extern const unsigned char kSprBootstrapCode[];
extern const std::size_t kSprBootstrapCodeSize;
extern const long kSprBootstrapMagic;
extern const char kSprPreloadList[];

namespace spr::embed {

using protocol::Request;  // the one request type: the wire's, as the worker decoded it

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

// Waits (at most about a second) until this process has one thread: a thread that was joined may still
// be leaving the thread group for a moment, and the OS layers then unshare a user namespace, which the
// kernel refuses to a process with more than one thread. num_threads is field 20 of /proc/self/stat.
void wait_single_threaded() {
#if defined(__SANITIZE_THREAD__)
  // ThreadSanitizer's runtime runs a thread of its own (started with our first one); this hook, meant for
  // sandboxes, ends it. Without it unshare(CLONE_NEWUSER) fails with EINVAL and TSan workers lack a layer.
  __sanitizer_sandbox_on_notify(nullptr);
#endif
  for (int attempt = 0; attempt < 1000; ++attempt) {
    char buf[1024];
    const int fd = open("/proc/self/stat", O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;  // the OS layers report whatever follows
    const ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');
    for (int field = 2; p && field < 20; ++field) p = std::strchr(p + 1, ' ');
    if (!p || std::strtol(p + 1, nullptr, 10) <= 1) return;
    const timespec pause{0, 1000000};
    nanosleep(&pause, nullptr);
  }
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
  trust::Trusted trusted;
  // The build's bytecode when this runtime reads the same bytecode (its magic number), else the source.
  py::Ref code(PyImport_GetMagicNumber() == kSprBootstrapMagic
                   ? PyMarshal_ReadObjectFromString(reinterpret_cast<const char*>(kSprBootstrapCode),
                                                    static_cast<Py_ssize_t>(kSprBootstrapCodeSize))
                   : nullptr);
  if (!code || !PyCode_Check(code.get())) {
    PyErr_Clear();
    code = py::Ref(Py_CompileString(kSprBootstrapSource, "<frozen spr_bootstrap>", Py_file_input));
  }
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
  codec::make_json_scanner();  // before any run: a run's changes to the json module never reach it
  return true;
}

// Which sections of bootstrap_py/preload.txt an interpreter imports.
enum class Preload { sub_interpreter, main, main_warm, warm_only };
// EngineOptions::defer_warm: the [warm] modules that wait for preload_deferred(), in file order.
std::vector<std::string> g_warm_pending;

// The modules of bootstrap_py/preload.txt that `which` imports, in file order.
std::vector<std::string> preload_list(Preload which) {
  std::vector<std::string> out;
  std::istringstream in(kSprPreloadList);
  std::string line;
  bool wanted = false;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (line[0] == '[') {
      if (which == Preload::warm_only) {
        wanted = line == "[warm]";
        continue;
      }
      wanted = line == "[every interpreter]" || (line == "[main]" && which != Preload::sub_interpreter) ||
               (line == "[warm]" && which == Preload::main_warm);
      continue;
    }
    if (wanted) out.push_back(line);
  }
  return out;
}

void import_quietly(const std::string& name) {
  py::Ref m(PyImport_ImportModule(name.c_str()));
  if (!m) PyErr_Clear();  // a module missing from this Python build is not fatal
}

void preload(Preload which) {
  trust::Trusted trusted;
  for (const auto& name : preload_list(which)) import_quietly(name);
#if PY_VERSION_HEX >= 0x030D0000
  // From 3.13 CPython prints an uncaught exception (PyErr_Display, run_result::print_traceback) with the
  // traceback module, and its C fallback has neither source lines nor carets: loaded before any run.
  if (which != Preload::warm_only) import_quietly("traceback");
#endif
}

// RunnerOptions::preload: the operator asked for these, so a failure stops the worker with the reason.
std::string preload_requested(const std::vector<std::string>& modules) {
  trust::Trusted trusted;
  for (const auto& name : modules) {
    py::Ref m(PyImport_ImportModule(name.c_str()));
    if (!m) return "preloading '" + name + "' failed: " + current_error_text();
  }
  return {};
}

// sys.path as the chosen python3 sees it (site-packages and .pth entries included), in its order; its
// sys.executable, and for a venv its sys.prefix and sys.exec_prefix (sys.base_prefix stays the build's), as
// that venv's `python3 -s` shows them.
std::string set_sys_path(const std::vector<std::string>& entries, const std::string& executable,
                         const std::string& prefix) {
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
  if (!prefix.empty()) {
    py::Ref dir(PyUnicode_DecodeFSDefault(prefix.c_str()));
    if (!dir || PySys_SetObject("prefix", dir.get()) < 0 || PySys_SetObject("exec_prefix", dir.get()) < 0)
      return current_error_text();
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

// Data that packages read from outside their own directory: the time-zone database zoneinfo reads (the
// tzdata package, when installed, lies in site-packages), and Debian's matplotlib data (its style sheets,
// fonts and default settings under /usr/share/matplotlib). Directories only: the own root binds a file's
// whole directory, and /etc/matplotlibrc would have put /etc (passwd, shadow) inside the sandbox.
constexpr const char* kSupportDataDirs[] = {"/usr/share/zoneinfo", "/usr/lib/zoneinfo", "/usr/share/lib/zoneinfo",
                                            "/usr/share/matplotlib"};

// The run's `builtins` module: the interpreter's builtins as `p` filters them.
py::Ref make_builtins_module(const RunnerPolicy& p) {
  py::Ref builtins_dict(guard::make_run_builtins(p));
  py::Ref builtins(PyModule_New("builtins"));
  if (!builtins_dict || !builtins) return py::Ref();
  if (PyDict_Update(PyModule_GetDict(builtins.get()), builtins_dict.get()) < 0) return py::Ref();
  return builtins;
}

// The builtins `p` filters: the list its mode reads.
const std::vector<std::string>& builtin_names(const RunnerPolicy& p) {
  return p.mode == Mode::allow ? p.allowed_builtins : p.blocked_builtins;
}

// The prebuilt `builtins` module when it was built for `p`'s builtins, else null; either way this process
// has none left (a run never gets one another run had).
py::Ref take_prebuilt_builtins(const RunnerPolicy& p) {
  InterpState& st = state();
  py::Ref prebuilt(st.prebuilt_builtins);  // owned
  st.prebuilt_builtins = nullptr;
  if (prebuilt && (p.mode != st.prebuilt_mode || builtin_names(p) != st.prebuilt_names)) prebuilt.reset();
  return prebuilt;
}

// The run's globals: builtins, input_data, result, the input keys, then extra_globals, filtered.
// As in the original, extra_globals come last: a name in both takes the operator's value, not the
// untrusted input's, and only input keys must be identifiers that do not start with `_`.
// The namespace is the dict of a module named __main__, which the run installs as sys.modules['__main__']
// (pickle finds the snippet's classes there); `__builtins__` is a module, as in python3. A session
// keeps its __main__ module: builtins, names and extra_globals are set on its first call only, and
// later input keys still never replace an extra_globals name.
PyObject* make_globals(const Request& req, PyObject* session_main, py::Ref& main_module) {
  const RunnerPolicy& p = req.policy;
  main_module = session_main ? py::Ref::borrow(session_main) : py::Ref(PyModule_New("__main__"));
  py::Ref input(codec::from_json_text(req.input_text().empty() ? std::string_view("{}") : req.input_text()));
  if (!main_module || !input) return nullptr;
  py::Ref g = py::Ref::borrow(PyModule_GetDict(main_module.get()));
  const bool first = PyDict_GetItemString(g.get(), "__builtins__") == nullptr;
  if (first) {
    py::Ref builtins = take_prebuilt_builtins(p);
    if (!builtins) builtins = make_builtins_module(p);
    if (!builtins) return nullptr;
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
  // The operator's host functions come last: neither input keys nor extra_globals replace one.
  if (!host_call::begin_run(req.id, req.functions, p, g.get())) return nullptr;
  return g.release();
}

double thread_cpu_seconds() {
  timespec ts{};
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

audit::RunRules rules_for(const RunnerPolicy& p) {
  audit::RunRules rules;
  rules.allow_network = p.allow_network;
  rules.allow_unix_sockets = p.allow_unix_sockets;
  rules.allow_threads = p.isolation == Isolation::fork || p.isolation == Isolation::process;
  const auto blocked = [&](const char* b) { return run_result::builtin_removed(p, b); };
  rules.block_exec = blocked("exec") && blocked("eval");
  // eval and exec of a string compile it: a run that has either may compile (it gains nothing new).
  rules.block_compile = blocked("compile") && blocked("eval") && blocked("exec");
  for (const auto& path : p.allowed_read_paths) {
    std::string r = real(path);
    if (!r.empty()) rules.read_roots.push_back(r);
  }
  return rules;
}

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
    trust::Trusted trusted;
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

// Fresh text streams for the run (the bootstrap's begin_run): stdout/stderr over the capture, stdin
// over the request's text.
bool begin_streams(const std::string& stdin_text) {
  const bool prebuilt = std::exchange(state().prebuilt_streams, false);
  if (prebuilt && stdin_text.empty()) return true;  // this process's streams are fresh and unused
  trust::Trusted trusted;
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

// The request's code compiled (a session's trailing expression apart, in `last`), or null with the
// error set.
py::Ref compile(const Request& req, py::Ref& last) {
  if (req.code.find('\0') != std::string::npos) {
    PyErr_SetString(PyExc_SyntaxError, "source code string cannot contain null bytes");
    return py::Ref();
  }
  return req.want_repr ? compile_split(req.code, last) : py::Ref(compile_cached(req.code));
}

void compile_failed(RunResult& r) {
  py::FetchedError e = py::FetchedError::fetch();
  if (PyErr_GivenExceptionMatches(e.type.get(), PyExc_MemoryError)) {
    run_result::become(r, outcome::memory());
  } else {
    run_result::print_traceback(e, true);
    r.ok = false;
    r.error = run_result::one_line(e);
    r.error_kind = ErrorKind::syntax;
    r.exit_code = 1;
  }
}

// How long the run's code took, by the wall clock and by this thread's CPU clock.
struct RunClock {
  std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now(), code_ended, classified;
  double cpu_started = thread_cpu_seconds(), cpu_used = 0;
};

// A limit hit while encoding or tearing down still ends the run as over its limit, and so does one
// its timers never saw: a run that blocked SIGALRM (by the wall clock) or SIGVTALRM (by the CPU
// clock; the rlimit backstop is coarser: whole seconds). Only a run that would otherwise succeed is
// relabelled: one that already failed stays failed (and a loaded machine's scheduling delays in its
// teardown do not relabel it).
void late_limits(const RunnerPolicy& p, const RunClock& clock, bool refused_in_code, RunResult& r) {
  if (!r.ok && r.error_kind != ErrorKind::result_too_large) return;
  const bool overran = (clock.code_ended - clock.started) + (std::chrono::steady_clock::now() - clock.classified) >
                       std::chrono::duration<double>(p.timeout_seconds);
  const bool cpu_overran = p.cpu_time_seconds > 0 && thread_cpu_seconds() - clock.cpu_started > p.cpu_time_seconds;
  if (deadline::wall_fired() || deadline::cpu_fired() || overran || cpu_overran) {
    r.result = nullptr;
    if (overran && !deadline::cpu_fired() && !cpu_overran) {
      r.repr.reset();
      run_result::become(r, outcome::timeout(p.timeout_seconds));
    } else {
      run_result::over_time(p, r);
    }
  } else if (!refused_in_code && memory::refused()) {
    r.repr.reset();
    run_result::become(r, outcome::memory());
  }
}

// Runs the compiled code under the limits, classifies what it did, encodes its result and clears its
// namespace (user __str__, __repr__ and __del__ run there too), all still under the limits.
void execute(const Request& req, bool session, RunScope& scope, PyObject* code, PyObject* last, PyObject* globals,
             RunResult& r) {
  const RunnerPolicy& p = req.policy;
  scope.arm_limits();
  RunClock clock;
  py::Ref value(PyEval_EvalCode(code, globals, globals));
  if (value && last) value = py::Ref(show_last(last, globals, static_cast<std::size_t>(p.max_result_kb) * 1024, r));
  py::FetchedError e;
  if (!value) e = py::FetchedError::fetch();
  value.reset();
  clock.code_ended = std::chrono::steady_clock::now();
  clock.cpu_used = thread_cpu_seconds() - clock.cpu_started;
  // Classifying (the engine's own traceback formatting) is not the run's time: the timers pause
  // for it and resume with what is left for encoding and teardown, where the run's code runs again.
  scope.pause_deadline();
  const bool fired_in_code = deadline::wall_fired() || deadline::cpu_fired();
  if (fired_in_code && PyErr_CheckSignals() < 0) PyErr_Clear();  // a pending handler runs now, not later
  const bool refused_in_code = memory::refused();
  if (e) {
    run_result::from_exception(e, p, r);
  } else if (deadline::wall_fired() || deadline::cpu_fired()) {
    // The code caught the TimeoutError and finished anyway: it still ran past its limit.
    run_result::over_time(p, r);
  } else {
    r.ok = true;
  }
  clock.classified = std::chrono::steady_clock::now();
  if (!fired_in_code) {
    const double wall_left = p.timeout_seconds - std::chrono::duration<double>(clock.code_ended - clock.started).count();
    const double cpu_left = p.cpu_time_seconds > 0 ? std::max(p.cpu_time_seconds - clock.cpu_used, 0.001) : 0;
    scope.resume_deadline(std::max(wall_left, 0.001), cpu_left);
  }
  if (r.ok) run_result::encode(py::Ref::borrow(PyDict_GetItemString(globals, "result")).get(), p, r);
  // User __del__ methods run here, still under the audit hook and the limits (a session keeps its namespace).
  if (!session) PyDict_Clear(globals);
  PyErr_Clear();
  scope.end_limits();
  // A handler may still be pending: let it run now, not in the next run.
  if ((deadline::wall_fired() || deadline::cpu_fired()) && PyErr_CheckSignals() < 0) PyErr_Clear();
  late_limits(p, clock, refused_in_code, r);
}

}  // namespace

std::vector<std::string> g_sys_path;
std::string g_executable;
std::string g_prefix;

std::string init_current_interpreter() {
  trust::Trusted trusted;
  if (!g_sys_path.empty() || !g_executable.empty()) {
    if (std::string e = set_sys_path(g_sys_path, g_executable, g_prefix); !e.empty())
      return "setting sys.path failed: " + e;
  }
  if (!guard::install_import_hook()) return "installing the import guard failed: " + current_error_text();
  if (!run_bootstrap(false)) return "bootstrap failed: " + current_error_text();
  if (!install_streams()) return "creating the output streams failed: " + current_error_text();
  if (!trust::install_loader_hook()) return "installing the engine's module loader failed: " + current_error_text();
  if (!audit::install_code_replace_gate()) return "installing the code.replace gate failed: " + current_error_text();
  preload(Preload::sub_interpreter);
  if (!trust::mark_loaded_code()) return "marking the runtime's code failed";
  return {};
}

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

  // The library scan reads thousands of directory entries and ELF headers and calls no Python: when the
  // supervisor named sys.path, it runs on a thread of its own while Python starts and preloads (about half
  // a worker's start), and is joined before anything uses it. Without a list it runs after sys.path is known.
  std::vector<std::string> given_roots;
  for (const auto& e : options.sys_path) {
    std::string r = e.empty() ? std::string() : real(e);
    if (!r.empty()) given_roots.push_back(std::move(r));
  }
  std::future<std::vector<std::string>> scan;
  if (!given_roots.empty())
    scan = std::async(std::launch::async, [roots = given_roots, dir = options.cache_dir] {
      return libdeps::needed_by_extensions_cached(roots, dir);
    });

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
  // A worker built for another CPython (cmake/pythons.cmake) shares this engine and names its own home.
  std::string home = options.home;
#ifdef SPR_PYTHON_HOME
  if (home.empty()) home = SPR_PYTHON_HOME;
#endif
  if (!home.empty()) {
    st = PyConfig_SetBytesString(&cfg.config, &cfg.config.home, home.c_str());
    if (PyStatus_Exception(st)) return status_text(st, "setting the Python home failed");
  }
  st = PyConfig_SetBytesString(&cfg.config, &cfg.config.program_name, "spr-worker");
  if (PyStatus_Exception(st)) return status_text(st, "setting the program name failed");
  st = Py_InitializeFromConfig(&cfg.config);
  if (PyStatus_Exception(st)) return status_text(st, "Python initialisation failed");
  if (!py::init_compat()) return "reading what this Python lacks from its runtime failed: " + current_error_text();

  g_sys_path = options.sys_path;
  g_executable = options.executable;
  g_prefix = options.prefix;
  if (!g_sys_path.empty() || !g_executable.empty()) {
    if (std::string e = set_sys_path(g_sys_path, g_executable, g_prefix); !e.empty())
      return "setting sys.path failed: " + e;
  }
  g_runtime_paths = compute_runtime_paths();  // the same list as given_roots when the supervisor named one
  trust::set_runtime_roots(g_runtime_paths);
  if (!scan.valid())
    scan = std::async(std::launch::deferred,
                      [dir = options.cache_dir] { return libdeps::needed_by_extensions_cached(g_runtime_paths, dir); });
  memory::install();
  if (!capture::attach(options.capture_fd)) return "cannot map the output buffer";
  {
    trust::Trusted trusted;
    if (!guard::install_import_hook()) return "installing the import guard failed: " + current_error_text();
    if (!run_bootstrap(true)) return "bootstrap failed: " + current_error_text();
    if (!install_streams()) return "creating the output streams failed: " + current_error_text();
    if (!trust::install_loader_hook()) return "installing the engine's module loader failed: " + current_error_text();
    if (!audit::install_code_replace_gate()) return "installing the code.replace gate failed: " + current_error_text();
  }
  const bool defer = options.preload && options.defer_warm;
  if (defer) g_warm_pending = preload_list(Preload::warm_only);
  preload(options.preload && !defer ? Preload::main_warm : Preload::main);
  if (std::string e = preload_requested(options.preload_modules); !e.empty()) return e;
  state().builtins_snapshot = PyDict_Copy(PyEval_GetBuiltins());
  // Everything loaded so far is the runtime's and the engine's own; from here on only code the
  // engine reads from the runtime's files is added (trust.cpp). Before gc.freeze(), which hides
  // objects from gc.get_objects().
  if (!trust::mark_loaded_code()) return "marking the runtime's code failed";
  // Read by the audit hook only once armed (below), and by the OS layers after this returns.
  g_support_paths = scan.get();
  scan = {};  // joins the scan's thread
  wait_single_threaded();
  for (const char* dir : kSupportDataDirs) {
    std::string r = real(dir);
    if (!r.empty()) g_support_paths.push_back(r);
  }
  audit::set_support_roots(g_support_paths);
  {
    // Objects that exist now are never collected: a forked run child then does not walk (and
    // copy-on-write fault) the whole warm heap when its collector runs.
    trust::Trusted trusted;
    py::Ref gc(PyImport_ImportModule("gc"));
    py::Ref frozen(gc ? PyObject_CallMethod(gc.get(), "freeze", nullptr) : nullptr);
    PyErr_Clear();
  }
  if (!deadline::init()) return "creating the soft-deadline timers failed";
  g_initialized = true;
  trust::arm(true);  // from here on, every audit event is checked
  return {};
}

bool preload_pending() { return !g_warm_pending.empty(); }

void preload_deferred(const std::function<bool()>& stop) {
  if (g_warm_pending.empty()) return;
  std::size_t done = 0;
  {
    trust::Trusted trusted;
    for (; done < g_warm_pending.size() && !stop(); ++done) import_quietly(g_warm_pending[done]);
  }
  g_warm_pending.erase(g_warm_pending.begin(), g_warm_pending.begin() + static_cast<std::ptrdiff_t>(done));
  if (done == 0) return;
  trust::Trusted trusted;
  // Nothing untrusted has run in this process (the caller's promise): what the imports made is the runtime's.
  if (!trust::mark_loaded_code()) PyErr_Clear();
  PyObject* gc = PyDict_GetItemString(PyImport_GetModuleDict(), "gc");  // borrowed; initialize() imported it
  py::Ref frozen(gc ? PyObject_CallMethod(gc, "freeze", nullptr) : nullptr);
  PyErr_Clear();
}

std::string python_version() { return Py_GetVersion() ? std::string(Py_GetVersion()).substr(0, std::string(Py_GetVersion()).find(' ')) : "?"; }
std::string python_build() { return Py_GetVersion() ? Py_GetVersion() : "?"; }
std::vector<std::string> runtime_paths() { return g_runtime_paths; }
std::vector<std::string> support_paths() { return g_support_paths; }

bool prepare_capture(const Request& req) {
  return capture::begin(req.id, static_cast<std::uint64_t>(req.policy.max_output_kb) * 1024);
}

bool prebuild_run_objects(const RunnerPolicy& like, bool freeze) {
  InterpState& st = state();
  Py_CLEAR(st.prebuilt_builtins);
  st.prebuilt_streams = false;
  py::Ref builtins = make_builtins_module(like);
  if (!builtins || !begin_streams("")) {
    PyErr_Clear();
    return false;
  }
  st.prebuilt_builtins = builtins.release();
  st.prebuilt_mode = like.mode;
  st.prebuilt_names = builtin_names(like);
  st.prebuilt_streams = true;
  if (!freeze) return true;
  // Out of the collector's reach like the rest of the warm heap: a child's collection does not write to them.
  // (gc from sys.modules, where initialize() left it: no import runs under a run's policy.)
  PyObject* gc = PyDict_GetItemString(PyImport_GetModuleDict(), "gc");  // borrowed
  py::Ref frozen(gc ? PyObject_CallMethod(gc, "freeze", nullptr) : nullptr);
  PyErr_Clear();
  return true;
}

bool prebuilt_run_objects() { return state().prebuilt_streams; }

RunResult run(const Request& req, PyObject* session_main) {
  if (!prepare_capture(req)) return outcome::no_output_buffer();
  return run_prepared(req, session_main);
}

RunResult run_prepared(const Request& req, PyObject* session_main) {
  const RunnerPolicy& p = req.policy;
  RunResult r;
  r.isolation = p.isolation;
  RunScope scope(req, rules_for(p));  // rules first: allowed_read_paths resolve from the worker's directory
  if (!scope.error().empty()) {
    run_result::become(r, outcome::setup_failed("scratch directory", scope.error()));
    return r;
  }
  if (std::string why = file_transfer::write(scope.dir_fd(), req.files); !why.empty()) {
    run_result::become(r, outcome::bad_files(why));
    return r;
  }
  struct HostRun {  // host functions end with the run, in its interpreter, on every path
    ~HostRun() { host_call::end_run(); }
  } host_run;
  py::Ref main_module;
  py::Ref globals(make_globals(req, session_main, main_module));
  if (!globals) {
    run_result::become(r, outcome::bad_input(current_error_text()));
    return r;
  }
  if (!begin_streams(req.stdin_text)) {
    run_result::become(r, outcome::setup_failed("streams", current_error_text()));
    return r;
  }
  scope.begin_main(main_module.get());
  {
    py::Ref last;
    py::Ref code(compile(req, last));
    if (code) {
      execute(req, session_main != nullptr, scope, code.get(), last.get(), globals.get(), r);
    } else {
      compile_failed(r);
    }
  }
  if (!session_main) PyDict_Clear(globals.get());
  globals.reset();
  PyErr_Clear();
  scope.end_run_state();
  // Whatever the run ended with, the files it left are what it made (a traceback explains a half-made plot).
  file_transfer::collect(scope.dir_fd(), req.collect, static_cast<std::uint64_t>(p.max_files_kb) * 1024, r);
  // Over a host call limit: the run ends so even when its code caught the exception (the supervisor,
  // which counted and measured the calls itself, holds to it whatever this reply says).
  if (host_call::limit_hit() && r.error_kind != ErrorKind::timeout && r.error_kind != ErrorKind::cpu_time &&
      r.error_kind != ErrorKind::memory) {
    r.result = nullptr;
    r.repr.reset();
    run_result::become(r, outcome::host_call_limit(host_call::limit_why()));
  }
  r.stdout_text = capture::text(0);
  r.stderr_text = capture::text(1);
  r.stdout_truncated = capture::truncated(0);
  r.stderr_truncated = capture::truncated(1);
  return r;
}

}  // namespace spr::embed
