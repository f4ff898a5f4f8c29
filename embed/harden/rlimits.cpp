// Resource limits as data: the worker's permanent backstops and the per-run limits of a child.
#include <sys/resource.h>

#include <cerrno>
#include <cstddef>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden {
namespace rlimits {

int apply(const Limit* table, std::size_t count) noexcept {
  for (std::size_t i = 0; i < count; ++i) {
    const Limit& row = table[i];
    if (!row.set) continue;
    const auto resource = static_cast<__rlimit_resource_t>(row.resource);
    rlimit current{};
    if (::getrlimit(resource, &current) != 0) {
      const int err = errno;
      log_errno("getrlimit", row.name, err);
      return err;
    }
    // Never above the current hard limit: without CAP_SYS_RESOURCE raising it is EPERM, and the worker's own
    // limits are meant to be the ceiling for every run.
    rlimit wanted{static_cast<rlim_t>(row.soft), static_cast<rlim_t>(row.hard)};
    if (wanted.rlim_max > current.rlim_max) wanted.rlim_max = current.rlim_max;
    if (wanted.rlim_cur > wanted.rlim_max) wanted.rlim_cur = wanted.rlim_max;
    if (::setrlimit(resource, &wanted) != 0) {
      const int err = errno;
      log_errno("setrlimit", row.name, err);
      return err;
    }
  }
  return 0;
}

constexpr std::uint64_t kWorkerFileBytes = 257ull << 20;

LayerStatus apply_worker(const WorkerOptions& options) {
  // NOFILE leaves room above the highest kept fd for Python's imports (each holds a file briefly) and pipes.
  const std::uint64_t nofile = static_cast<std::uint64_t>(options.max_kept_fd) + 64;
  const std::uint64_t tasks = options.limit_tasks ? options.max_tasks : 0;
  const Limit table[] = {
      {RLIMIT_CORE, "RLIMIT_CORE", 0, 0, true},  // a core dump would write the interpreter's memory (inputs) to disk
      {RLIMIT_NOFILE, "RLIMIT_NOFILE", nofile, nofile, true},
      // Threads count against NPROC too; it only backs up seccomp's fork denial (root in the initial namespace
      // is exempt from it anyway).
      {RLIMIT_NPROC, "RLIMIT_NPROC", tasks, tasks, tasks != 0},
      // Backstops behind the allocator accounting and the soft timers (which live in memory a run can write).
      {RLIMIT_AS, "RLIMIT_AS", options.address_space_bytes, options.address_space_bytes, options.address_space_bytes != 0},
      {RLIMIT_CPU, "RLIMIT_CPU", options.cpu_seconds, options.cpu_seconds + 1, options.cpu_seconds != 0},
      // Files, the shared output buffer (a memfd) included: writing past its end would hold memory that
      // neither the allocator accounting nor RLIMIT_AS sees. Room for a 128 MiB output cap per stream.
      {RLIMIT_FSIZE, "RLIMIT_FSIZE", kWorkerFileBytes, kWorkerFileBytes, true},
  };
  if (const int err = apply(table, sizeof(table) / sizeof(table[0])); err != 0) {
    return inactive("rlimits", errno_text("setrlimit", err));
  }
  std::string detail = "CORE=0, FSIZE=" + std::to_string(kWorkerFileBytes >> 20) + " MiB, NOFILE=" + std::to_string(nofile);
  detail += tasks != 0 ? ", NPROC=" + std::to_string(tasks) : ", NPROC unchanged (fork mode)";
  if (options.address_space_bytes != 0) detail += ", AS=" + std::to_string(options.address_space_bytes >> 20) + " MiB";
  if (options.cpu_seconds != 0) detail += ", CPU=" + std::to_string(options.cpu_seconds) + " s";
  return active("rlimits", detail);
}

}  // namespace rlimits

int apply_rlimits(const RunLimits& limits) noexcept {
  const rlimits::Limit table[] = {
      {RLIMIT_AS, "RLIMIT_AS", limits.address_space_bytes, limits.address_space_bytes, limits.address_space_bytes != 0},
      // One second of grace between SIGXCPU (soft) and SIGKILL (hard) lets Python report the overrun.
      {RLIMIT_CPU, "RLIMIT_CPU", limits.cpu_seconds, limits.cpu_seconds + 1, limits.cpu_seconds != 0},
      {RLIMIT_FSIZE, "RLIMIT_FSIZE", limits.file_size_bytes, limits.file_size_bytes, limits.file_size_bytes != 0},
      {RLIMIT_NOFILE, "RLIMIT_NOFILE", limits.open_files, limits.open_files, limits.open_files != 0},
      {RLIMIT_NPROC, "RLIMIT_NPROC", limits.processes, limits.processes, limits.processes != 0},
  };
  return rlimits::apply(table, sizeof(table) / sizeof(table[0]));
}

}  // namespace spr::harden
