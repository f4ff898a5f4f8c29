// spr-worker: embeds CPython, hardens itself, then answers run requests framed on fd 3.
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/capture_layout.hpp"
#include "common/frame.hpp"
#include "common/wire.hpp"
#include "engine.hpp"
#include "fork_runner.hpp"
#include "process_state.hpp"
#include "harden/harden.hpp"
#include "session_loop.hpp"
#include "spr/version.hpp"
#include "subinterp_runner.hpp"

namespace {

using spr::json;
namespace detail = spr::detail;

constexpr std::uint64_t kBackstopSlackMb = 256;

struct Args {
  spr::Isolation isolation = spr::Isolation::fork;
  bool once = false;
  bool harden = true;
  bool allow_network = false;
  std::string scratch;
  double grace = 0.25;
  std::uint64_t memory_backstop_mb = 0;
  double cpu_backstop_seconds = 0;
  std::size_t subinterpreter_pool = 2;
  std::vector<std::string> sys_path;    // --sys-path, repeated: the chosen python3's sys.path
  std::string python;                   // --python: that python3 (sys.executable)
  std::vector<std::string> preload;     // --preload, repeated
  std::vector<std::string> read_paths;  // --read, repeated: allowed_read_paths of this worker's pool
  long long session_memory_mb = -1;     // >= 0: a session worker (--session MB)
};

void log_line(const std::string& s) {
  std::string line = "spr-worker[" + std::to_string(getpid()) + "]: " + s + "\n";
  ssize_t ignored = write(2, line.data(), line.size());  // one write(): lines never interleave
  (void)ignored;
}

[[noreturn]] void die(const std::string& s) {
  log_line(s);
  _exit(70);
}

Args parse_args(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value for " + k);
      return argv[++i];
    };
    if (k == "--isolation") {
      std::string v = value();
      a.isolation = spr::RunnerPolicy::from_json({{"isolation", v}}).isolation;
    } else if (k == "--once") {
      a.once = true;
    } else if (k == "--allow-network") {
      a.allow_network = true;
    } else if (k == "--session") {
      a.session_memory_mb = std::stoll(value());
    } else if (k == "--no-harden") {
      a.harden = false;
    } else if (k == "--scratch") {
      a.scratch = value();
    } else if (k == "--memory-backstop-mb") {
      a.memory_backstop_mb = std::stoull(value());
    } else if (k == "--cpu-backstop-seconds") {
      a.cpu_backstop_seconds = std::stod(value());
    } else if (k == "--sys-path") {
      a.sys_path.push_back(value());
    } else if (k == "--python") {
      a.python = value();
    } else if (k == "--preload") {
      a.preload.push_back(value());
    } else if (k == "--read") {
      a.read_paths.push_back(value());
    } else if (k == "--grace") {
      a.grace = std::stod(value());
    } else if (k == "--subinterpreter-pool") {
      a.subinterpreter_pool = static_cast<std::size_t>(std::stoul(value()));
    } else if (k == "--version") {
      std::string v = std::string("spr-worker ") + spr::version() + "\n";
      ssize_t ignored = write(1, v.data(), v.size());
      (void)ignored;
      _exit(0);
    } else {
      die("unknown argument " + k + " (spr-worker is started by the safe-py-runner supervisor)");
    }
  }
  return a;
}

