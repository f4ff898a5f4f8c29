// Per-run state of the engine as one scope: begun in a fixed order, ended in reverse on every path.
#include "run_scope.hpp"

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

}  // namespace

// The run's private writable directory (policy scratch_dir): created under the worker's scratch
// root, made the working directory, removed with everything in it when the run ends.
class RunScope::Directory {
 public:
  Directory(bool wanted, std::uint64_t id) {
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
  ~Directory() {
    if (path_.empty()) return;
    if (chdir(home_.c_str()) != 0) return;
    remove_tree(path_);
  }
  Directory(const Directory&) = delete;
  Directory& operator=(const Directory&) = delete;
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


// sys.modules['__main__'] is the run's module for the run's duration, then what it was before.
class RunScope::MainModule {
 public:
  explicit MainModule(PyObject* module) : module_(py::Ref::borrow(module)) {
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
  py::Ref module_, saved_;
};


RunScope::RunScope(const Request& req, audit::RunRules rules) : policy_(req.policy) {
  guard::reset_run_state();
  audit::reset_denials();
  guard::set_policy(policy_);
  dir_ = std::make_unique<Directory>(policy_.scratch_dir, req.id);
  if (policy_.scratch_dir) {
    if (!dir_->ok()) {
      error_ = dir_->error();
      return;
    }
    rules.scratch = dir_->path();
  }
  audit::set_rules(std::move(rules));
}

RunScope::~RunScope() {
  end_limits();
  end_run_state();
  main_.reset();
  dir_.reset();
}

void RunScope::begin_main(PyObject* module) { main_ = std::make_unique<MainModule>(module); }

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
