// Workers by kind: lease one for a run, give it back healthy or discard it; warm pools and one-shot leases.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "detail/worker_process.hpp"
#include "spr/policy.hpp"
#include "spr/run_control.hpp"

namespace spr::detail {

// The Runner runs at most this many runs at once per configured worker (its executor threads): process
// mode's one-shot workers are started per run, so more runs than workers can be in flight there.
constexpr std::size_t kRunsPerWorker = 2;

// What a worker is fixed to when it starts, so which runs it may serve. See key_of.
struct PoolKey {
  Isolation isolation = Isolation::fork;
  bool network = false;
  bool unix_sockets = false;       // allow_unix_sockets
  std::string python;              // python_executable as given ("" = the default python3)
  std::vector<std::string> reads;  // allowed_read_paths, sorted, without duplicates
  std::string domain;              // trust_domain (namespace, subinterpreter)
  std::int64_t scratch_mb = 64;    // scratch_limit_mb: the size of the worker's scratch file system
  // OS backstops set once at the worker's start (0 = none): RLIMIT_AS room and RLIMIT_CPU seconds.
  std::int64_t memory_backstop_mb = 0;
  double cpu_backstop_seconds = 0;
  bool once = false;  // one-shot: the worker serves one run and is discarded (process mode)
  bool operator<(const PoolKey& o) const;
};

// A worker that keeps no state between runs of its kind (one pool per warm mode): the fixed parts of
// `p`. namespace and subinterpreter workers also split by trust domain and memory class.
PoolKey warm_key_of(const RunnerPolicy& p);
// The key a run of `p` leases: warm_key_of(p), or for process mode a one-shot key whose backstops are
// the run's own limits.
PoolKey key_of(const RunnerPolicy& p);
// namespace and subinterpreter workers carry state from run to run.
bool shares_process(Isolation i);
// What of a worker's start `key` fixes: mode, network, read set, one-shot and backstops. The caller adds
// the rest (worker path, python, preload, timeouts).
SpawnOptions spawn_options_of(const PoolKey& key);

class WorkerPool {
 public:
  // Starts a worker of `key`'s kind; throws (a std::exception saying why) when it cannot.
  using Spawn = std::function<std::unique_ptr<WorkerProcess>(const PoolKey&)>;
  struct Options {
    std::size_t workers = 2;             // warm workers per key
    double start_timeout_seconds = 10;   // a lease waits at most twice this for warm workers to start
    std::size_t max_pools_per_mode = 8;  // past workers x this, a new key's pool evicts another's idle worker
  };

  // A leased worker. Given back when destroyed: a live worker of a warm key goes back to its pool;
  // a dead one, or one of a one-shot key, is killed and reaped (and a warm pool is topped up).
  class Lease {
   public:
    Lease() = default;
    Lease(Lease&& o) noexcept;
    Lease& operator=(Lease&& o) noexcept;
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    ~Lease() { give_back(); }
    explicit operator bool() const { return worker_ != nullptr; }
    WorkerProcess& operator*() const { return *worker_; }
    WorkerProcess* operator->() const { return worker_.get(); }
    void give_back();

   private:
    friend class WorkerPool;
    WorkerPool* pool_ = nullptr;
    const PoolKey* key_ = nullptr;  // the pool map's own key: stable while a lease is out
    std::unique_ptr<WorkerProcess> worker_;
  };

