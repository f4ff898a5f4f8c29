// Orchestrates the hardening layers (the one place that owns their order) and renders the report.
#include "harden.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <string>

#include "common/fd.hpp"
#include "mechanisms.hpp"

namespace spr::harden {
namespace {

// Bounded append into a stack buffer: the child path may not allocate or call snprintf.
struct LineBuffer {
  char data[256];
  std::size_t used = 0;
  void put(const char* text) noexcept {
    for (; text != nullptr && *text != '\0' && used + 1 < sizeof(data); ++text) data[used++] = *text;
  }
  void put_int(int value) noexcept {
    char digits[16];
    std::size_t n = 0;
    unsigned magnitude = value < 0 ? 0U - static_cast<unsigned>(value) : static_cast<unsigned>(value);
    do {
      digits[n++] = static_cast<char>('0' + magnitude % 10);
      magnitude /= 10;
    } while (magnitude != 0 && n < sizeof(digits));
    if (value < 0) put("-");
    while (n > 0 && used + 1 < sizeof(data)) data[used++] = digits[--n];
  }
};

// A layer that throws (bad_alloc, a libstdc++ surprise) is a report entry, never an exception out of the worker.
template <typename Fn>
void run_layer(Report& report, const char* name, bool enabled, Fn&& fn) {
  if (!enabled) {
    report.push_back(inactive(name, "disabled by policy"));
    return;
  }
  try {
    report.push_back(fn());
  } catch (const std::exception& e) {
    report.push_back(inactive(name, std::string("unexpected failure: ") + e.what()));
  }
}

int max_of(const std::vector<int>& fds) {
  int highest = 2;
  for (int fd : fds) highest = fd > highest ? fd : highest;
  return highest;
}

// What enter_pid_namespace did, for apply_worker: the identity it found and the layer's status.
struct Early {
  bool done = false;
  namespaces::Identity identity;
  LayerStatus pid;
};
Early g_early;

}  // namespace

LayerStatus enter_pid_namespace() {
  g_early.done = true;
  g_early.identity = namespaces::identify();
  {
    const spr::detail::Fd proc_dir(::open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (std::string why = namespaces::prepare(g_early.identity, proc_dir.get()); !why.empty()) {
      g_early.pid = inactive("pid", why);
      return g_early.pid;
    }
  }
  try {
    g_early.pid = pid::enter();
  } catch (const std::exception& e) {
    g_early.pid = inactive("pid", std::string("unexpected failure: ") + e.what());
  }
  g_early.identity.parent = ::getppid();  // init, in the namespace: whose death a change of uid must still notice
  return g_early.pid;
}

void log_errno(const char* syscall_name, const char* what, int err) noexcept {
  LineBuffer line;
  line.put("spr-harden: ");
  line.put(syscall_name);
  if (what != nullptr && *what != '\0') {
    line.put(" ");
    line.put(what);
  }
  line.put(" failed: errno ");
  line.put_int(err);
  line.put(" (");
  line.put(strerrorname_np(err));  // a static table lookup, safe after fork unlike strerror's locale path
  line.put(")\n");
  [[maybe_unused]] ssize_t ignored = ::write(STDERR_FILENO, line.data, line.used);
}

std::string errno_text(const char* syscall_name, int err) {
  const char* name = strerrorname_np(err);
  return std::string(syscall_name) + ": " + (name != nullptr ? name : std::to_string(err)) + " (" +
         std::strerror(err) + ")";
}

LayerStatus active(const char* name, std::string detail) { return LayerStatus{name, true, std::move(detail)}; }
LayerStatus inactive(const char* name, std::string detail) { return LayerStatus{name, false, std::move(detail)}; }

nlohmann::json to_json(const Report& report) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& layer : report) {
    out.push_back({{"name", layer.name}, {"active", layer.active}, {"detail", layer.detail}});
  }
  return out;
}

