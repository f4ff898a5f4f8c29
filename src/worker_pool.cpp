// WorkerPool: warm workers per key started from one spawner thread, one-shot workers per lease, shutdown.
#include "detail/worker_pool.hpp"

#include <signal.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <tuple>
#include <utility>

#include "common/run_deadline.hpp"
#include "detail/cancel.hpp"

namespace spr::detail {

namespace {

std::int64_t memory_class_mb(std::int64_t limit_mb) {
  std::int64_t c = 64;
  while (c < limit_mb) c *= 2;
  return c;
}

const char* const kShuttingDown = "the runner is shutting down";

}  // namespace

bool PoolKey::operator<(const PoolKey& o) const {
  return std::tie(isolation, network, unix_sockets, python, reads, domain, scratch_mb, memory_backstop_mb,
                  cpu_backstop_seconds, once) < std::tie(o.isolation, o.network, o.unix_sockets, o.python, o.reads,
                                                         o.domain, o.scratch_mb, o.memory_backstop_mb,
                                                         o.cpu_backstop_seconds, o.once);
}

SpawnOptions spawn_options_of(const PoolKey& key) {
  SpawnOptions so;
  WorkerStart& s = so.start;
  s.isolation = key.isolation;
  s.allow_network = key.network;
  s.allow_unix_sockets = key.unix_sockets;
  s.read_paths = key.reads;
  s.scratch_limit_mb = key.scratch_mb;
  s.once = key.once;
  s.memory_backstop_mb = key.memory_backstop_mb;
  s.cpu_backstop_seconds = key.cpu_backstop_seconds;
  return so;
}

bool shares_process(Isolation i) {
  return i == Isolation::namespace_ || i == Isolation::subinterpreter;
}

// Workers are hardened when they start: a pool serves one isolation mode, network and unix-socket setting, Python
// environment and read set (Landlock can only narrow, so the read set is fixed at the worker's start).
// namespace and subinterpreter workers also carry state from run to run (a run may own its process's
// memory), so their pools are split by trust domain too, and by their OS memory backstop (RLIMIT_AS,
// set once at start): the power of two at or above the run's memory limit.
PoolKey warm_key_of(const RunnerPolicy& p) {
  PoolKey k;
  k.isolation = p.isolation;
  k.network = p.allow_network;
  k.unix_sockets = p.allow_unix_sockets;
  k.python = p.python_executable;
  k.reads = p.allowed_read_paths;
  std::sort(k.reads.begin(), k.reads.end());
  k.reads.erase(std::unique(k.reads.begin(), k.reads.end()), k.reads.end());
  k.scratch_mb = p.scratch_limit_mb;  // the scratch file system is mounted once, at the worker's start
  if (shares_process(p.isolation)) {
    k.domain = p.trust_domain;
    k.memory_backstop_mb = memory_class_mb(p.memory_limit_mb);
  }
  return k;
}

PoolKey key_of(const RunnerPolicy& p) {
  PoolKey k = warm_key_of(p);
  if (p.isolation == Isolation::process) {
    // One run per process: its exact limits become the OS backstop.
    k.once = true;
    k.memory_backstop_mb = p.memory_limit_mb;
    k.cpu_backstop_seconds = p.cpu_time_seconds;
  }
  return k;
}

WorkerPool::Lease::Lease(Lease&& o) noexcept
    : pool_(std::exchange(o.pool_, nullptr)), key_(std::exchange(o.key_, nullptr)), worker_(std::move(o.worker_)) {}

WorkerPool::Lease& WorkerPool::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    give_back();
    pool_ = std::exchange(o.pool_, nullptr);
    key_ = std::exchange(o.key_, nullptr);
    worker_ = std::move(o.worker_);
  }
  return *this;
}

void WorkerPool::Lease::give_back() {
  if (pool_ && worker_) pool_->give_back(*key_, std::move(worker_));
  pool_ = nullptr;
  key_ = nullptr;
}

WorkerPool::WorkerPool(Options options, Spawn spawn)
    : options_(options), spawn_(std::move(spawn)), stop_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  if (!stop_fd_) throw WorkerError(std::string("eventfd failed: ") + std::strerror(errno));
  spawner_ = std::thread([this] { spawn_loop(); });
}

WorkerPool::~WorkerPool() {
  shutdown();
}

bool WorkerPool::stopping() const {
  std::lock_guard<std::mutex> lk(mu_);
  return stopping_;
}

std::size_t WorkerPool::idle(const PoolKey& key) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = pools_.find(key);
  return it == pools_.end() ? 0 : it->second.idle.size();
}

std::size_t WorkerPool::waiting(const PoolKey& key) const {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = pools_.find(key);
  return it == pools_.end() ? 0 : it->second.queue.size();
}

