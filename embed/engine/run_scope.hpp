// Per-run state of the engine as one scope: begun in a fixed order, ended in reverse on every path.
#pragma once

#include <string>

#include "audit.hpp"
#include "common/fd.hpp"
#include "py.hpp"
#include "common/protocol.hpp"

namespace spr::embed {

// What one run changes in the engine's modules and the interpreter. Begun in this order:
//   1. the guard (the run's import policy, a fresh import state) and the audit hook's denial count;
//   2. the run's scratch directory (policy scratch_dir), made the working directory, then the audit
//      hook's rules for the run (they name that directory);
//   3. sys.modules['__main__'] as the run's module (begin_main);
//   4. the limits: memory accounting and both deadlines (arm_limits), from the first byte of user
//      code through encoding and teardown, where the run's code runs again (SECURITY.md).
// The run ends 4 (end_limits) and the guard's and interpreter's state (end_run_state) itself, before
// it reads its output; the destructor ends whatever is still begun, in reverse (an early return, an
// exception), then puts __main__ back and removes the scratch directory.
class RunScope {
 public:
  RunScope(const protocol::Request& req, audit::RunRules rules);
  ~RunScope();
  RunScope(const RunScope&) = delete;
  RunScope& operator=(const RunScope&) = delete;

  // "" when the run may go on; else why its scratch directory could not be made (nothing else began).
  const std::string& error() const { return error_; }
  // The run directory, opened once when it was made (-1 = none).
  int dir_fd() const { return dir_fd_.get(); }

  void begin_main(PyObject* module);

  void arm_limits();
  // The engine's own work between the code and its encoding (classifying) is not the run's time.
  void pause_deadline();
  void resume_deadline(double wall_seconds, double cpu_seconds);
  void end_limits();

  // Ends the guard's run state and, in namespace mode, puts back what the run changed interpreter-wide.
  void end_run_state();

  // Whether each run's end closes a copy of descriptors 0 to 2 (ending the record locks the run took on their
  // files; see release_std_locks). On by default, for programs that run code in process; a worker turns it
  // off where the run's process ends with it (fork, process mode) or its own check covers every descriptor
  // it keeps (ProcessState::kept_descriptors_intact). Set before the first run.
  static void set_std_lock_release(bool on) { std_lock_release_ = on; }

 private:
  void end_main();
  static void release_std_locks();
  static inline bool std_lock_release_ = true;
  void remove_directory();
  const RunnerPolicy& policy_;
  std::string home_, dir_;  // the scratch directory and the working directory before it ("" = none)
  detail::Fd dir_fd_;
  py::Ref main_, saved_main_;  // the run's __main__ module and the one it replaced
  std::string error_;
  bool main_begun_ = false, limits_ = false, run_state_ = true;
};

}  // namespace spr::embed
