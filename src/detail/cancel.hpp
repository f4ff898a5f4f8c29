// The shared state behind CancelToken: a flag, the process group to kill, and what to do on cancel.
#pragma once

#include <sys/types.h>

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "spr/run_control.hpp"

namespace spr::detail {

struct CancelState {
  std::mutex mu;
  bool cancelled = false;
  pid_t pid = -1;  // the worker running the call now; killed (with its group) on cancel
  std::vector<std::function<void()>> on_cancel;
};

// While attached, a cancel kills `pid`'s process group. False (and nothing attached) when the token
// was cancelled already. The caller must not reap `pid` before detach().
bool attach(const CancelToken& t, pid_t pid);
// Returns whether the token was cancelled (the process may then be dead: the caller kills and reaps it).
bool detach(const CancelToken& t);
// Runs `f` on cancel (at once if it is cancelled already). `f` must not block.
void on_cancel(const CancelToken& t, std::function<void()> f);

// A promise set at most once: by the run, or earlier by a cancel.
struct Completion {
  std::mutex mu;
  bool set = false;
  std::promise<RunResult> promise;
  bool done() {
    std::lock_guard<std::mutex> lk(mu);
    return set;
  }
  void complete(RunResult r) {
    std::lock_guard<std::mutex> lk(mu);
    if (set) return;
    set = true;
    promise.set_value(std::move(r));
  }
};

RunResult cancelled_result();

}  // namespace spr::detail