WorkerPool::Counts WorkerPool::counts() const {
  std::lock_guard<std::mutex> lk(mu_);
  Counts c;
  for (const auto& [key, pool] : pools_) {
    c.idle += pool.idle.size();
    c.busy += pool.live - pool.idle.size();
  }
  return c;
}

void WorkerPool::shutdown() {
  std::deque<std::unique_ptr<WorkerProcess>> doomed;
  {
    std::lock_guard<std::mutex> lk(mu_);
    if (stopping_) return;
    stopping_ = true;
    // The idle lists are emptied, not left holding moved-from pointers: a lease given back later (a run the kill
    // below ends) still walks its pool's idle list for slots of its process.
    for (auto& [key, pool] : pools_) {
      for (auto& w : pool.idle) doomed.push_back(std::move(w));
      pool.live -= pool.idle.size();
      pool.idle.clear();
    }
    for (WorkerProcess* w : leased_) ::kill(-w->pid(), SIGKILL);  // their holders reap them
  }
  const std::uint64_t one = 1;
  if (::write(stop_fd_.get(), &one, sizeof one) != sizeof one) {
    // Cannot fail for a fresh eventfd written once; a start in progress would then only end at its hello.
  }
  cv_.notify_all();
  spawn_cv_.notify_all();
  doomed.clear();  // kills and reaps
  if (spawner_.joinable()) spawner_.join();
}

void WorkerPool::prespawn(const PoolKey& key) {
  std::lock_guard<std::mutex> lk(mu_);
  if (!stopping_) fill(key, 1);
}

// How long the rest of a pool waits after a run gave its worker back. A program that makes one run and exits is
// gone by then: starting a worker it never uses only competed with its exit for the CPU and then had to be
// killed and reaped on the way out. A caller that waits for a worker ends the wait at once (fill from lease).
constexpr auto kBackgroundStartDelay = std::chrono::milliseconds(100);

void WorkerPool::fill(const PoolKey& key, std::size_t want, bool background) {
  if (key.once) return;  // a one-shot worker is started for its lease (see start_one_shot)
  Pool& pool = pools_[key];
  const bool was_empty = spawn_queue_.empty();
  const std::size_t target = std::min(want, options_.workers);
  if (pool.live < target) {
    // Pools multiply workers: a start nobody waits for stops at the bound that evict_idle_elsewhere keeps.
    // (Counted only when a start is due: every run's give_back comes here.)
    std::size_t warm = warm_live_locked();
    for (; pool.live < target && !(background && warm >= warm_bound()); ++warm) {
      ++pool.live;
      spawn_queue_.push_back(key);
    }
  }
  if (spawn_queue_.empty()) return;  // nothing to start: the spawner sleeps on (every run's give_back comes here,
                                     // and a wake-up per run cost a cross-CPU interrupt and a context switch)
  if (!background)
    spawn_not_before_ = {};  // someone waits (or this is the first worker): every queued start goes now
  else if (was_empty)
    spawn_not_before_ = Clock::now() + kBackgroundStartDelay;
  spawn_cv_.notify_one();
}

// How often the pool's thread looks at its idle workers' CPU, and how much CPU an idle worker may spend since it came
// back (building its spare interpreters takes tens of ms; a run computing after a forged reply, a second a second).
constexpr auto kIdleCheckEvery = std::chrono::seconds(1);
constexpr auto kIdleCpuAllowance = std::chrono::milliseconds(1000);

template <class Pred>
void WorkerPool::take_idle_if(Pool& pool, Pred pred, std::vector<std::unique_ptr<WorkerProcess>>& out) {
  for (auto i = pool.idle.begin(); i != pool.idle.end();) {
    if (!pred(**i)) {
      ++i;
      continue;
    }
    out.push_back(std::move(*i));
    i = pool.idle.erase(i);
    --pool.live;
  }
}

void WorkerPool::end_busy_idlers(std::unique_lock<std::mutex>& lk) {
  std::vector<std::unique_ptr<WorkerProcess>> doomed;
  for (auto& [key, pool] : pools_) {
    if (key.once || !shares_process(key.isolation)) continue;  // a fork run's process ends with its run
    const std::size_t before = doomed.size();
    take_idle_if(pool, [](WorkerProcess& w) { return w.spent_while_idle(kIdleCpuAllowance); }, doomed);
    if (doomed.size() > before && !stopping_) fill(key, options_.workers, true);
  }
  if (doomed.empty()) return;
  lk.unlock();
  doomed.clear();  // killed and reaped outside the lock
  lk.lock();
}

