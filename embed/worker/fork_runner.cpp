// Fork isolation mode. The parent keeps the warm interpreter and runs nothing of a request: the
// child parses it, runs it under its own rlimits and stacked seccomp filter, replies, and dies.
// The next request's child is forked while a run is in progress (its fork and Python's after-fork work
// then overlap that run instead of preceding the next one), and warmed once the worker is idle.
#include "fork_runner.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "engine/capture.hpp"
#include "common/capture_layout.hpp"
#include "common/fd.hpp"
#include "common/frame.hpp"
#include "common/run_deadline.hpp"
#include "common/run_files.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "common/worker_start.hpp"
#include "engine/deadline.hpp"
#include "engine/engine.hpp"
#include "harden/harden.hpp"
#include "engine/host_call.hpp"
#include "common/json_scan.hpp"
#include "common/json_text.hpp"
#include "engine/py.hpp"
#include "setup_check.hpp"
#include "worker_protocol.hpp"

namespace spr::embed {

namespace {

namespace scan = spr::json_scan;

// A request that follows its reply within this long is taken as back to back: it gets a child
// forked on demand. After this much idle time, the next request's child is forked and warmed.
constexpr int kSpareAfterIdleMs = 2;
// Our own code, run in a spare before any request, so the copy-on-write faults of a run's first
// steps (globals, the guard, the eval loop's caches, JSON, the allocator's arenas) are taken
// while nobody waits. It carries no data.
constexpr const char* kWarmUpCode =
    "import math\nitems = [str(i) for i in range(16)]\nresult = {'n': math.sqrt(input_data['x']), 'items': items}\n";
constexpr const char* kWarmUpInput = R"({"x":9,"s":"text"})";

// A request at least this large is not copied to a spare through its pipe (in 1 MiB steps, each read
// into fresh pages): a child forked after it arrived has it already, in its copy-on-write view of the
// parent's memory, and the pipe carries only the go-ahead (an empty frame) once the limits are set.
constexpr std::size_t kHandOverBytes = 1u << 20;

// The parent's word to a child forked ahead that is waiting for its request: run the warm-up now (the
// worker is idle). Never a request: the parent forwards only frames that are JSON objects.
constexpr std::string_view kWarmUpFrame = "warm";

// parent_reply's status for a request no child started on.
constexpr int kNotStarted = -1;

#include "fork_phases.hpp"  // SPR_CHILD_PHASE, SPR_PARENT_PHASE: nothing outside a measurement build

std::string describe_signal(int sig) {
  const char* name = strsignal(sig);
  return "signal " + std::to_string(sig) + " (" + (name ? name : "?") + ")";
}

int wait_status(pid_t pid, rusage* used = nullptr) {
  int status = 0;
  while (wait4(pid, &status, 0, used) < 0 && errno == EINTR) {
  }
  return status;
}

// A process's CPU time so far, all its threads, in seconds; -1 when unreadable.
double process_cpu_seconds(pid_t pid) {
  clockid_t clock;
  timespec t{};
  if (clock_getcpuclockid(pid, &clock) != 0 || clock_gettime(clock, &t) != 0) return -1;
  return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_nsec) / 1e9;
}

// Wipes `s` and gives its memory back. A large buffer's whole pages are dropped (MADV_DONTNEED: they
// read back as zeros) rather than written: a child forked while they held a request keeps its own view of
// them, and writing zeros would first copy every page it still shares with us.
void release(std::string& s) {
  const long page = sysconf(_SC_PAGESIZE);
  char* const begin = s.data();
  char* const end = begin + s.size();
  const auto p = static_cast<std::uintptr_t>(page);
  char* const first = reinterpret_cast<char*>((reinterpret_cast<std::uintptr_t>(begin) + p - 1) & ~(p - 1));
  char* const last = reinterpret_cast<char*>(reinterpret_cast<std::uintptr_t>(end) & ~(p - 1));
  if (page > 0 && first < last && madvise(first, static_cast<std::size_t>(last - first), MADV_DONTNEED) == 0) {
    explicit_bzero(begin, static_cast<std::size_t>(first - begin));
    explicit_bzero(last, static_cast<std::size_t>(end - last));
  } else if (!s.empty()) {
    explicit_bzero(begin, s.size());
  }
  std::string().swap(s);
}

// Cuts `s` to at most `max` bytes at a character boundary.
void cut_utf8(std::string& s, std::size_t max) {
  if (s.size() <= max) return;
  std::size_t n = max;
  while (n > 0 && (static_cast<unsigned char>(s[n]) & 0xC0) == 0x80) --n;
  s.resize(n);
}

std::uint64_t positive(std::optional<double> v, std::uint64_t fallback) {
  return v && *v > 0 && *v < 1e15 ? static_cast<std::uint64_t>(*v) : fallback;
}

}  // namespace

