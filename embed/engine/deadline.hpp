// Soft deadlines: POSIX timers that signal the thread running user code (wall clock and CPU time).
#pragma once

namespace spr::embed::deadline {

// Creates the timers for the calling thread (again after fork: timers are not inherited).
bool init();
// Arms both timers; 0 disables one. The signal handlers (installed by the bootstrap) raise TimeoutError.
void arm(double wall_seconds, double cpu_seconds);
void disarm();
// Stops alarm()/setitimer() timers a run left behind (their signals would hit a later run).
void cancel_interval_timers();
bool wall_fired();
bool cpu_fired();

}  // namespace spr::embed::deadline
