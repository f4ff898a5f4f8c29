// One spr-worker process as the supervisor sees it: spawn, request/reply, kill and reap.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <mutex>
#include <vector>
#include <memory>
#include <optional>
#include <string>

#include "common/fd.hpp"
#include "common/frame.hpp"
#include "common/protocol.hpp"
#include "common/run_deadline.hpp"
#include "common/worker_start.hpp"
#include "detail/host_calls.hpp"
#include "spr/run_control.hpp"
#include "spr/runner.hpp"

namespace spr::detail {

// How the supervisor starts a worker: the worker's own plan (all it is told), and what only the supervisor uses.
struct SpawnOptions {
  std::filesystem::path worker_path;
  WorkerStart start;  // the worker's start plan; its scratch directory is made by spawn()
  bool inherit_stderr = false;  // else the worker's fd 2 is /dev/null
  double grace_seconds = kDefaultGraceSeconds;  // a fork worker kills a run's process at kill_after(timeout, this)
  double start_timeout_seconds = 10;
  std::string python_build;  // start.python's sys.version: a worker whose libpython says otherwise is refused
  int stop_fd = -1;  // readable once the owner shuts down: the wait for a starting worker's hello ends at once
};

// Per-request extras beside the policy.
struct RunExtras {
  const OutputCallback* on_output = nullptr;  // streamed from the capture buffer while the run goes on
  bool want_repr = false;                     // sessions: repr() of a trailing expression
  HostCalls* host = nullptr;                  // the run's host functions (none: a call frame is out of step)
  const Files* files = nullptr;                // written into the run directory before the code starts
  const std::vector<std::string>* collect = nullptr;  // patterns of the files that may come back
  const std::string* input_json = nullptr;  // input_data as JSON text (RunOptions::input_json), used instead
  bool input_json_checked = false;  // json_text_error() already passed on *input_json: not scanned again
  const CancelToken* cancel = nullptr;  // its watch (detail::set_watch) is watched while the reply is awaited
  bool operator_policy = false;  // the policy is the Runner's own (protocol::Request::operator_policy)
};

// Where the pool's idle CPU watch started counting: the worker's CPU clock when it was first seen idle after
// its `leases`-th lease.
struct IdleWatch {
  std::uint64_t leases = 0;  // leases so far (mark_busy counts them)
  std::uint64_t seen_at_lease = ~std::uint64_t{0};
  std::uint64_t ticks = 0;
};

// What the run slots of one worker process share (subinterpreter_threads > 1): whichever slot ends the process
// reaps it, once, and the others learn from here that their runs ended with it.
struct SharedProcess {
  std::mutex mu;
  std::atomic<bool> reaped{false};
  std::atomic<bool> ending{false};  // a kill is under way (see CancelState::ending): no slot of it is leased
  int wait_status = 0;
  const void* ended_by = nullptr;  // the slot that killed the process while it was alive (nullptr: none did)
  std::string scratch;             // the scratch root, removed by the reaper
  Fd scratch_fd;
  // The idle CPU watch (see WorkerProcess::spent_while_idle), guarded by the pool's lock: the process is idle
  // only when every slot is.
  std::size_t slots = 1, idle_slots = 0;
  IdleWatch idle_watch;
};

class WorkerProcess {
 public:
  // Starts a worker and waits for its hello. Throws WorkerError when it cannot be started or says no hello.
  static std::unique_ptr<WorkerProcess> spawn(const SpawnOptions& options);
  ~WorkerProcess();  // kills and reaps
  WorkerProcess(const WorkerProcess&) = delete;
  WorkerProcess& operator=(const WorkerProcess&) = delete;

  // Sends one request and waits for its reply until `hard_deadline`. Never throws for what the worker does:
  // a dead, silent or lying worker gives a failed RunResult and alive() == false afterwards.
  RunResult run(std::uint64_t id, const std::string& code, const json& input_data, const RunnerPolicy& policy,
                Clock::time_point hard_deadline, const std::string& stdin_text = {},
                const RunExtras& extras = {});
  // A session worker's variables (protocol::ListVariables), checked for type, id and size; nullopt (and
  // the worker killed) when it does not answer properly by `deadline`.
  std::optional<json> variables(std::uint64_t id, Clock::time_point deadline);
  bool alive() const { return alive_ && !(shared_ && (shared_->reaped.load() || shared_->ending.load())); }
  // Set by a cancel before it kills the process: the other slots of a worker with run threads are then no
  // longer alive() (null for a worker of its own).
  std::shared_ptr<std::atomic<bool>> ending_flag() const {
    return shared_ ? std::shared_ptr<std::atomic<bool>>(shared_, &shared_->ending) : nullptr;
  }
  // The other run slots of a worker started with subinterpreter_threads > 1 (each its own socket and capture
  // buffer, one process): taken once, after spawn. Empty for every other worker.
  std::vector<std::unique_ptr<WorkerProcess>> take_slots() { return std::move(slots_); }
  pid_t pid() const { return pid_; }  // the process we started, wait for and kill
  // The process that runs the code: the same, or in a PID namespace the keeper's grandchild (for /proc).
  pid_t payload_pid() const { return payload_pid_; }
  int pidfd() const { return pidfd_.get(); }  // -1 on kernels without pidfd_open
  // The worker's hello: as decoded, and as JSON ("protocol", "pid", "isolation", "python", "hardening").
  const protocol::Hello& hello_message() const { return hello_; }
  const json& hello() const { return hello_json_; }
  void kill_and_reap();
  // Nothing unread on the socket: a worker with a stray frame pending is out of step and must go.
  bool quiet() const;
  // The idle CPU watch, for workers whose runs share their process (namespace, subinterpreter). A reply
  // proves nothing there: a run that owns its process can write one and go on computing while the pool holds
  // its worker idle and no deadline runs. The CPU clock of the process, read from /proc, cannot lie. The pool
  // counts leases (mark_busy; mark_idle when a slot comes back) and looks now and then from its own thread:
  // the first look after a lease starts the count, a later one is true once the worker spent more than
  // `allowance` of CPU since (an idle worker only builds its spare interpreters). Nothing is read from /proc
  // on a run's path.
  void mark_idle();
  void mark_busy();
  // False while another slot of this worker's process (run threads) is out on a run.
  bool whole_process_idle() const { return !shared_ || shared_->idle_slots == shared_->slots; }
  bool spent_while_idle(std::chrono::milliseconds allowance);

