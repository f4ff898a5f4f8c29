// Process-wide state a run can change outside the interpreter (environment, umask, working
// directory, descriptors), put back between runs of a worker that serves several.
#pragma once

#include <string>
#include <utility>
#include <vector>

namespace spr::embed {

class ProcessState {
 public:
  // Records the state to return to. Call once, after hardening, before the first run. `thread_only`: a
  // run thread's (subinterpreter_threads), whose working directory and umask are its own (CLONE_FS) but
  // whose environment and descriptors other runs use at the same moment: only the first two are put back.
  void capture(bool thread_only = false);
  // Clears the C environment, restores umask and working directory; with `descriptors`, closes every
  // descriptor opened since capture() (only safe when no Python object can still own one: after the
  // run's sub-interpreter has ended).
  void restore(bool descriptors) const;
  // Closes every descriptor opened since capture() (restore(true)'s last step, for a process whose threads
  // share the descriptors: only when none of them can own one).
  void close_descriptors() const;
  // True when a descriptor opened since capture() is still open.
  bool descriptors_left() const;
  // After a run: says whether each descriptor kept across runs still refers to the file it did at capture(),
  // and if so ends this process's fcntl record locks on those files (closing a copy of one descriptor per
  // file: such a lock belongs to the process and the file, and any close of the file ends it; seccomp
  // refuses flock() and open-file-description locks). False: a run
  // closed one and put another file in its place (a host file it may read, a listening socket), which
  // would outlive the run; the worker cannot put it back and ends after its reply.
  bool kept_descriptors_intact() const;

 private:
  bool captured_ = false;
  bool thread_only_ = false;
  int cwd_fd_ = -1;
  int scan_top_ = 0;  // RLIMIT_NOFILE's hard limit at capture(): no descriptor is open at or above it
  unsigned umask_ = 077;
  std::vector<int> open_fds_;  // sorted
  std::vector<std::pair<unsigned long long, unsigned long long>> open_ids_;  // (device, inode) of each
  std::vector<int> lock_release_fds_;  // one kept descriptor per file that can carry a record lock
  std::vector<std::pair<std::string, std::string>> environment_;
};

}  // namespace spr::embed
