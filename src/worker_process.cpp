// Spawning spr-worker with Boost.Process, and the supervisor's side of the frame protocol.
#include "detail/worker_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <boost/process/args.hpp>
#include <boost/process/child.hpp>
#include <boost/process/env.hpp>
#include <boost/process/extend.hpp>
#include <boost/process/io.hpp>
#include <cerrno>
#include <cstring>
#include <system_error>

#include "common/capture_layout.hpp"
#include "common/wire.hpp"

namespace bp = boost::process;

namespace spr::detail {

namespace {

std::string nonce() {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b)) {
    for (auto& c : b) c = static_cast<unsigned char>(random());
  }
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += hex[c >> 4];
    s += hex[c & 15];
  }
  return s;
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) {
    const char* n = strsignal(WTERMSIG(status));
    return "killed by signal " + std::to_string(WTERMSIG(status)) + " (" + (n ? n : "?") + ")";
  }
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  return "ended";
}

void remove_tree(const std::string& dir) {
  if (dir.empty()) return;
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
}

// Runs in the forked child before exec: async-signal-safe calls only.
struct ChildSetup {
  int sock, capture;
  pid_t parent;
  template <class Executor>
  void operator()(Executor&) const {
    // Move our fds above the target numbers first, so dup2 never clobbers one we still need.
    int s = fcntl(sock, F_DUPFD_CLOEXEC, 64);
    int c = fcntl(capture, F_DUPFD_CLOEXEC, 64);
    if (s < 0 || c < 0 || dup2(s, kProtocolFd) < 0 || dup2(c, kCaptureFd) < 0) _exit(127);
    setpgid(0, 0);                           // own group: a kill reaches anything it left behind
    prctl(PR_SET_PDEATHSIG, SIGKILL);        // dies with the thread that spawned it (the spawner)
    if (getppid() != parent) _exit(127);     // the supervisor died before prctl took effect
    struct rlimit core{0, 0};
    setrlimit(RLIMIT_CORE, &core);
    // Everything else the supervisor had open stays behind (Boost's own pipes are not close-on-exec).
    // Close-on-exec fds (Boost's exec-error pipe among them) are left for exec to close.
    struct rlimit nofile{};
    int top = getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < 65536 ? static_cast<int>(nofile.rlim_cur) : 65536;
    for (int fd = kCaptureFd + 1; fd < top; ++fd) {
      int flags = fcntl(fd, F_GETFD);
      if (flags >= 0 && !(flags & FD_CLOEXEC)) ::close(fd);
    }
  }
};

}  // namespace

// Defined (weak) in a consumer's build by the exported CMake package: where the installed package's
// worker is, computed from where the package was found. A null address when it is not linked in.
extern "C" const char* spr_installed_worker_path() __attribute__((weak));

