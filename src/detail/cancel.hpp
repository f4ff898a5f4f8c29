// The shared state behind CancelToken: a flag, the process group to kill, and what to do on cancel.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "spr/run_control.hpp"

namespace spr::detail {

struct CancelState {
  std::mutex mu;
  bool cancelled = false;
  pid_t pid = -1;  // the worker running the call now; killed on cancel (its owner then kills its group)
  Fd pidfd;        // our own copy of the worker's pidfd: the kill never reaches a reused pid
  // Set before the kill when the process serves other runs too (run threads): the pool then leases none of
  // its idle slots while it dies (their run would answer that it ended with its worker).
  std::shared_ptr<std::atomic<bool>> ending;
  std::vector<std::function<void()>> on_cancel;
  // A caller that reads its own input on the run's thread while the run goes on (serve's reading thread,
  // running a request itself): `on_watch` is called once, on the run's thread, when `watch_fd` turns
  // readable while the run waits for its reply, and before the run waits on anything else whose length a
  // worker could choose (a worker to start, a request it does not take, a reply sent in part, host calls,
  // its end): WorkerPool::lease and WorkerProcess::run.
  int watch_fd = -1;
  std::function<void()> on_watch;
};

// While attached, a cancel kills the process `pidfd` refers to (`pid` when the kernel has no pidfd).
// False (and nothing attached) when the token was cancelled already.
bool attach(const CancelToken& t, pid_t pid, int pidfd, std::shared_ptr<std::atomic<bool>> ending = nullptr);
// Returns whether the token was cancelled (the process may then be dead: the caller kills and reaps it).
bool detach(const CancelToken& t);
// Runs `f` on cancel (at once if it is cancelled already). `f` must not block.
void on_cancel(const CancelToken& t, std::function<void()> f);

// Sets the token's watch (CancelState::watch_fd, on_watch). `f` must not block.
void set_watch(const CancelToken& t, int fd, std::function<void()> f);
// The watch's descriptor, -1 when there is none or it was called.
int watch_fd(const CancelToken& t);
// Calls the watch's function now, unless it was called already.
void fire_watch(const CancelToken& t);

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

// What refuses a run or a session call before any worker sees it, checked in this order: a cancel that
// came first, code CPython would not read as a source file, stdin over the policy's max_stdin_kb.
// nullopt: the run may start. (Files are the caller's: a session call takes none.)
std::optional<RunResult> refused_before_start(const std::string& code, const std::string& stdin_text,
                                              const RunnerPolicy& policy, const CancelToken* cancel);

// SIGKILL to the process `pidfd` refers to, or to `pid` when pidfd < 0 (kernels before 5.3).
void kill_process(int pidfd, pid_t pid);

}  // namespace spr::detail