void WorkerPool::spawn_loop() {
  std::unique_lock<std::mutex> lk(mu_);
  auto next_check = Clock::now() + kIdleCheckEvery;
  for (;;) {
    if (stopping_) return;
    if (Clock::now() >= next_check) {
      end_busy_idlers(lk);
      next_check = Clock::now() + kIdleCheckEvery;
      continue;
    }
    if (spawn_queue_.empty()) {
      spawn_cv_.wait_until(lk, next_check);
      continue;
    }
    if (Clock::now() < spawn_not_before_) {
      spawn_cv_.wait_until(lk, std::min(spawn_not_before_, next_check));  // a fill for a waiting caller cuts it short
      continue;
    }
    PoolKey key = spawn_queue_.front();
    spawn_queue_.pop_front();
    lk.unlock();
    std::unique_ptr<WorkerProcess> w;
    std::string error;
    try {
      w = spawn_(key);
    } catch (const std::exception& e) {
      error = e.what();
    }
    lk.lock();
    Pool& pool = pools_[key];
    if (w) {
      pool.failures_in_a_row = 0;
      if (stopping_) {
        lk.unlock();
        w.reset();
        lk.lock();
        return;
      }
      // A worker with run threads is several slots of one process: each is leased on its own.
      for (auto& slot : w->take_slots()) {
        ++pool.live;
        slot->mark_idle();
        pool.idle.push_back(std::move(slot));
      }
      w->mark_idle();
      pool.idle.push_back(std::move(w));
    } else {
      pool.last_error = error;
      ++pool.failures_in_a_row;
      --pool.live;
    }
    cv_.notify_all();
  }
}

std::size_t WorkerPool::warm_live_locked() const {
  std::size_t live = 0;
  for (const auto& [k, pool] : pools_)
    if (!k.once) live += pool.live;
  return live;
}

// Caller holds `lk` on mu_. Pools multiply workers (one per trust domain, memory class, scratch size, read set,
// network setting, Python, in every mode): past a bound, an idle worker of another pool of the same mode makes
// room for this one. One-shot workers are not counted: none idles. (Fork pools were not bounded: a client that
// varied its scratch size run after run left 80 processes and 725 MiB behind: red team round 14.)
void WorkerPool::evict_idle_elsewhere(const PoolKey& key, std::unique_lock<std::mutex>& lk) {
  if (warm_live_locked() < warm_bound()) return;
  for (auto& [k, pool] : pools_) {
    if (k.isolation != key.isolation || !(k < key || key < k)) continue;
    // A worker with run threads is several slots of one process: only a process whose every slot is idle is
    // ended, and all of its slots go with it. (An idle slot's process was ended under its other slot's run,
    // another party's: red team, round 15.)
    const auto victim = std::find_if(pool.idle.begin(), pool.idle.end(),
                                     [](const std::unique_ptr<WorkerProcess>& w) { return w->whole_process_idle(); });
    if (victim == pool.idle.end()) continue;
    const pid_t pid = (*victim)->pid();
    std::vector<std::unique_ptr<WorkerProcess>> doomed;
    take_idle_if(pool, [pid](const WorkerProcess& w) { return w.pid() == pid; }, doomed);
    lk.unlock();
    doomed.clear();  // kills and reaps
    lk.lock();
    return;
  }
}

WorkerPool::Lease WorkerPool::lease_locked(Pools::iterator it, std::unique_ptr<WorkerProcess> w) {
  leased_.insert(w.get());
  ++it->second.leased;
  Lease l;
  l.pool_ = this;
  l.key_ = &it->first;
  l.worker_ = std::move(w);
  return l;
}

// A one-shot worker is started on the caller's thread: it lives only for that caller's run, so the
// thread outlives it (PR_SET_PDEATHSIG), and concurrent one-shot leases start their processes in
// parallel instead of queueing behind the spawner thread. The caller holds `lk` on mu_.
std::unique_ptr<WorkerProcess> WorkerPool::start_one_shot(Pools::iterator it, std::unique_lock<std::mutex>& lk,
                                                          std::string& error) {
  ++it->second.live;  // keeps the entry (and `it`) while the lock is released
  lk.unlock();
  std::unique_ptr<WorkerProcess> w;
  try {
    w = spawn_(it->first);
  } catch (const std::exception& e) {
    error = e.what();
  }
  lk.lock();
  if (w && !stopping_) return w;
  if (w) error = kShuttingDown;
  if (--it->second.live == 0 && it->second.idle.empty()) pools_.erase(it);
  lk.unlock();
  w.reset();  // kills and reaps
  lk.lock();
  return nullptr;
}

