// The runners whose runs execute in this worker's own interpreters: namespace (and process), sub-interpreter.
#pragma once

#include <cstddef>
#include <string>

#include "common/protocol.hpp"
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
  // Module objects of earlier runs may own descriptors: those are left alone.
  void after_reply() override { state_.restore(false); }

 private:
  WorkerScope scope_;
  const ProcessState& state_;
  protocol::PolicyCache policies_;
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
};

}  // namespace spr::embed