spr::harden::Report harden_self(const Args& a, int statm_fd, int devnull_fd) {
  spr::harden::WorkerConfig cfg;
  cfg.keep_fds = {detail::kProtocolFd, detail::kCaptureFd};
  if (statm_fd >= 0) cfg.keep_fds.push_back(statm_fd);
  if (devnull_fd >= 0) cfg.keep_fds.push_back(devnull_fd);
  cfg.read_paths = spr::embed::runtime_paths();
  for (const auto& p : spr::embed::support_paths()) cfg.read_paths.push_back(p);
  // allowed_read_paths: the pool is keyed by this set, so every run on this worker may read them.
  for (const auto& p : a.read_paths) cfg.read_paths.push_back(p);
  cfg.read_paths.push_back("/dev/null");
  cfg.read_paths.push_back("/dev/urandom");
  cfg.scratch_root = a.scratch;
  cfg.allow_fork = a.isolation == spr::Isolation::fork;
  // A long-lived interpreter must not get threads: they would keep running into later runs.
  cfg.allow_threads = a.isolation == spr::Isolation::fork || a.isolation == spr::Isolation::process;
  cfg.allow_network = a.allow_network;
  // OS backstops behind the allocator accounting and the soft timers, which a run that owns its
  // process's memory can switch off: measured from what the worker already uses.
  if (a.memory_backstop_mb > 0) {
    long pages = 0;
    if (statm_fd >= 0) {
      char buf[128] = {};
      if (pread(statm_fd, buf, sizeof buf - 1, 0) > 0) pages = std::strtol(buf, nullptr, 10);
    }
    const std::uint64_t base = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
    // Twice the run's limit plus room for the interpreter's own growth: never refuses a run the
    // accounting would let through.
    cfg.address_space_bytes = base + (2 * a.memory_backstop_mb + kBackstopSlackMb) * (1ULL << 20);
  }
  if (a.cpu_backstop_seconds > 0) {
    rusage ru{};
    getrusage(RUSAGE_SELF, &ru);
    const double used = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
                        static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
    cfg.cpu_seconds = static_cast<std::uint64_t>(std::ceil(used + a.cpu_backstop_seconds)) + 1;
  }
  return spr::harden::apply_worker(cfg);
}

// Keeps the parsed policy of the previous request: agents send the same policy again and again.
struct PolicyCache {
  json last = nullptr;
  spr::RunnerPolicy parsed;
  const spr::RunnerPolicy& get(const json& p) {
    if (p != last) {
      parsed = spr::RunnerPolicy::from_json(p);
      last = p;
    }
    return parsed;
  }
};

std::string reply_text(const json& id, const json& nonce, const spr::RunResult& r) {
  json j = detail::reply_from_result(r);
  j["id"] = id;
  j["nonce"] = nonce;
  return detail::dump_json(j);
}

#ifdef SPR_FAULTS
// Test-only fault injection: compiled into spr-worker-faulty, never into spr-worker. A request
// whose code starts with "#spr-fault: NAME" makes the worker misbehave in that way.
// Some faults stand for what a run with arbitrary read/write of the worker's memory could do
// (forge a reply, write outside the audit hook's view, allocate behind the accounting).
void forge(const json& id, const json& nonce, json body) {
  body["id"] = id;
  body["nonce"] = nonce;
  detail::write_frame(detail::kProtocolFd, detail::dump_json(body));
}

