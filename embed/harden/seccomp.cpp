// Seccomp-bpf: syscalls that escape or widen the sandbox answer EPERM (a clean OSError in Python), never KILL.
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <seccomp.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <linux/sockios.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::seccomp {
namespace {

// Which argument test a rule carries; the action applies only when the test holds.
enum class Arg {
  any,                 // unconditional
  a0_not_self,         // signal/pidfd calls aimed at any pid but ours
  a0_no_clone_thread,  // clone() creating a process rather than a thread
  a1_non_null,         // setrlimit(resource, new): setting, not reading
  a2_non_null,         // prlimit64(pid, resource, new, old): setting, not reading
  a0_eq,               // prctl(option == value): the option is an int, its low 32 bits are compared
  a1_eq,               // fcntl/ioctl(fd, cmd == value): one command
  a1_eq_a2_bit,        // fcntl(fd, cmd == value, arg with bit `extra` set)
  a0_non_zero,         // sched_*(pid): any pid but 0 (the caller itself)
  a0_ne,               // setpriority/ioprio_set(which != value): a group or a user, not one process
};
struct Rule { const char* syscall; int err; Arg arg; std::uint64_t value = 0; std::uint64_t extra = 0; };

// Always denied in the worker: exec, debugging other processes, kernel/namespace/mount administration, and the
// kernel attack surfaces CPython never needs.
constexpr Rule kAlways[] = {
    {"execve", EPERM, Arg::any}, {"execveat", EPERM, Arg::any},
    // ENOSYS, not EPERM: glibc's pthread_create then falls back to clone(), whose flags a filter can inspect
    // (clone3 passes them in memory, out of seccomp's reach).
    {"clone3", ENOSYS, Arg::any},
    {"ptrace", EPERM, Arg::any}, {"process_vm_readv", EPERM, Arg::any}, {"process_vm_writev", EPERM, Arg::any},
    {"pidfd_send_signal", EPERM, Arg::any}, {"pidfd_getfd", EPERM, Arg::any},
    {"mount", EPERM, Arg::any}, {"umount2", EPERM, Arg::any}, {"pivot_root", EPERM, Arg::any},
    {"chroot", EPERM, Arg::any}, {"fsopen", EPERM, Arg::any}, {"fsconfig", EPERM, Arg::any},
    {"fsmount", EPERM, Arg::any}, {"fspick", EPERM, Arg::any}, {"move_mount", EPERM, Arg::any},
    {"open_tree", EPERM, Arg::any}, {"mount_setattr", EPERM, Arg::any},
    {"unshare", EPERM, Arg::any}, {"setns", EPERM, Arg::any},
    {"bpf", EPERM, Arg::any}, {"perf_event_open", EPERM, Arg::any}, {"userfaultfd", EPERM, Arg::any},
    {"keyctl", EPERM, Arg::any}, {"add_key", EPERM, Arg::any}, {"request_key", EPERM, Arg::any},
    {"io_uring_setup", EPERM, Arg::any}, {"io_uring_enter", EPERM, Arg::any},
    {"io_uring_register", EPERM, Arg::any},
    {"init_module", EPERM, Arg::any}, {"finit_module", EPERM, Arg::any}, {"delete_module", EPERM, Arg::any},
    {"kexec_load", EPERM, Arg::any}, {"kexec_file_load", EPERM, Arg::any}, {"reboot", EPERM, Arg::any},
    {"swapon", EPERM, Arg::any}, {"swapoff", EPERM, Arg::any},
    {"personality", EPERM, Arg::any}, {"acct", EPERM, Arg::any},
    {"quotactl", EPERM, Arg::any}, {"quotactl_fd", EPERM, Arg::any},
    {"open_by_handle_at", EPERM, Arg::any}, {"name_to_handle_at", EPERM, Arg::any},
    {"memfd_secret", EPERM, Arg::any},
    // Anonymous files hold memory that neither the allocator accounting nor RLIMIT_AS sees.
    {"memfd_create", EPERM, Arg::any},
    // FIFOs and device nodes: a rendezvous or a device a later run could open (Python raises no audit event
    // for os.mkfifo/os.mknod on 3.11). Regular files are created with open().
    {"mknod", EPERM, Arg::any}, {"mknodat", EPERM, Arg::any},
    // Signal-driven I/O: F_SETOWN/F_SETSIG/O_ASYNC make the kernel signal a chosen process or group (SIGIO,
    // or any signal with F_SETSIG, SIGSTOP included) when a descriptor becomes ready: a signal that no
    // kill() rule sees.
    {"fcntl", EPERM, Arg::a1_eq, F_SETOWN}, {"fcntl", EPERM, Arg::a1_eq, F_SETOWN_EX},
    {"fcntl", EPERM, Arg::a1_eq, F_SETSIG}, {"fcntl", EPERM, Arg::a1_eq_a2_bit, F_SETFL, O_ASYNC},
    {"ioctl", EPERM, Arg::a1_eq, FIOSETOWN}, {"ioctl", EPERM, Arg::a1_eq, SIOCSPGRP},
    {"ioctl", EPERM, Arg::a1_eq, FIOASYNC},
    // Leaving the process group or session would take a process out of reach of the supervisor's group kill.
    {"setsid", EPERM, Arg::any}, {"setpgid", EPERM, Arg::any},
};

// Threads, in workers whose interpreter outlives a run: a thread would keep running into the next run.
constexpr Rule kThreads[] = {
    {"clone", EPERM, Arg::any},
};

// New processes. Fork-mode workers keep these: the per-run child's own filter denies them instead.
constexpr Rule kProcessCreation[] = {
    {"fork", EPERM, Arg::any}, {"vfork", EPERM, Arg::any}, {"clone", EPERM, Arg::a0_no_clone_thread},
};

// Raising limits and signalling others. A fork-mode worker must lower each child's limits and SIGKILL an
// overrunning child, so there these rules move into the child's filter (bound to the child's own pid).
constexpr Rule kLimitsAndSignals[] = {
    {"setrlimit", EPERM, Arg::a1_non_null},       {"prlimit64", EPERM, Arg::a2_non_null},
    {"kill", EPERM, Arg::a0_not_self},            {"tkill", EPERM, Arg::a0_not_self},
    {"tgkill", EPERM, Arg::a0_not_self},          {"rt_sigqueueinfo", EPERM, Arg::a0_not_self},
    {"rt_tgsigqueueinfo", EPERM, Arg::a0_not_self}, {"pidfd_open", EPERM, Arg::a0_not_self},
    // Scheduling of other processes: a run could slow its warm parent (and so every later run forked from it)
    // or, by group or user, the supervisor and the host's processes of the same user. Only the caller itself,
    // named 0, may be changed (one comparison per argument: libseccomp cannot test "neither 0 nor self").
    {"sched_setscheduler", EPERM, Arg::a0_non_zero}, {"sched_setparam", EPERM, Arg::a0_non_zero},
    {"sched_setattr", EPERM, Arg::a0_non_zero},      {"sched_setaffinity", EPERM, Arg::a0_non_zero},
    {"migrate_pages", EPERM, Arg::a0_non_zero},      {"move_pages", EPERM, Arg::a0_non_zero},
    {"setpriority", EPERM, Arg::a0_ne, PRIO_PROCESS}, {"setpriority", EPERM, Arg::a1_non_null},
    {"ioprio_set", EPERM, Arg::a0_ne, 1 /* IOPRIO_WHO_PROCESS */}, {"ioprio_set", EPERM, Arg::a1_non_null},
};

// Every socket domain, AF_UNIX included: Landlock does not mediate connect() to a pathname unix socket, so
// AF_UNIX would reach host daemons (docker, dbus, systemd). socketpair() stays: it connects to nothing.
constexpr Rule kNetwork[] = {
    {"socket", EPERM, Arg::any},
};

// The per-run child's filter: exec and every new process, whatever the worker's filter allowed.
// The child also keeps its parent-death signal (it dies with the worker, whatever its session or
// group); signal-driven I/O is refused by the worker's filter, which the child inherits.
constexpr Rule kChildOnly[] = {
    {"execve", EPERM, Arg::any}, {"execveat", EPERM, Arg::any}, {"clone3", ENOSYS, Arg::any},
    {"prctl", EPERM, Arg::a0_eq, PR_SET_PDEATHSIG},
};

// The child's pid is unknown when its program is built (before fork), so the program carries this constant
// and apply_child() patches it. Above PID_MAX_LIMIT (2^22): never a real pid.
constexpr std::uint32_t kPidPlaceholder = 0x5EC0DE01;

// libseccomp's SCMP_An macros leave datum_b unset in C++ (-Wmissing-field-initializers); spell it out.
scmp_arg_cmp compare(unsigned arg, scmp_compare op, scmp_datum_t a, scmp_datum_t b = 0) { return {arg, op, a, b}; }

struct Built { int rules = 0; std::string skipped; };

// Returns 0 or a negative libseccomp error; unknown syscall names (older libseccomp) are skipped and listed.
template <std::size_t N>
int add_rules(scmp_filter_ctx ctx, const Rule (&rules)[N], std::uint32_t self_pid, Built& built) {
  for (const Rule& rule : rules) {
    const int nr = seccomp_syscall_resolve_name(rule.syscall);
    if (nr == __NR_SCMP_ERROR || nr < 0) {
      built.skipped += std::string(built.skipped.empty() ? "" : ",") + rule.syscall;
      continue;
    }
    const std::uint32_t action = SCMP_ACT_ERRNO(static_cast<std::uint32_t>(rule.err));
    int rc = 0;
    // 64-bit comparisons on purpose: garbage in the upper half of a 32-bit argument makes "!= value" true,
    // so a crafted register fails closed (denied) rather than open.
    switch (rule.arg) {
      case Arg::any: rc = seccomp_rule_add(ctx, action, nr, 0); break;
      case Arg::a0_not_self: rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_NE, self_pid)); break;
      case Arg::a0_no_clone_thread:
        rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_MASKED_EQ, CLONE_THREAD, 0));
        break;
      case Arg::a1_non_null: rc = seccomp_rule_add(ctx, action, nr, 1, compare(1, SCMP_CMP_NE, 0)); break;
      case Arg::a2_non_null: rc = seccomp_rule_add(ctx, action, nr, 1, compare(2, SCMP_CMP_NE, 0)); break;
      case Arg::a0_non_zero: rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_NE, 0)); break;
      case Arg::a0_ne: rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_NE, rule.value)); break;
      // Ints (a prctl option, a command): compare their low 32 bits only, so a crafted upper half cannot dodge the rule.
      case Arg::a0_eq:
        rc = seccomp_rule_add(ctx, action, nr, 1, compare(0, SCMP_CMP_MASKED_EQ, 0xFFFFFFFFu, rule.value));
        break;
      case Arg::a1_eq:
        rc = seccomp_rule_add(ctx, action, nr, 1, compare(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFFu, rule.value));
        break;
      case Arg::a1_eq_a2_bit:
        rc = seccomp_rule_add(ctx, action, nr, 2, compare(1, SCMP_CMP_MASKED_EQ, 0xFFFFFFFFu, rule.value),
                              compare(2, SCMP_CMP_MASKED_EQ, rule.extra, rule.extra));
        break;
    }
    if (rc < 0) {
      log_errno("seccomp_rule_add", rule.syscall, -rc);
      return rc;
    }
    ++built.rules;
  }
  return 0;
}

