// Starting spr-worker (detail/spawn.hpp), and the supervisor's side of the frame protocol.
#include "detail/worker_process.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <linux/openat2.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <mutex>
#include <system_error>

#include "common/capture_layout.hpp"
#include "common/dir_entries.hpp"
#include "common/json_scan.hpp"
#include "common/run_files.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "detail/cancel.hpp"
#include "detail/json_cost.hpp"
#include "detail/spawn.hpp"

namespace spr::detail {

namespace scan = spr::json_scan;

namespace {

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    const char* n = strsignal(WTERMSIG(status));
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + (n ? n : "?") + ")";
  }
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  return "ended";
}

// How long a worker whose socket closed may take to end by itself before it is killed (it has nothing left to do).
constexpr int kKeeperReportMs = 2000;

// Deeper than this, a scratch tree is not walked: the worker holding it is replaced instead.
constexpr int kMaxWipeDepth = 256;

// Opens directory `name` in `dirfd` for the wipe. A directory the run made unreadable (mkdir's mode 0300)
// is made readable first: its owner is the sandbox's identity, which is this supervisor's (or root's).
int open_subdir(int dirfd, const char* name) {
  int sub = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (sub >= 0 || errno != EACCES) return sub;
  const int path = ::openat(dirfd, name, O_PATH | O_NOFOLLOW | O_CLOEXEC);
  if (path < 0) return -1;
  struct stat st {};
  // The mode is changed through the descriptor (its /proc link), never by name: no link is followed.
  const std::string link = "/proc/self/fd/" + std::to_string(path);
  if (::fstat(path, &st) == 0 && S_ISDIR(st.st_mode) && ::chmod(link.c_str(), 0700) == 0)
    sub = ::openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  ::close(path);
  return sub;
}

// Removes everything inside the directory `dirfd` without following a single symlink: every step
// is relative to a descriptor already held, so a run that swaps a directory for a link to a host
// path while we walk cannot make us delete outside its scratch root. True when nothing is left:
// a caller that gets false must not let another run see the directory.
// `keep_thread_dirs`: a worker with run threads keeps t0, t1, ... at the top (each slot wipes its own).
bool remove_contents(int dirfd, int depth, bool keep_thread_dirs = false) {
  if (depth > kMaxWipeDepth) return false;
  // Listed through `dirfd` itself from its start (lseek: the root's offset is where the last wipe's listing
  // ended): after most runs the root is empty, and this is three system calls where a DIR stream on a
  // duplicate took eight.
  if (::lseek(dirfd, 0, SEEK_SET) != 0) return false;
  std::vector<std::string> names;
  const bool listed = for_each_dir_entry(dirfd, [&](const struct dirent64& e) {
    if (keep_thread_dirs && e.d_name[0] == 't' && e.d_name[1] != '\0' &&
        std::strspn(e.d_name + 1, "0123456789") == std::strlen(e.d_name + 1))
      return;
    names.emplace_back(e.d_name);
  });
  if (!listed) return false;
  bool empty = true;
  for (const auto& name : names) {
    if (::unlinkat(dirfd, name.c_str(), 0) == 0) continue;
    const int sub = open_subdir(dirfd, name.c_str());
    if (sub < 0) {
      empty = false;
      continue;
    }
    empty = remove_contents(sub, depth + 1) && empty;
    ::close(sub);
    if (::unlinkat(dirfd, name.c_str(), AT_REMOVEDIR) != 0) empty = false;
  }
  return empty;
}

void remove_tree(const std::string& dir) {
  if (dir.empty()) return;
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return;
  remove_contents(fd, 0);
  ::close(fd);
  ::rmdir(dir.c_str());
}

// `outcome` (what this supervisor measured or counted) in place of a run's own result, keeping the output the
// run wrote.
RunResult with_output_of(RunResult outcome, RunResult run, Isolation isolation) {
  outcome.stdout_text = std::move(run.stdout_text);
  outcome.stderr_text = std::move(run.stderr_text);
  outcome.stdout_truncated = run.stdout_truncated;
  outcome.stderr_truncated = run.stderr_truncated;
  outcome.isolation = isolation;
  return outcome;
}

// Whether the worker's hello (sent before any user code ran) reports layer `name` active.
bool layer_active(const json& hardening, const char* name) {
  if (!hardening.is_array()) return false;
  for (const auto& layer : hardening)
    if (layer.is_object() && layer.value("name", json()) == name && layer.value("active", json()) == true) return true;
  return false;
}

// The one child of `parent`'s main thread, from the kernel's list of them (/proc/<pid>/task/<pid>/children):
// -1 when none or several, -2 when the kernel keeps no such list (then every /proc/<pid>/stat is read). The
// keeper and the namespace's init fork from their main thread, single-threaded.
pid_t only_child_listed(pid_t parent) {
  char path[64], buf[64];
  std::snprintf(path, sizeof path, "/proc/%d/task/%d/children", static_cast<int>(parent), static_cast<int>(parent));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -2;
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n < 0) return -2;
  buf[n] = '\0';
  char* end = nullptr;
  const long pid = std::strtol(buf, &end, 10);
  if (end == buf || pid <= 0) return -1;
  while (*end == ' ' || *end == '\n') ++end;
  return *end == '\0' ? static_cast<pid_t>(pid) : -1;  // a second pid, or a list longer than the buffer
}

// The one live child of `parent`, from the parent links in /proc/<pid>/stat; -1 when none or several.
pid_t only_child_of(pid_t parent) {
  // The kernel's list first: one file, where the scan reads one per process on the machine (hundreds, on
  // the path of every worker start).
  if (const pid_t listed = only_child_listed(parent); listed != -2) return listed;
  pid_t found = -1;
  DIR* d = ::opendir("/proc");
  if (!d) return -1;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    const long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0') continue;
    char path[64], buf[512];
    std::snprintf(path, sizeof path, "/proc/%ld/stat", pid);
    const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) continue;
    const ssize_t n = ::read(fd, buf, sizeof buf - 1);
    ::close(fd);
    if (n <= 0) continue;
    buf[n] = '\0';
    const char* p = std::strrchr(buf, ')');  // comm may hold spaces and parentheses
    long ppid = 0;
    char state = 0;
    if (!p || std::sscanf(p + 1, " %c %ld", &state, &ppid) != 2 || ppid != parent || state == 'Z') continue;
    if (found > 0) {
      found = -1;
      break;
    }
    found = static_cast<pid_t>(pid);
  }
  ::closedir(d);
  return found;
}

