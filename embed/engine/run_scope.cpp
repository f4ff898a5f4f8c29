// Per-run state of the engine as one scope: begun in a fixed order, ended in reverse on every path.
#include "run_scope.hpp"

#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "deadline.hpp"
#include "guard.hpp"
#include "interp_state.hpp"
#include "memory.hpp"
#include "trust.hpp"

namespace spr::embed {

namespace {

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

// The run's private writable directory: created under the worker's scratch root and made the working
// directory (`home` the one before). Returns "" or the reason. Apart from the constructor so that its
// path buffer is not on the stack under every run's calls (a fork child would fault in more stack).
// `dir_fd` is the directory itself, opened once without following a link: files go in and come back
// through it, whatever the run does to the names.
__attribute__((noinline)) std::string make_directory(std::uint64_t id, std::string& home, std::string& dir,
                                                     detail::Fd& dir_fd) {
  char cwd[PATH_MAX];
  if (!getcwd(cwd, sizeof cwd)) return strerror(errno);
  home = cwd;
  std::string path = home + "/run-" + std::to_string(id) + "-" + std::to_string(getpid());
  if (mkdir(path.c_str(), 0700) != 0) return strerror(errno);
  dir = path;  // removed by the scope from here on
  dir_fd.reset(open(path.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!dir_fd || fchdir(dir_fd.get()) != 0) return strerror(errno);
  return {};
}

// Sets (or, for "", removes) one variable of os.environ for the run (a namespace-mode worker keeps
// os.environ between runs, so each set is removed when the run ends).
void set_environ(const char* name, const std::string& value) {
  trust::Trusted trusted;  // os.environ's putenv is the engine's, not the run's
  PyObject* os = PyDict_GetItemString(PyImport_GetModuleDict(), "os");  // borrowed; imported at start-up
  py::Ref environ(os ? PyObject_GetAttrString(os, "environ") : nullptr);
  py::Ref key(PyUnicode_FromString(name));
  if (environ && key) {
    if (value.empty()) {
      if (PyObject_DelItem(environ.get(), key.get()) < 0) PyErr_Clear();
    } else {
      py::Ref v(PyUnicode_DecodeFSDefault(value.c_str()));
      if (!v || PyObject_SetItem(environ.get(), key.get(), v.get()) < 0) PyErr_Clear();
    }
  }
  PyErr_Clear();
}

// matplotlib imports only with a writable config and cache directory, and the sandbox has no home: the
// run's own directory gives it one, in a folder that "*" does not collect. Debian's matplotlib looks for
// its default settings in /etc/matplotlibrc, which the sandbox does not hold: MATPLOTLIBRC points it at the
// same file in its data directory.
constexpr const char* kDebianMatplotlibData = "/usr/share/matplotlib/mpl-data";

void set_matplotlib_dirs(const std::string& run_dir) {
  set_environ("MPLCONFIGDIR", run_dir.empty() ? "" : run_dir + "/.matplotlib");
  struct stat st {};
  const bool debian = stat(kDebianMatplotlibData, &st) == 0 && S_ISDIR(st.st_mode);
  set_environ("MATPLOTLIBRC", run_dir.empty() || !debian ? "" : kDebianMatplotlibData);
}

}  // namespace

RunScope::RunScope(const protocol::Request& req, audit::RunRules rules) : policy_(req.policy) {
  guard::reset_run_state();
  audit::reset_denials();
  guard::set_policy(policy_);
  // Files in or out need the run directory too (the supervisor asks for scratch_dir with them).
  if (policy_.scratch_dir || !req.files.empty() || !req.collect.empty()) {
    error_ = make_directory(req.id, home_, dir_, dir_fd_);
    if (!error_.empty()) return;
    rules.scratch = dir_;
    set_matplotlib_dirs(dir_);
  }
  audit::set_rules(std::move(rules));
}

RunScope::~RunScope() {
  end_limits();
  end_run_state();
  end_main();
  remove_directory();
  if (std_lock_release_) release_std_locks();
}

// A run's fcntl record locks belong to the process: where the process outlives the run (namespace and
// subinterpreter mode), a lock it took through descriptors 0 to 2 (the host's /dev/null) would stay and
// block a host program locking /dev/null. Closing any descriptor of a file ends the process's locks on it.
void RunScope::release_std_locks() {
  for (int fd = 0; fd <= 2; ++fd) {
    const int copy = dup(fd);
    if (copy >= 0) close(copy);
  }
}

// sys.modules['__main__'] is the run's module for the run's duration, then what it was before.
void RunScope::begin_main(PyObject* module) {
  PyObject* modules = PyImport_GetModuleDict();  // borrowed
  main_ = py::Ref::borrow(module);
  saved_main_ = py::Ref::borrow(PyDict_GetItemString(modules, "__main__"));
  if (PyDict_SetItemString(modules, "__main__", module) < 0) PyErr_Clear();
  main_begun_ = true;
}

void RunScope::end_main() {
  if (!main_begun_) return;
  main_begun_ = false;
  PyObject* modules = PyImport_GetModuleDict();
  if (saved_main_ ? PyDict_SetItemString(modules, "__main__", saved_main_.get()) < 0
                  : PyDict_DelItemString(modules, "__main__") < 0)
    PyErr_Clear();
  saved_main_.reset();
  main_.reset();
}

void RunScope::remove_directory() {
  dir_fd_.reset();
  if (dir_.empty()) return;
  set_matplotlib_dirs("");
  if (chdir(home_.c_str()) == 0)
    nftw(dir_.c_str(), [](const char* f, const struct stat*, int, struct FTW*) { return ::remove(f); }, 16,
         FTW_DEPTH | FTW_PHYS);
  dir_.clear();
}

void RunScope::arm_limits() {
  memory::begin_run(static_cast<std::uint64_t>(policy_.memory_limit_mb) << 20);
  deadline::arm(policy_.timeout_seconds, policy_.cpu_time_seconds);
  limits_ = true;
}

void RunScope::pause_deadline() { deadline::disarm(); }

void RunScope::resume_deadline(double wall_seconds, double cpu_seconds) { deadline::arm(wall_seconds, cpu_seconds); }

void RunScope::end_limits() {
  if (!limits_) return;
  limits_ = false;
  deadline::disarm();
  memory::end_run();
}

void RunScope::end_run_state() {
  if (!run_state_) return;
  run_state_ = false;
  guard::reset_run_state();
  if (policy_.isolation == Isolation::namespace_) after_namespace_run();
}

}  // namespace spr::embed
