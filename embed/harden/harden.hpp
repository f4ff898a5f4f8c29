// Operating-system hardening for the worker process and its per-run children.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>
#include <nlohmann/json.hpp>
namespace spr::harden {
struct LayerStatus {
  std::string name;
  bool active = false;
  std::string detail;
  bool fatal = false;  // failed half-way: the process is in no state to serve (the worker refuses to start)
};
using Report = std::vector<LayerStatus>;        // one entry per layer, in the order applied
nlohmann::json to_json(const Report&);           // [{"name":..,"active":..,"detail":..}]

struct WorkerConfig {
  std::vector<int> keep_fds;                // besides 0,1,2: fds that stay open (protocol pipes, memfd)
  std::vector<std::string> read_paths;      // Landlock read-only roots (Python prefix, stdlib, lib-dynload, libpython dir, the worker binary dir, allowed_read_paths)
  std::string scratch_root;                 // Landlock read-write root; "" = no writable path at all
  bool allow_network = false;               // false: new network namespace + seccomp denies TCP/UDP sockets
  bool allow_unix_sockets = false;          // false: seccomp denies socket(AF_UNIX) (socketpair stays)
  bool allow_threads = true;                // false: no thread may be created either (namespace and subinterpreter
                                            // workers, where a thread would outlive its run)
  bool allow_fork = false;                  // true for fork-mode workers: the worker itself forks one child per run
  bool namespaces = true, landlock = true, seccomp = true;  // switches (doctor/tests); a disabled layer reports active=false, detail "disabled by policy"
  // Own root: a private mount namespace, pivot_root into an empty tmpfs with read_paths (and the devices below)
  // bound read-only at their own paths and scratch_root a tmpfs of scratch_bytes. Skipped, and reported, where the
  // kernel or container refuses a mount namespace; then Landlock alone fences the host's files.
  bool own_root = true;
  std::uint64_t scratch_bytes = 64ull << 20;
  std::vector<std::string> root_extra;      // mounted but not in Landlock's list (directories of needed libraries)
  bool refuse_mount_ns_for_test = false;
  // Runs after Landlock, just before seccomp (reported as layer "run_threads"): starts the threads a worker
  // needs, which inherit every layer so far; the seccomp filter is then installed in all of them (TSYNC).
  // A layer that is not active here is fatal. Empty: the worker stays single-threaded.
  std::function<LayerStatus()> start_threads;    // test workers: behave as a kernel that refuses the mount namespace
  std::uint64_t max_tasks = 64;             // RLIMIT_NPROC when !allow_fork; threads count too, so not 1
  std::uint64_t address_space_bytes = 0;    // RLIMIT_AS backstop (0 = unchanged)
  std::uint64_t cpu_seconds = 0;            // RLIMIT_CPU backstop, soft; hard one second later (0 = unchanged)
};
// Applied once in the worker, after Python is initialised and warmed up, while the process is single-threaded.
// Layers, in order: root, namespaces, capabilities, fds, env, rlimits, no_new_privs, landlock, seccomp (last).
// A layer the kernel lacks is skipped and reported (active=false, detail says why), never fatal. A layer that
// fails unexpectedly is also reported, not thrown.
Report apply_worker(const WorkerConfig&);

// First thing in the worker's main, single-threaded, before Python starts: a PID namespace of its own. The
// calling process stays outside as a keeper (it waits, ends as the worker ends, and takes the namespace down
// when the supervisor goes) and never returns; this returns in the worker, PID 2 under a minimal init. An
// unprivileged worker enters its first user namespace here, so that the PID namespace is its own (for /proc).
// The status is reported first by apply_worker; `fatal` means the worker cannot serve.
LayerStatus enter_pid_namespace();

struct RunLimits {                          // 0 = leave unchanged; a limit is never raised above the current hard limit
  std::uint64_t address_space_bytes = 0;    // RLIMIT_AS (soft and hard)
  std::uint64_t cpu_seconds = 0;            // RLIMIT_CPU soft; hard = soft + 1
  std::uint64_t file_size_bytes = 0;        // RLIMIT_FSIZE
  std::uint64_t open_files = 0;             // RLIMIT_NOFILE
  std::uint64_t processes = 0;              // RLIMIT_NPROC
};
// Called ONCE in the worker before it forks (fork isolation mode); may allocate. Builds the per-child seccomp
// program into static storage. Returns 0 or an errno (logged).
int prepare_child();
// The worker's whole environment (LANG, one thread per numerical library), set before Python starts so
// that os.environ and libraries loaded later agree with it. Returns 0 or an errno.
int set_worker_environment() noexcept;
// In a forked per-run child (fork isolation mode): async-signal-safe, no exceptions, no heap allocation.
// Sets the rlimits, then stacks a second seccomp filter that denies any new process (fork, vfork, clone without
// CLONE_THREAD, clone3 -> ENOSYS), exec, raising rlimits, and signals to any process but this child.
// Returns 0 or an errno; on failure it has already written one line naming the syscall to fd 2 with a single write().
// Without a successful prepare_child() it returns ENOEXEC after setting the rlimits.
int apply_child(const RunLimits&) noexcept;
int apply_rlimits(const RunLimits&) noexcept;   // rlimits only (used by the process mode and by tests)
}  // namespace spr::harden