std::filesystem::path find_worker(const std::filesystem::path& configured) {
  namespace fs = std::filesystem;
  std::vector<fs::path> candidates;
  if (!configured.empty()) {
    candidates.push_back(configured);
  } else {
    if (const char* env = getenv("SPR_WORKER"); env && *env) candidates.emplace_back(env);
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
  for (const auto& c : candidates)
    if (::access(c.c_str(), X_OK) == 0) return c;
  std::string tried;
  for (const auto& c : candidates) tried += (tried.empty() ? "" : ", ") + c.string();
  throw WorkerError("spr-worker not found or not executable (tried: " + tried +
                    "); set RunnerOptions::worker_path or SPR_WORKER");
}

std::unique_ptr<WorkerProcess> WorkerProcess::spawn(const SpawnOptions& o) {
  std::unique_ptr<WorkerProcess> w(new WorkerProcess());
  w->isolation_ = o.isolation;
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    throw WorkerError(std::string("socketpair failed: ") + strerror(errno));
  w->sock_ = Fd(sv[0]);
  Fd child_sock(sv[1]);
  w->capture_ = Fd(memfd_create("spr-capture", MFD_CLOEXEC));
  if (!w->capture_) throw WorkerError(std::string("memfd_create failed: ") + strerror(errno));

  char tmpl[] = "/tmp/spr-XXXXXX";
  if (!mkdtemp(tmpl)) throw WorkerError(std::string("mkdtemp failed: ") + strerror(errno));
  w->scratch_ = tmpl;

  std::vector<std::string> args = {"--isolation", to_string(o.isolation), "--scratch", w->scratch_, "--grace",
                                   format_seconds(o.grace_seconds)};
  if (o.once) args.push_back("--once");
  if (o.isolation == Isolation::subinterpreter) {
    args.push_back("--subinterpreter-pool");
    args.push_back(std::to_string(o.subinterpreter_pool));
  }
  if (o.allow_network) args.push_back("--allow-network");
  if (!o.python.empty()) args.insert(args.end(), {"--python", o.python});
  for (const auto& p : o.sys_path) args.insert(args.end(), {"--sys-path", p});
  for (const auto& m : o.preload) args.insert(args.end(), {"--preload", m});
  for (const auto& p : o.read_paths) args.insert(args.end(), {"--read", p});
  bp::environment env;  // empty: nothing of the caller's environment reaches user code
  env.clear();
  try {
    std::error_code ec;
    const ChildSetup setup{child_sock.get(), w->capture_.get(), getpid()};
    auto c = o.inherit_stderr
                 ? bp::child(o.worker_path.string(), bp::args(args), bp::env(env), bp::std_in < bp::null,
                             bp::std_out > bp::null, bp::extend::on_exec_setup(setup), ec)
                 : bp::child(o.worker_path.string(), bp::args(args), bp::env(env), bp::std_in < bp::null,
                             bp::std_out > bp::null, bp::std_err > bp::null, bp::extend::on_exec_setup(setup), ec);
    if (ec) {
      remove_tree(w->scratch_);
      throw WorkerError("cannot start " + o.worker_path.string() + ": " + ec.message());
    }
    w->pid_ = c.id();
    c.detach();  // we reap it ourselves with waitpid (Boost's wait leaves zombies after terminate)
  } catch (const bp::process_error& e) {
    remove_tree(w->scratch_);
    throw WorkerError("cannot start " + o.worker_path.string() + ": " + e.what());
  }
  child_sock.reset();
  w->alive_ = true;
  w->pidfd_ = Fd(static_cast<int>(syscall(SYS_pidfd_open, w->pid_, 0)));  // -1 on old kernels: EOF then relies on the socket

  std::string frame;
  auto deadline = Clock::now() + std::chrono::duration_cast<Clock::duration>(
                                     std::chrono::duration<double>(o.start_timeout_seconds));
  IoStatus s = read_frame(w->sock_.get(), frame, deadline, 1 << 20);
  if (s != IoStatus::ok) {
    w->kill_and_reap();
    throw WorkerError("worker " + o.worker_path.string() + " sent no hello (" + to_string(s) + ", " +
                      describe_status(w->wait_status_) + ")");
  }
  try {
    w->hello_ = parse_json(frame);
  } catch (const std::exception& e) {
    w->kill_and_reap();
    throw WorkerError(std::string("worker sent a malformed hello: ") + e.what());
  }
  if (w->hello_.contains("error")) {
    w->kill_and_reap();
    throw WorkerError("worker failed to start: " + w->hello_["error"].get<std::string>());
  }
  if (w->hello_.value("protocol", 0) != kProtocolVersion) {
    w->kill_and_reap();
    throw WorkerError("worker speaks protocol " + w->hello_.value("protocol", json(0)).dump() + ", expected " +
                      std::to_string(kProtocolVersion));
  }
  return w;
}

WorkerProcess::~WorkerProcess() { kill_and_reap(); }

void WorkerProcess::kill_and_reap() {
  if (pid_ > 0 && !reaped_) {
    ::kill(-pid_, SIGKILL);  // the group: a forked run child goes too
    ::kill(pid_, SIGKILL);
    while (waitpid(pid_, &wait_status_, 0) < 0 && errno == EINTR) {
    }
    reaped_ = true;
  }
  alive_ = false;
  sock_.reset();
  pidfd_.reset();
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
}

RunResult WorkerProcess::lost(std::uint64_t id, IoStatus status, const RunnerPolicy& policy, bool timed_out) {
  kill_and_reap();
  RunResult r;
  if (timed_out) {
    r = timeout_result(policy.timeout_seconds);
  } else if (status == IoStatus::eof || status == IoStatus::error) {
    if (WIFSIGNALED(wait_status_) && WTERMSIG(wait_status_) == SIGXCPU) {
      r = failure(ErrorKind::cpu_time, "CPU time limit exceeded after " + format_seconds(policy.cpu_time_seconds) + "s", 124);
      r.resource_exceeded = true;
    } else {
      r = failure(ErrorKind::worker_crashed, "worker crashed: " + describe_status(wait_status_));
    }
  } else {
    r = failure(ErrorKind::protocol_error, std::string("worker reply unusable: ") + to_string(status));
  }
  read_capture(id, static_cast<std::uint64_t>(policy.max_output_kb) * 1024, r);
  return r;
}

RunResult WorkerProcess::run(std::uint64_t id, const std::string& code, const json& input_data,
                             const RunnerPolicy& policy, Clock::time_point hard_deadline,
                             const std::string& stdin_text) {
  if (!alive_) return failure(ErrorKind::worker_unavailable, "worker is not running");
  if (json_depth(input_data) > kMaxJsonDepth)
    return failure(ErrorKind::bad_input, "input_data is nested deeper than " + std::to_string(kMaxJsonDepth) + " levels");
  const std::string n = nonce();
  // The request is assembled as text: the policy's JSON is cached per thread, since callers send
  // the same policy again and again.
  thread_local RunnerPolicy cached_policy;
  thread_local std::string cached_policy_text = dump_json(cached_policy.to_json());
  if (policy != cached_policy) {
    cached_policy = policy;
    cached_policy_text = dump_json(policy.to_json());
  }
  std::string text;
  try {
    text.reserve(code.size() + 256);
    text += "{\"id\":";
    text += std::to_string(id);
    text += ",\"nonce\":\"";
    text += n;
    text += "\",\"policy\":";
    text += cached_policy_text;
    text += ",\"code\":";
    text += dump_json(json(code));
    text += ",\"input_data\":";
    text += dump_json(input_data);
    if (!stdin_text.empty()) {
      text += ",\"stdin\":";
      text += dump_json(json(stdin_text));
    }
    text += "}";
  } catch (const std::exception& e) {
    return failure(ErrorKind::bad_input, std::string("cannot encode the request: ") + e.what());
  }
  if (write_frame(sock_.get(), text, true) != IoStatus::ok) return lost(id, IoStatus::eof, policy, false);
  std::string frame;
  IoStatus s = read_frame(sock_.get(), frame, hard_deadline, kMaxFrameBytes, 0, pidfd_.get());
  if (s != IoStatus::ok) return lost(id, s, policy, s == IoStatus::timeout);
  json reply;
  try {
    reply = parse_json(frame);
  } catch (const std::exception& e) {
    kill_and_reap();
    RunResult r = failure(ErrorKind::protocol_error, std::string("malformed reply from worker: ") + e.what());
    read_capture(id, static_cast<std::uint64_t>(policy.max_output_kb) * 1024, r);
    return r;
  }
  // A reply must carry our id and the nonce only the worker's C++ side has seen.
  if (!reply.is_object() || reply.value("id", json()) != json(id) || reply.value("nonce", json()) != json(n)) {
    kill_and_reap();
    return failure(ErrorKind::protocol_error, "worker reply did not match the request (id or nonce differs)");
  }
  try {
    RunResult r = result_from_reply(reply);
    r.isolation = isolation_;
    return r;
  } catch (const std::exception& e) {
    kill_and_reap();
    return failure(ErrorKind::protocol_error, std::string("malformed reply from worker: ") + e.what());
  }
}

}  // namespace spr::detail