void inject_fault(const std::string& code, const json& id, const json& nonce) {
  const std::string tag = "#spr-fault: ";
  if (code.rfind(tag, 0) != 0) return;
  const std::string line = code.substr(tag.size(), code.find('\n') - tag.size());
  const std::string name = line.substr(0, line.find(' '));
  const std::string arg = line.find(' ') == std::string::npos ? std::string() : line.substr(line.find(' ') + 1);
  if (name == "forge_oversize") {  // 200 KB of stdout past a 128 KB cap, then the real reply
    forge(id, nonce, {{"ok", true}, {"result", "FORGED"}, {"stdout", std::string(200 << 10, 'A')}});
    return;
  }
  if (name == "forge_ok") {  // a plausible reply, then the real one: two frames for one request
    forge(id, nonce, {{"ok", true}, {"result", "FORGED"}, {"error_kind", "none"}, {"exit_code", 0}});
    return;
  }
  if (name == "big_header") {  // announces `arg` bytes, sends a few, then stalls
    const auto len = static_cast<std::uint32_t>(std::stoul(arg));
    const unsigned char hdr[4] = {static_cast<unsigned char>(len), static_cast<unsigned char>(len >> 8),
                                  static_cast<unsigned char>(len >> 16), static_cast<unsigned char>(len >> 24)};
    ssize_t a = write(detail::kProtocolFd, hdr, 4);
    ssize_t b = write(detail::kProtocolFd, "{\"id\":", 6);
    (void)a;
    (void)b;
    for (;;) pause();
  }
  if (name == "leave_file") {  // a file in the worker's scratch root, where only the OS layers apply
    int fd = open(("spr-leftover-" + arg).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
    return;
  }
  if (name == "mkfifo") {  // os.mkfifo/os.mknod raise no audit event on 3.11: only the C layers stop them
    if (mkfifo(("spr-fifo-" + arg).c_str(), 0600) != 0)
      mknod(("spr-fifo-" + arg).c_str(), S_IFIFO | 0600, 0);
    return;
  }
  if (name == "sigio") {  // signal-driven I/O aimed at another process: SIGKILL through F_SETSIG
    int fds[2];
    if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return;
    const pid_t target = static_cast<pid_t>(std::stol(arg));
    (void)fcntl(fds[0], F_SETOWN, target);
    (void)fcntl(fds[0], F_SETSIG, SIGKILL);
    (void)fcntl(fds[0], F_SETFL, O_ASYNC | O_NONBLOCK);
    ssize_t w = write(fds[1], "x", 1);
    (void)w;
    close(fds[0]);
    close(fds[1]);
    return;
  }
  if (name == "alloc") {  // memory behind the allocator accounting: only RLIMIT_AS stops it
    const std::size_t n = std::stoul(arg) << 20;
    if (void* p = malloc(n)) {
      memset(p, 1, n);
      free(p);
    }
    return;
  }
  if (name == "sigkill") raise(SIGKILL);
  if (name == "segv") raise(SIGSEGV);
  if (name == "abort") abort();
  if (name == "exit") _exit(3);
  if (name == "hang") {
    for (;;) pause();  // stops reading and never answers
  }
  if (name == "truncated") {
    const unsigned char hdr[4] = {100, 0, 0, 0};
    ssize_t a = write(detail::kProtocolFd, hdr, 4);
    ssize_t b = write(detail::kProtocolFd, "{\"id\":", 6);
    (void)a;
    (void)b;
    _exit(0);
  }
  if (name == "garbage") {
    const char junk[] = "\x05\x00\x00\x00not{json";
    ssize_t a = write(detail::kProtocolFd, junk, sizeof junk - 1);
    (void)a;
    for (;;) pause();
  }
  if (name == "huge") {
    const unsigned char hdr[4] = {0xff, 0xff, 0xff, 0x7f};
    ssize_t a = write(detail::kProtocolFd, hdr, 4);
    (void)a;
    for (;;) pause();
  }
  if (name == "grandchild") {
    // Leaves a process behind that holds the socket: the supervisor must not wait for it.
    if (fork() == 0) {
      for (;;) pause();
    }
    raise(SIGKILL);
  }
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Args args = parse_args(argc, argv);
#ifdef SPR_FAULTS
  // Installed under the name spr-worker-nohello, it never greets its supervisor.
  if (std::string(argv[0]).find("nohello") != std::string::npos) {
    for (;;) pause();
  }
#endif
  signal(SIGPIPE, SIG_IGN);
  // The protocol fd must be a socket from our supervisor; refuse to run standalone by accident.
  struct stat st{};
  if (fstat(detail::kProtocolFd, &st) != 0 || !S_ISSOCK(st.st_mode))
    die("fd 3 is not the supervisor's socket; spr-worker is started by the safe-py-runner library or CLI");
  int capture_fd = fcntl(detail::kCaptureFd, F_GETFD) >= 0 ? detail::kCaptureFd : -1;
  if (capture_fd >= 0) {
    // Only a memfd from the supervisor is used as the capture buffer.
    struct stat cst{};
    if (fstat(capture_fd, &cst) != 0 || !S_ISREG(cst.st_mode)) capture_fd = -1;
  }
  if (!args.scratch.empty() && chdir(args.scratch.c_str()) != 0) die("chdir to the scratch directory failed: " + std::string(strerror(errno)));

  if (args.harden) spr::harden::set_worker_environment();
  spr::embed::EngineOptions eo;
  eo.capture_fd = capture_fd;
  eo.preload = !args.once;
  eo.sys_path = args.sys_path;
  eo.executable = args.python;
  // One-run workers (process mode) import what the run imports; warm ones take the operator's list.
  if (!args.once && args.isolation != spr::Isolation::subinterpreter) eo.preload_modules = args.preload;
  std::string err = spr::embed::initialize(eo);
  json hello = {{"hello", true}, {"protocol", detail::kProtocolVersion}, {"pid", getpid()},
                {"isolation", spr::to_string(args.isolation)}};
  if (!err.empty()) {
    hello["error"] = err;
    detail::write_frame(detail::kProtocolFd, detail::dump_json(hello));
    die(err);
  }
  int statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);  // before Landlock hides /proc
  int devnull_fd = open("/dev/null", O_WRONLY | O_CLOEXEC);        // before Landlock makes it read-only
  spr::embed::ForkRunner fork_runner(statm_fd, devnull_fd, args.grace, args.allow_network);
  if (args.isolation == spr::Isolation::fork) fork_runner.prepare();
  spr::embed::SubinterpRunner subinterps(args.subinterpreter_pool);
  if (args.isolation == spr::Isolation::subinterpreter) {
    std::string e = subinterps.start();
    if (!e.empty()) {
      hello["error"] = "subinterpreter mode unavailable: " + e;
      detail::write_frame(detail::kProtocolFd, detail::dump_json(hello));
      die(e);
    }
  }
  if (args.session_memory_mb >= 0) {
    if (int e = spr::embed::limit_session_memory(statm_fd, args.session_memory_mb); e != 0)
      die("capping the session's address space failed: " + std::string(strerror(e)));
  }
  hello["python"] = spr::embed::python_version();
  hello["hardening"] = args.harden ? spr::harden::to_json(harden_self(args, statm_fd, devnull_fd)) : json::array();
  if (detail::write_frame(detail::kProtocolFd, detail::dump_json(hello)) != detail::IoStatus::ok) _exit(0);

  if (args.session_memory_mb >= 0) spr::embed::serve_session(args.allow_network);
#ifdef SPR_FAULTS
  if (args.isolation == spr::Isolation::fork)
    fork_runner.serve([](std::string_view f) {
      const json req = detail::parse_json(f);
      inject_fault(req.at("code").get<std::string>(), req.at("id"), req.value("nonce", json()));
    });
#else
  if (args.isolation == spr::Isolation::fork) fork_runner.serve();
#endif

  // namespace and subinterpreter workers serve several runs: what a run changes process-wide is put back.
  spr::embed::ProcessState process_state;
  process_state.capture();
  PolicyCache policies;
  std::string frame;
  for (;;) {
    if (args.isolation == spr::Isolation::subinterpreter) {
      subinterps.work_while_idle(detail::kProtocolFd);
      // Every used interpreter has ended, so no object owns a descriptor a run left open: close them.
      if (!subinterps.has_retired()) process_state.restore(true);
    }
    // No spin before sleeping: measured under load it cost more than the wake-up it saves (issue 12).
    auto s = detail::read_frame(detail::kProtocolFd, frame, detail::Clock::time_point::max());
    if (s == detail::IoStatus::eof) _exit(0);  // supervisor closed: never finalise, just go
    if (s != detail::IoStatus::ok) die(std::string("reading a request: ") + detail::to_string(s));
    if (args.isolation == spr::Isolation::subinterpreter && subinterps.has_retired() && process_state.descriptors_left()) {
      // Back to back after a run that left descriptors open: end its interpreter now so they can be closed.
      subinterps.end_retired();
      process_state.restore(true);
    }
    json id = nullptr, nonce = nullptr;
    spr::RunResult r;
    try {
      json req = detail::parse_json(frame);
      id = req.at("id");
      nonce = req.at("nonce");
      spr::embed::Request rq;
      rq.id = id.get<std::uint64_t>();
      rq.code = req.at("code").get<std::string>();
      rq.input_data = req.value("input_data", json::object());
      if (auto in = req.find("stdin"); in != req.end() && in->is_string()) rq.stdin_text = in->get<std::string>();
      rq.policy = policies.get(req.at("policy"));
      rq.policy.isolation = args.isolation;
      rq.policy.allow_network = rq.policy.allow_network && args.allow_network;
#ifdef SPR_FAULTS
      inject_fault(rq.code, id, nonce);
#endif
      r = args.isolation == spr::Isolation::subinterpreter ? subinterps.run(rq) : spr::embed::run(rq);
    } catch (const std::exception& e) {
      r = spr::outcome::bad_request(e.what());
    }
    if (detail::write_frame(detail::kProtocolFd, reply_text(id, nonce, r)) != detail::IoStatus::ok) _exit(0);
    if (args.once) _exit(0);
    if (args.isolation == spr::Isolation::subinterpreter) {
      subinterps.retire();
      process_state.restore(false);  // descriptors wait until the run's interpreter has ended (loop top)
    } else if (args.isolation == spr::Isolation::namespace_) {
      process_state.restore(false);  // module objects of earlier runs may own descriptors: left alone
    }
  }
}
