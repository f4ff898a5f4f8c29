// Internal interface of the hardening mechanisms: one namespace per file, narrow option structs, same verbs.
#pragma once
#include <sys/resource.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "harden.hpp"

namespace spr::harden {

// Log and status helpers (harden.cpp). log_errno is async-signal-safe: one stack buffer, one write() to fd 2.
void log_errno(const char* syscall_name, const char* what, int err) noexcept;
std::string errno_text(const char* syscall_name, int err);  // "unshare(...): EPERM (Operation not permitted)"
LayerStatus active(const char* name, std::string detail);
LayerStatus inactive(const char* name, std::string detail);

namespace namespaces {
struct Options { bool isolate_network = true; };
LayerStatus apply(const Options&);
}  // namespace namespaces

namespace capabilities {
LayerStatus apply();
}  // namespace capabilities

namespace fds {
LayerStatus apply(const std::vector<int>& keep);
}  // namespace fds

namespace env {
int set_fixed() noexcept;  // clears the environment, then sets the worker's fixed names; 0 or an errno
LayerStatus apply();
}  // namespace env

namespace rlimits {
struct Limit { int resource; const char* name; std::uint64_t soft; std::uint64_t hard; bool set; };  // !set: skip
// Async-signal-safe; clamps to the current hard limit (without CAP_SYS_RESOURCE it can only go down).
int apply(const Limit* table, std::size_t count) noexcept;
struct WorkerOptions {
  int max_kept_fd = 2;
  bool limit_tasks = true;
  std::uint64_t max_tasks = 64;
  std::uint64_t address_space_bytes = 0;  // 0 = unchanged
  std::uint64_t cpu_seconds = 0;          // 0 = unchanged
};
LayerStatus apply_worker(const WorkerOptions&);
}  // namespace rlimits

namespace no_new_privs {
int apply() noexcept;  // 0 or errno, logged
}  // namespace no_new_privs

namespace landlock {
struct Options {
  const std::vector<std::string>* read_paths = nullptr;
  std::string scratch_root;
  bool restrict_network = true;
};
int abi_version() noexcept;  // 0 when the kernel lacks Landlock
LayerStatus apply(const Options&);
}  // namespace landlock

namespace seccomp {
struct Options {
  bool allow_network = false;       // TCP and UDP sockets
  bool allow_unix_sockets = false;  // socket(AF_UNIX)
  bool allow_fork = false;          // the fork-mode worker
  bool allow_threads = true;
};
LayerStatus apply(const Options&);
int prepare_child();              // builds the per-child program into static storage
int apply_child() noexcept;       // installs it, patched with this child's pid
}  // namespace seccomp

}  // namespace spr::harden