std::string ForkRunner::prepare() {
  child_filter_ = harden::prepare_child() == 0;
  // A child's F_SETOWN/O_ASYNC cannot kill the worker with SIGIO.
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  if (sigaction(SIGIO, &ignore, nullptr) != 0) return std::string("sigaction(SIGIO) failed: ") + strerror(errno);
  // What every child's run would build the same, built once here (each child takes its own copy-on-write view).
  if (!prebuild_run_objects(spr::RunnerPolicy{}, true)) return "building the runs' builtins and streams failed";
#ifdef SPR_FORK_PHASES
  void* m = mmap(nullptr, sizeof(phases::Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (m != MAP_FAILED) phases::g_shared = static_cast<phases::Shared*>(m);
#endif
  return {};
}

std::uint64_t ForkRunner::address_space_now() const {
  if (statm_fd_ < 0) return 0;
  char buf[128] = {};
  ssize_t n = pread(statm_fd_, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  return std::strtoull(buf, nullptr, 10) * static_cast<std::uint64_t>(sysconf(_SC_PAGESIZE));
}

void ForkRunner::child_main(int request_fd, int reply_fd, bool warm, std::string* held, const int running_fds[2],
                            const char* fail_for_test) {
  SPR_CHILD_PHASE(kStart);
  PyOS_AfterFork_Child();
  SPR_CHILD_PHASE(kHooks);
  // Each step checked; after a failure the child still answers its request, but runs none of it.
  SetupCheck setup(fail_for_test);
  // Dies with the worker, whatever it does to its session or group (its filter keeps this set).
  setup.sys("prctl(PR_SET_PDEATHSIG)", prctl(PR_SET_PDEATHSIG, SIGKILL));
  if (getppid() != parent_) _exit(0);  // the worker is gone: nobody waits for an answer
  // Forked ahead, during another run: that run's pipes are not this child's to hold.
  for (int i = 0; i < 2; ++i) {
    if (running_fds[i] < 0) continue;
    const int closed_pipe = close(running_fds[i]);
    setup.sys("close(the running child's pipe)", closed_pipe == -1 && errno == EINTR ? 0 : closed_pipe);
  }
  // The child never talks to the supervisor directly. (EINTR: the descriptor is released anyway.)
  const int closed = close(detail::kProtocolFd);
  setup.sys("close(protocol fd 3)", closed == -1 && errno == EINTR ? 0 : closed);
  // User code never reaches the host's stderr.
  setup.sys("dup2(/dev/null, 2)", devnull_fd_ >= 0 ? dup2(devnull_fd_, 2) : (errno = EBADF, -1));
  // The run's limits come from the parent (prlimit): the stacked filter forbids raising them here.
  if (child_filter_)
    setup.err("seccomp filter of the run (harden::apply_child)", harden::apply_child(harden::RunLimits{}));
  SPR_CHILD_PHASE(kFiltered);
  setup.err("deadline timer (deadline::init)", deadline::init() ? 0 : (errno ? errno : EIO));
  // A spare only, while the worker is idle: a child whose request waits would just take the faults twice.
  const auto warm_up = [&] {
    protocol::Request w;
    w.code = kWarmUpCode;
    w.input_json = kWarmUpInput;
    w.policy.isolation = Isolation::fork;
    std::string text = encode_reply(0, run_prepared(w));
    (void)text;
    // The warm-up took this child's prebuilt objects: the request gets its own, built while nobody waits.
    setup.err("the run's builtins and streams (prebuild_run_objects)",
              prebuild_run_objects(spr::RunnerPolicy{}, true) ? 0 : EIO);
  };
  if (warm && setup.ok()) warm_up();
  std::string frame;
  detail::Fd request(request_fd);
  SPR_CHILD_PHASE(kSetUp);
  // The parent's frames are believed (it is the worker this child was forked from). An empty one is the
  // go-ahead for a request this child holds already.
  for (;;) {
    if (detail::read_frame(request.get(), frame, detail::Clock::time_point::max(), detail::kMaxFrameBytes, 0, -1,
                           /*trusted_peer=*/true) != detail::IoStatus::ok)
      _exit(0);
    if (frame != kWarmUpFrame) break;
    if (!warm && setup.ok()) warm_up();  // once: the next frame is the request
    warm = true;
    SPR_CHILD_PHASE(kSetUp);
  }
  if (frame.empty() && held) frame = std::move(*held);  // this child's own copy-on-write pages: no copy
  SPR_CHILD_PHASE(kRequest);
  // The request pipe stays open: host function answers come on it, forwarded by the parent.
  host_call::set_channel(reply_fd, request.get());
  Incoming in = decode_request_owned(std::move(frame), scope_, &policy_);
  SPR_CHILD_PHASE(kDecoded);
  RunResult r;
  if (!setup.ok()) {
    // Fails closed: a process whose set-up is incomplete runs no user code.
    r = outcome::failure(ErrorKind::worker_unavailable,
                        "the run's process could not be set up (" + setup.message() + "); the code was not run");
  } else if (in.kind != Incoming::Kind::run) {
    r = in.kind == Incoming::Kind::bad ? std::move(in.refusal)
                                       : outcome::bad_request("not a run request");
  } else if (prepare_capture(in.run)) {
    // The buffer's file is the worker's, mapped by the worker and read by the supervisor: the run keeps only its
    // mapping. (A run that cut the file to 0 bytes made the worker fault with SIGBUS after the reply, and another
    // party's waiting request was answered worker_crashed: red team round 19.)
    if (const int e = capture::keep_mapping_only(); e != 0)
      r = outcome::failure(ErrorKind::worker_unavailable,
                           std::string("the run's process could not be set up (closing the output buffer's file: ") +
                               strerror(e) + "); the code was not run");
    else
      r = run_prepared(in.run);
  } else {
    r = outcome::memory();
  }
  if (r.error) cut_utf8(*r.error, detail::kMaxReplyErrorBytes);
  SPR_CHILD_PHASE(kRan);
  const std::string reply = encode_reply(in.id, std::move(r));
  SPR_CHILD_PHASE(kReplied);
  detail::write_frame(reply_fd, reply);
  _exit(0);
}

bool ForkRunner::fork_child(Child& c, bool warm, std::string* held, const Child* running) {
  int req[2], rep[2];
  if (pipe2(req, O_CLOEXEC) != 0) return false;
  detail::Fd req_read(req[0]), req_write(req[1]);
  // A large request crosses in 1 MiB steps rather than 64 KiB ones (each a wake-up of the child); the
  // kernel may refuse (pipe-max-size), and then the default size serves.
  (void)fcntl(req_write.get(), F_SETPIPE_SZ, 1 << 20);
  if (pipe2(rep, O_CLOEXEC) != 0) return false;
  detail::Fd rep_read(rep[0]), rep_write(rep[1]);
  parent_ = getpid();
  const int running_fds[2] = {running ? running->request.get() : -1, running ? running->reply.get() : -1};
  SPR_FORKING();
  PyOS_BeforeFork();
  const pid_t pid = fork();
  if (pid == 0) {
    req_write.reset();
    rep_read.reset();
    child_main(req_read.release(), rep_write.release(), warm, held, running_fds, test_fault_.c_str());
  }
  const int err = errno;
  SPR_FORKED(pid);
  PyOS_AfterFork_Parent();
  test_fault_.clear();  // one child only
  if (pid < 0) {
    errno = err;
    return false;
  }
  c.pid = pid;
  c.request = std::move(req_write);
  c.reply = std::move(rep_read);
  c.warm = warm;
  return true;  // the child's ends close here
}

void ForkRunner::fail_setup_for_test(const std::string& call) {
  test_fault_ = call;
  retire(spare_);  // the spare was set up already: the request gets a child forked now
}

void ForkRunner::retire(Child& c) {
  if (c.pid > 0) {
    kill(c.pid, SIGKILL);  // by pid: a child that left the worker's session or group still ends here
    exiting_.push_back(c.pid);
  }
  c = Child{};  // closes both pipes
}

int ForkRunner::end_now(Child& c, rusage* used) {
  kill(c.pid, SIGKILL);
  const int status = wait_status(c.pid, used);
  c = Child{};  // closes both pipes
  return status;
}

void ForkRunner::reap(bool block) {
  for (auto it = exiting_.begin(); it != exiting_.end();) {
    int status = 0;
    pid_t r;
#ifdef SPR_FORK_PHASES
    rusage u{};
    while ((r = wait4(*it, &status, block ? 0 : WNOHANG, &u)) < 0 && errno == EINTR) {
    }
    if (r > 0) phases::reaped(u);
#else
    while ((r = waitpid(*it, &status, block ? 0 : WNOHANG)) < 0 && errno == EINTR) {
    }
#endif
    it = r == 0 ? it + 1 : exiting_.erase(it);
  }
}

constexpr rlim_t kChildTasks = spr::detail::WorkerStart::kMaxTasks;  // as a namespace or process worker's RLIMIT_NPROC

bool ForkRunner::set_limits(pid_t pid, const Limits& l) const {
  // The rlimit is the backstop; the allocator accounting gives the clean "Memory limit exceeded".
  const std::uint64_t base = address_space_now();
  const rlim_t as_bytes = base + (l.memory_limit_mb << 20) + (256u << 20);
  const rlimit as{as_bytes, as_bytes};
  const rlimit fsize{64u << 20, 64u << 20};
  const auto cpu_s = static_cast<rlim_t>(std::ceil(l.cpu_time_seconds)) + 1;
  const rlimit cpu{cpu_s, cpu_s + 1};
  // Threads (the child's filter allows no processes); counted with this worker's other tasks under the sandbox id,
  // which is never root's, so the limit binds.
  const rlimit tasks{kChildTasks, kChildTasks};
  // No reading of our own size, no backstop: the child is not used (fails closed).
  return base != 0 && prlimit(pid, RLIMIT_AS, &as, nullptr) == 0 && prlimit(pid, RLIMIT_FSIZE, &fsize, nullptr) == 0 &&
         prlimit(pid, RLIMIT_NPROC, &tasks, nullptr) == 0 &&
         (l.cpu_time_seconds <= 0 || prlimit(pid, RLIMIT_CPU, &cpu, nullptr) == 0);
}

ForkRunner::Shape ForkRunner::shape_of(std::string_view frame) {
  if (!scan::valid(frame)) return Shape::invalid;
  return scan::plain_members(frame) ? Shape::plain : Shape::unplain;
}

std::string ForkRunner::check_reply(std::string_view reply, Shape shape, const Limits& l) {
  if (shape == Shape::invalid) return "the run's reply is not valid JSON";
  // Our writer never escapes a name nor writes one twice: a forged reply could otherwise spell a checked name
  // another way, or twice, and the supervisor's parser would take a value these checks did not see.
  if (shape == Shape::unplain) return "the run's reply has an escaped or repeated member name";
  const std::uint64_t out_cap = l.max_output_kb * 1024, result_cap = l.max_result_kb * 1024;
  std::string why;
  bool typed = false;
  bool is_object = scan::for_each_member(reply, [&](std::string_view key, std::string_view value) {
    if (!why.empty()) return;
    if (key == "stdout" || key == "stderr") {
      if (value.empty() || value[0] != '"')
        why = "the run's reply has a non-string " + std::string(key);
      else if (scan::decoded_size(value) > out_cap)
        why = "the run's " + std::string(key) + " exceeds max_output_kb";
    } else if (key == "result") {
      if (scan::result_charge(value) > result_cap) why = "the run's result exceeds max_result_kb";
    } else if (key == "error") {
      if (value[0] == '"' && scan::decoded_size(value) > detail::kMaxReplyErrorBytes)
        why = "the run's error text is too long";
    } else if (key == "id") {
      if (value != l.id) why = "the run's reply carries another id";
    } else if (key == "type") {
      typed = value == "\"reply\"";
      if (!typed) why = "the run's reply is not a reply";
    } else if (key == "retire") {
      // Only a worker that runs code in its own process ends by its reply's word (protocol::Reply::retire); this
      // one never does, and it serves every party: a child cannot end it.
      why = "the run's reply asks to end its worker";
    }
  });
  if (!is_object) return "the run's reply is not a JSON object";
  if (why.empty() && !typed) return "the run's reply is not a typed reply";
  return why;
}

std::string ForkRunner::parent_reply(const Limits& l, int status, bool timed_out, bool protocol,
                                     const std::string& why, bool over_cpu) const {
  RunResult r;
  if (protocol) {
    r = outcome::failure(ErrorKind::protocol_error, why);
  } else if (status == kNotStarted) {
    // Fails closed: no child ran any of the request.
    r = outcome::failure(ErrorKind::worker_unavailable, why + "; the code was not run");
  } else if (timed_out) {
    r = outcome::timeout(l.timeout_seconds);
  } else if (over_cpu || (WIFSIGNALED(status) && l.cpu_time_seconds > 0 &&
             (WTERMSIG(status) == SIGXCPU || WTERMSIG(status) == SIGKILL))) {
    r = outcome::cpu_time(l.cpu_time_seconds);
  } else if (WIFSIGNALED(status)) {
    r = outcome::failure(ErrorKind::worker_crashed,
                        "the run's process was killed by " + describe_signal(WTERMSIG(status)));
  } else if (!why.empty()) {
    r = outcome::failure(ErrorKind::worker_crashed, why);
  } else {
    r = outcome::failure(ErrorKind::worker_crashed, "the run's process exited with status " +
                                                       std::to_string(WEXITSTATUS(status)) + " without a reply");
  }
  r.isolation = Isolation::fork;
  std::string head = protocol::encode_reply_head(protocol::Reply{l.id_number, r});
  if (protocol || status == kNotStarted) {
    head += R"(,"stdout":"","stderr":"","stdout_truncated":false,"stderr_truncated":false})";
    return head;
  }
  // A killed run's partial output, from the shared buffer: as valid UTF-8 within the cap (the run could write
  // any bytes there, and each invalid one is three once replaced: the supervisor refused the reply as over
  // max_output_kb, which hid the run's timeout; red team round 20). The copies are wiped below, the reply text
  // by the caller once sent.
  capture::adopt_shared();
  const std::size_t cap = static_cast<std::size_t>(l.max_output_kb * 1024);
  bool cut[2] = {false, false};
  std::string out = detail::utf8_within(capture::view(0), cap, cut[0]);
  std::string err = detail::utf8_within(capture::view(1), cap, cut[1]);
  r.stdout_truncated = capture::truncated(0) || cut[0];
  r.stderr_truncated = capture::truncated(1) || cut[1];
  std::string text;
  text.reserve(head.size() + 6 * (out.size() + err.size()) + 64);  // no reallocation: nothing left unwiped
  text += head;
  text += ",\"stdout\":";
  json_text::append_string(text, out);
  text += ",\"stderr\":";
  json_text::append_string(text, err);
  text += ",\"stdout_truncated\":";
  text += r.stdout_truncated ? "true" : "false";
  text += ",\"stderr_truncated\":";
  text += r.stderr_truncated ? "true" : "false";
  text += '}';
  wipe(out);
  wipe(err);
  return text;
}

void ForkRunner::run(std::string& frame, std::string& reply) {
  SPR_PARENT_PHASE(kArrived);
  // Only our numbers are taken from the request, in place; the code and input stay bytes.
  // One pass over the members (a request can be mostly input_data: each pass costs its size).
  Limits l;
  std::optional<std::string_view> id, policy, type, kill_after;
  bool operator_policy = false;
  std::size_t last_end = 0;  // just past the last member's value
  const bool members = scan::for_each_member(frame, [&](std::string_view key, std::string_view value) {
    last_end = static_cast<std::size_t>(value.data() - frame.data()) + value.size();
    if (key == "id") id = value;
    else if (key == "policy") policy = value;
    else if (key == "type") type = value;
    else if (key == "kill_after_seconds") kill_after = value;
    else if (key == "functions") l.host_functions = true;
    else if (key == "operator_policy") operator_policy = value == "true";
  });
  const std::optional<std::uint64_t> id_number = id ? scan::id_number(*id) : std::nullopt;
  // Each member was checked as it was skipped: the frame is valid JSON when the object ends after the last one,
  // and nothing follows it (the same verdict as scan::valid, without a second pass over a large request).
  const std::size_t close = scan::skip_ws(frame, last_end);
  const bool whole = members && last_end > 0 && close < frame.size() && frame[close] == '}' &&
                     scan::skip_ws(frame, close + 1) == frame.size();
  if (!whole || !id_number || !policy || !type || *type != "\"request\"") {
    // The child would refuse it too; a request that is not even a request gets its answer here.
    reply = encode_reply(0, outcome::bad_request("not a JSON request object"));
    return;
  }
  l.id_number = *id_number;
  l.id.assign(id->data(), id->size());
  // Callers send the same policy again and again: decoded here once, each child compares its text. Only the
  // operator's (the Runner's own): every child forked from here inherits what is kept, and another party's
  // policy (its lists, paths, trust domain) was read by the next party's run (red team round 20).
  if (operator_policy && (!policy_.set || policy_.text != *policy)) policy_.remember(*policy);
  if (auto v = scan::number(scan::member(*policy, "timeout_seconds").value_or("")); v && *v > 0) l.timeout_seconds = *v;
  if (auto v = scan::number(scan::member(*policy, "cpu_time_seconds").value_or("")); v && *v > 0)
    l.cpu_time_seconds = *v;
  l.memory_limit_mb = positive(scan::number(scan::member(*policy, "memory_limit_mb").value_or("")), l.memory_limit_mb);
  l.max_output_kb = positive(scan::number(scan::member(*policy, "max_output_kb").value_or("")), l.max_output_kb);
  l.max_result_kb = positive(scan::number(scan::member(*policy, "max_result_kb").value_or("")), l.max_result_kb);
  l.max_files_kb = positive(scan::number(scan::member(*policy, "max_files_kb").value_or("")), l.max_files_kb);
  l.max_host_call_kb = positive(scan::number(scan::member(*policy, "max_host_call_kb").value_or("")), l.max_result_kb);
  l.kill_after_seconds = detail::kill_after(l.timeout_seconds, detail::kDefaultGraceSeconds);
  if (auto v = scan::number(kill_after.value_or("")); v && *v > 0)
    l.kill_after_seconds = *v;
  // The parent's view of the shared buffer (a killed child's output is read from it).
  if (!capture::begin(l.id_number, l.max_output_kb * 1024)) {
    reply = parent_reply(l, kNotStarted, false, false, "cannot allocate the output buffer");
    return;
  }

  Child c;
  // A large request goes to a child forked now, which holds it already (kHandOverBytes).
  const bool hand_over = frame.size() >= kHandOverBytes;
  if (hand_over) retire(spare_);
  SPR_PARENT_PHASE(kForking);
#ifdef SPR_FORK_PHASES
  phases::g_kind = spare_.pid <= 0 ? 0 : spare_.warm ? 2 : 1;
#endif
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (spare_.pid > 0) {
      c = std::move(spare_);
      spare_ = Child{};
    } else if (!fork_child(c, false, hand_over ? &frame : nullptr)) {
      reply = parent_reply(l, kNotStarted, false, false, std::string("fork failed: ") + strerror(errno));
      return;
    }
    SPR_PARENT_PHASE(kForked);
    const bool limited = set_limits(c.pid, l);
    SPR_PARENT_PHASE(kLimited);
    // The child waits on its pipe until then: it runs nothing of the request before its limits are set.
    if (limited && detail::write_frame(c.request.get(), hand_over ? std::string_view() : std::string_view(frame)) ==
                       detail::IoStatus::ok)
      break;
    retire(c);  // a spare that died while idle: one more, forked now
    if (attempt == 1) {
      reply = parent_reply(l, kNotStarted, false, false, "the run's process could not be prepared");
      return;
    }
  }
  SPR_PARENT_PHASE(kSent);
  // The run's CPU is counted from here (a spare's warm-up before is not the run's).
  const double cpu_at_send = l.cpu_time_seconds > 0 ? std::max(process_cpu_seconds(c.pid), 0.0) : 0;
  if (hand_over) release(frame);  // the child's view stays; ours is dropped without copying it
  else wipe(frame);
  // Host function answers go to the child on this pipe; a child that stops reading must not hold us.
  const int flags = fcntl(c.request.get(), F_GETFL);
  if (flags < 0 || fcntl(c.request.get(), F_SETFL, flags | O_NONBLOCK) != 0) c.request.reset();
  // The next request's child, forked now that this process holds nothing of this run (its frame is wiped):
  // the fork and Python's after-fork work overlap this run rather than delay the next request. It runs
  // nothing until the parent writes to it (a request, or the word to warm up once idle). Not when this
  // run's child was warmed: its run is short, and its reply would wait for the fork (a warmed spare means
  // the worker was idle, and the next child is forked once it is idle again).
  if (!c.warm && spare_.pid < 0 && !fork_child(spare_, false, nullptr, &c)) spare_ = Child{};
  SPR_PARENT_PHASE(kAhead);

  const auto deadline = detail::Clock::now() + detail::seconds(l.kill_after_seconds);
  // The supervisor's own cap for this run (no session here: no repr). (It checks the files themselves.)
  const std::uint32_t cap = detail::reply_frame_cap(l.max_output_kb, l.max_result_kb, l.max_files_kb, false,
                                                    l.host_functions ? l.max_host_call_kb : 0);
  detail::IoStatus s;
  Shape shape = Shape::invalid;
  while ((s = detail::read_frame(c.reply.get(), reply, deadline, cap)) == detail::IoStatus::ok) {
    shape = shape_of(reply);
    if (!is_host_call(reply, shape, l)) break;
    // A failed relay: the child is killed below and its run answered from its status.
    if ((s = relay_host_call(c, reply, deadline)) != detail::IoStatus::ok) break;
  }
  SPR_PARENT_PHASE(kReplyIn);
  c.request.reset();
  if (s == detail::IoStatus::ok) {
    const std::string why = check_reply(reply, shape, l);
    if (why.empty() && l.cpu_time_seconds > 0) {
      // The run's CPU by this process's measure, every thread of the child included (the engine's own timer
      // counts the run's thread only, and the supervisor cannot see a child reaped after its reply): the
      // child is ended and reaped now, and a run over its limit answers so, whatever its reply says.
      rusage used{};
      const int status = end_now(c, &used);
      const double cpu = static_cast<double>(used.ru_utime.tv_sec + used.ru_stime.tv_sec) +
                         static_cast<double>(used.ru_utime.tv_usec + used.ru_stime.tv_usec) / 1e6 - cpu_at_send;
      if (cpu <= l.cpu_time_seconds + detail::kCpuOverrunSlackSeconds) return;
      wipe(reply);
      reply = parent_reply(l, status, false, false, "", /*over_cpu=*/true);
      return;
    }
#ifdef SPR_FORK_PHASES
    const pid_t ran = c.pid;
#endif
    retire(c);  // the reply goes out before the child is reaped
#ifdef SPR_FORK_PHASES
    SPR_PARENT_PHASE(kDone);
    phases::run_done(ran);
#endif
    if (why.empty()) return;
    wipe(reply);
    reply = parent_reply(l, 0, false, true, why);
    return;
  }
  wipe(reply);
  const int status = end_now(c);
  if (s == detail::IoStatus::too_large) {
    reply = parent_reply(l, status, false, true, "the run's reply is larger than its caps allow");
  } else {
    reply = parent_reply(l, status, s == detail::IoStatus::timeout, false, "");
  }
}

bool ForkRunner::is_host_call(std::string_view frame, Shape shape, const Limits& l) {
  // Names as the supervisor's parser reads them: a frame typed twice ("type":"host_call","typ\u0065":"reply")
  // is not a call here and a reply there; it goes to check_reply, which refuses it.
  if (shape != Shape::plain) return false;
  const auto type = scan::member(frame, "type");
  if (!type || *type != "\"host_call\"") return false;
  const auto id = scan::member(frame, "id");
  return id && *id == l.id;  // another run's id: not forwarded, it ends the run
}

// The child's host call goes to the supervisor as it came (the supervisor checks it: name, size, count),
// and the answer back to the child; the parent keeps neither. Not ok: the child cannot be answered.
detail::IoStatus ForkRunner::relay_host_call(Child& c, std::string& frame, detail::Clock::time_point deadline) {
  const detail::IoStatus out = detail::write_frame(detail::kProtocolFd, frame, true);
  wipe(frame);
  if (out != detail::IoStatus::ok) _exit(0);  // the supervisor is gone
  std::string answer;
  // The supervisor's frame, sized once from its header: grown in steps, each freed buffer would keep a
  // piece of the answer in the heap the next run's child is forked from.
  const detail::IoStatus in =
      detail::read_frame(detail::kProtocolFd, answer, deadline, detail::kMaxFrameBytes, 0, -1, true);
  if (in == detail::IoStatus::eof) _exit(0);
  if (in != detail::IoStatus::ok) {
    wipe(answer);
    return in;
  }
  const auto type = scan::member(answer, "type");
  if (!type || *type != "\"host_return\"") {
    // The supervisor only ever answers a call here: anything else means we are out of step with it.
    wipe(answer);
    _exit(0);
  }
  const detail::IoStatus sent =
      c.request ? detail::send_frame(c.request.get(), answer, deadline, -1, false) : detail::IoStatus::error;
  wipe(answer);
  return sent;
}

void ForkRunner::while_idle(int fd) {
  if (spare_.pid < 0 || !spare_.warm) {
    pollfd p{fd, POLLIN, 0};
    const int r = detail::retry_eintr([&] { return poll(&p, 1, kSpareAfterIdleMs); });
    if (r == 0) {  // idle: the children of earlier runs are gone by now, the next one gets ready
      reap(true);
      if (spare_.pid > 0) {
        // Forked ahead during the last run: it warms up now. (Written whole: its pipe is empty.)
        spare_.warm = true;
        if (detail::write_frame(spare_.request.get(), kWarmUpFrame) != detail::IoStatus::ok) retire(spare_);
      }
      if (spare_.pid < 0 && !fork_child(spare_, true)) spare_ = Child{};
    }
  }
  reap(false);
}

// A spare forked before the deferred [warm] imports lacks them: a run would import them again, cold. The next
// spare is forked from the warmer heap once the worker is idle.
void ForkRunner::warm_heap_grew() {
  if (spare_.pid <= 0) return;
  // Reaped now (it waits on its pipe, so it ends at once): nothing is on a request's path, and no dying
  // process lingers beside the worker.
  end_now(spare_);
}

void ForkRunner::after_reply() {
  capture::wipe();  // the parent's view of the run's output
}

}  // namespace spr::embed
