// User, network and IPC namespaces: the worker's root (if any) and its network become its own, not the host's.
#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::namespaces {
namespace {

// Returns 0 or errno; the proc files must be written in one write() each, or the kernel rejects the map.
int write_proc_file(const char* path, const std::string& text) {
  const int fd = ::open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    log_errno("open", path, err);
    return err;
  }
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = n == static_cast<ssize_t>(text.size()) ? 0 : (n < 0 ? errno : EIO);
  ::close(fd);
  if (err != 0) log_errno("write", path, err);
  return err;
}

}  // namespace

LayerStatus apply(const Options& options) {
  // Captured before unshare: afterwards getuid() answers the overflow uid until the map is written.
  const uid_t uid = ::getuid();
  const gid_t gid = ::getgid();
  int flags = CLONE_NEWUSER | CLONE_NEWIPC;
  std::string which = "user+ipc";
  if (options.isolate_network) {
    // A fresh network namespace has only a loopback that is down: nothing, not even 127.0.0.1, is reachable.
    flags |= CLONE_NEWNET;
    which = "user+net+ipc";
  }
  if (::unshare(flags) != 0) {
    const int err = errno;
    log_errno("unshare", which.c_str(), err);
    return inactive("namespaces", errno_text(("unshare(" + which + ")").c_str(), err));
  }
  // Identity maps keep file ownership checks meaningful. setgroups must be denied before an unprivileged
  // gid_map write; it also stops the process from dropping supplementary groups to bypass "deny" ACL entries.
  if (int err = write_proc_file("/proc/self/setgroups", "deny"); err != 0) {
    return inactive("namespaces", "unshared (" + which + ") but " + errno_text("write(/proc/self/setgroups)", err));
  }
  if (int err = write_proc_file("/proc/self/uid_map", std::to_string(uid) + " " + std::to_string(uid) + " 1\n");
      err != 0) {
    return inactive("namespaces", "unshared (" + which + ") but " + errno_text("write(/proc/self/uid_map)", err));
  }
  if (int err = write_proc_file("/proc/self/gid_map", std::to_string(gid) + " " + std::to_string(gid) + " 1\n");
      err != 0) {
    return inactive("namespaces", "unshared (" + which + ") but " + errno_text("write(/proc/self/gid_map)", err));
  }
  return active("namespaces", which + " unshared; uid " + std::to_string(uid) + " and gid " + std::to_string(gid) +
                                  " mapped to themselves, setgroups denied");
}

}  // namespace spr::harden::namespaces
