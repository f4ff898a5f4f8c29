// Seccomp-bpf allow-list: the worker may make only the system calls in kTable; everything else answers EPERM.
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <sched.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <map>
#include <set>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::seccomp {
namespace {

// What a rule does when its syscall (and argument test) matches. Anything no rule matches gets the default:
// EPERM (a clean PermissionError in Python), or in a derivation build (SPR_SECCOMP_LOG) it is allowed and
// logged by the kernel, so a run of the suite lists what the table lacks (scripts/seccomp-derive.py).
enum class Act {
  allow,
  refuse,  // EPERM, named here so the refusal is documented; the default gives the same answer
  enosys,  // ENOSYS: glibc then falls back to an older call whose arguments a filter can read
  kill,    // SECCOMP_RET_KILL_PROCESS: calls only an attack makes; nothing in CPython or its libraries uses them
};

// Which workers a row applies to.
enum class When {
  always,
  threads,       // workers whose runs may start threads (fork, process)
  fork_parent,   // the fork-mode worker: it forks, limits and kills one child per run (the child stacks its own filter)
  not_fork,      // every other worker: signals, limits and scheduling only for itself
  network,       // allow_network
  unix_sockets,  // allow_unix_sockets
};

// The argument test of a row. Int arguments (a pid, a command, an option, a family) are compared on their low 32
// bits, as the kernel reads them, so a crafted upper half neither passes nor dodges a test.
enum class Arg {
  any,
  a0_eq,          // a0 == value
  a0_self,        // a0 == this process's pid (captured when the filter is built)
  a0_eq_a1_eq,    // a0 == value && a1 == extra (64 bits: prctl's arg2, setpriority's who)
  a1_eq,          // a1 == value (an fcntl/ioctl command)
  a1_eq_a2_clear, // a1 == value && (a2 & extra) == 0 (fcntl F_SETFL without O_ASYNC)
  a0_masked,      // (a0 & extra) == value (clone flags)
  a0_eq_a1_type,  // a0 == value && (a1 & 0xf) == extra (socket family and type)
  a2_null,        // a2 == 0 (prlimit64 reading, not setting)
  a2_eq,          // a2 == value (bind's address length)
  mode_a1,        // (a1 & (S_ISUID|S_ISGID)) == 0: a mode argument (creat)
  mode_a2,        // the same for a2 (open)
  mode_a3,        // the same for a3 (openat)
};

struct Rule {
  const char* syscall;
  Act act;
  When when = When::always;
  Arg arg = Arg::any;
  std::uint64_t value = 0;
  std::uint64_t extra = 0;
};

constexpr std::uint64_t kNamespaceFlags = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
                                          CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWTIME;
constexpr std::uint64_t kSetId = S_ISUID | S_ISGID;

// THE TABLE. Derived, then reviewed, from a run of the whole test suite (every isolation mode, sessions,
// stdlib's 285 modules, numpy, pandas, sqlite3, zoneinfo, venvs, the red-team suites, faults, soak) under a
// filter whose default action was SECCOMP_RET_LOG: build with -DSPR_SECCOMP_LOG=ON and run
// scripts/seccomp-derive.py, which registers as the kernel's audit listener, runs ctest and prints each
// syscall a worker made that no row below allows (audit records of type 1326). A logged call is added here
// only with a reason (the comment of its group); argument tests were read from strace of the calling test.
// Calls not listed answer EPERM. Kernels add calls every release; an allow-list refuses them until reviewed.
constexpr Rule kTable[] = {
    // Memory: the allocator, the loader's mappings (kept from start-up), numpy's large arrays, the mmap module.
    {"brk", Act::allow}, {"mmap", Act::allow}, {"munmap", Act::allow}, {"mremap", Act::allow},
    {"mprotect", Act::allow}, {"madvise", Act::allow}, {"msync", Act::allow}, {"mincore", Act::allow},
    {"membarrier", Act::allow},

    // Reading and writing what is open: files, pipes, the protocol socket, the capture buffer.
    {"read", Act::allow}, {"write", Act::allow}, {"pread64", Act::allow}, {"pwrite64", Act::allow},
    {"readv", Act::allow}, {"writev", Act::allow}, {"preadv", Act::allow}, {"pwritev", Act::allow},
    {"preadv2", Act::allow}, {"pwritev2", Act::allow}, {"lseek", Act::allow}, {"close", Act::allow},
    {"close_range", Act::allow}, {"dup", Act::allow}, {"dup2", Act::allow}, {"dup3", Act::allow},
    {"fstat", Act::allow}, {"fstatfs", Act::allow}, {"ftruncate", Act::allow}, {"fallocate", Act::allow},
    {"fsync", Act::allow}, {"fdatasync", Act::allow}, {"fadvise64", Act::allow}, {"readahead", Act::allow},
    {"getdents64", Act::allow}, {"sendfile", Act::allow}, {"copy_file_range", Act::allow},
    {"splice", Act::allow}, {"tee", Act::allow},
    // Not `flock`: it locks a read-only descriptor too, and the runtime's files are the host's inodes (bound into
    // the own root), so a run could hold a lock a host program waits on. (fcntl locks stay: sqlite needs them.)

    // Paths (Landlock decides which): open, stat, list, create and remove files in the scratch directory.
    // A mode with set-user-ID or set-group-ID is refused: the run's identity may be the host's.
    {"openat", Act::allow, When::always, Arg::mode_a3}, {"open", Act::allow, When::always, Arg::mode_a2},
    {"creat", Act::allow, When::always, Arg::mode_a1},
    {"stat", Act::allow}, {"lstat", Act::allow}, {"newfstatat", Act::allow}, {"statx", Act::allow},
    {"statfs", Act::allow}, {"access", Act::allow}, {"faccessat", Act::allow}, {"faccessat2", Act::allow},
    {"readlink", Act::allow}, {"readlinkat", Act::allow}, {"getcwd", Act::allow}, {"chdir", Act::allow},
    {"fchdir", Act::allow}, {"mkdir", Act::allow}, {"mkdirat", Act::allow}, {"rmdir", Act::allow},
    {"unlink", Act::allow}, {"unlinkat", Act::allow}, {"rename", Act::allow}, {"renameat", Act::allow},
    {"renameat2", Act::allow}, {"link", Act::allow}, {"linkat", Act::allow}, {"symlink", Act::allow},
    {"symlinkat", Act::allow}, {"truncate", Act::allow}, {"umask", Act::allow},
    // Reading extended attributes is metadata like stat (shutil.copystat lists them).
    {"getxattr", Act::allow}, {"lgetxattr", Act::allow}, {"fgetxattr", Act::allow},
    {"listxattr", Act::allow}, {"llistxattr", Act::allow}, {"flistxattr", Act::allow},

    // Waiting: select/selectors/asyncio, the fork parent's and the engine's waits, eventfd and timerfd.
    {"poll", Act::allow}, {"ppoll", Act::allow}, {"select", Act::allow}, {"pselect6", Act::allow},
    {"epoll_create", Act::allow}, {"epoll_create1", Act::allow}, {"epoll_ctl", Act::allow},
    {"epoll_wait", Act::allow}, {"epoll_pwait", Act::allow}, {"epoll_pwait2", Act::allow},
    {"pipe", Act::allow}, {"pipe2", Act::allow}, {"eventfd", Act::allow}, {"eventfd2", Act::allow},
    {"timerfd_create", Act::allow}, {"timerfd_settime", Act::allow}, {"timerfd_gettime", Act::allow},

    // Sockets already open (the protocol socket, a socketpair, the sockets allow_network lets a run open).
    {"sendto", Act::allow}, {"recvfrom", Act::allow}, {"sendmsg", Act::allow}, {"recvmsg", Act::allow},
    {"sendmmsg", Act::allow}, {"recvmmsg", Act::allow}, {"shutdown", Act::allow}, {"getsockname", Act::allow},
    {"getpeername", Act::allow}, {"getsockopt", Act::allow}, {"setsockopt", Act::allow},
    {"connect", Act::allow}, {"listen", Act::allow}, {"accept", Act::allow}, {"accept4", Act::allow},
    // bind() names a TCP or UDP socket (an address of sizeof(sockaddr_in) or sizeof(sockaddr_in6) bytes).
    // A unix socket (a socketpair end) would take a name in the network namespace, which allow_network
    // shares with the host: an abstract name a host daemon binds. The filter cannot read the address, only
    // its length, so a unix name of exactly 14 or 26 bytes still binds there (as a TCP port would).
    {"bind", Act::allow, When::always, Arg::a2_eq, sizeof(sockaddr_in)},
    {"bind", Act::allow, When::always, Arg::a2_eq, sizeof(sockaddr_in6)},
    {"bind", Act::allow, When::unix_sockets},
    // A connected stream pair reaches nothing outside the process: asyncio's self-pipe, socket.socketpair().
    // Not a datagram pair without allow_unix_sockets: connect() or sendto() on one reaches a host socket by path.
    {"socketpair", Act::allow, When::always, Arg::a0_eq_a1_type, AF_UNIX, SOCK_STREAM},
    {"socketpair", Act::allow, When::unix_sockets, Arg::a0_eq, AF_UNIX},
    // New sockets: TCP and UDP with allow_network only; unix sockets (which reach the host's daemons by path,
    // whatever the network namespace) with allow_unix_sockets only. Netlink, packet and raw sockets never.
    {"socket", Act::allow, When::network, Arg::a0_eq_a1_type, AF_INET, SOCK_STREAM},
    {"socket", Act::allow, When::network, Arg::a0_eq_a1_type, AF_INET, SOCK_DGRAM},
    {"socket", Act::allow, When::network, Arg::a0_eq_a1_type, AF_INET6, SOCK_STREAM},
    {"socket", Act::allow, When::network, Arg::a0_eq_a1_type, AF_INET6, SOCK_DGRAM},
    {"socket", Act::allow, When::unix_sockets, Arg::a0_eq, AF_UNIX},

    // Time and timers: time.sleep, the engine's deadlines (timer_create, setitimer), signal.alarm.
    {"clock_gettime", Act::allow}, {"clock_getres", Act::allow}, {"clock_nanosleep", Act::allow},
    {"nanosleep", Act::allow}, {"gettimeofday", Act::allow}, {"time", Act::allow}, {"times", Act::allow},
    {"getitimer", Act::allow}, {"setitimer", Act::allow}, {"alarm", Act::allow}, {"timer_create", Act::allow},
    {"timer_settime", Act::allow}, {"timer_gettime", Act::allow}, {"timer_getoverrun", Act::allow},
    {"timer_delete", Act::allow},

    // Facts about this process and machine: os.getpid, os.cpu_count (OpenBLAS reads its affinity), resource,
    // platform.uname, os.urandom.
    {"getpid", Act::allow}, {"getppid", Act::allow}, {"gettid", Act::allow}, {"getuid", Act::allow},
    {"geteuid", Act::allow}, {"getgid", Act::allow}, {"getegid", Act::allow}, {"getgroups", Act::allow},
    {"getresuid", Act::allow}, {"getresgid", Act::allow}, {"getpgrp", Act::allow}, {"getpgid", Act::allow},
    {"getsid", Act::allow}, {"getrusage", Act::allow}, {"sysinfo", Act::allow}, {"uname", Act::allow},
    {"getcpu", Act::allow}, {"getrandom", Act::allow}, {"capget", Act::allow}, {"getrlimit", Act::allow},
    {"getpriority", Act::allow}, {"ioprio_get", Act::allow}, {"sched_getaffinity", Act::allow},
    {"sched_getparam", Act::allow}, {"sched_getscheduler", Act::allow}, {"sched_getattr", Act::allow},
    {"sched_get_priority_max", Act::allow}, {"sched_get_priority_min", Act::allow},
    {"sched_rr_get_interval", Act::allow}, {"sched_yield", Act::allow},
    {"prlimit64", Act::allow, When::not_fork, Arg::a2_null},
    // Its own scheduling only (named 0): a run could otherwise slow its warm parent and every later run, or by
    // group or user the host's processes.
    {"sched_setscheduler", Act::allow, When::always, Arg::a0_eq, 0},
    {"sched_setparam", Act::allow, When::always, Arg::a0_eq, 0},
    {"sched_setattr", Act::allow, When::always, Arg::a0_eq, 0},
    {"sched_setaffinity", Act::allow, When::always, Arg::a0_eq, 0},
    {"setpriority", Act::allow, When::always, Arg::a0_eq_a1_eq, PRIO_PROCESS, 0},
    {"ioprio_set", Act::allow, When::always, Arg::a0_eq_a1_eq, 1 /* IOPRIO_WHO_PROCESS */, 0},

    // Signals: handlers (the engine's deadlines, faulthandler's alternate stack), and sending them to itself
    // only. The fork parent kills its children by pid; their own filter limits them to themselves.
    {"rt_sigaction", Act::allow}, {"rt_sigprocmask", Act::allow}, {"rt_sigreturn", Act::allow},
    {"rt_sigpending", Act::allow}, {"rt_sigtimedwait", Act::allow}, {"rt_sigsuspend", Act::allow},
    {"sigaltstack", Act::allow}, {"pause", Act::allow}, {"restart_syscall", Act::allow},
    {"kill", Act::allow, When::not_fork, Arg::a0_self}, {"tgkill", Act::allow, When::not_fork, Arg::a0_self},
    {"tkill", Act::allow, When::not_fork, Arg::a0_self},
    {"rt_sigqueueinfo", Act::allow, When::not_fork, Arg::a0_self},
    {"rt_tgsigqueueinfo", Act::allow, When::not_fork, Arg::a0_self},
    {"pidfd_open", Act::allow, When::not_fork, Arg::a0_self},
    {"kill", Act::allow, When::fork_parent}, {"tgkill", Act::allow, When::fork_parent},
    {"tkill", Act::allow, When::fork_parent}, {"rt_sigqueueinfo", Act::allow, When::fork_parent},
    {"rt_tgsigqueueinfo", Act::allow, When::fork_parent}, {"pidfd_open", Act::allow, When::fork_parent},
    {"wait4", Act::allow}, {"waitid", Act::allow},

    // Threads (glibc's pthread_create) where runs may start them; never a new namespace.
    {"clone", Act::allow, When::threads, Arg::a0_masked, CLONE_THREAD, CLONE_THREAD | kNamespaceFlags},
    // clone3 passes its flags in memory, out of a filter's reach: ENOSYS makes glibc use clone().
    {"clone3", Act::enosys},
    {"futex", Act::allow}, {"futex_waitv", Act::allow}, {"set_robust_list", Act::allow},
    {"get_robust_list", Act::allow}, {"set_tid_address", Act::allow}, {"rseq", Act::allow},
    {"arch_prctl", Act::allow}, {"exit", Act::allow}, {"exit_group", Act::allow},

    // The fork parent: one child per run (fork() is clone without CLONE_THREAD), which then lowers its own
    // limits and stacks its own filter (no_new_privs, seccomp); its limits are set by the parent (prlimit64).
    {"clone", Act::allow, When::fork_parent, Arg::a0_masked, 0, CLONE_THREAD | kNamespaceFlags},
    {"prlimit64", Act::allow, When::fork_parent}, {"setrlimit", Act::allow, When::fork_parent},
    {"seccomp", Act::allow, When::fork_parent, Arg::a0_eq, SECCOMP_SET_MODE_FILTER},
    {"prctl", Act::allow, When::fork_parent, Arg::a0_eq, PR_SET_NO_NEW_PRIVS},

    // prctl: names and read-only queries. The parent-death signal may only be (re)set to SIGKILL: clearing it
    // would let a stopped process outlive its supervisor.
    {"prctl", Act::allow, When::always, Arg::a0_eq_a1_eq, PR_SET_PDEATHSIG, SIGKILL},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_GET_PDEATHSIG},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_SET_NAME},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_GET_NAME},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_GET_DUMPABLE},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_GET_SECCOMP},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_GET_NO_NEW_PRIVS},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_CAPBSET_READ},
    {"prctl", Act::allow, When::always, Arg::a0_eq, PR_GET_TIMERSLACK},

    // fcntl: descriptor flags, locks (sqlite3), pipe sizes and seals. Not F_SETOWN/F_SETOWN_EX/F_SETSIG/O_ASYNC
    // (signal-driven I/O would signal a process no kill() rule sees), F_SETLEASE (a lease break signals too)
    // or F_NOTIFY (watching a directory, like inotify). Not F_OFD_SETLK/F_OFD_SETLKW: an open-file-description
    // lock belongs to the description, not the process, and a fork child's /dev/null (the host's inode) shares
    // its description with the worker: the lock outlived the run and blocked host programs locking /dev/null.
    // A process's own locks (F_SETLK, what sqlite3 and fcntl.lockf use) end with it.
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_DUPFD}, {"fcntl", Act::allow, When::always, Arg::a1_eq, F_DUPFD_CLOEXEC},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_GETFD}, {"fcntl", Act::allow, When::always, Arg::a1_eq, F_SETFD},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_GETFL},
    {"fcntl", Act::allow, When::always, Arg::a1_eq_a2_clear, F_SETFL, O_ASYNC},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_GETLK}, {"fcntl", Act::allow, When::always, Arg::a1_eq, F_SETLK},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_SETLKW}, {"fcntl", Act::allow, When::always, Arg::a1_eq, F_OFD_GETLK},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_GETOWN},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_GETPIPE_SZ},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_SETPIPE_SZ},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_GET_SEALS},
    {"fcntl", Act::allow, When::always, Arg::a1_eq, F_ADD_SEALS},

    // ioctl: isatty and terminal size (io, shutil), bytes waiting, close-on-exec and non-blocking flags. Not
    // FIOSETOWN/SIOCSPGRP/FIOASYNC (signal-driven I/O), nor any device's commands.
    {"ioctl", Act::allow, When::always, Arg::a1_eq, TCGETS}, {"ioctl", Act::allow, When::always, Arg::a1_eq, TIOCGWINSZ},
    {"ioctl", Act::allow, When::always, Arg::a1_eq, FIONREAD}, {"ioctl", Act::allow, When::always, Arg::a1_eq, FIONBIO},
    {"ioctl", Act::allow, When::always, Arg::a1_eq, FIOCLEX}, {"ioctl", Act::allow, When::always, Arg::a1_eq, FIONCLEX},

    // Refused, listed so that the refusal is on record (and kept in a derivation build): a file's mode, owner,
    // times and extended attributes (Landlock has no right for them, and the run's identity may own host files),
    // watching other parties' files, exec, leaving the supervisor's process group, anonymous files the memory
    // accounting does not see, FIFOs and device nodes, new namespaces.
    {"chmod", Act::refuse}, {"fchmod", Act::refuse}, {"fchmodat", Act::refuse}, {"fchmodat2", Act::refuse},
    {"chown", Act::refuse}, {"fchown", Act::refuse}, {"lchown", Act::refuse}, {"fchownat", Act::refuse},
    {"utime", Act::refuse}, {"utimes", Act::refuse}, {"utimensat", Act::refuse}, {"futimesat", Act::refuse},
    {"setxattr", Act::refuse}, {"lsetxattr", Act::refuse}, {"fsetxattr", Act::refuse},
    {"removexattr", Act::refuse}, {"lremovexattr", Act::refuse}, {"fremovexattr", Act::refuse},
    {"inotify_init", Act::refuse}, {"inotify_init1", Act::refuse}, {"inotify_add_watch", Act::refuse},
    {"inotify_rm_watch", Act::refuse}, {"fanotify_init", Act::refuse}, {"fanotify_mark", Act::refuse},
    {"execve", Act::refuse}, {"execveat", Act::refuse}, {"fork", Act::refuse}, {"vfork", Act::refuse},
    {"setsid", Act::refuse}, {"setpgid", Act::refuse}, {"memfd_create", Act::refuse},
    {"mknod", Act::refuse}, {"mknodat", Act::refuse}, {"unshare", Act::refuse}, {"setns", Act::refuse},
    {"chroot", Act::refuse}, {"pidfd_send_signal", Act::refuse}, {"pidfd_getfd", Act::refuse},
    {"name_to_handle_at", Act::refuse}, {"syslog", Act::refuse}, {"sync", Act::refuse}, {"syncfs", Act::refuse},

    // Killed on sight: debugging or reading other processes, loading code into the kernel, kernel attack
    // surface no library needs (io_uring, userfaultfd, perf, keys, file handles), and mounts once set up.
    {"ptrace", Act::kill}, {"process_vm_readv", Act::kill}, {"process_vm_writev", Act::kill},
    {"bpf", Act::kill}, {"perf_event_open", Act::kill}, {"userfaultfd", Act::kill},
    {"io_uring_setup", Act::kill}, {"io_uring_enter", Act::kill}, {"io_uring_register", Act::kill},
    {"kexec_load", Act::kill}, {"kexec_file_load", Act::kill}, {"init_module", Act::kill},
    {"finit_module", Act::kill}, {"delete_module", Act::kill}, {"mount", Act::kill}, {"umount2", Act::kill},
    {"pivot_root", Act::kill}, {"fsopen", Act::kill}, {"fsconfig", Act::kill}, {"fsmount", Act::kill},
    {"fspick", Act::kill}, {"move_mount", Act::kill}, {"open_tree", Act::kill}, {"mount_setattr", Act::kill},
    {"open_by_handle_at", Act::kill}, {"keyctl", Act::kill}, {"add_key", Act::kill},
    {"request_key", Act::kill}, {"reboot", Act::kill}, {"swapon", Act::kill}, {"swapoff", Act::kill},
    {"acct", Act::kill}, {"iopl", Act::kill}, {"ioperm", Act::kill}, {"modify_ldt", Act::kill},
    {"kcmp", Act::kill}, {"process_madvise", Act::kill}, {"memfd_secret", Act::kill},
};

