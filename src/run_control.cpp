// CancelToken and the helpers the runner and sessions use to stop a run by killing its process.
#include <fcntl.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/outcome.hpp"
#include "common/protocol.hpp"
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
    // The owner may reap the process before it detaches: the pidfd still names that process only.
    if (state_->pid > 0) {
      if (state_->ending) *state_->ending = true;
      detail::kill_process(state_->pidfd.get(), state_->pid);
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

bool attach(const CancelToken& t, pid_t pid, int pidfd, std::shared_ptr<std::atomic<bool>> ending) {
  std::lock_guard<std::mutex> lk(t.state()->mu);
  if (t.state()->cancelled) return false;
  t.state()->pid = pid;
  t.state()->ending = std::move(ending);
  t.state()->pidfd.reset(pidfd >= 0 ? ::fcntl(pidfd, F_DUPFD_CLOEXEC, 0) : -1);
  return true;
}

bool detach(const CancelToken& t) {
  std::lock_guard<std::mutex> lk(t.state()->mu);
  t.state()->pid = -1;
  t.state()->pidfd.reset();
  t.state()->ending.reset();
  return t.state()->cancelled;
}

void kill_process(int pidfd, pid_t pid) {
  if (pidfd >= 0) {
    ::syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, nullptr, 0);
  } else if (pid > 0) {
    ::kill(pid, SIGKILL);
  }
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

void set_watch(const CancelToken& t, int fd, std::function<void()> f) {
  std::lock_guard<std::mutex> lk(t.state()->mu);
  t.state()->watch_fd = fd;
  t.state()->on_watch = std::move(f);
}

int watch_fd(const CancelToken& t) {
  std::lock_guard<std::mutex> lk(t.state()->mu);
  return t.state()->on_watch ? t.state()->watch_fd : -1;
}

void fire_watch(const CancelToken& t) {
  std::function<void()> f;
  {
    std::lock_guard<std::mutex> lk(t.state()->mu);
    f.swap(t.state()->on_watch);
    t.state()->watch_fd = -1;
  }
  if (f) f();
}

RunResult cancelled_result() {
  return outcome::cancelled();
}

std::optional<RunResult> refused_before_start(const std::string& code, const std::string& stdin_text,
                                              const RunnerPolicy& policy, const CancelToken* cancel) {
  if (cancel && cancel->cancelled()) return cancelled_result();
  // CPython refuses such a source file; replacing bytes would run other code.
  if (auto bad = outcome::non_utf8_code(code)) return bad;
  if (stdin_text.size() > static_cast<std::size_t>(policy.max_stdin_kb) * 1024)
    return outcome::stdin_too_large(stdin_text.size(), policy.max_stdin_kb);
  return std::nullopt;
}

}  // namespace detail
}  // namespace spr
