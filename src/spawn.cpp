// Spawning a program with clone(CLONE_VM | CLONE_VFORK): the child borrows our memory until it execs, so its
// outcome is written into that memory instead of a pipe another thread's fork could hold open.
#include "detail/spawn.hpp"

#include <dlfcn.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include "common/fd.hpp"

namespace spr::detail {

bool executable_file(const char* path) {
  struct stat st{};
  return ::stat(path, &st) == 0 && S_ISREG(st.st_mode) && ::access(path, X_OK) == 0;
}

namespace {

constexpr int kMaxTarget = 16;       // targets are stdin..the worker's protocol fds, far below this
constexpr std::size_t kStackBytes = 64 << 10;  // the child calls only raw system calls
constexpr std::size_t kMaxSignals = 65;

// The kernel's struct sigaction (x86_64 and arm64 layout): handler, flags, restorer, mask. Only SIG_DFL is set.
struct KernelSigaction {
  void (*handler)(int);
  unsigned long flags;
  void (*restorer)();
  unsigned long mask;
};

// Shared with the child (CLONE_VM): inputs prepared here, and where the child says which step failed.
struct ChildArgs {
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  int sources[kMaxTarget] = {};
  int targets[kMaxTarget] = {};
  int count = 0;
  int close_from = 0;  // every descriptor from here up is closed before exec
  pid_t parent = 0;
  bool own_group = false, die_with_parent = false, no_core = false;
  // Out: set by the child just before it exits without exec.
  const char* failed_step = nullptr;
  int failed_errno = 0;
};

// The child: on its own stack, sharing our memory and our thread's TLS while this thread is suspended. Raw
// system calls only (no libc wrapper that a sanitizer or an atfork handler could hook), no allocation, no
// return: exec or exit.
__attribute__((no_sanitize("address", "thread", "undefined"))) int child_main(void* p) {
  auto* a = static_cast<ChildArgs*>(p);
  auto fail = [a](const char* step, long rc) {
    a->failed_step = step;
    a->failed_errno = rc < 0 ? errno : 0;
    ::syscall(SYS_exit, 127);
  };
  long rc = 0;
  // Every signal back to SIG_DFL before the mask is cleared: a handler of ours must not run here, and an ignored
  // signal stays ignored across exec (an ignored SIGCHLD makes the worker's own waits fail). All of them, the C
  // library's own real-time ones included (a host's parent may have left those ignored too).
  for (int sig = 1; sig < static_cast<int>(kMaxSignals); ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    KernelSigaction dfl{};
    dfl.handler = SIG_DFL;
    if ((rc = ::syscall(SYS_rt_sigaction, sig, &dfl, nullptr, sizeof dfl.mask)) != 0) fail("rt_sigaction", rc);
  }
  // Sources were moved to close_from and above: no dup3 below clobbers a source still to be used.
  for (int i = 0; i < a->count; ++i)
    if ((rc = ::syscall(SYS_dup3, a->sources[i], a->targets[i], 0)) < 0) fail("dup3", rc);
  if (a->own_group && (rc = ::syscall(SYS_setpgid, 0, 0)) != 0) fail("setpgid", rc);
  if (a->die_with_parent) {
    if ((rc = ::syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0)) != 0) fail("prctl(PR_SET_PDEATHSIG)", rc);
    if (::syscall(SYS_getppid) != a->parent) {
      errno = ESRCH;
      fail("the spawning process exited", -1);
    }
  }
  if (a->no_core) {
    const struct rlimit zero{0, 0};
    if ((rc = ::syscall(SYS_prlimit64, 0, RLIMIT_CORE, &zero, nullptr)) != 0) fail("prlimit(RLIMIT_CORE)", rc);
  }
  // Everything else goes, close-on-exec or not (Linux 5.9; older kernels get one close per possible number).
  if (::syscall(SYS_close_range, a->close_from, ~0U, 0) != 0) {
    struct rlimit nofile{};
    const long top = ::syscall(SYS_prlimit64, 0, RLIMIT_NOFILE, nullptr, &nofile) == 0 && nofile.rlim_cur < 65536
                         ? static_cast<long>(nofile.rlim_cur)
                         : 65536;
    for (long fd = a->close_from; fd < top; ++fd) ::syscall(SYS_close, fd);
  }
  // The program starts from a known state, not the host's: no signal blocked (a host that blocks SIGALRM for
  // sigwait() would otherwise disarm the worker's own timeout), and umask 022: the worker builds its own root
  // with mkdir and mount points that its sandbox identity must traverse (a host's umask 077 made them 0700, and
  // every subinterpreter worker died at start).
  ::syscall(SYS_umask, 022);
  // Nor the host's raised priority: a supervisor started at nice -5 (as root) does not give untrusted code a claim on
  // the CPU over the rest of the machine; it starts at nice 0. A lowered one stays (a host run at nice 10 keeps its
  // workers there: going back to 0 needs a privilege it may not have). The raw call answers 20 - nice.
  if (::syscall(SYS_getpriority, PRIO_PROCESS, 0) > 20 && (rc = ::syscall(SYS_setpriority, PRIO_PROCESS, 0, 0)) != 0)
    fail("setpriority", rc);
  const unsigned long none = 0;
  if ((rc = ::syscall(SYS_rt_sigprocmask, SIG_SETMASK, &none, nullptr, sizeof none)) != 0) fail("rt_sigprocmask", rc);
  rc = ::syscall(SYS_execve, a->path, a->argv, a->envp);
  fail("execve", rc);
  return 127;
}

// Unmaps the child's stack when spawn_program() returns (the child has exec'd or exited by then: CLONE_VFORK).
struct Stack {
  void* base = MAP_FAILED;
  Stack() : base(::mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0)) {}
  ~Stack() {
    if (base != MAP_FAILED) ::munmap(base, kStackBytes);
  }
  Stack(const Stack&) = delete;
  Stack& operator=(const Stack&) = delete;
  void* top() const { return static_cast<char*>(base) + kStackBytes; }  // stacks grow down on x86_64 and arm64
};