// The scratch directory as the worker sees it: resolved inside its root, no link followed on the way.
Fd open_scratch_inside(pid_t pid, const std::string& scratch, std::string& why) {
  const std::string proc_root = "/proc/" + std::to_string(pid) + "/root";
  const Fd root(::open(proc_root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!root) {
    why = "open(" + proc_root + "): " + strerror(errno);
    return Fd();
  }
  open_how how{};
  how.flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_IN_ROOT | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  const std::string relative = scratch.substr(scratch.find_first_not_of('/'));
  Fd fd(static_cast<int>(::syscall(SYS_openat2, root.get(), relative.c_str(), &how, sizeof how)));
  if (!fd) why = "openat2(" + scratch + " in the worker's root): " + strerror(errno);
  return fd;
}

// Why /proc cannot be used to find and watch workers (empty when it can): the supervisor reads its workers' parent
// links, roots and CPU times there, and a /proc of another PID namespace names other processes. That is what a
// process started as PID 1 of a new PID namespace without a /proc of its own sees (`unshare --pid --fork` without
// `--mount-proc`).
std::string proc_unusable() {
  char self[32];
  const ssize_t n = ::readlink("/proc/self", self, sizeof self - 1);
  std::string why;
  if (n < 0) {
    why = std::string("/proc/self cannot be read (") + strerror(errno) + ")";
  } else {
    self[n] = '\0';
    if (std::to_string(::getpid()) == self) return {};
    why = std::string("/proc belongs to another PID namespace (it calls this process ") + self + ", which is PID " +
          std::to_string(::getpid()) + " in its own)";
  }
  return why + ": the supervisor finds and watches its workers through /proc, which must be mounted for its own PID "
               "namespace; in a new PID namespace mount one (unshare --pid --fork --mount-proc, or a container "
               "runtime's own /proc)";
}

// True when the kernel gives this process the orphans of its descendants: it is PID 1 of its PID namespace (a
// container started without an init) or a child subreaper. A worker's keeper that dies before the namespace's init
// (a kill of the group, a cancel, a shutdown) then leaves that init to us, and a worker without the PID layer leaves
// its fork run's child: nobody else would ever wait for them.
bool adopts_orphans() {
  if (::getpid() == 1) return true;
  int subreaper = 0;
  return ::prctl(PR_GET_CHILD_SUBREAPER, &subreaper) == 0 && subreaper != 0;
}

// How long a reap waits for a worker's orphans still ending: a namespace's init ends only once every process of its
// namespace has. Past it the group is retried by later reaps (a process stuck in the kernel ends when it can).
constexpr auto kOrphanWait = std::chrono::seconds(2);

std::mutex g_orphans_mu;
std::vector<pid_t> g_orphan_groups;  // groups whose orphans had not all ended when their reap gave up

// Reaps every exited child of ours in process group `group`, until none is left (true) or `until` passes (false). By
// group, never waitpid(-1): a host's own children keep their exit statuses for the host. The group is a worker's
// (its keeper's pid): its members keep the id after their parent died, and it is not reused while one of them lives.
bool reap_group(pid_t group, Clock::time_point until) {
  int pause_ms = 1;
  for (;;) {
    const pid_t done = ::waitpid(-group, nullptr, WNOHANG);
    if (done > 0) continue;
    if (done < 0 && errno == EINTR) continue;
    if (done < 0) return true;  // ECHILD: no child of ours is left in the group
    if (Clock::now() >= until) return false;
    ::usleep(static_cast<useconds_t>(pause_ms) * 1000);  // one of them is still ending
    pause_ms = std::min(pause_ms * 2, 20);
  }
}

// After the keeper of `group` is reaped: its orphans, then those of earlier groups that were still ending.
void reap_orphans(pid_t group) {
  std::vector<pid_t> groups;
  {
    std::lock_guard<std::mutex> lk(g_orphans_mu);
    groups.swap(g_orphan_groups);
  }
  std::vector<pid_t> left;
  if (!reap_group(group, Clock::now() + kOrphanWait)) left.push_back(group);
  for (pid_t g : groups)
    if (!reap_group(g, Clock::now())) left.push_back(g);
  if (left.empty()) return;
  std::lock_guard<std::mutex> lk(g_orphans_mu);
  g_orphan_groups.insert(g_orphan_groups.end(), left.begin(), left.end());
}

}  // namespace

// Defined (weak) in a consumer's build by the exported CMake package: where the installed package's
// worker is, computed from where the package was found. A null address when it is not linked in.
extern "C" const char* spr_installed_worker_path() __attribute__((weak));

std::filesystem::path find_worker(const std::filesystem::path& configured) {
  namespace fs = std::filesystem;
  const auto absolute = [](const fs::path& p) {
    std::error_code ec;
    fs::path a = fs::absolute(p, ec);
    if (ec) throw WorkerError("cannot make the worker's path " + p.string() + " absolute: " + ec.message());
    return a;
  };
  std::vector<fs::path> candidates;
  if (!configured.empty()) {
    candidates.push_back(configured);
  } else {
    if (const char* env = getenv("SPR_WORKER"); env && *env) {
      // A worker named explicitly is the only candidate: a mistyped path must not quietly run another binary.
      if (!executable_file(env))
        throw WorkerError(std::string("SPR_WORKER names ") + env + ", which is not an executable file");
      return absolute(env);
    }
    std::error_code ec;
    fs::path self = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      candidates.push_back(self.parent_path() / "spr-worker");
      candidates.push_back(self.parent_path().parent_path() / "libexec" / "safe-py-runner" / "spr-worker");
    }
    if (spr_installed_worker_path) candidates.emplace_back(spr_installed_worker_path());
#ifdef SPR_INSTALL_WORKER
    candidates.emplace_back(SPR_INSTALL_WORKER);
#endif
  }
  // Absolute, resolved against the directory the Runner was made in: a relative path kept as it is named
  // another file once the host changed directory (a root host that moved into a user's directory started
  // that user's build/spr-worker: red team round 19).
  for (const auto& c : candidates)
    if (executable_file(c.c_str())) return absolute(c);
  std::string tried;
  for (const auto& c : candidates) tried += (tried.empty() ? "" : ", ") + c.string();
  throw WorkerError("spr-worker not found or not executable (tried: " + tried +
                    "); reinstall safe-py-runner (the worker is part of every install), or name one with the "
                    "SPR_WORKER environment variable (C++: RunnerOptions::worker_path; Python: Runner(worker_path=...))");
}

