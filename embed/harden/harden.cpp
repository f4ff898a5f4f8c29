// Orchestrates the hardening layers (the one place that owns their order) and renders the report.
#include "harden.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <exception>
#include <string>

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

}  // namespace

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
  report.reserve(8);
  // 1. Namespaces first: unshare(CLONE_NEWUSER) needs a single-threaded process that may still open
  //    /proc/self/{uid,gid}_map, call unshare() and hold capabilities; Landlock and seccomp remove all three.
  run_layer(report, "namespaces", cfg.namespaces,
            [&] { return namespaces::apply({/*isolate_network=*/!cfg.allow_network}); });
  // 2. Capabilities right after: the new user namespace just granted a full set, and the later layers must not
  //    rely on any of it (no CAP_DAC_OVERRIDE around Landlock, no CAP_SYS_ADMIN around seccomp).
  run_layer(report, "capabilities", true, [] { return capabilities::apply(); });
  // 3. Fds before Landlock: the /proc/self/fd fallback walk needs /proc, which Landlock then hides.
  run_layer(report, "fds", true, [&] { return fds::apply(cfg.keep_fds); });
  // 4. Environment: Python already read what it needs at initialisation; nothing later may see secrets.
  run_layer(report, "env", true, [] { return env::apply(); });
  // 5. Rlimits after fds, so NOFILE is sized from the fds actually kept; before seccomp, which denies setrlimit.
  run_layer(report, "rlimits", true, [&] {
    return rlimits::apply_worker(
        {max_of(cfg.keep_fds), !cfg.allow_fork, cfg.max_tasks, cfg.address_space_bytes, cfg.cpu_seconds});
  });
  // 6. no_new_privs: Landlock requires it from a process without CAP_SYS_ADMIN (we just dropped ours).
  run_layer(report, "no_new_privs", true, [] {
    const int err = no_new_privs::apply();
    return err == 0 ? active("no_new_privs", "PR_SET_NO_NEW_PRIVS=1")
                    : inactive("no_new_privs", errno_text("prctl(PR_SET_NO_NEW_PRIVS)", err));
  });
  // 7. Landlock before seccomp: its own syscalls (landlock_*, open(O_PATH)) must still be callable.
  run_layer(report, "landlock", cfg.landlock,
            [&] { return landlock::apply({&cfg.read_paths, cfg.scratch_root, !cfg.allow_network}); });
  // 8. Seccomp last: it denies setrlimit/unshare and friends that the layers above needed.
  run_layer(report, "seccomp", cfg.seccomp,
            [&] { return seccomp::apply({cfg.allow_network, cfg.allow_unix_sockets, cfg.allow_fork, cfg.allow_threads}); });
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
