// Runs of the HTTP service waiting for a worker, handed to the Runner in turn across tokens.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <mutex>

#include "detail/worker_pool.hpp"

namespace spr::http {

// Each kind of worker (a pool key: fork mode has one for every run, namespace mode one per token) serves at most
// the Runner's workers per key at once; process mode's one-shot workers, started per run, as many as the Runner's
// executor runs at once (2 per worker). A run beyond that waits here, not in the Runner's own queue
// (first come, first served), and a worker that frees goes to the next token in turn that has a run waiting for it:
// a token with many runs in flight cannot hold every worker while another token's run waits out its deadline.
class FairQueue {
 public:
  using Party = std::size_t;                                 // a token's number
  static constexpr Party kNoToken = static_cast<Party>(-1);  // requests without a token are one party

  explicit FairQueue(std::size_t workers) : workers_(workers ? workers : 1) {}
  FairQueue(const FairQueue&) = delete;
  FairQueue& operator=(const FairQueue&) = delete;

  // Queues a run of `party` for a worker of `key`; returns its ticket. `start` hands it to the Runner when its turn
  // comes (at once when a worker is free), without the queue's lock, on the thread that freed the worker; the run
  // it starts calls finished(key) once when it ends, or start calls it when the run could not be handed over.
  std::uint64_t push(Party party, const detail::PoolKey& key, std::function<void()> start);
  // Takes a waiting run out (cancelled, or past its deadline): true when it had not started and never will.
  bool remove(std::uint64_t ticket);
  // A run that push() started ended: its place goes to the next waiting run in turn.
  void finished(const detail::PoolKey& key);

 private:
  struct Waiting {
    std::uint64_t ticket;
    detail::PoolKey key;
    std::function<void()> start;
  };
  // Under mu_: the next run to start (its place counted), or an empty function when none can.
  std::function<void()> next_locked();
  // Starts what can start. One thread at a time does it: a start that ends its run at once (a cancelled run
  // answers inside submit()) comes back through finished(), which only counts, and the loop goes on.
  void pump(std::unique_lock<std::mutex>& lk);

  std::size_t capacity(const detail::PoolKey& key) const {
    return key.once ? detail::kRunsPerWorker * workers_ : workers_;
  }

  const std::size_t workers_;
  std::mutex mu_;
  std::map<Party, std::deque<Waiting>> waiting_;  // by party, oldest first
  std::deque<Party> turn_;                        // parties with runs waiting, next in turn first
  std::map<detail::PoolKey, std::size_t> running_;
  std::uint64_t next_ticket_ = 1;
  bool pumping_ = false;
};

}  // namespace spr::http
