// The runners whose runs execute in this worker's own interpreters: namespace (and process), sub-interpreter.
#pragma once

#include <cstddef>
#include <mutex>
#include <string>
#include <vector>

#include "common/protocol.hpp"
#include "common/worker_start.hpp"
#include "harden/harden.hpp"
#include "isolation_runner.hpp"
#include "process_state.hpp"
#include "engine/subinterpreter_pool.hpp"
#include "worker_protocol.hpp"

namespace spr::embed {

// Namespace mode (and process mode, whose worker exits after one run): each run in a fresh namespace
// of the main interpreter.
class NamespaceRunner : public IsolationRunner {
 public:
  // `state`: captured after hardening; put back after every run.
  NamespaceRunner(WorkerScope scope, const ProcessState& state) : scope_(scope), state_(state) {}
  // Builds the next run's builtins and streams (for the last run's policy) before it is asked for.
  void while_idle(int fd) override;
  void handle(std::string& frame, std::string& reply) override;
  // Ends the worker when the run left a descriptor open (module objects of earlier runs may own one, so
  // it is not closed under them); otherwise puts the process state back.
  void after_reply() override;

 private:
  WorkerScope scope_;
  const ProcessState& state_;
  PolicyText policies_;  // the last policy decoded
  bool retire_ = false;
};

// Sub-interpreter mode: each run in a fresh sub-interpreter from a pool built while idle.
// With run threads, the descriptors runs leave open are the process's, shared by every thread: they are closed
// when the whole worker is idle (no thread between reading a request and waiting for the next) and no
// thread's used interpreter is still to end (its objects may own them). Every thread counts as busy from
// the worker's start until it first waits.
class ThreadSweep {
 public:
  // On the main thread before any run thread touches an interpreter: the descriptors kept across runs.
  void capture(std::size_t threads);
  // Whether a descriptor opened since capture() is open (a run's, or one a busy thread's run holds now).
  bool leftovers() const;
  // A thread got a request: what runs left open is closed first if no other thread is busy and no used
  // interpreter is still to end (`interpreter_pending`: this thread's pool holds one); nothing is closed
  // under this thread's run from then on.
  void busy(std::size_t thread, bool interpreter_pending);
  // A thread is about to wait for its next request. The last thread to go idle closes what runs left open,
  // if every used interpreter has ended.
  void idle(std::size_t thread, bool interpreter_pending);

 private:
  void sweep_locked(std::size_t thread, bool interpreter_pending);
  mutable std::mutex mu_;
  ProcessState process_;
  std::size_t busy_ = 0;
  bool dirty_ = false;                // a run began since the last sweep
  std::vector<bool> pending_;         // by thread: a used interpreter not yet ended
};

class SubinterpreterRunner : public IsolationRunner {
 public:
  // `sweep`: with run threads, the worker's shared account of them (thread `thread` is this one's).
  SubinterpreterRunner(WorkerScope scope, SubinterpreterPool& pool, const ProcessState& state,
                       ThreadSweep* sweep = nullptr, std::size_t thread = 0)
      : scope_(scope), pool_(pool), state_(state), sweep_(sweep), thread_(thread) {}
  void while_idle(int fd) override;
  void handle(std::string& frame, std::string& reply) override;
  void after_reply() override;

 private:
  WorkerScope scope_;
  SubinterpreterPool& pool_;
  const ProcessState& state_;
  ThreadSweep* sweep_;
  std::size_t thread_;
  PolicyText policies_;  // the last policy decoded
  bool retire_ = false;
};

// Sub-interpreter mode with run threads (WorkerStart::subinterpreter_threads > 1, CPython 3.12+): thread k
// serves its own socket and capture buffer (WorkerStart::run_thread_socket/_capture) with its own pool of
// own-GIL interpreters, so that k runs go on at once. Thread 0 is the main thread. Each thread has its own
// working directory and umask (unshare(CLONE_FS)): the directory t<k> under the scratch root, where its
// runs' directories are made and which the supervisor's slot k wipes after each of them.
class RunThreads {
 public:
  RunThreads(const detail::WorkerStart& start, WorkerScope scope) : start_(start), scope_(scope) {}
  // "" when this worker can have run threads; else why not (the CPython it embeds, its mode).
  static std::string unsupported(const detail::WorkerStart& start);
  // Before the seccomp filter (harden's start_threads; by hand for an unhardened worker): gives the calling
  // (main) thread its own directory, then starts threads 1..n-1 and waits until each has its directory,
  // deadline timers and capture buffer. They wait for the main interpreter's lock before their first
  // interpreter, which the main thread releases while it waits for a request (serve_main).
  harden::LayerStatus start();
  // After the hello, on the main thread holding the main interpreter: serves thread 0. Never returns.
  [[noreturn]] void serve_main(SubinterpreterPool& pool);

 private:
  const detail::WorkerStart& start_;
  WorkerScope scope_;
  ThreadSweep sweep_;
};

}  // namespace spr::embed
