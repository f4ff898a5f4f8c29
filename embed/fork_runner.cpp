// Fork isolation mode. The parent keeps the warm interpreter; each child gets exact per-run
// rlimits and a stacked seccomp filter, and whatever it does dies with it.
#include "fork_runner.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "deadline.hpp"
#include "common/capture_layout.hpp"
#include "common/frame.hpp"
#include "common/wire.hpp"
#include "harden/harden.hpp"
#include "py.hpp"
#include "capture.hpp"

namespace spr::embed {

namespace {

std::string reply(const json& id, const json& nonce, const RunResult& r) {
  json j = detail::reply_from_result(r);
  j["id"] = id;
  j["nonce"] = nonce;
  return detail::dump_json(j);
}

std::string describe_signal(int sig) {
  const char* name = strsignal(sig);
  return "signal " + std::to_string(sig) + " (" + (name ? name : "?") + ")";
}

}  // namespace

void ForkRunner::prepare() { child_filter_ = harden::prepare_child() == 0; }

std::uint64_t ForkRunner::address_space_now() const {
  if (statm_fd_ < 0) return 0;
  char buf[128] = {};
  ssize_t n = pread(statm_fd_, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  return std::strtoull(buf, nullptr, 10) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

std::string ForkRunner::run(const Request& req, const json& id, const json& nonce) {
  const RunnerPolicy& p = req.policy;
  if (!prepare_capture(req)) {
    RunResult r = detail::failure(ErrorKind::memory, "Memory limit exceeded", 2);
    r.resource_exceeded = true;
    return reply(id, nonce, r);
  }
  int fds[2];
  if (pipe2(fds, O_CLOEXEC) != 0)
    return reply(id, nonce, detail::failure(ErrorKind::worker_crashed, std::string("pipe2 failed: ") + strerror(errno)));
  harden::RunLimits limits;
  // The rlimit is the backstop; the allocator accounting gives the clean "Memory limit exceeded".
  const std::uint64_t base = address_space_now();
  if (base) limits.address_space_bytes = base + (static_cast<std::uint64_t>(p.memory_limit_mb) << 20) + (256u << 20);
  if (p.cpu_time_seconds > 0) limits.cpu_seconds = static_cast<std::uint64_t>(std::ceil(p.cpu_time_seconds)) + 1;
  limits.file_size_bytes = 64u << 20;

  precompile(req.code);
  PyOS_BeforeFork();
  const pid_t pid = fork();
  if (pid == 0) {
    PyOS_AfterFork_Child();
    close(fds[0]);
    close(detail::kProtocolFd);  // the child never talks to the supervisor directly
    if (devnull_fd_ >= 0) dup2(devnull_fd_, 2);  // user code never reaches the host's stderr
    if (child_filter_) {
      if (harden::apply_child(limits) != 0) _exit(71);
    } else {
      harden::apply_rlimits(limits);
    }
    deadline::init();
    RunResult r = run_prepared(req);
    detail::write_frame(fds[1], reply(id, nonce, r));
    _exit(0);
  }
  PyOS_AfterFork_Parent();
  close(fds[1]);
  if (pid < 0) {
    close(fds[0]);
    return reply(id, nonce, detail::failure(ErrorKind::worker_crashed, std::string("fork failed: ") + strerror(errno)));
  }

  const auto deadline = detail::Clock::now() + std::chrono::duration_cast<detail::Clock::duration>(
                                                   std::chrono::duration<double>(p.timeout_seconds + grace_));
  std::string payload;
  const detail::IoStatus s = detail::read_frame(fds[0], payload, deadline);
  close(fds[0]);
  if (s == detail::IoStatus::ok) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return payload;
  }
  if (s == detail::IoStatus::timeout) kill(pid, SIGKILL);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  RunResult r;
  if (s == detail::IoStatus::timeout) {
    r = detail::timeout_result(p.timeout_seconds);
  } else if (WIFSIGNALED(status) && p.cpu_time_seconds > 0 &&
             (WTERMSIG(status) == SIGXCPU || WTERMSIG(status) == SIGKILL)) {
    r = detail::failure(ErrorKind::cpu_time,
                        "CPU time limit exceeded after " + detail::format_seconds(p.cpu_time_seconds) + "s", 124);
    r.resource_exceeded = true;
  } else if (WIFSIGNALED(status)) {
    r = detail::failure(ErrorKind::worker_crashed, "the run's process was killed by " + describe_signal(WTERMSIG(status)));
  } else {
    r = detail::failure(ErrorKind::worker_crashed,
                        "the run's process exited with status " + std::to_string(WEXITSTATUS(status)) + " without a reply");
  }
  r.isolation = Isolation::fork;
  capture::adopt_shared();
  r.stdout_text = capture::text(0);
  r.stderr_text = capture::text(1);
  r.stdout_truncated = capture::truncated(0);
  r.stderr_truncated = capture::truncated(1);
  return reply(id, nonce, r);
}

}  // namespace spr::embed
