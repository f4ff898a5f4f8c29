// CancelToken and the helpers the runner and sessions use to stop a run by killing its process.
#include <signal.h>

#include "common/wire.hpp"
#include "detail/cancel.hpp"

namespace spr {

std::string to_string(OutputStream s) {
  return s == OutputStream::out ? "stdout" : "stderr";
}

CancelToken::CancelToken() : state_(std::make_shared<detail::CancelState>()) {}

bool CancelToken::cancel() {
  std::vector<std::function<void()>> hooks;
  {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (state_->cancelled) return false;
    state_->cancelled = true;
    // The owner cannot reap the process while it is attached (detach takes this lock): no pid reuse.
    if (state_->pid > 0) {
      ::kill(-state_->pid, SIGKILL);
      ::kill(state_->pid, SIGKILL);
    }
    hooks.swap(state_->on_cancel);
  }
  for (auto& f : hooks) f();
  return true;
}

bool CancelToken::cancelled() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->cancelled;
}

namespace detail {

bool attach(const CancelToken& t, pid_t pid) {
  std::lock_guard<std::mutex> lk(t.state()->mu);
  if (t.state()->cancelled) return false;
  t.state()->pid = pid;
  return true;
}

bool detach(const CancelToken& t) {
  std::lock_guard<std::mutex> lk(t.state()->mu);
  t.state()->pid = -1;
  return t.state()->cancelled;
}

void on_cancel(const CancelToken& t, std::function<void()> f) {
  {
    std::lock_guard<std::mutex> lk(t.state()->mu);
    if (!t.state()->cancelled) {
      t.state()->on_cancel.push_back(std::move(f));
      return;
    }
  }
  f();
}

RunResult cancelled_result() {
  return failure(ErrorKind::cancelled, "Run cancelled", 1);
}

}  // namespace detail
}  // namespace spr