// RAII for the libseccomp context, released on every path.
struct Context {
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);  // default allow: the deny list is the policy
  Context() = default;
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

}  // namespace

LayerStatus apply(const Options& options) {
  Context c;
  if (c.ctx == nullptr) return inactive("seccomp", "seccomp_init failed");
  const auto self = static_cast<std::uint32_t>(::getpid());  // pid captured at install time
  Built built;
  int rc = add_rules(c.ctx, kAlways, self, built);
  if (rc == 0 && !options.allow_fork) rc = add_rules(c.ctx, kProcessCreation, self, built);
  if (rc == 0 && !options.allow_fork) rc = add_rules(c.ctx, kLimitsAndSignals, self, built);
  if (rc == 0 && !options.allow_network) rc = add_rules(c.ctx, kNetwork, self, built);
  if (rc == 0 && !options.allow_threads) rc = add_rules(c.ctx, kThreads, self, built);
  if (rc < 0) return inactive("seccomp", errno_text("seccomp_rule_add", -rc));
  rc = seccomp_load(c.ctx);
  if (rc < 0) {
    log_errno("seccomp_load", "", -rc);  // EINVAL/EFAULT: kernel without CONFIG_SECCOMP_FILTER
    return inactive("seccomp", errno_text("seccomp_load", -rc));
  }
  std::string detail = "default allow, " + std::to_string(built.rules) +
                       " rules answering EPERM (clone3: ENOSYS); exec, ptrace, mount, bpf, io_uring, ... denied";
  detail += options.allow_fork ? "; fork allowed (children stack their own filter)"
                               : "; fork denied; setrlimit denied; signals only to pid " + std::to_string(self);
  detail += options.allow_network ? "; sockets allowed" : "; socket() denied";
  if (!options.allow_threads) detail += "; threads denied";
  if (!built.skipped.empty()) detail += "; unknown to libseccomp: " + built.skipped;
  return active("seccomp", detail);
}

int prepare_child() {
  Context c;
  if (c.ctx == nullptr) {
    log_errno("seccomp_init", "(child filter)", ENOMEM);
    return ENOMEM;
  }
  Built built;
  int rc = add_rules(c.ctx, kChildOnly, kPidPlaceholder, built);
  if (rc == 0) rc = add_rules(c.ctx, kProcessCreation, kPidPlaceholder, built);
  if (rc == 0) rc = add_rules(c.ctx, kLimitsAndSignals, kPidPlaceholder, built);
  if (rc < 0) return -rc;
  // libseccomp 2.5 exports only to an fd; a memfd keeps the program off the filesystem.
  const int fd = ::memfd_create("spr-child-filter", MFD_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    log_errno("memfd_create", "(child filter)", err);
    return err;
  }
  rc = seccomp_export_bpf(c.ctx, fd);
  if (rc < 0) {
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