// The per-run child's filter (fork mode), stacked on the worker's: no new process, no exec, no raising a limit,
// signals and scheduling only for the child itself, and its parent-death signal kept. Default allow: the
// worker's allow-list below it still decides everything else (the kernel takes the strictest answer).
enum class ChildArg { any, a0_not_self, a0_no_clone_thread, a1_non_null, a2_non_null, a0_eq };
struct ChildRule { const char* syscall; int err; ChildArg arg; std::uint64_t value = 0; };
constexpr ChildRule kChild[] = {
    {"execve", EPERM, ChildArg::any}, {"execveat", EPERM, ChildArg::any}, {"clone3", ENOSYS, ChildArg::any},
    {"prctl", EPERM, ChildArg::a0_eq, PR_SET_PDEATHSIG}, {"fork", EPERM, ChildArg::any},
    {"vfork", EPERM, ChildArg::any}, {"clone", EPERM, ChildArg::a0_no_clone_thread},
    {"seccomp", EPERM, ChildArg::any},
    {"setrlimit", EPERM, ChildArg::a1_non_null}, {"prlimit64", EPERM, ChildArg::a2_non_null},
    {"kill", EPERM, ChildArg::a0_not_self}, {"tkill", EPERM, ChildArg::a0_not_self},
    {"tgkill", EPERM, ChildArg::a0_not_self}, {"rt_sigqueueinfo", EPERM, ChildArg::a0_not_self},
    {"rt_tgsigqueueinfo", EPERM, ChildArg::a0_not_self}, {"pidfd_open", EPERM, ChildArg::a0_not_self},
};

