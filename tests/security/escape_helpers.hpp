// Helpers for the red-team suite: host-side observers of side effects (canaries, a TCP listener,
// the supervisor's descendant processes, a decoy process, the host's stderr) and the report table.
#pragma once

#include <sys/types.h>

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <spr/runner.hpp>

namespace sec {

// How many times longer than on a quiet machine waits and limits may take (SPR_TEST_TIME_SCALE, set by
// tests/CMakeLists.txt from the load and for sanitizer builds); at least 1.
double time_scale();

std::string random_hex(std::size_t bytes);

// A TCP listener on 127.0.0.1:<ephemeral>; any connection that reaches it is an escape.
class Listener {
 public:
  Listener();
  ~Listener();
  Listener(const Listener&) = delete;
  Listener& operator=(const Listener&) = delete;
  int port() const { return port_; }
  // Polls for up to timeout_ms; accepts and counts every pending connection.
  int connections(int timeout_ms);

 private:
  int fd_ = -1;
  int port_ = 0;
};

// Processes below `root` (excluding `exclude`), with their thread counts.
struct ProcInfo {
  pid_t pid;
  std::string comm;
  int threads;
};
std::vector<ProcInfo> descendants(pid_t root, const std::vector<pid_t>& exclude);
int total_threads(const std::vector<ProcInfo>& procs);

// A sleeping child of the test process in its own process group: the stand-in target for
// "signal a process outside the sandbox" attempts (so an escape does not take the suite down).
class Decoy {
 public:
  Decoy();
  ~Decoy();
  pid_t pid() const { return pid_; }
  bool alive();
  // Alive, and no signal pending for it: a SIGKILL sent a moment ago shows here before the decoy is gone,
  // so nothing needs to wait for a death that may or may not come.
  bool untouched();
  void respawn();

 private:
  pid_t pid_ = -1;
};

// Files in `dir` whose name starts with `prefix`.
std::vector<std::string> files_with_prefix(const std::string& dir, const std::string& prefix);
void remove_with_prefix(const std::string& dir, const std::string& prefix);

// fd 2 of the test process (inherited by every worker) is redirected to a file for the whole
// suite, so bytes a sandboxed run writes to the host's stderr can be observed.
class StderrTap {
 public:
  StderrTap();
  ~StderrTap();
  std::size_t size() const;
  std::string since(std::size_t offset) const;

 private:
  int saved_ = -1;
  std::string path_;
};

long peak_rss_kb();  // VmHWM of this (supervisor) process
bool reset_peak_rss();

// Which defense layer a result shows, from the RunResult alone.
std::string layer_of(const spr::RunResult& r);
bool contains(const std::string& hay, const std::string& needle);
std::string all_output(const spr::RunResult& r);  // stdout, stderr, result dump, error

// A run's stdout as it streams, so that a test acts while the run is at a point it printed.
class StdoutWatch {
 public:
  StdoutWatch();
  spr::RunOptions& options() { return options_; }  // submit the run with these (on_output is set)
  // Waits until `text` was printed or the run ended; true when it was printed.
  bool wait_for(const std::string& text, spr::RunHandle& run);
  std::string seen() const;  // everything printed so far

 private:
  struct State {
    mutable std::mutex m;
    std::condition_variable cv;
    std::string seen;
  };
  std::shared_ptr<State> state_ = std::make_shared<State>();
  spr::RunOptions options_;
};

}  // namespace sec