Report apply_worker(const WorkerConfig& cfg) {
  Report report;
  report.reserve(9);
  // /proc/<pid> as a descriptor: the identity maps are written through it after the root has no /proc. Closed
  // once they are written (it leads to the host's /proc).
  spr::detail::Fd proc_dir(::open("/proc/self", O_PATH | O_DIRECTORY | O_CLOEXEC));
  namespaces::Identity identity = g_early.done ? g_early.identity : namespaces::identify();
  if (g_early.done) report.push_back(g_early.pid);
  bool own_root = false;
  // 1. The own root first, while the process may still read every path it binds and (as root) mount without a
  //    user namespace; an unprivileged worker enters a first user namespace for it. Single-threaded: unshare of a
  //    user namespace refuses a threaded caller.
  run_layer(report, "root", cfg.namespaces && cfg.own_root, [&] {
    if (std::string why = namespaces::prepare(identity, proc_dir.get()); !why.empty()) return inactive("root", why);
    if (cfg.refuse_mount_ns_for_test) return inactive("root", errno_text("unshare(CLONE_NEWNS)", EPERM));
    root::Options ro;
    ro.binds = cfg.read_paths;
    ro.binds.insert(ro.binds.end(), cfg.root_extra.begin(), cfg.root_extra.end());
    ro.scratch = cfg.scratch_root;
    ro.scratch_bytes = cfg.scratch_bytes;
    ro.scratch_uid = identity.scratch_uid;
    ro.scratch_gid = identity.scratch_gid;
    LayerStatus s = root::apply(ro);
    own_root = s.active;
    return s;
  });
  if (report.back().fatal) return report;
  // 2. Namespaces and the run's identity: after the root (mounting needed the privilege this gives up); the
  //    last user namespace owns the network, IPC, UTS and cgroup namespaces.
  run_layer(report, "namespaces", cfg.namespaces, [&] {
    return namespaces::apply({&identity, proc_dir.get(), own_root, /*isolate_network=*/!cfg.allow_network});
  });
  proc_dir.reset();  // before the fds layer, which would close it under the owner's feet
  // 3. Capabilities right after: the new user namespace just granted a full set, and the later layers must not
  //    rely on any of it (no CAP_DAC_OVERRIDE around Landlock, no CAP_SYS_ADMIN around seccomp).
  run_layer(report, "capabilities", true, [] { return capabilities::apply(); });
  // 4. Fds: close_range needs no /proc (the own root has none).
  run_layer(report, "fds", true, [&] { return fds::apply(cfg.keep_fds); });
  // 5. Environment: Python already read what it needs at initialisation; nothing later may see secrets.
  run_layer(report, "env", true, [] { return env::apply(); });
  // 6. Rlimits after fds, so NOFILE is sized from the fds actually kept; before seccomp, which denies setrlimit.
  //    RLIMIT_NPROC binds now: the run's uid outside is not root's.
  run_layer(report, "rlimits", true, [&] {
    return rlimits::apply_worker(
        {max_of(cfg.keep_fds), !cfg.allow_fork, cfg.max_tasks, cfg.address_space_bytes, cfg.cpu_seconds});
  });
  // 7. no_new_privs: Landlock requires it from a process without CAP_SYS_ADMIN (we just dropped ours). Without
  //    the own root (which mounts no /proc) the host's /proc is in view: the worker and its fork children become
  //    non-dumpable, so none can open another's entries (their pipes through /proc/<pid>/fd). With it, the
  //    supervisor opens the worker's root through /proc/<pid>/root, which a non-dumpable worker of an
  //    unprivileged supervisor would refuse.
  run_layer(report, "no_new_privs", true, [&] {
    const int err = no_new_privs::apply(/*not_dumpable=*/!own_root);
    return err == 0 ? active("no_new_privs", own_root ? "PR_SET_NO_NEW_PRIVS=1" : "PR_SET_NO_NEW_PRIVS=1, PR_SET_DUMPABLE=0")
                    : inactive("no_new_privs", errno_text("prctl(PR_SET_NO_NEW_PRIVS or PR_SET_DUMPABLE)", err));
  });
  // 8. Landlock before seccomp: its own syscalls (landlock_*, open(O_PATH)) must still be callable. Inside the
  //    own root it opens the very mounts above: a second fence, file by file where the root binds directories.
  run_layer(report, "landlock", cfg.landlock,
            [&] { return landlock::apply({&cfg.read_paths, cfg.scratch_root, !cfg.allow_network}); });
  // 9. Threads the worker runs requests on (subinterpreter_threads): they exist before the filter that refuses
  //    every later thread, and they inherit the identity, capabilities, no_new_privs and Landlock domain above.
  if (cfg.start_threads) {
    run_layer(report, "run_threads", true, [&] { return cfg.start_threads(); });
    if (!report.back().active) {
      report.back().fatal = true;
      return report;
    }
  }
  // 10. Seccomp last: it denies setrlimit/unshare and friends that the layers above needed.
  run_layer(report, "seccomp", cfg.seccomp, [&] {
    return seccomp::apply({cfg.allow_network, cfg.allow_unix_sockets, cfg.allow_fork, cfg.allow_threads,
                           static_cast<bool>(cfg.start_threads)});
  });
  return report;
}

int prepare_child() { return seccomp::prepare_child(); }

int apply_child(const RunLimits& limits) noexcept {
  // Rlimits first: the child's filter denies setrlimit/prlimit64 with a new limit.
  if (const int err = apply_rlimits(limits); err != 0) return err;
  // The worker normally set it already; a child of an unhardened parent needs it for an unprivileged filter.
  if (const int err = no_new_privs::apply(); err != 0) return err;
  return seccomp::apply_child();
}

int set_worker_environment() noexcept { return env::set_fixed(); }

}  // namespace spr::harden