// The child's pid is unknown when its program is built (before fork), so the program carries this constant
// and apply_child() patches it. Above PID_MAX_LIMIT (2^22): never a real pid.
constexpr std::uint32_t kPidPlaceholder = 0x5EC0DE01;

// libseccomp's SCMP_An macros leave datum_b unset in C++ (-Wmissing-field-initializers); spell it out.
scmp_arg_cmp compare(unsigned arg, scmp_compare op, scmp_datum_t a, scmp_datum_t b = 0) { return {arg, op, a, b}; }
scmp_arg_cmp low32_eq(unsigned arg, std::uint64_t value) { return compare(arg, SCMP_CMP_MASKED_EQ, 0xFFFFFFFFu, value); }

bool applies(When when, const Options& o) {
  switch (when) {
    case When::always: return true;
    case When::threads: return o.allow_threads;
    case When::fork_parent: return o.allow_fork;
    case When::not_fork: return !o.allow_fork;
    case When::network: return o.allow_network;
    case When::unix_sockets: return o.allow_unix_sockets;
  }
  return false;
}

#ifdef SPR_SECCOMP_LOG
constexpr std::uint32_t kDefaultAction = SCMP_ACT_LOG;
#else
constexpr std::uint32_t kDefaultAction = SCMP_ACT_ERRNO(EPERM);
#endif

