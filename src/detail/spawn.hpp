// Starting a program that gets exactly the descriptors it is given: clone(CLONE_VM | CLONE_VFORK), no pipe.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

namespace spr::detail {

// A regular file this process may execute (access(X_OK) alone also takes a directory).
bool executable_file(const char* path);

// What the new process gets. Everything not listed in `fds` is closed before exec, whatever its close-on-exec
// flag: a descriptor some other part of the host application left inheritable never reaches the program.
struct SpawnPlan {
  std::string path;               // executed as is (no PATH search)
  std::vector<std::string> argv;  // argv[0] included
  // (descriptor in this process, number in the new one). Targets must be below 16 (stdin..our protocol fds);
  // a target not listed is closed. Sources stay open here: spawn_program() does not take them.
  std::vector<std::pair<int, int>> fds;
  bool own_group = true;        // setpgid(0, 0): a kill of the group reaches whatever it leaves behind
  bool die_with_parent = true;  // PR_SET_PDEATHSIG SIGKILL: it dies with the thread that spawned it
  bool no_core = true;          // RLIMIT_CORE 0: a crash writes no memory (inputs) to disk
};

// Starts `plan` with an empty environment, every signal at its default action and none blocked, umask 022 and a nice
// value of at least 0 (none of the host's signal state, umask or raised priority reaches it), and returns its pid
// once it has exec'd. The caller owns the process
// (waitpid, kill). When a step before exec or exec itself fails, the child is reaped here and std::system_error
// is thrown naming the step ("execve", "dup3", ...) with its errno. The start waits on no descriptor (the child
// reports into our memory), so a concurrent fork() by another thread, which copies them all, cannot hold it.
pid_t spawn_program(const SpawnPlan& plan);

}  // namespace spr::detail