WorkerPool::Lease WorkerPool::lease(const PoolKey& key, std::string& error, const CancelToken* cancel) {
  std::unique_lock<std::mutex> lk(mu_);
  const auto start_wait = seconds(options_.start_timeout_seconds * 2);
  auto give_up = Clock::now() + start_wait;
  // A one-shot worker's failure is its own error; a warm pool's says that no worker was available.
  const std::string prefix = key.once ? "" : "no worker available: ";
  // This call's place in its pool's queue while it waits (fill() starts a worker per waiting caller). Left on
  // every way out; the next in line is woken when this one was first, as an idle worker may be its now.
  struct Place {
    WorkerPool& self;
    Pool* pool = nullptr;
    std::uint64_t ticket = 0;
    bool first() const { return pool && pool->queue.front() == ticket; }
    void leave() {
      if (!pool) return;
      auto& q = pool->queue;
      const bool was_first = first();
      q.erase(std::find(q.begin(), q.end(), ticket));
      if (was_first && !q.empty() && !pool->idle.empty()) self.cv_.notify_all();
      pool = nullptr;
    }
    ~Place() { leave(); }
  } place{*this};
  for (;;) {
    if (stopping_) {
      error = prefix + kShuttingDown;
      return {};
    }
    if (cancel && cancel->cancelled()) return {};
    auto it = pools_.try_emplace(key).first;
    Pool& pool = it->second;
    if (!pool.idle.empty() && (pool.queue.empty() || place.first())) {
      // The worker given back last: its caches are warm, and in fork mode the others keep the spare
      // child they forked while idle (taking them in turn made every worker fork and warm a spare
      // between back-to-back runs, on the CPU the run needed).
      auto w = std::move(pool.idle.back());
      pool.idle.pop_back();
      w->mark_busy();
      if (!w->quiet()) {
        // A stray frame or a hang-up is pending: a run wrote to the reply channel itself. Replace it.
        --pool.live;
        lk.unlock();
        w.reset();
        lk.lock();
        continue;
      }
      place.leave();  // the next in line takes the next idle worker, if there is one
      return lease_locked(it, std::move(w));
    }
    // No worker at hand: a caller that reads its own input on this thread is told now that the run waits
    // (serve's reading thread passes the reading on; detail::set_watch).
    if (cancel && detail::watch_fd(*cancel) >= 0) {
      lk.unlock();
      detail::fire_watch(*cancel);
      lk.lock();
      continue;
    }
    if (key.once) {
      auto w = start_one_shot(it, lk, error);
      if (!w) return {};
      return lease_locked(it, std::move(w));
    }
    if (pool.live == 0) evict_idle_elsewhere(key, lk);
    // Several starts in a row failed and none is pending: answer now instead of waiting.
    if (pool.failures_in_a_row >= 3 && pool.live == 0) {
      error = prefix + pool.last_error;
      pool.failures_in_a_row = 0;  // the next caller tries again
      return {};
    }
    if (!place.pool) {
      place.pool = &pool;
      place.ticket = ++pool.next_ticket;
      pool.queue.push_back(place.ticket);
    }
    fill(key, pool.leased + pool.queue.size());
    // Workers out on runs come back by their runs' deadlines: only a wait on starts alone runs out.
    if (pool.leased > 0) give_up = std::max(give_up, Clock::now() + start_wait);
    // A cancellable wait looks at its token every 20 ms.
    const auto until = cancel ? std::min(give_up, Clock::now() + std::chrono::milliseconds(20)) : give_up;
    if (cv_.wait_until(lk, until) == std::cv_status::timeout && Clock::now() >= give_up &&
        pools_[key].leased == 0 && pools_[key].idle.empty()) {
      char waited[64];
      std::snprintf(waited, sizeof waited, "%g", options_.start_timeout_seconds * 2);
      error = prefix + "no worker started within twice start_timeout_seconds (" + waited + " s)" +
              (pools_[key].last_error.empty() ? std::string() : ": " + pools_[key].last_error);
      return {};
    }
  }
}

void WorkerPool::give_back(const PoolKey& key, std::unique_ptr<WorkerProcess> w) {
  std::unique_ptr<WorkerProcess> dead;
  std::vector<std::unique_ptr<WorkerProcess>> dead_slots;
  {
    std::lock_guard<std::mutex> lk(mu_);
    auto it = pools_.find(key);
    Pool& pool = it->second;
    leased_.erase(w.get());
    --pool.leased;
    if (w->alive() && !stopping_ && !key.once) {
      w->mark_idle();
      pool.idle.push_back(std::move(w));
      fill(key, options_.workers, true);  // the rest of the pool comes up in the background (see prespawn)
    } else {
      dead = std::move(w);
      --pool.live;
      // Idle slots of the same process (run threads) ended with it: replaced now, not at their next lease.
      take_idle_if(pool, [](const WorkerProcess& slot) { return !slot.alive(); }, dead_slots);
      if (key.once) {
        if (pool.live == 0 && pool.idle.empty()) pools_.erase(it);  // `key` refers into it: not used after
      } else if (!stopping_) {
        fill(key, options_.workers, true);  // the replacement comes up off the caller's path
      }
    }
  }
  cv_.notify_all();  // one condition variable serves every pool: wake them all, each rechecks its own
  // `dead` is reaped here, outside the lock.
}

}  // namespace spr::detail