std::uint32_t action_of(Act act) {
  switch (act) {
    case Act::allow: return SCMP_ACT_ALLOW;
    case Act::refuse: return SCMP_ACT_ERRNO(EPERM);
    case Act::enosys: return SCMP_ACT_ERRNO(ENOSYS);
    case Act::kill: return SCMP_ACT_KILL_PROCESS;
  }
  return SCMP_ACT_ERRNO(EPERM);
}

struct Built {
  std::map<int, Rule> first;  // per syscall number, its first row that applies (for the counts doctor shows)
  std::set<int> checked;      // syscalls allowed only with an argument test
  int refused = 0;            // rows answering as the default does (not added)
  std::string skipped;        // names this libseccomp does not know
  int count(Act act) const {
    int n = 0;
    for (const auto& [nr, rule] : first) n += rule.act == act ? 1 : 0;
    return n;
  }
};

int add_row(scmp_filter_ctx ctx, const Rule& rule, int nr, std::uint32_t self_pid) {
  const std::uint32_t action = action_of(rule.act);
  switch (rule.arg) {
    case Arg::any: return seccomp_rule_add(ctx, action, nr, 0);
    case Arg::a0_eq: return seccomp_rule_add(ctx, action, nr, 1, low32_eq(0, rule.value));
    case Arg::a0_self: return seccomp_rule_add(ctx, action, nr, 1, low32_eq(0, self_pid));
    case Arg::a0_eq_a1_eq:
      return seccomp_rule_add(ctx, action, nr, 2, low32_eq(0, rule.value), compare(1, SCMP_CMP_EQ, rule.extra));
    case Arg::a1_eq: return seccomp_rule_add(ctx, action, nr, 1, low32_eq(1, rule.value));
    case Arg::a1_eq_a2_clear:
      return seccomp_rule_add(ctx, action, nr, 2, low32_eq(1, rule.value),
                              compare(2, SCMP_CMP_MASKED_EQ, rule.extra, 0));
    case Arg::a0_masked: return seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_MASKED_EQ, rule.extra, rule.value));
    case Arg::a0_eq_a1_type:
      return seccomp_rule_add(ctx, action, nr, 2, low32_eq(0, rule.value), compare(1, SCMP_CMP_MASKED_EQ, 0xF, rule.extra));
    case Arg::a2_null: return seccomp_rule_add(ctx, action, nr, 1, compare(2, SCMP_CMP_EQ, 0));
    case Arg::a2_eq: return seccomp_rule_add(ctx, action, nr, 1, low32_eq(2, rule.value));
    case Arg::mode_a1: return seccomp_rule_add(ctx, action, nr, 1, compare(1, SCMP_CMP_MASKED_EQ, kSetId, 0));
    case Arg::mode_a2: return seccomp_rule_add(ctx, action, nr, 1, compare(2, SCMP_CMP_MASKED_EQ, kSetId, 0));
    case Arg::mode_a3: return seccomp_rule_add(ctx, action, nr, 1, compare(3, SCMP_CMP_MASKED_EQ, kSetId, 0));
  }
  return -EINVAL;
}

