// spr-worker: embeds CPython, hardens itself, then answers run requests framed on fd 3.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

#include "common/capture_layout.hpp"
#include "common/fd.hpp"
#include "common/frame.hpp"
#include "common/protocol.hpp"
#include "common/worker_start.hpp"
#include "engine/engine.hpp"
#include "fork_runner.hpp"
#include "harden/harden.hpp"
#include "interp_runners.hpp"
#include "process_state.hpp"
#include "session_loop.hpp"
#include "spr/version.hpp"
#include "engine/subinterpreter_pool.hpp"
#include "engine/run_scope.hpp"

#ifdef SPR_FAULTS
// spr-worker-faulty only (tests/faults/): the built-in module _spr_raw, and faults a request asks for by name.
void spr_register_raw_syscalls();
void spr_inject_fault(std::string_view frame, spr::embed::ForkRunner* fork_runner);
#endif

namespace {

using spr::json;
namespace detail = spr::detail;

constexpr std::uint64_t kBackstopSlackMb = 256;
constexpr std::uint64_t kRunThreadAddressMb = 72;  // a run thread's stack (8 MiB) and glibc malloc arena (64 MiB)

using Args = spr::detail::WorkerStart;  // the supervisor's plan for this worker, from its command line


void log_line(const std::string& s) {
  std::string line = "spr-worker[" + std::to_string(getpid()) + "]: " + s + "\n";
  ssize_t ignored = write(2, line.data(), line.size());  // one write(): lines never interleave
  (void)ignored;
}

[[noreturn]] void die(const std::string& s) {
  log_line(s);
  _exit(70);
}

#ifdef SPR_FAULTS
const char* g_fail_start = nullptr;  // installed as spr-worker-fail-<call>: that set-up call fails
spr::embed::ForkRunner* g_fork_runner = nullptr;  // fork mode: where a fail_setup fault goes
#endif

// A set-up call's result, or `failed` with errno EIO when a test build was told to fail `call`.
template <class T>
T start_call(const char* call, T result, T failed) {
#ifdef SPR_FAULTS
  if (g_fail_start && std::strcmp(g_fail_start, call) == 0) {
    errno = EIO;
    return failed;
  }
#endif
  (void)call;
  (void)failed;
  return result;
}

Args parse_args(int argc, char** argv) {
  const std::vector<std::string> args(argv + 1, argv + argc);
  if (args.size() == 1 && args[0] == "--version") {
    std::string v = std::string("spr-worker ") + spr::version() + "\n";
    ssize_t ignored = write(1, v.data(), v.size());
    (void)ignored;
    _exit(0);
  }
  try {
    return Args::from_argv(args);
  } catch (const std::invalid_argument& e) {
    die(std::string(e.what()) + " (spr-worker is started by the safe-py-runner supervisor)");
  }
}

// Bytes this process maps now (/proc/self/statm, opened before Landlock hid /proc), or 0 when unreadable.
std::uint64_t mapped_bytes(int statm_fd) {
  char buf[128] = {};
  if (statm_fd < 0 || pread(statm_fd, buf, sizeof buf - 1, 0) <= 0) return 0;
  return std::strtoull(buf, nullptr, 10) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

// `why` is set (and the report empty) when a backstop cannot be measured: the worker must not start.
spr::harden::Report harden_self(const Args& a, int statm_fd, int devnull_fd, spr::embed::RunThreads* threads,
                                std::string& why) {
  spr::harden::WorkerConfig cfg;
  cfg.keep_fds = {detail::kProtocolFd, detail::kCaptureFd};
  if (threads) {
    for (std::size_t k = 1; k < a.subinterpreter_threads; ++k) {
      cfg.keep_fds.push_back(a.run_thread_socket(k));
      cfg.keep_fds.push_back(a.run_thread_capture(k));
    }
    cfg.start_threads = [threads] { return threads->start(); };
  }
  if (statm_fd >= 0) cfg.keep_fds.push_back(statm_fd);
  if (devnull_fd >= 0) cfg.keep_fds.push_back(devnull_fd);
  cfg.read_paths = spr::embed::runtime_paths();
  for (const auto& p : spr::embed::support_paths()) cfg.read_paths.push_back(p);
  // allowed_read_paths: the pool is keyed by this set, so every run on this worker may read them.
  for (const auto& p : a.read_paths) cfg.read_paths.push_back(p);
  cfg.read_paths.push_back("/dev/null");
  cfg.read_paths.push_back("/dev/urandom");
  cfg.read_paths.push_back("/dev/zero");
  cfg.scratch_root = a.scratch;
  cfg.scratch_bytes = static_cast<std::uint64_t>(a.scratch_limit_mb) << 20;
#ifdef SPR_FAULTS
  cfg.refuse_mount_ns_for_test = g_fail_start != nullptr && std::strcmp(g_fail_start, "mountns") == 0;
#endif
  // The own root binds whole directories of the libraries extension modules need, with the loader's cache and
  // the alternatives links some of them are reached through (Debian's BLAS): the loader finds them by name, and
  // a soname is a link beside its file. Landlock still admits the needed files only.
  // A file's directory is bound whole: never one of the host's own (a support file there is left out).
  static constexpr const char* kNeverWhole[] = {"/", "/etc", "/root", "/home", "/tmp", "/var", "/run", "/srv", "/boot"};
  for (const auto& p : spr::embed::support_paths()) {
    const auto slash = p.rfind('/');
    struct stat st {};
    if (slash == std::string::npos || stat(p.c_str(), &st) != 0 || S_ISDIR(st.st_mode)) continue;
    const std::string dir = slash == 0 ? "/" : p.substr(0, slash);
    if (std::none_of(std::begin(kNeverWhole), std::end(kNeverWhole), [&](const char* d) { return dir == d; }))
      cfg.root_extra.push_back(dir);
  }
  for (const char* p : {"/etc/ld.so.cache", "/etc/alternatives"})
    if (access(p, F_OK) == 0) cfg.root_extra.push_back(p);
  cfg.allow_fork = a.allow_fork();
  cfg.allow_threads = a.allow_threads();
  cfg.max_tasks = Args::kMaxTasks;
  cfg.allow_network = a.allow_network;
  cfg.allow_unix_sockets = a.allow_unix_sockets;
  // OS backstops behind the allocator accounting and the soft timers, which a run that owns its
  // process's memory can switch off: measured from what the worker already uses.
  if (a.memory_backstop_mb > 0) {
    const std::uint64_t base = mapped_bytes(statm_fd);
    if (base == 0) {
      why = "cannot read /proc/self/statm for the memory backstop";
      return {};
    }
    // Twice the run's limit plus room for the interpreter's own growth: never refuses a run the
    // accounting would let through.
    // Run threads: each runs up to the limit at once, and each has a stack and a malloc arena of its own.
    const std::uint64_t runs = threads ? a.subinterpreter_threads : 1;
    cfg.address_space_bytes = base + ((runs + 1) * static_cast<std::uint64_t>(a.memory_backstop_mb) + kBackstopSlackMb +
                                      (runs - 1) * kRunThreadAddressMb) *
                                         (1ULL << 20);
  }
  if (a.cpu_backstop_seconds > 0) {
    rusage ru{};
    if (getrusage(RUSAGE_SELF, &ru) != 0) {
      why = std::string("getrusage failed: ") + strerror(errno);
      return {};
    }
    const double used = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                        static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    cfg.cpu_seconds = static_cast<std::uint64_t>(std::ceil(used + a.cpu_backstop_seconds)) + 1;
  }
  return spr::harden::apply_worker(cfg);
}

// How long a fresh worker waits for its first request before it imports its deferred [warm] modules:
// a supervisor that started it for a waiting run sends the request within this (a few ms when quiet).
constexpr int kFirstRequestWaitMs = 100;

// True when a request is readable on `fd` within `ms` (an error or hang-up counts: read_frame reports it).
bool request_within(int fd, int ms) {
  pollfd p{fd, POLLIN, 0};
  int r;
  do {
    r = poll(&p, 1, ms);
  } while (r < 0 && errno == EINTR);
  return r != 0;
}

// The one serve loop of every mode: requests answered one at a time until the supervisor closes.
[[noreturn]] void serve(spr::embed::IsolationRunner& runner, bool once) {
  std::string frame, reply;
  for (bool first = true;; first = false) {
    // Deferred [warm] imports (fork mode) happen while idle, in a process that has run no request: after
    // the hello when no request is waiting, else after the first reply. The first request is served cold;
    // a request that arrives meanwhile waits for one import at most (the rest wait for the next idle moment).
    if (spr::embed::preload_pending() && !request_within(detail::kProtocolFd, first ? kFirstRequestWaitMs : 0)) {
      spr::embed::preload_deferred([] { return request_within(detail::kProtocolFd, 0); });
      if (!spr::embed::preload_pending()) runner.warm_heap_grew();
    }
    runner.while_idle(detail::kProtocolFd);
    const auto s = detail::read_frame(detail::kProtocolFd, frame, detail::Clock::time_point::max(),
                                      detail::kMaxFrameBytes, runner.read_spin_microseconds(), -1,
                                      /*trusted_peer=*/true);
    if (s == detail::IoStatus::eof) _exit(0);  // supervisor closed: never finalise, just go
    if (s != detail::IoStatus::ok) die(std::string("reading a request: ") + detail::to_string(s));
#ifdef SPR_FAULTS
    spr_inject_fault(frame, g_fork_runner);
#endif
    runner.handle(frame, reply);
    spr::embed::wipe(frame);
    const detail::IoStatus w = detail::write_frame(detail::kProtocolFd, reply);
    spr::embed::wipe(reply);
    if (w != detail::IoStatus::ok || once) _exit(0);
    runner.after_reply();
  }
}

// A hello that says why this worker cannot serve; then the worker ends.
[[noreturn]] void refuse_start(spr::protocol::Hello hello, const std::string& why) {
  hello.error = why;
  detail::write_frame(detail::kProtocolFd, spr::protocol::encode(hello));
  die(why);
}

}  // namespace

int main(int argc, char** argv) {
  Args args = parse_args(argc, argv);
#ifdef SPR_FAULTS
  // Installed under the name spr-worker-nohello, it never greets its supervisor.
  if (std::string(argv[0]).find("nohello") != std::string::npos) {
    for (;;) pause();
  }
  if (const char* f = std::strstr(argv[0], "spr-worker-fail-")) g_fail_start = f + std::strlen("spr-worker-fail-");
#endif
  // The protocol fd must be a socket from our supervisor; refuse to run standalone by accident.
  struct stat st{};
  if (fstat(detail::kProtocolFd, &st) != 0 || !S_ISSOCK(st.st_mode))
    die("fd 3 is not the supervisor's socket; spr-worker is started by the safe-py-runner library or CLI");
  spr::protocol::Hello hello;
  hello.isolation = args.isolation;
  if (args.harden) {
    // First, while single-threaded and before Python: the worker continues as PID 2 of its own PID namespace;
    // this process stays outside as its keeper (the function does not return here).
    const spr::harden::LayerStatus pid_layer = spr::harden::enter_pid_namespace();
    if (pid_layer.fatal) {
      hello.pid = getpid();
      refuse_start(hello, "hardening layer pid " + pid_layer.detail);
    }
  }
  hello.pid = getpid();
  // A supervisor that went away is seen as a failed write, not a signal.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  if (start_call("sigaction", sigaction(SIGPIPE, &ignore, nullptr), -1) != 0)
    refuse_start(hello, "sigaction(SIGPIPE) failed: " + std::string(strerror(errno)));
  int capture_fd = fcntl(detail::kCaptureFd, F_GETFD) >= 0 ? detail::kCaptureFd : -1;
  if (capture_fd >= 0) {
    // Only a memfd from the supervisor is used as the capture buffer.
    struct stat cst{};
    if (fstat(capture_fd, &cst) != 0 || !S_ISREG(cst.st_mode)) capture_fd = -1;
  }
  if (std::string why = spr::embed::RunThreads::unsupported(args); !why.empty()) refuse_start(hello, why);
  if (!args.scratch.empty() && chdir(args.scratch.c_str()) != 0)
    refuse_start(hello, "chdir to the scratch directory failed: " + std::string(strerror(errno)));

  if (args.harden) spr::harden::set_worker_environment();
  spr::embed::EngineOptions eo;
  eo.capture_fd = capture_fd;
  eo.preload = !args.once;
  eo.sys_path = args.sys_path;
  eo.executable = args.python;
  eo.prefix = args.prefix;
  eo.cache_dir = args.cache_dir;
#ifdef SPR_WORKER_PYTHON_HOME
  eo.home = SPR_WORKER_PYTHON_HOME;  // a worker for another CPython than the one the engine was compiled for
#endif
  // One-run workers (process mode) import what the run imports; warm ones take the operator's list.
  if (!args.once && args.isolation != spr::Isolation::subinterpreter) eo.preload_modules = args.preload;
  // A fork-mode worker's own interpreter never runs a request, so its [warm] modules can come after the
  // hello: a first request that is already waiting does not wait for them too (see serve()).
  eo.defer_warm = args.isolation == spr::Isolation::fork && args.session_memory_mb < 0;
#ifdef SPR_FAULTS
  spr_register_raw_syscalls();  // before the interpreter starts
#endif
  if (std::string err = spr::embed::initialize(eo); !err.empty()) refuse_start(hello, err);
  // Both before Landlock: it hides /proc and makes /dev/null read-only.
  const detail::Fd statm(start_call("statm", open("/proc/self/statm", O_RDONLY | O_CLOEXEC), -1));
  const int statm_errno = errno;
  const detail::Fd devnull(start_call("devnull", open("/dev/null", O_WRONLY | O_CLOEXEC), -1));
  const int devnull_errno = errno;
  // The fork parent's RLIMIT_AS of each child, the backstops and the session cap are measured with it.
  if (!statm) refuse_start(hello, "cannot open /proc/self/statm: " + std::string(strerror(statm_errno)));
  const spr::embed::WorkerScope scope{args.isolation, args.allow_network, args.allow_unix_sockets};
  spr::embed::ProcessState process_state;  // captured once hardened, put back after runs
  spr::embed::SubinterpreterPool subinterps(args.subinterpreter_pool);
  std::unique_ptr<spr::embed::IsolationRunner> runner;
  // What a mode needs before hardening: the fork child's filter, the first sub-interpreter.
  if (args.session_memory_mb >= 0) {
    if (int e = spr::embed::limit_session_memory(statm.get(), args.session_memory_mb); e != 0)
      refuse_start(hello, "capping the session's address space failed: " + std::string(strerror(e)));
  } else if (args.isolation == spr::Isolation::fork) {
    // A run's fd 2 becomes /dev/null: without it user code would write to the host's stderr.
    if (!devnull) refuse_start(hello, "cannot open /dev/null: " + std::string(strerror(devnull_errno)));
    auto fork_runner = std::make_unique<spr::embed::ForkRunner>(statm.get(), devnull.get(), scope);
    if (std::string e = fork_runner->prepare(); !e.empty()) refuse_start(hello, "fork mode unavailable: " + e);
#ifdef SPR_FAULTS
    g_fork_runner = fork_runner.get();
#endif
    runner = std::move(fork_runner);
  } else if (args.isolation == spr::Isolation::subinterpreter) {
    if (std::string e = subinterps.start(); !e.empty()) refuse_start(hello, "subinterpreter mode unavailable: " + e);
    runner = std::make_unique<spr::embed::SubinterpreterRunner>(scope, subinterps, process_state);
  } else {
    runner = std::make_unique<spr::embed::NamespaceRunner>(scope, process_state);
  }
  hello.python = spr::embed::python_version();
  hello.build = spr::embed::python_build();
  std::unique_ptr<spr::embed::RunThreads> threads;
  if (args.subinterpreter_threads > 1 && args.session_memory_mb < 0)
    threads = std::make_unique<spr::embed::RunThreads>(args, scope);
  if (threads && !args.harden) {
    const spr::harden::LayerStatus started = threads->start();
    if (!started.active) refuse_start(hello, "run threads: " + started.detail);
  }
  if (args.harden) {
    std::string why;
    const spr::harden::Report report = harden_self(args, statm.get(), devnull.get(), threads.get(), why);
    if (!why.empty()) refuse_start(hello, why);
    for (const auto& layer : report)
      if (layer.fatal) refuse_start(hello, "hardening layer " + layer.name + " " + layer.detail);
    hello.hardening = spr::harden::to_json(report);
  }
  if (detail::write_frame(detail::kProtocolFd, spr::protocol::encode(hello)) != detail::IoStatus::ok) _exit(0);

  if (args.session_memory_mb >= 0) {
    runner = std::make_unique<spr::embed::SessionRunner>(
        spr::embed::WorkerScope{spr::Isolation::namespace_, args.allow_network, args.allow_unix_sockets});
  } else if (threads) {
    threads->serve_main(subinterps);  // every thread's runs put back their own directory and umask
  } else if (args.isolation != spr::Isolation::fork) {
    process_state.capture();  // namespace, sub-interpreter, process: what a run changes process-wide is put back
    spr::embed::RunScope::set_std_lock_release(false);  // ended with every kept file's (kept_descriptors_intact)
  } else {
    spr::embed::RunScope::set_std_lock_release(false);  // a run's process ends with it, and its locks with it
  }
  serve(*runner, args.once);
}
