// Fork isolation mode. A spare child is forked, set up (seccomp filter, timers) and warmed while
// the worker is idle; a request is then handed to it over a pipe. The parent keeps the warm
// interpreter, sets the child's rlimits for the run with prlimit, and kills it at the deadline.
#include "fork_runner.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstring>

#include "capture.hpp"
#include "deadline.hpp"
#include "detail/capture_layout.hpp"
#include "detail/frame.hpp"
#include "detail/wire.hpp"
#include "harden/harden.hpp"
#include "py.hpp"

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

void close_fd(int& fd) {
  if (fd >= 0) close(fd);
  fd = -1;
}

int reap(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return status;
}

// Code a spare runs before it is used, so that the copy-on-write faults of a typical run's
// first steps (builtins, dicts, the eval loop's caches) happen before the caller waits.
constexpr const char* kWarmUp = "import math, json\nresult = [math.sqrt(len(str(i))) for i in range(3)]\n";

}  // namespace

void ForkRunner::prepare() { child_filter_ = harden::prepare_child() == 0; }

std::uint64_t ForkRunner::address_space_now() const {
  if (statm_fd_ < 0) return 0;
  char buf[128] = {};
  ssize_t n = pread(statm_fd_, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  return std::strtoull(buf, nullptr, 10) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

void ForkRunner::child_main(int request_fd, int reply_fd) {
  PyOS_AfterFork_Child();
  close(detail::kProtocolFd);                   // the child never talks to the supervisor directly
  if (devnull_fd_ >= 0) dup2(devnull_fd_, 2);   // user code never reaches the host's stderr
  // Limits come later from the parent (prlimit): the stacked filter forbids raising them here.
  if (child_filter_ ? harden::apply_child(harden::RunLimits{}) != 0 : false) _exit(71);
  deadline::init();
  {
    py::Ref globals(PyDict_New());
    PyDict_SetItemString(globals.get(), "__builtins__", PyEval_GetBuiltins());
    py::Ref r(PyRun_String(kWarmUp, Py_file_input, globals.get(), globals.get()));
    PyErr_Clear();
  }
  std::string frame;
  if (detail::read_frame(request_fd, frame, detail::Clock::time_point::max()) != detail::IoStatus::ok) _exit(0);
  close(request_fd);
  json id = nullptr, nonce = nullptr;
  RunResult r;
  try {
    const json req = detail::parse_json(frame);
    id = req.at("id");
    nonce = req.at("nonce");
    Request rq;
    rq.id = id.get<std::uint64_t>();
    rq.code = req.at("code").get<std::string>();
    rq.input_data = req.value("input_data", json::object());
    rq.policy = req.at("policy") == last_policy_ ? last_parsed_ : RunnerPolicy::from_json(req.at("policy"));
    rq.policy.isolation = Isolation::fork;
    if (!prepare_capture(rq)) _exit(72);
    r = run_prepared(rq);
  } catch (const std::exception& e) {
    r = detail::failure(ErrorKind::bad_input, std::string("bad request: ") + e.what());
  }
  detail::write_frame(reply_fd, reply(id, nonce, r));
  _exit(0);
}

bool ForkRunner::fork_spare() {
  int req[2], rep[2];
  if (pipe2(req, O_CLOEXEC) != 0) return false;
  if (pipe2(rep, O_CLOEXEC) != 0) {
    close(req[0]);
    close(req[1]);
    return false;
  }
  PyOS_BeforeFork();
  const pid_t pid = fork();
  if (pid == 0) {
    close(req[1]);
    close(rep[0]);
    child_main(req[0], rep[1]);
  }
  PyOS_AfterFork_Parent();
  close(req[0]);
  close(rep[1]);
  if (pid < 0) {
    close(req[1]);
    close(rep[0]);
    return false;
  }
  spare_ = Spare{pid, req[1], rep[0]};
  return true;
}

void ForkRunner::discard(Spare& s, bool kill_it) {
  if (s.pid > 0) {
    if (kill_it) kill(s.pid, SIGKILL);
    reap(s.pid);
  }
  close_fd(s.request_fd);
  close_fd(s.reply_fd);
  s = Spare{};
}

std::string ForkRunner::run(const Request& req, const std::string& frame, const json& id, const json& nonce) {
  const RunnerPolicy& p = req.policy;
  if (!prepare_capture(req)) {  // the parent's view of the shared buffer, for a killed child's output
    RunResult r = detail::failure(ErrorKind::memory, "Memory limit exceeded", 2);
    r.resource_exceeded = true;
    return reply(id, nonce, r);
  }
  // A spare that died while idle (or was never made) is replaced now, on the caller's time.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (spare_.pid < 0 && !fork_spare())
      return reply(id, nonce, detail::failure(ErrorKind::worker_crashed, std::string("fork failed: ") + strerror(errno)));
    // The run's limits: the rlimit is the backstop, the allocator accounting gives the clean error.
    const std::uint64_t base = address_space_now();
    const rlimit as{base + (static_cast<std::uint64_t>(p.memory_limit_mb) << 20) + (256u << 20),
                    base + (static_cast<std::uint64_t>(p.memory_limit_mb) << 20) + (256u << 20)};
    const rlimit fsize{64u << 20, 64u << 20};
    const auto cpu_s = static_cast<rlim_t>(std::ceil(p.cpu_time_seconds)) + 1;
    const rlimit cpu{cpu_s, cpu_s + 1};
    bool ok = (!base || prlimit(spare_.pid, RLIMIT_AS, &as, nullptr) == 0) &&
              prlimit(spare_.pid, RLIMIT_FSIZE, &fsize, nullptr) == 0 &&
              (p.cpu_time_seconds <= 0 || prlimit(spare_.pid, RLIMIT_CPU, &cpu, nullptr) == 0);
    ok = ok && detail::write_frame(spare_.request_fd, frame) == detail::IoStatus::ok;
    if (ok) break;
    discard(spare_, true);
    if (attempt == 1)
      return reply(id, nonce, detail::failure(ErrorKind::worker_crashed, "the run's process could not be prepared"));
  }
  used_ = spare_;
  spare_ = Spare{};
  close_fd(used_.request_fd);

  const auto deadline = detail::Clock::now() + std::chrono::duration_cast<detail::Clock::duration>(
                                                   std::chrono::duration<double>(p.timeout_seconds + grace_));
  std::string payload;
  const detail::IoStatus s = detail::read_frame(used_.reply_fd, payload, deadline);
  if (s == detail::IoStatus::ok) return payload;  // reaped in after_reply(), off the caller's path

  if (s == detail::IoStatus::timeout) kill(used_.pid, SIGKILL);
  const int status = reap(used_.pid);
  used_.pid = -1;
  discard(used_, false);
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

void ForkRunner::after_reply(const Request& req) {
  // The used child exits right after replying; its teardown runs in its own context, so it is
  // reaped later without waiting, and the next spare is forked first.
  if (used_.pid > 0) exiting_.push_back(used_.pid);
  used_.pid = -1;
  discard(used_, false);
  precompile(req.code);  // the next spare inherits the compiled code
  const json policy = req.policy.to_json();
  if (policy != last_policy_) {
    last_policy_ = policy;
    last_parsed_ = req.policy;
  }
  if (spare_.pid < 0) fork_spare();
  for (auto it = exiting_.begin(); it != exiting_.end();) {
    int status = 0;
    const pid_t r = waitpid(*it, &status, WNOHANG);
    it = r == 0 ? it + 1 : exiting_.erase(it);
  }
}

}  // namespace spr::embed