// Returns 0 or a negative libseccomp error; unknown syscall names (an older libseccomp) are skipped and listed.
int add_table(scmp_filter_ctx ctx, const Options& options, std::uint32_t self_pid, Built& built) {
  for (const Rule& rule : kTable) {
    if (!applies(rule.when, options)) continue;
    // Same as the default: nothing to add (libseccomp refuses such a rule with EACCES).
    if (action_of(rule.act) == kDefaultAction) {
      ++built.refused;
      continue;
    }
    const int nr = seccomp_syscall_resolve_name(rule.syscall);
    if (nr == __NR_SCMP_ERROR || nr < 0) {
      built.skipped += std::string(built.skipped.empty() ? "" : ",") + rule.syscall;
      continue;
    }
    if (const int rc = add_row(ctx, rule, nr, self_pid); rc < 0) {
      log_errno("seccomp_rule_add", rule.syscall, -rc);
      return rc;
    }
    built.first.emplace(nr, rule);
    if (rule.act == Act::allow && rule.arg != Arg::any) built.checked.insert(nr);
  }
  return 0;
}

// RAII for the libseccomp context, released on every path.
struct Context {
  scmp_filter_ctx ctx;
  explicit Context(std::uint32_t default_action) : ctx(seccomp_init(default_action)) {}
  Context(const Context&) = delete;
  Context& operator=(const Context&) = delete;
  ~Context() {
    if (ctx != nullptr) seccomp_release(ctx);
  }
};

