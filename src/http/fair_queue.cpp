// FairQueue: a waiting run per party in turn, each kind of worker filled up to what the Runner runs of it at once.
#include "http/fair_queue.hpp"

#include <algorithm>
#include <utility>

namespace spr::http {

std::uint64_t FairQueue::push(Party party, const detail::PoolKey& key, std::function<void()> start) {
  std::unique_lock<std::mutex> lk(mu_);
  const std::uint64_t ticket = next_ticket_++;
  auto& queue = waiting_[party];
  if (queue.empty()) turn_.push_back(party);
  queue.push_back(Waiting{ticket, key, std::move(start)});
  pump(lk);
  return ticket;
}

bool FairQueue::remove(std::uint64_t ticket) {
  std::lock_guard<std::mutex> lk(mu_);
  for (auto it = waiting_.begin(); it != waiting_.end(); ++it) {
    auto& queue = it->second;
    const auto w = std::find_if(queue.begin(), queue.end(), [&](const Waiting& x) { return x.ticket == ticket; });
    if (w == queue.end()) continue;
    queue.erase(w);
    if (queue.empty()) {
      turn_.erase(std::find(turn_.begin(), turn_.end(), it->first));
      waiting_.erase(it);
    }
    return true;
  }
  return false;
}

void FairQueue::finished(const detail::PoolKey& key) {
  std::unique_lock<std::mutex> lk(mu_);
  if (auto it = running_.find(key); it != running_.end() && --it->second == 0) running_.erase(it);
  pump(lk);
}

std::function<void()> FairQueue::next_locked() {
  // The first party in turn with a run whose kind of worker has room; it then goes to the back of the turn. A party
  // whose runs all wait for a full kind keeps its place.
  for (auto t = turn_.begin(); t != turn_.end(); ++t) {
    auto& queue = waiting_.at(*t);
    for (auto w = queue.begin(); w != queue.end(); ++w) {
      auto held = running_.find(w->key);
      if (held != running_.end() && held->second >= capacity(w->key)) continue;
      if (held == running_.end()) held = running_.emplace(w->key, 0).first;
      ++held->second;
      std::function<void()> start = std::move(w->start);
      queue.erase(w);
      const Party party = *t;
      turn_.erase(t);
      if (queue.empty())
        waiting_.erase(party);
      else
        turn_.push_back(party);
      return start;
    }
  }
  return {};
}

void FairQueue::pump(std::unique_lock<std::mutex>& lk) {
  if (pumping_) return;
  pumping_ = true;
  while (std::function<void()> start = next_locked()) {
    lk.unlock();
    try {
      start();
    } catch (...) {
      lk.lock();
      pumping_ = false;
      throw;
    }
    lk.lock();
  }
  pumping_ = false;
}

}  // namespace spr::http
