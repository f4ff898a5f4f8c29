// Session worker: one namespace kept across requests, in a process that serves one session only.
#pragma once

#include <cstdint>
#include <string>

#include "common/protocol.hpp"
#include "isolation_runner.hpp"
#include "worker_protocol.hpp"

struct _object;  // PyObject, without Python.h

namespace spr::embed {

// Before hardening (seccomp then refuses setrlimit): caps the address space at what the warm
// process maps now plus `memory_mb` and slack. Returns 0 or an errno.
int limit_session_memory(int statm_fd, std::int64_t memory_mb);

// Answers run and list_variables requests; a session call's memory limit counts everything the
// session allocated since its first call. The namespace is made at start (after the hello). Never
// throws; a session whose namespace cannot be made refuses every request.
class SessionRunner : public IsolationRunner {
 public:
  explicit SessionRunner(WorkerScope scope);
  ~SessionRunner() override;
  SessionRunner(const SessionRunner&) = delete;
  SessionRunner& operator=(const SessionRunner&) = delete;
  // A short spin first: back-to-back calls are the common case in a session.
  int read_spin_microseconds() const override;
  void handle(std::string& frame, std::string& reply) override;

 private:
  WorkerScope scope_;
  ::_object* main_module_ = nullptr;  // owned: the session's __main__
  std::int64_t base_ = 0;             // memory in use before the first call
  PolicyText policies_;  // the last policy decoded
};

}  // namespace spr::embed