// The child's program, built once in the worker and copied (copy-on-write) into every forked child.
constexpr std::size_t kMaxChildInstructions = 1024;
constexpr std::size_t kMaxPidSlots = 32;
sock_filter g_child_program[kMaxChildInstructions];
std::size_t g_child_length = 0;
std::size_t g_pid_slots[kMaxPidSlots];
std::size_t g_pid_slot_count = 0;

int add_child_rules(scmp_filter_ctx ctx) {
  for (const ChildRule& rule : kChild) {
    const int nr = seccomp_syscall_resolve_name(rule.syscall);
    if (nr == __NR_SCMP_ERROR || nr < 0) continue;
    const std::uint32_t action = SCMP_ACT_ERRNO(static_cast<std::uint32_t>(rule.err));
    int rc = 0;
    // Denials: 64-bit comparisons, so garbage in the upper half of a 32-bit argument makes "!= value" true and a
    // crafted register fails closed (denied).
    switch (rule.arg) {
      case ChildArg::any: rc = seccomp_rule_add(ctx, action, nr, 0); break;
      case ChildArg::a0_not_self: rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_NE, kPidPlaceholder)); break;
      case ChildArg::a0_no_clone_thread:
        rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
        break;
      case ChildArg::a1_non_null: rc = seccomp_rule_add(ctx, action, nr, 1, compare(1, SCMP_CMP_NE, 0)); break;
      case ChildArg::a2_non_null: rc = seccomp_rule_add(ctx, action, nr, 1, compare(2, SCMP_CMP_NE, 0)); break;
      case ChildArg::a0_eq: rc = seccomp_rule_add(ctx, action, nr, 1, low32_eq(0, rule.value)); break;
    }
    if (rc < 0) {
      log_errno("seccomp_rule_add", rule.syscall, -rc);
      return rc;
    }
  }
  return 0;
}

}  // namespace