  WorkerPool(Options options, Spawn spawn);
  ~WorkerPool();  // shutdown()
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // A worker for `key`: an idle warm one, else one started for it; callers that wait are served in the order
  // they came. An empty lease when there is none: `error` says why (shutdown, failed starts, no worker started
  // in time); or `cancel` was cancelled (error left empty). While some of the key's workers are out on runs
  // the wait has no limit of its own (each run ends by its deadline and gives its worker back); only a wait
  // on worker starts alone gives up, after twice Options::start_timeout_seconds. A one-shot key's worker is
  // started on the calling thread (see the .cpp).
  Lease lease(const PoolKey& key, std::string& error, const CancelToken* cancel = nullptr);
  // Starts one warm worker for `key`, off the caller's path (none for one-shot keys): what a first run needs.
  // The rest of the pool comes up in the background once a run has given its worker back, or when
  // callers wait on more workers than are starting, so a program that makes one run and exits does not
  // pay for workers it never uses.
  void prespawn(const PoolKey& key);
  // Idempotent. Idle workers are killed and reaped; leased ones are killed (their holders reap them
  // when they give them back); later leases fail.
  void shutdown();
  bool stopping() const;
  // Readable once shutdown() began: a worker start given it (SpawnOptions::stop_fd) gives up at once, so
  // a program that exits right after its first run does not wait for the rest of the pool to come up.
  int stop_fd() const { return stop_fd_.get(); }
  // Runs this pool's workers can serve at once: every warm worker it keeps over all its keys (Options::workers
  // x max_pools_per_mode) busy with kRunsPerWorker runs. The most callers that wait on it usefully at once.
  std::size_t runs_at_once() const { return warm_bound() * kRunsPerWorker; }

  // For tests: idle warm workers of `key` now, and lease() calls waiting for one.
  std::size_t idle(const PoolKey& key) const;
  std::size_t waiting(const PoolKey& key) const;
  // Over every key: warm workers waiting, and workers leased or being started (for metrics).
  struct Counts {
    std::size_t idle = 0, busy = 0;
  };
  Counts counts() const;

 private:
  struct Pool {
    std::deque<std::unique_ptr<WorkerProcess>> idle;
    std::size_t live = 0;    // idle + leased + being started
    std::size_t leased = 0;   // out on a lease
    // lease() calls waiting for one of this key's workers, by ticket, first come first served: an idle worker
    // goes to the front one (a caller that arrives later, or a waiter that happens to wake first, does not take it).
    std::deque<std::uint64_t> queue;
    std::uint64_t next_ticket = 0;
    std::string last_error;  // why the last start failed, for callers that then get none
    int failures_in_a_row = 0;
  };
  using Pools = std::map<PoolKey, Pool>;

  void give_back(const PoolKey& key, std::unique_ptr<WorkerProcess> w);
  Lease lease_locked(Pools::iterator it, std::unique_ptr<WorkerProcess> w);
  std::unique_ptr<WorkerProcess> start_one_shot(Pools::iterator it, std::unique_lock<std::mutex>& lk,
                                                std::string& error);
  // Caller holds mu_; want is capped at Options::workers. `background`: nobody waits for these starts (the
  // rest of a pool after a run gave its worker back): they begin kBackgroundStartDelay later, unless a caller
  // starts waiting first.
  void fill(const PoolKey& key, std::size_t want, bool background = false);
  void evict_idle_elsewhere(const PoolKey& key, std::unique_lock<std::mutex>& lk);
  std::size_t warm_live_locked() const;  // caller holds mu_: live workers of every warm pool
  std::size_t warm_bound() const { return options_.workers * options_.max_pools_per_mode; }
  void spawn_loop();
  // Caller holds `lk` on mu_. Ends the idle namespace/subinterpreter workers that spent CPU while idle (see
  // WorkerProcess::mark_idle) and starts their replacements.
  void end_busy_idlers(std::unique_lock<std::mutex>& lk);
  // Caller holds mu_. Moves `pool`'s idle workers for which `pred` holds to `out` (no longer live there); the
  // caller destroys them (kill and reap) outside the lock.
  template <class Pred>
  static void take_idle_if(Pool& pool, Pred pred, std::vector<std::unique_ptr<WorkerProcess>>& out);

  Options options_;
  Spawn spawn_;
  mutable std::mutex mu_;
  std::condition_variable cv_;  // a worker became idle, or a start failed
  Pools pools_;
  std::set<WorkerProcess*> leased_;  // shutdown kills them so their holders return at once
  bool stopping_ = false;
  Fd stop_fd_;  // an eventfd, written once by shutdown()
  // Warm workers are started from this one long-lived thread: PR_SET_PDEATHSIG fires when the
  // starting *thread* exits, so starting them from callers' threads would kill workers early.
  std::thread spawner_;
  std::condition_variable spawn_cv_;
  std::deque<PoolKey> spawn_queue_;
  std::chrono::steady_clock::time_point spawn_not_before_{};  // background starts wait until then
};

}  // namespace spr::detail