 private:
  WorkerProcess() = default;
  // Every frame to and from the worker goes through these two: each has a deadline, and the worker's
  // exit ends either at once. A worker that stops reading cannot stall the supervisor.
  // `before_wait`: as send_frame's and read_frame's (common/frame.hpp).
  IoStatus send(std::string_view frame, Clock::time_point deadline, std::function<void()>* before_wait = nullptr) const;
  IoStatus receive(std::string& frame, Clock::time_point deadline, std::uint32_t cap,
                   std::function<void()>* before_wait = nullptr) const;
  RunResult lost(std::uint64_t id, IoStatus status, const RunnerPolicy& policy, bool timed_out,
                 Clock::time_point deadline);
  std::string check_reply(const std::string& frame, std::uint64_t id, const RunnerPolicy& policy, bool want_repr,
                          const std::vector<std::string>* collect, RunResult& r, bool& retire) const;
  // The worker's CPU (user + system, reaped children included) in clock ticks; nullopt when unreadable (it is
  // gone). 0 is a reading: a worker just started may have used less than a tick.
  std::optional<std::uint64_t> cpu_ticks() const;
  // A one-run (process mode) worker that has ended: waits for the process we started until `deadline`, reaps it
  // and returns the CPU of it and every process it reaped (the worker, through its namespace's init), in clock
  // ticks; nullopt when it did not end in time.
  std::optional<std::uint64_t> cpu_ticks_at_end(Clock::time_point deadline);
  static bool is_stale(const std::string& frame, std::uint64_t id);
  bool wipe_scratch() const;  // true when the scratch root is empty again
  void read_capture(std::uint64_t id, std::uint64_t cap, RunResult& r) const;
  // Passes capture bytes past sent[] to `out` (whole UTF-8 characters only, invalid bytes replaced, no more than
  // `cap` bytes of text in all: given[] counts them); `sent` and `given` advance.
  void stream_capture(std::uint64_t id, std::uint64_t cap, std::uint64_t sent[2], std::uint64_t given[2],
                      const OutputCallback& out) const;

  pid_t pid_ = -1;          // the process we started, wait for and kill (with its group)
  pid_t payload_pid_ = -1;  // the worker itself: the same, or the keeper's grandchild in its PID namespace
  Fd sock_;
  Fd capture_;
  std::uint64_t max_capture_bytes_ = 0;  // the largest capture size asked for so far
  void trim_capture() const;
  Fd pidfd_;  // readable once the worker has exited
  protocol::Hello hello_;
  json hello_json_;
  double grace_seconds_ = kDefaultGraceSeconds;
  bool alive_ = false;
  bool reaped_ = false;
  int wait_status_ = 0;
  std::string scratch_;
  Fd scratch_fd_;  // held open: the per-run wipe never resolves the path again
  Isolation isolation_ = Isolation::fork;
  IdleWatch idle_watch_;  // a slot's is its SharedProcess's
  std::shared_ptr<SharedProcess> shared_;  // set for the slots of a worker with run threads
  std::vector<std::unique_ptr<WorkerProcess>> slots_;
};

// CPU time the supervisor measures above cpu_time_seconds + this is a CPU overrun whatever the reply says.
// Subinterpreter mode: the worker may be building its next interpreter when a run's window opens (one build,
// about 9 ms of CPU here; it stops building once a request waits).
constexpr double kSpareBuildSeconds = 0.05;

// The worker binary to start: `configured`, else SPR_WORKER, else beside this program or installed. Always an
// absolute path (resolved against the current directory now), so a later change of directory changes nothing.
std::filesystem::path find_worker(const std::filesystem::path& configured);

}  // namespace spr::detail