LayerStatus apply(const Options& options) {
  Context c(kDefaultAction);
  if (c.ctx == nullptr) return inactive("seccomp", "seccomp_init failed");
  // A binary search over the syscall numbers instead of a linear list: every syscall of every run pays it.
  if (const int rc = seccomp_attr_set(c.ctx, SCMP_FLTATR_CTL_OPTIMIZE, 2); rc < 0)
    log_errno("seccomp_attr_set", "(SCMP_FLTATR_CTL_OPTIMIZE)", -rc);  // slower, still correct
  const auto self = static_cast<std::uint32_t>(::getpid());  // pid captured at install time
  Built built;
  if (const int rc = add_table(c.ctx, options, self, built); rc < 0)
    return inactive("seccomp", errno_text("seccomp_rule_add", -rc));
  // Run threads started before the filter get it too, atomically: seccomp_load fails if any cannot.
  if (options.sync_threads) {
    if (const int rc = seccomp_attr_set(c.ctx, SCMP_FLTATR_CTL_TSYNC, 1); rc < 0)
      return inactive("seccomp", errno_text("seccomp_attr_set(SCMP_FLTATR_CTL_TSYNC)", -rc));
  }
  if (const int rc = seccomp_load(c.ctx); rc < 0) {
    log_errno("seccomp_load", "", -rc);  // EINVAL/EFAULT: kernel without CONFIG_SECCOMP_FILTER
    return inactive("seccomp", errno_text("seccomp_load", -rc));
  }
#ifdef SPR_SECCOMP_LOG
  std::string detail = "DERIVATION BUILD: calls outside the allow-list are logged and ALLOWED; ";
#else
  std::string detail = "allow-list: ";
#endif
  detail += std::to_string(built.count(Act::allow)) + " syscalls allowed (" + std::to_string(built.checked.size()) +
            " only with argument checks), every other answers EPERM (clone3: ENOSYS), " +
            std::to_string(built.count(Act::kill)) + " kill the process (ptrace, bpf, mount, io_uring, ...)";
  detail += options.allow_fork ? "; fork allowed (children stack their own filter)"
                               : "; no new process; limits, signals and scheduling only for pid " + std::to_string(self);
  detail += options.allow_threads ? "; threads allowed" : "; threads denied";
  if (options.sync_threads) detail += " (installed in the run threads started before it)";
  detail += options.allow_network ? "; TCP/UDP sockets allowed" : "; no network socket";
  detail += options.allow_unix_sockets ? "; unix sockets allowed" : "; no unix socket (stream socketpair only)";
  if (!built.skipped.empty()) detail += "; unknown to libseccomp: " + built.skipped;
  return active("seccomp", detail);
}

