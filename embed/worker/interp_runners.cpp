// Namespace and sub-interpreter runners: decode the request, run it here, encode the reply.
#include "interp_runners.hpp"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "common/capture_layout.hpp"
#include "common/frame.hpp"
#include "common/outcome.hpp"
#include "common/protocol.hpp"
#include "engine/capture.hpp"
#include "engine/deadline.hpp"
#include "engine/host_call.hpp"
#include "engine/run_local.hpp"

namespace spr::embed {

namespace {

// The decoded request run by `run_one`, or the refusal of a frame that is not a run request.
// `retire`, asked once the run is over: whether this worker must end after the reply (Reply::retire).
template <class F, class R>
std::string answer(std::string_view frame, const WorkerScope& scope, PolicyText& policies, F&& run_one,
                   R&& retire) {
  Incoming in = decode_request(frame, scope, &policies);
  if (in.kind == Incoming::Kind::run) {
    RunResult r = run_one(in.run);
    return encode_reply(in.id, std::move(r), retire());
  }
  if (in.kind == Incoming::Kind::bad) return encode_reply(in.id, std::move(in.refusal));
  return encode_reply(in.id, outcome::bad_request("not a run request"));
}

}  // namespace

void wipe(std::string& s) {
  if (!s.empty()) explicit_bzero(s.data(), s.size());
  s.clear();
}

void NamespaceRunner::handle(std::string& frame, std::string& reply) {
  // What the run opened and still holds (a descriptor kept in a module, or put in place of one of ours)
  // would outlive it in this process: a lock on a host file, a bound port, a taken socket name.
  reply = answer(frame, scope_, policies_, [](const protocol::Request& rq) { return run(rq); },
                 [this] { return retire_ = !state_.kept_descriptors_intact() || state_.descriptors_left(); });
}

void NamespaceRunner::while_idle(int) {
  // Off the caller's path: after the reply went out (back to back, beside the supervisor's reading of it).
  // A run of another policy's builtins builds its own; these are dropped then.
  if (!prebuilt_run_objects()) (void)prebuild_run_objects(policies_.set ? policies_.policy : RunnerPolicy{}, false);
}

void NamespaceRunner::after_reply() {
  if (retire_) _exit(0);  // the supervisor replaces this worker (Reply::retire)
  state_.restore(false);
}

void ThreadSweep::capture(std::size_t threads) {
  std::lock_guard<std::mutex> lk(mu_);
  process_.capture();
  busy_ = threads;
  pending_.assign(threads, false);
}

bool ThreadSweep::leftovers() const {
  std::lock_guard<std::mutex> lk(mu_);
  return process_.descriptors_left();
}

void ThreadSweep::sweep_locked(std::size_t thread, bool interpreter_pending) {
  if (thread < pending_.size()) pending_[thread] = interpreter_pending;
  if (busy_ != 0 || !dirty_) return;
  for (const bool p : pending_)
    if (p) return;  // that thread's next idle time sweeps
  process_.close_descriptors();
  dirty_ = false;
}

void ThreadSweep::busy(std::size_t thread, bool interpreter_pending) {
  std::lock_guard<std::mutex> lk(mu_);
  sweep_locked(thread, interpreter_pending);  // back to back, with every other thread idle
  ++busy_;
  dirty_ = true;
}

void ThreadSweep::idle(std::size_t thread, bool interpreter_pending) {
  std::lock_guard<std::mutex> lk(mu_);
  if (busy_ > 0) --busy_;
  sweep_locked(thread, interpreter_pending);
}

void SubinterpreterRunner::while_idle(int fd) {
  pool_.work_while_idle(fd);
  // Every used interpreter has ended, so no object owns a descriptor a run left open: close them (with run
  // threads, once none of them is busy).
  if (sweep_) {
    state_.restore(false);
    sweep_->idle(thread_, pool_.has_retired());
  } else if (!pool_.has_retired()) {
    state_.restore(true);
  }
}

void SubinterpreterRunner::handle(std::string& frame, std::string& reply) {
  if (sweep_) {
    // Back to back after a run that may have left descriptors open: its interpreter ends now, so that they
    // can be closed before this run if no other thread is busy.
    if (pool_.has_retired() && sweep_->leftovers()) pool_.end_retired();
    sweep_->busy(thread_, pool_.has_retired());
  } else if (pool_.has_retired() && state_.descriptors_left()) {
    // Back to back after a run that left descriptors open: end its interpreter now so they can be closed.
    pool_.end_retired();
    state_.restore(true);
  }
  // Descriptors the run opened are closed once its interpreter has ended (while idle); one it put in place
  // of the worker's own cannot be.
  reply = answer(frame, scope_, policies_, [this](const protocol::Request& rq) { return pool_.run(rq); },
                 [this] { return retire_ = !state_.kept_descriptors_intact(); });
}

void SubinterpreterRunner::after_reply() {
  if (retire_) _exit(0);  // the supervisor replaces this worker (Reply::retire)
  pool_.retire();
  state_.restore(false);  // descriptors wait until the run's interpreter has ended (while_idle)
}

namespace {

std::string errno_text(const char* call, int err) { return std::string(call) + ": " + strerror(err); }

// A run thread's own working directory and umask (CLONE_FS), made and entered: "" or why not.
std::string enter_thread_directory(const std::string& scratch, std::size_t k) {
  if (::unshare(CLONE_FS) != 0) return errno_text("unshare(CLONE_FS)", errno);
  const std::string dir = scratch + "/t" + std::to_string(k);
  if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return errno_text("mkdir(run thread directory)", errno);
  if (::chdir(dir.c_str()) != 0) return errno_text("chdir(run thread directory)", errno);
  return {};
}

// A thread's engine state, its own run's, bound to its own channel: timers aimed at it, its capture
// buffer, its socket.
std::string bind_thread_channel(int sock, int capture_fd) {
  run_local::own_all();  // before anything below sets this thread's state
  struct stat st {};
  if (::fstat(sock, &st) != 0 || !S_ISSOCK(st.st_mode)) return "run thread socket " + std::to_string(sock) + " is not a socket";
  if (::fstat(capture_fd, &st) != 0 || !S_ISREG(st.st_mode))
    return "run thread capture buffer " + std::to_string(capture_fd) + " is not a memfd";
  if (!deadline::init()) return errno_text("timer_create(run thread deadlines)", errno);
  if (!capture::attach(capture_fd)) return errno_text("mmap(run thread capture buffer)", errno);
  host_call::set_socket(sock);
  return {};
}

// One run thread's serve loop: as worker_main's, on its own socket, holding its thread state of the main
// interpreter (and so the main interpreter's lock) only while it works, never while it waits.
[[noreturn]] void serve_thread(int fd, IsolationRunner& runner) {
  std::string frame, reply;
  for (;;) {
    runner.while_idle(fd);
    PyThreadState* home = PyEval_SaveThread();
    const auto s = detail::read_frame(fd, frame, detail::Clock::time_point::max(), detail::kMaxFrameBytes, 0);
    PyEval_RestoreThread(home);
    if (s == detail::IoStatus::eof) _exit(0);  // the supervisor closed this slot: it closes them all
    if (s != detail::IoStatus::ok) {
      const std::string line = "spr-worker: run thread reading a request: " + std::string(detail::to_string(s)) + "\n";
      ssize_t ignored = ::write(2, line.data(), line.size());
      (void)ignored;
      _exit(70);
    }
    runner.handle(frame, reply);
    wipe(frame);
    const detail::IoStatus w = detail::write_frame(fd, reply);
    wipe(reply);
    if (w != detail::IoStatus::ok) _exit(0);
    runner.after_reply();
  }
}

// Thread k > 0, from its start to its serve loop.
[[noreturn]] void run_thread(std::size_t k, const detail::WorkerStart& start, WorkerScope scope, ThreadSweep* sweep,
                             std::string& error, std::mutex& mu, std::condition_variable& cv, std::size_t& ready) {
  std::string why = enter_thread_directory(start.scratch, k);
  if (why.empty()) why = bind_thread_channel(start.run_thread_socket(k), start.run_thread_capture(k));
  // Its directory and umask to return to, held open from now on (before the main thread captures the
  // descriptors the worker keeps: ThreadSweep).
  ProcessState state;
  if (why.empty()) state.capture(true);
  {
    std::lock_guard<std::mutex> lk(mu);
    error = why;
    ++ready;
  }
  cv.notify_all();
  if (!why.empty()) {
    for (;;) ::pause();  // the main thread refuses the start
  }
  PyThreadState* home = PyThreadState_New(PyInterpreterState_Main());
  if (!home) _exit(70);
  PyEval_RestoreThread(home);  // the main interpreter's lock: released by the main thread while it waits
  SubinterpreterPool pool(start.subinterpreter_pool);
  pool.start();  // a failure is answered to each run, as the pool does when a later build fails
  SubinterpreterRunner runner(scope, pool, state, sweep, k);
  serve_thread(start.run_thread_socket(k), runner);
}

}  // namespace

std::string RunThreads::unsupported(const detail::WorkerStart& start) {
  if (start.subinterpreter_threads <= 1) return {};
#if PY_VERSION_HEX < 0x030C0000
  return "subinterpreter_threads above 1 needs CPython 3.12 or newer (sub-interpreters with their own GIL); "
         "this worker embeds " PY_VERSION;
#else
  if (start.isolation != Isolation::subinterpreter) return "subinterpreter_threads is for subinterpreter mode only";
  if (start.session_memory_mb >= 0) return "a session worker has no run threads";
  if (start.scratch.empty()) return "run threads need the worker's scratch directory";
  return {};
#endif
}

harden::LayerStatus RunThreads::start() {
  const std::size_t n = start_.subinterpreter_threads;
  if (std::string why = enter_thread_directory(start_.scratch, 0); !why.empty()) return harden::LayerStatus{"run_threads", false, why};
  std::mutex mu;
  std::condition_variable cv;
  std::size_t ready = 0;
  std::vector<std::string> errors(n);
  // The threads keep references to these until they report ready; they are detached (never joined: the
  // worker ends with _exit). A failed start still waits for the threads already started.
  std::size_t started = 0;
  std::string start_error;
  for (std::size_t k = 1; k < n && start_error.empty(); ++k) {
    try {
      std::thread(run_thread, k, std::cref(start_), scope_, &sweep_, std::ref(errors[k]), std::ref(mu), std::ref(cv),
                  std::ref(ready))
          .detach();
      ++started;
    } catch (const std::system_error& e) {
      start_error = "starting run thread " + std::to_string(k) + ": " + e.what();
    }
  }
  std::unique_lock<std::mutex> lk(mu);
  cv.wait(lk, [&] { return ready == started; });
  if (!start_error.empty()) return harden::LayerStatus{"run_threads", false, start_error};
  for (std::size_t k = 1; k < n; ++k)
    if (!errors[k].empty()) return harden::LayerStatus{"run_threads", false, "run thread " + std::to_string(k) + ": " + errors[k]};
  return harden::LayerStatus{"run_threads", true, std::to_string(n) + " threads, each with its own socket, capture buffer, "
                                       "deadline timers, working directory and own-GIL interpreters"};
}

void RunThreads::serve_main(SubinterpreterPool& pool) {
  // The other threads wait for the main interpreter's lock, held here until the first wait below: none has
  // opened anything of its own yet.
  ProcessState state;
  state.capture(true);
  sweep_.capture(start_.subinterpreter_threads);
  SubinterpreterRunner runner(scope_, pool, state, &sweep_, 0);
  serve_thread(detail::kProtocolFd, runner);
}

}  // namespace spr::embed