// Every signal blocked for the spawn's length: none may run one of our handlers on the child's stack.
struct BlockAll {
  sigset_t old{};
  int rc;
  BlockAll() {
    sigset_t all;
    sigfillset(&all);
    rc = ::pthread_sigmask(SIG_SETMASK, &all, &old);
  }
  ~BlockAll() {
    if (rc == 0) ::pthread_sigmask(SIG_SETMASK, &old, nullptr);
  }
  BlockAll(const BlockAll&) = delete;
  BlockAll& operator=(const BlockAll&) = delete;
};

[[noreturn]] void fail(const char* step, int err) { throw std::system_error(err, std::generic_category(), step); }

// ThreadSanitizer intercepts clone() and treats the child as a fork child, resetting its own state; with CLONE_VM
// that state is the parent's, and every report after a spawn was noise. Its builds call the C library's clone
// directly (the child runs no instrumented code: child_main is not instrumented and makes raw system calls).
using CloneFn = int (*)(int (*)(void*), void*, int, void*, ...);
CloneFn libc_clone() {
#if defined(__SANITIZE_THREAD__)
  static const CloneFn real = [] {
    void* libc = ::dlopen("libc.so.6", RTLD_NOW | RTLD_NOLOAD);
    void* f = libc ? ::dlsym(libc, "clone") : nullptr;
    return f ? reinterpret_cast<CloneFn>(f) : static_cast<CloneFn>(&::clone);
  }();
  return real;
#else
  return &::clone;
#endif
}

}  // namespace

pid_t spawn_program(const SpawnPlan& plan) {
  if (plan.fds.size() > static_cast<std::size_t>(kMaxTarget)) fail("too many descriptors", EINVAL);
  ChildArgs a;
  a.path = plan.path.c_str();
  std::vector<char*> argv;
  for (const auto& s : plan.argv) argv.push_back(const_cast<char*>(s.c_str()));
  argv.push_back(nullptr);
  char* envp[] = {nullptr};  // empty: nothing of the caller's environment reaches the program
  a.argv = argv.data();
  a.envp = envp;
  // Copies of the sources above every target, close-on-exec here (dup3 clears the flag on the target).
  std::vector<Fd> moved;
  a.close_from = kMaxTarget;
  for (const auto& [source, target] : plan.fds) {
    if (target < 0 || target >= kMaxTarget) fail("descriptor target out of range", EINVAL);
    Fd copy(::fcntl(source, F_DUPFD_CLOEXEC, kMaxTarget));
    if (!copy) fail("fcntl(F_DUPFD_CLOEXEC)", errno);
    a.sources[a.count] = copy.get();
    a.targets[a.count++] = target;
    moved.push_back(std::move(copy));
  }
  a.parent = ::getpid();
  a.own_group = plan.own_group;
  a.die_with_parent = plan.die_with_parent;
  a.no_core = plan.no_core;
  const Stack stack;
  if (stack.base == MAP_FAILED) fail("mmap of the spawn stack", errno);
  pid_t pid = -1;
  int clone_errno = 0;
  {
    const BlockAll blocked;
    if (blocked.rc != 0) fail("pthread_sigmask", blocked.rc);
    pid = libc_clone()(child_main, stack.top(), CLONE_VM | CLONE_VFORK | SIGCHLD, &a);
    clone_errno = errno;
  }
  if (pid < 0) fail("clone", clone_errno);
  // CLONE_VFORK: we run again only once the child has exec'd or exited, so what it wrote is final.
  const char* step = *static_cast<const char* volatile*>(&a.failed_step);
  if (step) {
    const int err = *static_cast<volatile int*>(&a.failed_errno);
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    fail(step, err);
  }
  return pid;
}

}  // namespace spr::detail