int prepare_child() {
  Context c(SCMP_ACT_ALLOW);  // the worker's allow-list stays below this filter
  if (c.ctx == nullptr) {
    log_errno("seccomp_init", "(child filter)", ENOMEM);
    return ENOMEM;
  }
  if (const int rc = add_child_rules(c.ctx); rc < 0) return -rc;
  // libseccomp 2.5 exports only to an fd; a memfd keeps the program off the filesystem.
  const int fd = ::memfd_create("spr-child-filter", MFD_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    log_errno("memfd_create", "(child filter)", err);
    return err;
  }
  if (const int rc = seccomp_export_bpf(c.ctx, fd); rc < 0) {
    ::close(fd);
    log_errno("seccomp_export_bpf", "", -rc);
    return -rc;
  }
  const off_t size = ::lseek(fd, 0, SEEK_END);
  if (size <= 0 || static_cast<std::size_t>(size) > sizeof(g_child_program) ||
      static_cast<std::size_t>(size) % sizeof(sock_filter) != 0) {
    ::close(fd);
    log_errno("seccomp_export_bpf", "(unexpected program size)", EOVERFLOW);
    return EOVERFLOW;
  }
  const ssize_t n = ::pread(fd, g_child_program, static_cast<std::size_t>(size), 0);
  const int err = errno;
  ::close(fd);
  if (n != size) {
    log_errno("pread", "(child filter)", n < 0 ? err : EIO);
    return n < 0 ? err : EIO;
  }
  g_child_length = static_cast<std::size_t>(size) / sizeof(sock_filter);
  g_pid_slot_count = 0;
  for (std::size_t i = 0; i < g_child_length; ++i) {
    const sock_filter& insn = g_child_program[i];
    if (BPF_CLASS(insn.code) == BPF_JMP && BPF_OP(insn.code) == BPF_JEQ && BPF_SRC(insn.code) == BPF_K &&
        insn.k == kPidPlaceholder) {
      if (g_pid_slot_count == kMaxPidSlots) break;
      g_pid_slots[g_pid_slot_count++] = i;
    }
  }
  if (g_pid_slot_count == 0) {  // libseccomp changed its code generation: refuse rather than deny kill(self)
    g_child_length = 0;
    log_errno("seccomp_export_bpf", "(pid placeholder not found)", EPROTO);
    return EPROTO;
  }
  return 0;
}

int apply_child() noexcept {
  if (g_child_length == 0) {
    log_errno("seccomp", "(child filter not prepared: call prepare_child() before fork)", ENOEXEC);
    return ENOEXEC;
  }
  const auto self = static_cast<std::uint32_t>(::getpid());
  for (std::size_t i = 0; i < g_pid_slot_count; ++i) g_child_program[g_pid_slots[i]].k = self;
  sock_fprog program{static_cast<unsigned short>(g_child_length), g_child_program};
  // Stacked on the worker's filter; the kernel takes the strictest answer of all filters.
  if (::syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0U, &program) != 0) {
    const int err = errno;
    log_errno("seccomp", "(SECCOMP_SET_MODE_FILTER, child)", err);
    return err;
  }
  return 0;
}

}  // namespace spr::harden::seccomp
