// Internal interface of the hardening mechanisms: one namespace per file, narrow option structs, same verbs.
#pragma once
#include <sys/resource.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "common/sandbox_id.hpp"
#include "harden.hpp"

namespace spr::harden {

// Log and status helpers (harden.cpp). log_errno is async-signal-safe: one stack buffer, one write() to fd 2.
void log_errno(const char* syscall_name, const char* what, int err) noexcept;
std::string errno_text(const char* syscall_name, int err);  // "unshare(...): EPERM (Operation not permitted)"
LayerStatus active(const char* name, std::string detail);
LayerStatus inactive(const char* name, std::string detail);

namespace namespaces {
using spr::detail::kSandboxId;
struct Identity {
  uid_t host_uid = 0;
  gid_t host_gid = 0;
  pid_t parent = 0;             // the supervisor, to notice its death across a change of uid
  bool privileged = false;      // euid 0: mounts need no user namespace, and the run must not stay root
  bool in_own_userns = false;   // unprivileged: entered a first user namespace (uid 0 = host_uid) to mount
  uid_t scratch_uid = 0;        // owner of the scratch tmpfs, as the mounting namespace names it
  gid_t scratch_gid = 0;
};
Identity identify();  // who the worker is, before anything changes
// Before the root is built: an unprivileged worker enters a first user namespace so that it may mount. Returns
// what failed, or "" (the root then cannot be built, and is reported so).
std::string prepare(Identity& id, int proc_dir);
struct Options {
  const Identity* identity = nullptr;
  int proc_dir = -1;  // /proc/<pid>, opened before the root was pivoted
  bool own_root = false;
  bool isolate_network = true;
};
LayerStatus apply(const Options&);
}  // namespace namespaces

namespace pid {
// Forks twice: the caller stays outside as the keeper and never returns; PID 1 is a minimal init; this returns in
// the worker, PID 2. Single-threaded, before Python starts.
LayerStatus enter();
}  // namespace pid

namespace root {
struct Options {
  std::vector<std::string> binds;  // absolute paths bound read-only at the same place (devices under /dev too)
  std::string scratch;             // the scratch tmpfs's path inside ("" = none), also the working directory
  std::uint64_t scratch_bytes = 64ull << 20;
  std::uint64_t scratch_inodes = 16384;
  unsigned scratch_uid = 0, scratch_gid = 0;
};
// A failure before anything was mounted leaves the host's view (reported inactive); after, `fatal` is set.
LayerStatus apply(const Options&);
}  // namespace root

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
// 0 or errno, logged. `not_dumpable`: also PR_SET_DUMPABLE 0 (a worker without its own root, whose /proc is the
// host's: with it, a run could open the /proc entries of the worker's other processes, which share its uid).
int apply(bool not_dumpable = false) noexcept;
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
  bool sync_threads = false;        // threads exist already: the filter is installed in all of them (TSYNC)
};
LayerStatus apply(const Options&);
int prepare_child();              // builds the per-child program into static storage
int apply_child() noexcept;       // installs it, patched with this child's pid
}  // namespace seccomp

}  // namespace spr::harden
