// Per-phase clocks of fork runs, for a measurement build only (cmake -DSPR_FORK_PHASES=ON); in any other
// build the SPR_*_PHASE marks compile to nothing. Included by fork_runner.cpp alone, inside its namespace.
#pragma once

#ifdef SPR_FORK_PHASES
// Measurement build only (cmake -DSPR_FORK_PHASES=ON): the child stamps its phases into a page it
// shares with the parent, which prints the means on its stderr every kPhaseRuns runs. The page is
// writable by the run's code: never in a product build.
namespace phases {
enum ChildMark { kStart, kHooks, kFiltered, kSetUp, kRequest, kDecoded, kRan, kReplied, kChildMarks };
enum ParentMark { kArrived, kForking, kForked, kLimited, kSent, kAhead, kReplyIn, kDone, kParentMarks };
struct Point {
  double wall_us = 0, cpu_us = 0, faults = 0;
};
struct Shared {
  Point child[2][kChildMarks];  // two children may live at once (one forked ahead): a slot each, in turn
};
// By the child a run got: forked for its request, forked ahead during the run before, a warmed spare.
constexpr int kPhaseRuns[3] = {200, 200, 50};
Shared* g_shared = nullptr;
int g_slot = 0;                   // in a child: its slot (the value when it was forked)
int g_next_slot = 0;              // in the parent: the next child's
pid_t g_slot_pid[2] = {-1, -1};   // in the parent: whose each slot is
Point g_parent[kParentMarks];
Point g_prev_done;
int g_kind = 0;  // kPhaseRuns' index
bool g_spare = false;
double g_sum[3][64] = {};
int g_runs[3] = {0, 0, 0};
double g_child_cpu = 0, g_child_faults = 0;
int g_reaped = 0;

Point now(bool thread) {
  timespec w{}, c{};
  clock_gettime(CLOCK_MONOTONIC, &w);
  clock_gettime(thread ? CLOCK_THREAD_CPUTIME_ID : CLOCK_PROCESS_CPUTIME_ID, &c);
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return {w.tv_sec * 1e6 + w.tv_nsec / 1e3, c.tv_sec * 1e6 + c.tv_nsec / 1e3, static_cast<double>(u.ru_minflt)};
}
void child(ChildMark m) {
  if (g_shared) g_shared->child[g_slot][m] = now(false);
}
void forking() {
  g_slot = g_next_slot;
  g_next_slot ^= 1;
}
void forked(pid_t pid) { g_slot_pid[g_slot] = pid; }
void parent(ParentMark m) { g_parent[m] = now(true); }
void add(double* sum, int row, const Point& a, const Point& b) {
  sum[3 * row] += b.wall_us - a.wall_us;
  sum[3 * row + 1] += b.cpu_us - a.cpu_us;
  sum[3 * row + 2] += b.faults - a.faults;
}
void reaped(const rusage& u) {
  g_child_cpu += u.ru_utime.tv_sec * 1e6 + u.ru_utime.tv_usec + u.ru_stime.tv_sec * 1e6 + u.ru_stime.tv_usec;
  g_child_faults += static_cast<double>(u.ru_minflt);
  ++g_reaped;
}
void run_done(pid_t pid) {
  if (!g_shared) return;
  const int k = g_kind;
  g_spare = k > 0;
  double* sum = g_sum[k];
  const Point* c = g_shared->child[g_slot_pid[0] == pid ? 0 : 1];
  const Point* p = g_parent;
  int row = 0;
  if (g_prev_done.wall_us > 0) add(sum, row, g_prev_done, p[kArrived]);  // parent between runs (reply out, idle, reap)
  ++row;
  add(sum, row++, p[kArrived], p[kForking]);   // parent: request scan, capture::begin
  add(sum, row++, p[kForking], p[kForked]);    // parent: pipes + fork (a spare: none)
  add(sum, row++, p[kForked], p[kLimited]);    // parent: set_limits
  add(sum, row++, p[kLimited], p[kSent]);      // parent: write request
  add(sum, row++, p[kSent], p[kAhead]);        // parent: fork the next request's child
  add(sum, row++, p[kAhead], p[kReplyIn]);     // parent: waiting for the reply
  add(sum, row++, p[kReplyIn], p[kDone]);      // parent: check reply, retire
  Point forking = p[kForking];
  forking.cpu_us = c[kStart].cpu_us;
  forking.faults = c[kStart].faults;
  if (!g_spare) add(sum, row, forking, c[kStart]);  // fork, as the child sees it (wall only)
  ++row;
  Point zero = c[kStart];
  zero.cpu_us = zero.faults = 0;  // a fresh child starts at zero
  add(sum, row++, zero, c[kHooks]);           // child: PyOS_AfterFork_Child (+ the fork's own faults)
  add(sum, row++, c[kHooks], c[kFiltered]);   // child: prctl, close, dup2, seccomp
  add(sum, row++, c[kFiltered], c[kSetUp]);   // child: deadline (a spare: its warm-up)
  Point sent = p[kSent];
  sent.cpu_us = c[kSetUp].cpu_us;
  sent.faults = c[kSetUp].faults;
  add(sum, row++, g_spare ? sent : c[kSetUp], c[kRequest]);  // child: waiting for and reading the request
  add(sum, row++, c[kRequest], c[kDecoded]);  // child: decode
  add(sum, row++, c[kDecoded], c[kRan]);      // child: capture + run
  add(sum, row++, c[kRan], c[kReplied]);      // child: encode the reply
  add(sum, row++, p[kArrived], p[kDone]);     // parent: whole run (request in to reply ready)
  g_prev_done = p[kDone];
  if (++g_runs[k] < kPhaseRuns[k]) return;
  static const char* const kRows[] = {"parent: between runs (reply out, idle, reap)", "parent: request scan, capture::begin",
                                      "parent: pipes + fork", "parent: set_limits (prlimit x4)", "parent: write request",
                                      "parent: fork the next child ahead", "parent: wait for the reply", "parent: check reply, retire",
                                      "child: fork until child_main (wall)", "child: PyOS_AfterFork_Child",
                                      "child: prctl/close/dup2/seccomp", "child: deadline::init (spare: + warm-up)",
                                      "child: read request (spare: from parent's write)", "child: decode",
                                      "child: capture + run", "child: encode reply", "parent: request in to reply ready"};
  dprintf(2, "[fork phases] %d runs on %s, means: wall us, cpu us, minor faults\n", g_runs[k],
          k == 2 ? "a spare warmed while idle" : k == 1 ? "a child forked ahead (cold)" : "a child forked for them");
  for (int i = 0; i < row; ++i)
    dprintf(2, "[fork phases] %-48s %9.1f %9.1f %7.1f\n", kRows[i], sum[3 * i] / g_runs[k], sum[3 * i + 1] / g_runs[k],
            sum[3 * i + 2] / g_runs[k]);
  if (g_reaped)
    dprintf(2, "[fork phases] %-48s %9s %9.1f %7.1f (%d reaped, either kind)\n", "child: whole (rusage at reap)", "-",
            g_child_cpu / g_reaped, g_child_faults / g_reaped, g_reaped);
  std::memset(sum, 0, sizeof g_sum[k]);
  g_runs[k] = g_reaped = 0;
  g_child_cpu = g_child_faults = 0;
}
}  // namespace phases
#define SPR_CHILD_PHASE(m) phases::child(phases::m)
#define SPR_PARENT_PHASE(m) phases::parent(phases::m)
#define SPR_FORKING() phases::forking()
#define SPR_FORKED(pid) phases::forked(pid)
#else
#define SPR_FORKING() ((void)0)
#define SPR_FORKED(pid) ((void)0)
#define SPR_CHILD_PHASE(m) ((void)0)
#define SPR_PARENT_PHASE(m) ((void)0)
#endif
