// PID namespace: the worker is PID 2 of a namespace of its own under a minimal init (PID 1, which never runs user
// code), so nothing a run starts or stops outlives the namespace; a keeper outside ties it to the supervisor.
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::pid {
namespace {

volatile sig_atomic_t g_init = 0;

// The keeper's parent-death signal: the supervisor went. Killing PID 1 ends every process of the namespace, the
// worker included, whatever the worker did to its own parent-death signal or its run state (stopped, orphaned).
extern "C" void on_supervisor_gone(int) {
  if (g_init > 0) ::kill(g_init, SIGKILL);
  ::_exit(137);
}

void close_from(int first) { ::syscall(SYS_close_range, static_cast<unsigned>(first), ~0U, 0U); }

// Ends this process as `status` ended (exit code or signal), so the supervisor sees the worker's own end.
[[noreturn]] void end_like(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);  // no core: RLIMIT_CORE is 0
    ::signal(sig, SIG_DFL);
    sigset_t set;
    ::sigemptyset(&set);
    ::sigaddset(&set, sig);
    ::sigprocmask(SIG_UNBLOCK, &set, nullptr);
    ::raise(sig);
    ::_exit(128 + sig);
  }
  ::_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 70);
}

// PID 1: reaps whatever the namespace leaves behind and, when the worker ends, hands its status to the keeper and
// ends (taking the namespace with it). Signals from inside the namespace do not reach a PID 1 without handlers.
[[noreturn]] void init(pid_t worker, int status_fd) {
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // the keeper is ours and never runs user code; failing this leaves the keeper's kill
  for (;;) {
    int status = 0;
    const pid_t done = ::waitpid(-1, &status, 0);
    if (done == worker) {
      [[maybe_unused]] ssize_t n = ::write(status_fd, &status, sizeof status);
      ::_exit(0);
    }
    if (done < 0 && errno != EINTR) ::_exit(70);
  }
}

// Waits until init ends or the supervisor's end of the protocol socket closes (`lifeline`: a copy of the worker's
// end, never read; its peer's close shows as POLLRDHUP), then ends the namespace in the second case. A supervisor
// that may no longer signal the keeper (it dropped root after starting the worker: its kill and its death's
// parent-death signal both fail the kernel's permission check) still ends the namespace by closing its end, as
// its kill_and_reap does first and its exit does anyway (red team round 17). Without a pidfd: waitpid alone.
void watch(pid_t init_pid, int lifeline) {
  const int init_fd = static_cast<int>(::syscall(SYS_pidfd_open, init_pid, 0));
  if (init_fd < 0 || lifeline < 0) return;
  pollfd ps[2] = {{init_fd, POLLIN, 0}, {lifeline, POLLRDHUP, 0}};
  for (;;) {
    const int r = ::poll(ps, 2, -1);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 || ps[0].revents) return;
    if (ps[1].revents) on_supervisor_gone(SIGTERM);
  }
}

// The keeper, outside the namespace, is the process the supervisor started and waits for.
[[noreturn]] void keep(pid_t init_pid, pid_t supervisor, int status_fd, int lifeline) {
  g_init = init_pid;
  struct sigaction sa {};
  sa.sa_handler = on_supervisor_gone;
  ::sigemptyset(&sa.sa_mask);
  // If this fails, the spawn's SIGKILL stays the keeper's parent-death signal, and init's own (SIGKILL on the
  // keeper's death) still ends the namespace.
  if (::sigaction(SIGTERM, &sa, nullptr) == 0) ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  if (::getppid() != supervisor) on_supervisor_gone(SIGTERM);
  watch(init_pid, lifeline);
  int status = 0;
  while (::waitpid(init_pid, &status, 0) < 0) {
    if (errno != EINTR) ::_exit(70);
  }
  int worker_status = 0;
  if (::read(status_fd, &worker_status, sizeof worker_status) == static_cast<ssize_t>(sizeof worker_status))
    end_like(worker_status);
  end_like(status);  // init itself was killed: say so
}

}  // namespace

LayerStatus enter() {
  const char* name = "pid";
  const pid_t supervisor = ::getppid();
  int status_pipe[2];
  if (::pipe2(status_pipe, O_CLOEXEC) != 0) return inactive(name, errno_text("pipe2", errno));
  if (::unshare(CLONE_NEWPID) != 0) {
    const int err = errno;
    ::close(status_pipe[0]);
    ::close(status_pipe[1]);
    return inactive(name, errno_text("unshare(CLONE_NEWPID)", err));
  }
  const pid_t init_pid = ::fork();
  if (init_pid < 0) {
    LayerStatus s = inactive(name, "failed half-way: " + errno_text("fork", errno));
    s.fatal = true;
    return s;
  }
  if (init_pid > 0) {
    // Only the worker talks to the supervisor: the protocol socket and the output buffer are its alone. The
    // keeper keeps a copy of the socket (fd 4) only to see the supervisor's end close (watch), and never reads it.
    ::close(status_pipe[1]);
    const int lifeline = ::dup2(3, 4);
    ::dup2(status_pipe[0], 3);
    close_from(5);
    keep(init_pid, supervisor, 3, lifeline);
  }
  ::close(status_pipe[0]);
  const pid_t worker = ::fork();
  if (worker < 0) ::_exit(70);  // the keeper sees init end without a status: the worker never said hello
  if (worker > 0) {
    ::dup2(status_pipe[1], 3);
    close_from(4);
    init(worker, 3);
  }
  ::close(status_pipe[1]);
  // The worker: it dies with init (and init with the keeper, the keeper with the supervisor).
  if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) {
    LayerStatus s = inactive(name, "failed half-way: " + errno_text("prctl(PR_SET_PDEATHSIG)", errno));
    s.fatal = true;
    return s;
  }
  if (::getppid() != 1) ::_exit(0);  // init already went
  return active(name, "PID 2 of a new PID namespace under a minimal init; everything in it dies with init, and "
                      "init with the supervisor");
}

}  // namespace spr::harden::pid
