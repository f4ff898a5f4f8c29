// The runners whose runs execute in this worker's own interpreters: namespace (and process), sub-interpreter.
#pragma once

#include <cstddef>
#include <string>

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
  void handle(std::string& frame, std::string& reply) override;
  // Ends the worker when the run left a descriptor open (module objects of earlier runs may own one, so
  // it is not closed under them); otherwise puts the process state back.
  void after_reply() override;

 private:
  WorkerScope scope_;
  const ProcessState& state_;
  protocol::PolicyCache policies_;
  bool retire_ = false;
};

// Sub-interpreter mode: each run in a fresh sub-interpreter from a pool built while idle.
class SubinterpreterRunner : public IsolationRunner {
 public:
  SubinterpreterRunner(WorkerScope scope, SubinterpreterPool& pool, const ProcessState& state)
      : scope_(scope), pool_(pool), state_(state) {}
  void while_idle(int fd) override;
  void handle(std::string& frame, std::string& reply) override;
  void after_reply() override;

 private:
  WorkerScope scope_;
  SubinterpreterPool& pool_;
  const ProcessState& state_;
  protocol::PolicyCache policies_;
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
};

}  // namespace spr::embed
