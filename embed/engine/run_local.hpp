// A run's engine state: shared by the thread running the run and every thread the run starts, apart
// for each own-GIL run thread (subinterpreter_threads), which runs its own runs at the same time.
#pragma once

#include <vector>

namespace spr::embed {

namespace run_local {
using Owner = void (*)();
// Each RunLocal's owner, registered when the program starts (before main: no thread runs yet).
inline std::vector<Owner>& owners() {
  static std::vector<Owner> all;
  return all;
}
// Gives the calling thread its own copy of every RunLocal. Only an own-GIL run thread calls it, once,
// before its first run: a thread a run starts must share that run's limits, policy and capture.
inline void own_all() {
  for (Owner own : owners()) own();
}
}  // namespace run_local

// One object per type T (the thread's own copy is per type). Shared state is read by the run's
// threads under their interpreter's lock, except where T says otherwise (memory's atomic counters).
template <class T>
class RunLocal {
 public:
  RunLocal() { run_local::owners().push_back(&own); }
  RunLocal(const RunLocal&) = delete;
  RunLocal& operator=(const RunLocal&) = delete;

  T& operator()() {
    T* mine = t_own_;
    return mine ? *mine : shared_;
  }

 private:
  static void own() {
    thread_local T mine;
    t_own_ = &mine;
  }

  T shared_{};
  static inline thread_local T* t_own_ = nullptr;
};

}  // namespace spr::embed
