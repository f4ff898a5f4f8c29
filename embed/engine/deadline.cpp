// Soft deadlines. A real signal aimed at the executing thread interrupts `while True: pass`
// on 3.11/3.12, where Py_AddPendingCall or PyErr_SetInterrupt from another thread does not.
#include "deadline.hpp"

#include <signal.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <initializer_list>

namespace spr::embed::deadline {

namespace {
// Per thread: each run thread has its own timers, delivered to it (SIGEV_THREAD_ID), its CPU clock
// being its own (CLOCK_THREAD_CPUTIME_ID). The handler runs on the thread the signal was aimed at.
thread_local timer_t g_wall{}, g_cpu{};
thread_local bool g_ready = false;
thread_local volatile sig_atomic_t g_wall_fired = 0, g_cpu_fired = 0;
thread_local bool g_wall_armed = false, g_cpu_armed = false;

// Chained in front of Python's own handler: records which limit fired, then lets Python
// schedule its handler (which raises TimeoutError at the next bytecode boundary).
struct sigaction g_py_alrm{}, g_py_vtalrm{};

void on_signal(int sig, siginfo_t* info, void* ctx) {
  // Only our POSIX timers count. SIGALRM from alarm()/setitimer() that a run set up (it may fire
  // during a later run) is ignored, so it can neither fake nor cut short another run's deadline.
  if (info == nullptr || info->si_code != SI_TIMER) return;
  struct sigaction& next = sig == SIGALRM ? g_py_alrm : g_py_vtalrm;
  (sig == SIGALRM ? g_wall_fired : g_cpu_fired) = 1;
  // CPython runs signal handlers only on the main thread of the main interpreter: a run thread's
  // deadline tripped there would raise in whatever the main thread runs next, not in this run. A run
  // thread's run is ended by the supervisor's hard deadline instead (as any 3.12+ sub-interpreter's is).
  if (::getpid() != static_cast<pid_t>(syscall(SYS_gettid))) return;
  if (next.sa_flags & SA_SIGINFO) {
    if (next.sa_sigaction) next.sa_sigaction(sig, info, ctx);
  } else if (next.sa_handler != SIG_DFL && next.sa_handler != SIG_IGN && next.sa_handler) {
    next.sa_handler(sig);
  }
}

bool make(clockid_t clock, int sig, timer_t* out) {
  sigevent ev{};
  ev.sigev_notify = SIGEV_THREAD_ID;
  ev.sigev_signo = sig;
  ev._sigev_un._tid = static_cast<pid_t>(syscall(SYS_gettid));
  return timer_create(clock, &ev, out) == 0;
}

itimerspec spec(double s) {
  itimerspec t{};
  if (s > 0) {
    double whole = std::floor(s);
    t.it_value.tv_sec = static_cast<time_t>(whole);
    t.it_value.tv_nsec = static_cast<long>((s - whole) * 1e9);
    if (t.it_value.tv_sec == 0 && t.it_value.tv_nsec == 0) t.it_value.tv_nsec = 1;
  }
  return t;
}
}  // namespace

bool init() {
  if (g_ready) {
    timer_delete(g_wall);
    timer_delete(g_cpu);
    g_ready = false;
  }
  // Interpose once: Python's handlers were installed by the bootstrap before this runs.
  static std::atomic<bool> chained{false};
  if (!chained) {
    struct sigaction sa{};
    sa.sa_sigaction = on_signal;
    sa.sa_flags = SA_SIGINFO;  // no SA_RESTART: a blocking call returns EINTR and Python checks signals
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGALRM, &sa, &g_py_alrm) != 0 || sigaction(SIGVTALRM, &sa, &g_py_vtalrm) != 0) return false;
    chained = true;
  }
  if (!make(CLOCK_MONOTONIC, SIGALRM, &g_wall)) return false;
  if (!make(CLOCK_THREAD_CPUTIME_ID, SIGVTALRM, &g_cpu)) {
    timer_delete(g_wall);
    return false;
  }
  g_ready = true;
  return true;
}

void arm(double wall_seconds, double cpu_seconds) {
  g_wall_fired = g_cpu_fired = 0;
  if (!g_ready) return;
  if (wall_seconds > 0) {
    itimerspec w = spec(wall_seconds);
    g_wall_armed = timer_settime(g_wall, 0, &w, nullptr) == 0;
  }
  if (cpu_seconds > 0) {
    itimerspec c = spec(cpu_seconds);
    g_cpu_armed = timer_settime(g_cpu, 0, &c, nullptr) == 0;
  }
}

void disarm() {
  if (!g_ready) return;
  itimerspec zero{};
  if (g_wall_armed) timer_settime(g_wall, 0, &zero, nullptr);
  if (g_cpu_armed) timer_settime(g_cpu, 0, &zero, nullptr);
  g_wall_armed = g_cpu_armed = false;
}

void cancel_interval_timers() {
  itimerval zero{};
  for (int which : {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF}) {
    itimerval cur{};
    if (getitimer(which, &cur) == 0 && (cur.it_value.tv_sec || cur.it_value.tv_usec)) setitimer(which, &zero, nullptr);
  }
}

bool wall_fired() { return g_wall_fired != 0; }
bool cpu_fired() { return g_cpu_fired != 0; }

}  // namespace spr::embed::deadline