std::unique_ptr<WorkerProcess> WorkerProcess::spawn(const SpawnOptions& o) {
  if (std::string why = proc_unusable(); !why.empty()) throw WorkerError(why);
  std::unique_ptr<WorkerProcess> w(new WorkerProcess());
  w->isolation_ = o.start.isolation;
  w->grace_seconds_ = o.grace_seconds;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw WorkerError(std::string("socketpair failed: ") + strerror(errno));
  w->sock_ = Fd(sv[0]);
  Fd child_sock(sv[1]);
  w->capture_ = Fd(memfd_create("spr-capture", MFD_CLOEXEC));
  if (!w->capture_) throw WorkerError(std::string("memfd_create failed: ") + strerror(errno));
  // Run threads (subinterpreter_threads): slot k's socket and capture buffer, at the worker's numbers for them.
  const std::size_t slots =
      o.start.isolation == Isolation::subinterpreter && o.start.session_memory_mb < 0 ? std::max<std::size_t>(o.start.subinterpreter_threads, 1) : 1;
  std::vector<Fd> slot_socks(slots), slot_child_socks(slots), slot_captures(slots);
  for (std::size_t k = 1; k < slots; ++k) {
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0)
      throw WorkerError(std::string("socketpair failed: ") + strerror(errno));
    slot_socks[k] = Fd(pair[0]);
    slot_child_socks[k] = Fd(pair[1]);
    slot_captures[k] = Fd(memfd_create("spr-capture", MFD_CLOEXEC));
    if (!slot_captures[k]) throw WorkerError(std::string("memfd_create failed: ") + strerror(errno));
  }

  char tmpl[] = "/tmp/spr-XXXXXX";
  if (!mkdtemp(tmpl)) throw WorkerError(std::string("mkdtemp failed: ") + strerror(errno));
  w->scratch_ = tmpl;
  w->scratch_fd_ = Fd(::open(tmpl, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));

  WorkerStart start = o.start;
  start.scratch = w->scratch_;
  SpawnPlan plan;
  plan.path = o.worker_path.string();
  plan.argv.push_back(plan.path);
  for (auto& arg : start.to_argv()) plan.argv.push_back(std::move(arg));
  const Fd null(::open("/dev/null", O_RDWR | O_CLOEXEC));
  if (!null) {
    remove_tree(w->scratch_);
    throw WorkerError(std::string("cannot open /dev/null: ") + strerror(errno));
  }
  // stdin and stdout are /dev/null, stderr the host's (or /dev/null); the protocol socket and the capture memfd
  // at the numbers the worker expects; nothing else of this process.
  const bool host_stderr = o.inherit_stderr && ::fcntl(2, F_GETFD) >= 0;  // a daemon may have closed its fd 2
  plan.fds = {{null.get(), 0}, {null.get(), 1}, {host_stderr ? 2 : null.get(), 2},
              {child_sock.get(), kProtocolFd}, {w->capture_.get(), kCaptureFd}};
  for (std::size_t k = 1; k < slots; ++k) {
    plan.fds.push_back({slot_child_socks[k].get(), start.run_thread_socket(k)});
    plan.fds.push_back({slot_captures[k].get(), start.run_thread_capture(k)});
  }
  try {
    w->pid_ = spawn_program(plan);
  } catch (const std::system_error& e) {
    remove_tree(w->scratch_);
    throw WorkerError("cannot start " + plan.path + ": " + e.what());
  }
  child_sock.reset();
  for (auto& c : slot_child_socks) c.reset();
  w->alive_ = true;
  w->pidfd_ = Fd(static_cast<int>(syscall(SYS_pidfd_open, w->pid_, 0)));  // -1 on old kernels: EOF then relies on the socket

  std::string frame;
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(o.start_timeout_seconds));
  IoStatus s = read_frame(w->sock_.get(), frame, deadline, 1 << 20, 0, o.stop_fd);
  if (s != IoStatus::ok) {
    w->kill_and_reap();
    pollfd stop{o.stop_fd, POLLIN, 0};
    if (o.stop_fd >= 0 && ::poll(&stop, 1, 0) == 1) throw WorkerError("the runner shut down while a worker started");
    throw WorkerError("worker " + o.worker_path.string() + " sent no hello (" + to_string(s) + ", " +
                      describe_status(w->wait_status_) + ")");
  }
  std::string why;
  try {
    w->hello_ = protocol::decode_as<protocol::Hello>(frame);
    if (w->hello_.error)
      why = "worker failed to start: " + *w->hello_.error;
    else if (w->hello_.protocol != protocol::kVersion)
      why = "worker speaks protocol " + std::to_string(w->hello_.protocol) + ", expected " +
            std::to_string(protocol::kVersion);
    else if (!o.python_build.empty() && w->hello_.build != o.python_build)
      // Two builds of one X.Y differ in their extension modules: never run one's path on the other.
      why = "worker " + o.worker_path.string() + " embeds Python " + w->hello_.build + ", but " + o.start.python +
            " is Python " + o.python_build + " (rebuild safe-py-runner after upgrading a Python)";
  } catch (const protocol::ProtocolError& e) {
    why = std::string("worker sent a malformed hello: ") + e.what();
  }
  if (!why.empty()) {
    w->kill_and_reap();
    throw WorkerError(why);
  }
  const protocol::Hello& h = w->hello_;
  w->hello_json_ = {{"protocol", h.protocol}, {"pid", h.pid},           {"isolation", to_string(h.isolation)},
                    {"python", h.python},     {"hardening", h.hardening}};
  // With a PID namespace the process we started is its keeper; the worker is its grandchild (under init). Found
  // now, before any user code ran, from the kernel's parent links.
  w->payload_pid_ = w->pid_;
  if (layer_active(h.hardening, "pid")) {
    const pid_t init = only_child_of(w->pid_);
    w->payload_pid_ = init > 0 ? only_child_of(init) : -1;
    if (w->payload_pid_ <= 0) {
      w->kill_and_reap();
      throw WorkerError("cannot find the worker process inside its PID namespace");
    }
  }
  if (layer_active(h.hardening, "root")) {
    // The run writes to a tmpfs inside the worker's own root, not to the directory made above. It is opened
    // once, now, before any user code ran, through the worker's root and without following a link; every
    // later wipe starts from this descriptor.
    std::string open_error;
    w->scratch_fd_ = open_scratch_inside(w->payload_pid_, w->scratch_, open_error);
    if (!w->scratch_fd_) {
      w->kill_and_reap();
      throw WorkerError("cannot open the worker's scratch directory: " + open_error);
    }
  }
  if (slots > 1) {
    // One process, `slots` run slots: each wipes its thread's directory (made by the worker before its hello).
    auto shared = std::make_shared<SharedProcess>();
    shared->slots = slots;
    shared->scratch = std::exchange(w->scratch_, std::string());
    shared->scratch_fd = std::move(w->scratch_fd_);
    w->shared_ = shared;
    for (std::size_t k = 0; k < slots; ++k) {
      std::unique_ptr<WorkerProcess> extra;
      if (k > 0) {
        extra.reset(new WorkerProcess());
        extra->isolation_ = w->isolation_;
        extra->grace_seconds_ = w->grace_seconds_;
        extra->pid_ = w->pid_;
        extra->payload_pid_ = w->payload_pid_;
        extra->hello_ = w->hello_;
        extra->hello_json_ = w->hello_json_;
        extra->sock_ = std::move(slot_socks[k]);
        extra->capture_ = std::move(slot_captures[k]);
        extra->pidfd_ = Fd(w->pidfd_ ? ::fcntl(w->pidfd_.get(), F_DUPFD_CLOEXEC, 0) : -1);
        extra->shared_ = shared;
        extra->alive_ = true;
      }
      WorkerProcess& slot = k == 0 ? *w : *extra;
      const std::string dir = "t" + std::to_string(k);
      slot.scratch_fd_ = Fd(::openat(shared->scratch_fd.get(), dir.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
      if (!slot.scratch_fd_) {
        const int err = errno;
        w->kill_and_reap();
        throw WorkerError("cannot open the worker's run thread directory " + dir + ": " + strerror(err));
      }
      if (extra) w->slots_.push_back(std::move(extra));
    }
  }
  return w;
}

WorkerProcess::~WorkerProcess() { kill_and_reap(); }

// How long a worker this process may no longer signal is waited for before it is left to end on its own.
constexpr int kUnsignalledWaitMs = 1000;

// Kills a worker and its process group (the PID namespace's init and a forked run child go too), waits
// for it into `status`, and reaps what it left to this process when it adopts orphans. The caller has
// closed the worker's socket. A process that changed its user since it started the worker (a program
// that drops root after building a Runner, or after importing the package, which starts one) may not
// signal it any more (EPERM): its keeper, which holds a copy of the worker's end of the socket, ends the
// worker's PID namespace when this end closes (embed/harden/pid.cpp), and it is waited for a moment through
// its pidfd, never without a bound (red team round 16: the wait for a worker that never got the signal hung
// the program's exit; round 17: a run that kept catching its soft timeout kept such a worker alive).
static void kill_group_and_reap(pid_t pid, int pidfd, int& status) {
  const bool group = ::kill(-pid, SIGKILL) == 0;
  const bool one = ::kill(pid, SIGKILL) == 0;
  if (!group && !one && errno == EPERM) {
    pollfd ended{pidfd, POLLIN, 0};
    if (pidfd < 0 || detail::retry_eintr([&] { return ::poll(&ended, 1, kUnsignalledWaitMs); }) <= 0 ||
        detail::retry_eintr([&] { return waitpid(pid, &status, WNOHANG); }) != pid) {
      status = SIGKILL;  // as killed: it is not waited for again
      return;
    }
  } else {
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (adopts_orphans()) reap_orphans(pid);
}

void WorkerProcess::kill_and_reap() {
  if (shared_) {
    // A slot of a worker with run threads: the first to get here ends the process for all of them.
    shared_->ending = true;  // no other slot of it is leased from now on
    std::lock_guard<std::mutex> lk(shared_->mu);
    if (!shared_->reaped) {
      pollfd ended{pidfd_.get(), POLLIN, 0};
      const bool running = pidfd_ && ::poll(&ended, 1, 0) == 0;
      if (running && !shared_->ended_by) shared_->ended_by = this;
      sock_.reset();
      kill_group_and_reap(pid_, pidfd_.get(), shared_->wait_status);
      shared_->scratch_fd.reset();
      remove_tree(shared_->scratch);
      shared_->scratch.clear();
      shared_->reaped = true;
    }
    wait_status_ = shared_->wait_status;
    reaped_ = true;
    alive_ = false;
    sock_.reset();
    pidfd_.reset();
    scratch_fd_.reset();
    return;
  }
  if (pid_ > 0 && !reaped_) {
    sock_.reset();
    kill_group_and_reap(pid_, pidfd_.get(), wait_status_);
    reaped_ = true;
  }
  alive_ = false;
  sock_.reset();
  pidfd_.reset();
  scratch_fd_.reset();
  remove_tree(scratch_);
  scratch_.clear();
}

// The header was writable by the run: only the run id is trusted for matching, and every length is
// clamped to the cap this supervisor asked for.
void WorkerProcess::read_capture(std::uint64_t id, std::uint64_t cap, RunResult& r) const {
  CaptureHeader h{};
  if (!capture_ || pread(capture_.get(), &h, sizeof h, 0) != static_cast<ssize_t>(sizeof h)) return;
  if (h.magic != kCaptureMagic || h.run_id != id || h.cap != cap) return;
  auto take = [&](std::uint64_t off, std::uint64_t len, std::string& out) {
    len = std::min(len, h.cap);
    out.resize(static_cast<std::size_t>(len));
    ssize_t n = pread(capture_.get(), out.data(), out.size(), static_cast<off_t>(off));
    out.resize(n > 0 ? static_cast<std::size_t>(n) : 0);
  };
  take(kCaptureDataOffset, h.out_len, r.stdout_text);
  take(kCaptureDataOffset + h.cap, h.err_len, r.stderr_text);
  r.stdout_truncated = h.out_truncated != 0;
  r.stderr_truncated = h.err_truncated != 0;
  // The bytes are the run's to write: as valid UTF-8 within the cap (each invalid byte, replaced later by
  // whoever writes the text as JSON, became three: a killed run's output reached 3x max_output_kb, red team
  // round 20).
  bool cut[2] = {false, false};
  r.stdout_text = utf8_within(r.stdout_text, static_cast<std::size_t>(cap), cut[0]);
  r.stderr_text = utf8_within(r.stderr_text, static_cast<std::size_t>(cap), cut[1]);
  r.stdout_truncated = r.stdout_truncated || cut[0];
  r.stderr_truncated = r.stderr_truncated || cut[1];
}

void WorkerProcess::stream_capture(std::uint64_t id, std::uint64_t cap, std::uint64_t sent[2], std::uint64_t given[2],
                                   const OutputCallback& out) const {
  auto header_is_run = [&](CaptureHeader& h) {
    return capture_ && pread(capture_.get(), &h, sizeof h, 0) == static_cast<ssize_t>(sizeof h) &&
           h.magic == kCaptureMagic && h.run_id == id && h.cap == cap;
  };
  CaptureHeader h{};
  if (!header_is_run(h)) return;
  const std::uint64_t lens[2] = {std::min(h.out_len, cap), std::min(h.err_len, cap)};
  std::string chunks[2];
  for (int s = 0; s < 2; ++s) {
    if (lens[s] <= sent[s]) continue;
    std::string& chunk = chunks[s];
    chunk.assign(static_cast<std::size_t>(lens[s] - sent[s]), '\0');
    const ssize_t got = pread(capture_.get(), chunk.data(), chunk.size(),
                              static_cast<off_t>(kCaptureDataOffset + (s == 0 ? 0 : cap) + sent[s]));
    chunk.resize(got > 0 ? static_cast<std::size_t>(got) : 0);
    // Hold back a character still being written: a chunk never ends inside a UTF-8 sequence.
    std::size_t keep = chunk.size(), back = 0;
    while (back < 4 && back < keep && (static_cast<unsigned char>(chunk[keep - 1 - back]) & 0xC0) == 0x80) ++back;
    if (back < keep) {
      const auto lead = static_cast<unsigned char>(chunk[keep - 1 - back]);
      const std::size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
      if (need > back + 1) keep -= back + 1;
    }
    chunk.resize(keep);
  }
  // The worker retires the header before it wipes or cuts back the areas (after its reply, or for the
  // next run): bytes read after that may be zeros, not output. Only what was read while the header
  // still named this run goes out; the rest comes with the result.
  CaptureHeader again{};
  if (!header_is_run(again)) return;
  for (int s = 0; s < 2; ++s) {
    if (chunks[s].empty()) continue;
    sent[s] += chunks[s].size();
    // Valid UTF-8, and no more of it in all than the cap (as read_capture gives the whole).
    bool cut = false;
    std::string text = utf8_within(chunks[s], static_cast<std::size_t>(cap - std::min(given[s], cap)), cut);
    given[s] += text.size();
    if (!text.empty()) out(s == 0 ? OutputStream::out : OutputStream::err, text);
  }
}

// A control reply (a session's variables) comes from a process that ran user code: capped before
// anything is allocated, like a run's reply.
constexpr std::uint32_t kMaxControlReplyBytes = 8u << 20;
// Beyond the run's own time, how long a worker has to take a request (a large one on a loaded machine).
constexpr int kMinSendSeconds = 5;

void WorkerProcess::trim_capture() const {
  struct stat st {};
  if (capture_ && ::fstat(capture_.get(), &st) == 0 && static_cast<std::uint64_t>(st.st_size) > max_capture_bytes_ &&
      ::ftruncate(capture_.get(), static_cast<off_t>(max_capture_bytes_)) != 0) {
    // Cannot shrink it: the memory stays held until the worker goes; nothing else depends on it.
  }
}

IoStatus WorkerProcess::send(std::string_view frame, Clock::time_point deadline,
                            std::function<void()>* before_wait) const {
  return send_frame(sock_.get(), frame, deadline, pidfd_.get(), true, before_wait);
}

IoStatus WorkerProcess::receive(std::string& frame, Clock::time_point deadline, std::uint32_t cap,
                               std::function<void()>* before_wait) const {
  return read_frame(sock_.get(), frame, deadline, cap, 0, pidfd_.get(), false, before_wait);
}

std::optional<json> WorkerProcess::variables(std::uint64_t id, Clock::time_point deadline) {
  if (!alive_) return std::nullopt;
  std::string frame;
  if (send(protocol::encode(protocol::ListVariables{id}), deadline) != IoStatus::ok ||
      receive(frame, deadline, kMaxControlReplyBytes) != IoStatus::ok) {
    kill_and_reap();
    return std::nullopt;
  }
  try {
    if (parse_cost_refusal(frame, cost_budget(frame.size())).empty()) {
      protocol::Variables v = protocol::decode_as<protocol::Variables>(frame);
      if (v.id == id) return std::move(v.variables);
    }
  } catch (const protocol::ProtocolError&) {
  }
  kill_and_reap();
  return std::nullopt;
}

RunResult WorkerProcess::lost(std::uint64_t id, IoStatus status, const RunnerPolicy& policy, bool timed_out,
                               Clock::time_point deadline) {
  if (status == IoStatus::eof && !timed_out && pidfd_) {
    // The socket closed first; in a PID namespace the keeper ends a moment later as its worker ended (a signal
    // is raised again). Killed before that, it would report our SIGKILL instead of the worker's own end. The
    // wait never passes the run's own deadline: a run that closed its socket and kept computing is a timeout.
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd ended{pidfd_.get(), POLLIN, 0};
    const int wait_ms = static_cast<int>(std::clamp<long long>(left, 0, kKeeperReportMs));
    const int ready = retry_eintr([&] { return ::poll(&ended, 1, wait_ms); });
    if (ready == 0 && left <= kKeeperReportMs) timed_out = true;
  }
  kill_and_reap();
  RunResult r;
  if (shared_ && shared_->ended_by != this &&
      (shared_->ended_by || (WIFSIGNALED(wait_status_) && WTERMSIG(wait_status_) == SIGKILL))) {
    // Another slot's run (its limit, its cancel) ended the process this run was in: not this run's doing.
    r = outcome::ended_with_worker();
  } else if (timed_out) {
    r = outcome::timeout(policy.timeout_seconds);
  } else if (status == IoStatus::eof || status == IoStatus::error) {
    if (WIFSIGNALED(wait_status_) && WTERMSIG(wait_status_) == SIGXCPU) {
      r = outcome::cpu_time(policy.cpu_time_seconds);
    } else {
      r = outcome::failure(ErrorKind::worker_crashed, "worker crashed: " + describe_status(wait_status_));
    }
  } else {
    r = outcome::failure(ErrorKind::protocol_error, std::string("worker reply unusable: ") + to_string(status));
  }
  read_capture(id, static_cast<std::uint64_t>(policy.max_output_kb) * 1024, r);
  return r;
}

bool WorkerProcess::wipe_scratch() const {
  if (!scratch_fd_) return true;
  if (!remove_contents(scratch_fd_.get(), 0)) return false;
  if (!shared_) return true;
  // What a run wrote beside its thread's directory, at the top of the scratch root (the other threads'
  // runs are inside theirs).
  std::lock_guard<std::mutex> lk(shared_->mu);
  return !shared_->scratch_fd || remove_contents(shared_->scratch_fd.get(), 0, true);
}

RunResult WorkerProcess::run(std::uint64_t id, const std::string& code, const json& input_data,
                             const RunnerPolicy& policy, Clock::time_point hard_deadline,
                             const std::string& stdin_text, const RunExtras& extras) {
  if (!alive_) return outcome::failure(ErrorKind::worker_unavailable, "worker is not running");
  // Nothing a run writes to the worker's scratch root (the only place Landlock lets it write)
  // outlives the run: every run starts from an empty root. A root that cannot be emptied (too deep,
  // an entry that cannot be removed) is never seen by another run: its worker is replaced.
  struct Wipe {
    WorkerProcess* w;
    ~Wipe() {
      if (!w->wipe_scratch()) w->kill_and_reap();
    }
  } wipe{this};
  if (extras.input_json && !extras.input_json_checked) {
    // Checked without building it: the text goes to the worker as it is.
    if (std::string why = json_text_error(*extras.input_json); !why.empty())
      return outcome::bad_input("input_data: " + why);
  } else if (json_depth(input_data) > kMaxJsonDepth) {
    return outcome::failure(ErrorKind::bad_input, "input_data is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  }
  std::string text;
  try {
    // Encoded from the caller's own values: input_data (or its text), code, stdin and files are not
    // copied on the way.
    static const Files kNoFiles;
    static const std::vector<std::string> kNone;
    const std::vector<std::string>& functions = extras.host ? extras.host->names() : kNone;
    text = protocol::encode(protocol::RequestRef{id, code, input_data, policy, stdin_text, extras.want_repr,
                                                 kill_after(policy.timeout_seconds, grace_seconds_), functions,
                                                 extras.files ? *extras.files : kNoFiles,
                                                 extras.collect ? *extras.collect : kNone,
                                                 extras.input_json ? std::string_view(*extras.input_json)
                                                                   : std::string_view(),
                                                 extras.operator_policy});
  } catch (const std::exception& e) {
    return outcome::failure(ErrorKind::bad_input, std::string("cannot encode the request: ") + e.what());
  }
  if (text.size() > kMaxFrameBytes)  // refused before it is sent: the worker is not at fault
    return outcome::bad_input("the request (code, input_data, stdin and files) is larger than " +
                              std::to_string(kMaxFrameBytes >> 20) + " MiB");
  // The process's CPU clock: another run thread's CPU would count too, so a slot leaves it to the worker's
  // own per-thread clock (CLOCK_THREAD_CPUTIME_ID) and the RLIMIT_CPU backstop.
  // Not in fork mode: the worker's children are reaped after their reply, so their CPU would land in a later
  // run's window. The fork parent measures each run's child itself (ForkRunner::run).
  const std::optional<std::uint64_t> cpu_before =
      policy.cpu_time_seconds > 0 && !shared_ && isolation_ != Isolation::fork ? cpu_ticks() : std::nullopt;
  // The run's time starts once the worker has its request: a large request gets as long again to be
  // taken, and the reply's deadline moves by what the taking took. A stopped worker is still bounded.
  const auto sent_at = Clock::now();
  const Clock::time_point send_deadline = sent_at + (hard_deadline > sent_at ? hard_deadline - sent_at : Clock::duration{}) +
                                          std::chrono::seconds(kMinSendSeconds);
  // A caller's watch (detail::set_watch: serve reading its input on this thread) is called once its descriptor
  // turns readable while the reply is awaited, and before anything here would wait on the worker otherwise (a
  // send it does not take, a frame it sends in part, host calls, its end): how long those take is the
  // worker's to decide, and a run that owns its process would hold the caller's input that long.
  // `pass_on` is set while the watch is armed; the frame calls empty it once they call it, as pass() does.
  const int watch = extras.cancel ? watch_fd(*extras.cancel) : -1;
  std::function<void()> pass_on;
  if (watch >= 0) pass_on = [&] { fire_watch(*extras.cancel); };
  auto pass = [&] {
    if (pass_on) std::exchange(pass_on, nullptr)();
  };
  if (extras.host) pass();
  auto lose = [&](IoStatus status, bool timed_out) {
    pass();
    return lost(id, status, policy, timed_out, hard_deadline);
  };
  if (const IoStatus s = send(text, send_deadline, &pass_on); s == IoStatus::timeout) {
    // A stopped worker (or one whose run stopped reading) would block us forever on a full socket.
    kill_and_reap();
    const double waited = std::chrono::duration<double>(Clock::now() - sent_at).count();
    RunResult r = outcome::worker_stalled(std::round(waited * 10) / 10);
    r.isolation = isolation_;
    return r;
  } else if (s != IoStatus::ok) {
    return lose(IoStatus::eof, false);
  }
  hard_deadline += Clock::now() - sent_at;
  std::string().swap(text);  // a large request's text is not held for the whole run
  // Time in host functions counts against the run's timeout, by this clock: the run started now.
  const Clock::time_point host_deadline = Clock::now() + seconds(policy.timeout_seconds);
  const std::uint64_t cap = static_cast<std::uint64_t>(policy.max_output_kb) * 1024;
  std::uint64_t sent[2] = {0, 0};   // bytes of the buffer streamed
  std::uint64_t given[2] = {0, 0};  // bytes of text they gave (invalid bytes replaced)
  // Streaming: the capture buffer is polled while no reply is readable; the last bytes go out once
  // the result is in, so the chunks always add up to the result's output.
  // The buffer is the worker's to write: whatever a run wrote past the largest size this supervisor
  // asked for is cut off after the run (RLIMIT_FSIZE bounds it during the run).
  max_capture_bytes_ = std::max<std::uint64_t>(max_capture_bytes_, detail::kCaptureDataOffset + 2 * cap);
  auto finish = [&](RunResult r) {
    trim_capture();
    if (!extras.on_output || !*extras.on_output) return r;
    if (r.stdout_text.size() > sent[0]) (*extras.on_output)(OutputStream::out, r.stdout_text.substr(sent[0]));
    if (r.stderr_text.size() > sent[1]) (*extras.on_output)(OutputStream::err, r.stderr_text.substr(sent[1]));
    return r;
  };
  // Before every frame (a run with host functions sends several): streaming, the capture buffer is read every
  // 10 ms; the caller's watch is watched.
  const bool streaming = extras.on_output && *extras.on_output;
  auto wait_for_frame = [&] {
    while (streaming || pass_on) {
      const bool watching = static_cast<bool>(pass_on);
      pollfd pfd[3] = {{sock_.get(), POLLIN, 0}, {pidfd_.get(), POLLIN, 0}, {watch, POLLIN, 0}};
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(hard_deadline - Clock::now()).count();
      const int ready = ::poll(pfd, watching ? 3 : 2, static_cast<int>(std::clamp<long long>(left, 0, streaming ? 10 : 60000)));
      if (streaming) stream_capture(id, cap, sent, given, *extras.on_output);
      if (ready > 0 && watching && pfd[2].revents) {
        pass();
        if (ready == 1) continue;
      }
      if (ready != 0 || left <= 0) break;  // readable, hung up, ended, failed or out of time: read_frame decides
    }
  };
  std::string frame;
  RunResult r;
  std::string why;
  bool stale_seen = false;
  bool retire = false;  // the worker ends after this reply (protocol::Reply::retire)
  const std::uint32_t frame_cap = reply_frame_cap(
      static_cast<std::uint64_t>(policy.max_output_kb), static_cast<std::uint64_t>(policy.max_result_kb),
      static_cast<std::uint64_t>(policy.max_files_kb), extras.want_repr,
      extras.host ? static_cast<std::uint64_t>(policy.host_call_kb()) : 0);
  for (int frames = 0;; ++frames) {
    wait_for_frame();
    IoStatus s = receive(frame, hard_deadline, frame_cap, &pass_on);
    if (s != IoStatus::ok) return finish(lose(s, s == IoStatus::timeout));
    // A reply's parsed tree is bounded before anything parses it: the frame cap bounds bytes, not what
    // they cost once built (14 MiB of `{},` took 566 MB).
    why = parse_cost_refusal(frame, cost_budget(frame.size()));
    if (!why.empty()) break;  // refused below, as any reply that breaks the protocol
    if (extras.host && HostCalls::looks_like_call(frame) && !(frames < 3 && is_stale(frame, id))) {
      const HostCalls::Step step = extras.host->answer(frame, id, policy, sock_.get(), pidfd_.get(), host_deadline, why);
      if (step == HostCalls::Step::answered) {
        --frames;
        continue;
      }
      if (step == HostCalls::Step::timed_out) return finish(lose(IoStatus::timeout, true));
      if (step == HostCalls::Step::gone) return finish(lose(IoStatus::eof, false));
      kill_and_reap();  // out of step with us, or over a limit it should have kept: replaced
      r = step == HostCalls::Step::over_limit ? outcome::host_call_limit(why)
                                               : outcome::failure(ErrorKind::protocol_error, "worker host call refused: " + why);
      read_capture(id, static_cast<std::uint64_t>(policy.max_output_kb) * 1024, r);
      r.isolation = isolation_;
      return finish(std::move(r));
    }
    why = check_reply(frame, id, policy, extras.want_repr, extras.collect, r, retire);
    // A second frame for an earlier request (its run wrote one reply itself, the worker the other)
    // says nothing about this request: skip it, answer this run, then replace the worker.
    if (why.empty() || frames >= 3 || !is_stale(frame, id)) break;
    stale_seen = true;
  }
  if (!why.empty()) {
    // The run can write to the reply channel itself: a reply that breaks the protocol or a cap is
    // never passed on, and the worker (now out of step with us) is replaced.
    kill_and_reap();
    r = outcome::failure(ErrorKind::protocol_error, "worker reply refused: " + why);
    read_capture(id, static_cast<std::uint64_t>(policy.max_output_kb) * 1024, r);
    r.isolation = isolation_;
    return finish(std::move(r));
  }
  r.isolation = isolation_;
  // What the supervisor measured itself outranks what the run reported: a run that used more CPU
  // than allowed did not succeed, whatever its reply says. (Wall-clock overruns are the engine's to
  // see, by its own clock, and the hard deadline's: elapsed time seen from here includes scheduling
  // delays under load, which are not the run's.)
  // A worker that had used less than a clock tick when the run began reads 0 ticks: a reading all the same (it was
  // taken for "unreadable", and under load a process-mode run then used any CPU it liked).
  if (cpu_before && r.error_kind != ErrorKind::cpu_time) {
    std::optional<std::uint64_t> end = cpu_ticks();
    // A worker that ended right after its reply (a process-mode worker always does; in any other mode a run that
    // wrote its own reply and ended its process) has no /proc entry left: its CPU is what reaping the process we
    // started reports, the worker's included. Before, the check then saw nothing and passed (red team round 19:
    // 2 s of CPU under a 0.5 s limit, answered ok, in namespace and subinterpreter mode and in sessions).
    if (!end) end = cpu_ticks_at_end(hard_deadline);
    const std::uint64_t before = *cpu_before;
    const double used = !end ? std::numeric_limits<double>::infinity()  // unmeasurable: fails closed
                        : *end > before ? static_cast<double>(*end - before) / static_cast<double>(sysconf(_SC_CLK_TCK))
                                        : 0;
    // A subinterpreter worker may spend the start of this window building its next interpreter.
    const double cpu_slack = kCpuOverrunSlackSeconds + (isolation_ == Isolation::subinterpreter ? kSpareBuildSeconds : 0);
    if (used > policy.cpu_time_seconds + cpu_slack) {
      r = with_output_of(outcome::cpu_time(policy.cpu_time_seconds), std::move(r), isolation_);
    }
  }
  // Out of step with us, or ending by its own word: replaced after answering this run (never leased again).
  if (stale_seen || retire) kill_and_reap();
  // Over a host call limit: what this supervisor counted and measured decides, not the reply.
  if (extras.host && extras.host->limit() && r.error_kind != ErrorKind::timeout &&
      r.error_kind != ErrorKind::cpu_time && r.error_kind != ErrorKind::memory) {
    r = with_output_of(outcome::host_call_limit(*extras.host->limit()), std::move(r), isolation_);
  }
  return finish(std::move(r));
}

// The files a reply claims the run left: only names the request's patterns match (decode() has checked
// each name's form), no more than max_files_kb in all, no name both returned and left out.
static std::string check_files(const RunResult& r, const std::vector<std::string>* collect, const RunnerPolicy& policy) {
  if (r.files.empty() && r.files_left_out.empty() && !r.files_truncated) return {};
  if (!collect || collect->empty()) return "it carries files nobody asked for";
  std::uint64_t total = 0;
  for (const auto& [name, content] : r.files) {
    if (!run_files::matches(*collect, name)) return "it carries a file no collect pattern matches";
    total += content.size();
  }
  if (total > static_cast<std::uint64_t>(policy.max_files_kb) * 1024) return "files larger than max_files_kb";
  for (const auto& name : r.files_left_out)
    if (!run_files::matches(*collect, name) || r.files.count(name)) return "it leaves out a file it cannot have left out";
  return {};
}

// Decodes and checks a reply against what the supervisor knows: the one request in flight (its
// id), the caps of its policy, the field types. Nothing here is secret from the run (it can read
// its own process's memory, the id included): what binds a reply to its request is that only one
// request is in flight per worker, and any frame out of step replaces the worker.
std::string WorkerProcess::check_reply(const std::string& frame, std::uint64_t id, const RunnerPolicy& policy,
                                       bool want_repr, const std::vector<std::string>* collect,
                                       RunResult& r, bool& retire) const {
  protocol::Reply reply;
  try {
    reply = protocol::decode_as<protocol::Reply>(frame);
  } catch (const protocol::ProtocolError& e) {
    return std::string("malformed reply: ") + e.what();
  }
  if (reply.id != id) return "it does not answer the request in flight (its id differs)";
  retire = reply.retire;
  r = std::move(reply.result);
  const std::size_t out_cap = static_cast<std::size_t>(policy.max_output_kb) * 1024;
  if (r.stdout_text.size() > out_cap || r.stderr_text.size() > out_cap) return "output longer than max_output_kb";
  if (r.error && r.error->size() > kMaxReplyErrorBytes) return "error message longer than the protocol allows";
  const std::size_t res_cap = static_cast<std::size_t>(policy.max_result_kb) * 1024;
  // The engine cuts a repr to max_result_kb and marks the cut with an ellipsis.
  if (r.repr && !want_repr) return "it carries a repr nobody asked for";
  if (r.repr && r.repr->size() > res_cap + kReprEllipsisBytes) return "repr longer than max_result_kb";
  if (!r.result.is_null()) {
    if (!r.ok) return "a failed run carries a result";
    // Measured as the engine and the fork parent measure it (scan::result_charge), on the text the worker sent:
    // a run that owns its process writes that text itself, so no slack for another encoder's spelling.
    const auto text = scan::member(frame, "result");
    if (json_depth(r.result) > kMaxJsonDepth || !text || scan::result_charge(*text) > res_cap)
      return "result larger than max_result_kb";
  }
  if (r.ok && (r.error || r.exit_code != 0 || r.error_kind != ErrorKind::none || r.timed_out))
    return "a successful run carries an error";
  if (std::string why = check_files(r, collect, policy); !why.empty()) return why;
  return {};
}

std::optional<std::uint64_t> WorkerProcess::cpu_ticks_at_end(Clock::time_point deadline) {
  if (reaped_ || pid_ <= 0) return std::nullopt;
  if (pidfd_) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    pollfd ended{pidfd_.get(), POLLIN, 0};
    if (retry_eintr([&] { return ::poll(&ended, 1, static_cast<int>(std::clamp<long long>(left, 0, 60000))); }) <= 0)
      return std::nullopt;
  }
  int status = 0;
  rusage used{};
  if (retry_eintr([&] { return static_cast<int>(::wait4(pid_, &status, 0, &used)); }) != pid_) return std::nullopt;
  reaped_ = true;
  wait_status_ = status;
  if (adopts_orphans()) reap_orphans(pid_);
  const long hz = sysconf(_SC_CLK_TCK);
  auto ticks = [hz](const timeval& t) {
    return static_cast<std::uint64_t>(t.tv_sec) * static_cast<std::uint64_t>(hz) +
           static_cast<std::uint64_t>(t.tv_usec) * static_cast<std::uint64_t>(hz) / 1000000u;
  };
  return ticks(used.ru_utime) + ticks(used.ru_stime);
}

// Read by the supervisor from /proc: the run cannot change it.
std::optional<std::uint64_t> WorkerProcess::cpu_ticks() const {
  char path[64];
  std::snprintf(path, sizeof path, "/proc/%d/stat", static_cast<int>(payload_pid_));
  const int fd = ::open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  char buf[1024];
  const ssize_t n = ::read(fd, buf, sizeof buf - 1);
  ::close(fd);
  if (n <= 0) return std::nullopt;
  buf[n] = '\0';
  const char* p = std::strrchr(buf, ')');  // comm may contain spaces; fields restart after it
  if (!p) return std::nullopt;
  // Its own time and that of the children it has reaped (a fork-mode run's child).
  unsigned long long utime = 0, stime = 0, cutime = 0, cstime = 0;
  if (std::sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %llu %llu", &utime, &stime, &cutime,
                  &cstime) != 4)
    return std::nullopt;
  return utime + stime + cutime + cstime;
}

bool WorkerProcess::is_stale(const std::string& frame, std::uint64_t id) {
  // The top-level id from one pass that builds nothing (a forged frame may be costly to parse).
  const RequestCost c = measure_request(frame, std::numeric_limits<std::size_t>::max());
  return !c.malformed && c.id.is_number_unsigned() && c.id.get<std::uint64_t>() < id;
}

void WorkerProcess::mark_idle() {
  if (shared_) ++shared_->idle_slots;
}

void WorkerProcess::mark_busy() {
  ++(shared_ ? shared_->idle_watch : idle_watch_).leases;
  if (shared_ && shared_->idle_slots > 0) --shared_->idle_slots;
}

bool WorkerProcess::spent_while_idle(std::chrono::milliseconds allowance) {
  if (!alive() || (shared_ && shared_->idle_slots != shared_->slots)) return false;  // another slot runs
  IdleWatch& w = shared_ ? shared_->idle_watch : idle_watch_;
  const std::uint64_t now = cpu_ticks().value_or(0);  // 0 when unreadable (the worker is gone): not counted
  if (w.seen_at_lease != w.leases) {  // the first look since its last lease: the count starts here
    w.seen_at_lease = w.leases;
    w.ticks = now;
    return false;
  }
  static const long ticks_per_second = ::sysconf(_SC_CLK_TCK);
  return ticks_per_second > 0 && now > w.ticks &&
         static_cast<long long>(now - w.ticks) * 1000 > static_cast<long long>(allowance.count()) * ticks_per_second;
}

bool WorkerProcess::quiet() const {
  if (!alive() || !sock_) return false;
  pollfd p{sock_.get(), POLLIN, 0};
  const int r = ::poll(&p, 1, 0);
  return r == 0;  // anything readable (a stray frame, a hang-up) means it is out of step
}

}  // namespace spr::detail
