// One shape for every way a worker runs requests (namespace, sub-interpreter, fork, process, session).
#pragma once

#include <string>
#include <string_view>

namespace spr::embed {

// worker_main has one serve loop over this interface: while_idle, read a request frame, handle it,
// send the reply frame, after_reply.
//
// The interface is frame-level (a request frame in, a reply frame out), not Request-level, because the
// fork parent must never decode a request: its code and input would then sit in the long-lived
// parent's heap, where a later run that reads its whole process memory finds them. The fork runner
// passes the bytes to its child, which decodes them; every other runner decodes with the worker's one
// decode function (worker_protocol.hpp: decode_request) and encodes with encode_reply.
class IsolationRunner {
 public:
  virtual ~IsolationRunner() = default;
  // Before each read, while the supervisor has sent nothing: work that should not sit on a caller's
  // path (a spare fork child, the next sub-interpreter). Returns once a request is readable on `fd`
  // or the work is done.
  virtual void while_idle(int fd) { (void)fd; }
  // How long the read spins before it sleeps (µs): 0 unless back-to-back calls are the common case.
  virtual int read_spin_microseconds() const { return 0; }
  // Answers one request frame: `reply` receives the reply frame (its buffer is reused). Never throws.
  virtual void handle(std::string& frame, std::string& reply) = 0;
  // After the reply went out: put back what the run changed process-wide.
  virtual void after_reply() {}
  // The worker's warm heap grew (deferred preloads): a process made from the heap before is stale.
  virtual void warm_heap_grew() {}
};

// Zeroes and empties `s`: the request and reply frames of one run never linger for the next.
void wipe(std::string& s);

}  // namespace spr::embed
