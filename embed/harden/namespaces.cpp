// User, network, IPC, UTS and cgroup namespaces, and the run's identity: uid/gid 0 inside, an unprivileged id
// outside (nobody when the supervisor is root, the supervisor's own uid otherwise), owning no host file.
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::namespaces {
namespace {

// Returns 0 or errno; the proc files must be written in one write() each, or the kernel rejects the map. Opened
// relative to a descriptor of /proc/<pid> taken before the root was pivoted (the new root has no /proc).
int write_proc_file(int proc_dir, const char* name, const std::string& text) {
  const int fd = ::openat(proc_dir, name, O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    log_errno("open", name, err);
    return err;
  }
  const ssize_t n = ::write(fd, text.data(), text.size());
  const int err = n == static_cast<ssize_t>(text.size()) ? 0 : (n < 0 ? errno : EIO);
  ::close(fd);
  if (err != 0) log_errno("write", name, err);
  return err;
}

// A process may map only its own id into a namespace it creates (without CAP_SETUID in the parent): one line
// each, setgroups denied first, as the kernel requires for an unprivileged gid_map.
std::string map_self(int proc_dir, uid_t inside_uid, uid_t outside_uid, gid_t inside_gid, gid_t outside_gid) {
  if (int err = write_proc_file(proc_dir, "setgroups", "deny"); err != 0) return errno_text("write(setgroups)", err);
  if (int err = write_proc_file(proc_dir, "uid_map",
                                std::to_string(inside_uid) + " " + std::to_string(outside_uid) + " 1\n");
      err != 0)
    return errno_text("write(uid_map)", err);
  if (int err = write_proc_file(proc_dir, "gid_map",
                                std::to_string(inside_gid) + " " + std::to_string(outside_gid) + " 1\n");
      err != 0)
    return errno_text("write(gid_map)", err);
  return {};
}

}  // namespace

Identity identify() {
  Identity id;
  id.host_uid = ::getuid();
  id.host_gid = ::getgid();
  id.parent = ::getppid();
  // Root that cannot become the sandbox id (a rootless container's root) takes the unprivileged path.
  id.privileged = spr::detail::root_with_sandbox_id();
  // Root mounts with its own rights and the run's files belong to the sandbox id; otherwise to uid 0 of the
  // first user namespace, which is the supervisor's uid.
  id.scratch_uid = id.privileged ? kSandboxId : 0;
  id.scratch_gid = id.privileged ? kSandboxId : 0;
  return id;
}

std::string prepare(Identity& id, int proc_dir) {
  if (id.privileged || id.in_own_userns) return {};
  // Without privilege, mounting needs a user namespace of our own first: uid 0 there is our uid outside.
  if (::unshare(CLONE_NEWUSER) != 0) return errno_text("unshare(CLONE_NEWUSER)", errno);
  std::string why = map_self(proc_dir, 0, id.host_uid, 0, id.host_gid);
  id.in_own_userns = why.empty();
  return why;
}

LayerStatus apply(const Options& o) {
  const Identity& id = *o.identity;
  // The new user namespace owns the others unshared with it: none of the host's interfaces, IPC objects,
  // host name or cgroup paths are visible.
  int flags = CLONE_NEWUSER | CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWCGROUP;
  std::string which = "user+ipc+uts+cgroup";
  if (o.isolate_network) {
    // A fresh network namespace has only a loopback that is down: nothing, not even 127.0.0.1, is reachable.
    flags |= CLONE_NEWNET;
    which = "user+net+ipc+uts+cgroup";
  }
  // Inside, the run is uid 0 of its own namespace; what that is outside depends on who started the worker.
  uid_t inside_uid = 0, outside_uid = 0;
  gid_t inside_gid = 0, outside_gid = 0;
  std::string outside = "the supervisor's uid " + std::to_string(id.host_uid);
  if (id.privileged && o.own_root) {
    // Become nobody on the host before the last namespace: a process may map only its own id, and uid 0 of the
    // initial namespace is exempt from RLIMIT_NPROC and owns the host's files. Only with an own root: nobody
    // could not use the supervisor's scratch directory on the host.
    if (::setgroups(0, nullptr) != 0) return inactive("namespaces", errno_text("setgroups", errno));
    if (::setresgid(kSandboxId, kSandboxId, kSandboxId) != 0) return inactive("namespaces", errno_text("setresgid", errno));
    if (::setresuid(kSandboxId, kSandboxId, kSandboxId) != 0) return inactive("namespaces", errno_text("setresuid", errno));
    // A change of uid clears the parent-death signal: set it again, and go if the supervisor already went.
    if (::prctl(PR_SET_PDEATHSIG, SIGKILL) != 0) return inactive("namespaces", errno_text("prctl(PR_SET_PDEATHSIG)", errno));
    if (::getppid() != id.parent) ::_exit(0);
    outside_uid = kSandboxId;
    outside_gid = kSandboxId;
    outside = "nobody (" + std::to_string(kSandboxId) + ")";
  } else if (!id.in_own_userns) {
    // No own root (a kernel or container refused it): the old identity map, uid to itself.
    inside_uid = outside_uid = id.host_uid;
    inside_gid = outside_gid = id.host_gid;
    outside = "uid " + std::to_string(id.host_uid) + " (unchanged: no own root)";
  }
  // Unprivileged: uid 0 of the first namespace (our uid outside) maps to 0 of this one; nesting also locks the
  // root's mounts together, so none can be peeled off to show what lies under it.
  if (::unshare(flags) != 0) {
    const int err = errno;
    log_errno("unshare", which.c_str(), err);
    return inactive("namespaces", errno_text(("unshare(" + which + ")").c_str(), err));
  }
  // Giving up root made us non-dumpable, and a non-dumpable process's /proc files belong to root: dumpable just
  // long enough to write our own maps.
  const bool dropped_root = id.privileged && o.own_root;
  if (dropped_root && ::prctl(PR_SET_DUMPABLE, 1) != 0) return inactive("namespaces", errno_text("prctl(PR_SET_DUMPABLE)", errno));
  const std::string why = map_self(o.proc_dir, inside_uid, outside_uid, inside_gid, outside_gid);
  if (dropped_root && ::prctl(PR_SET_DUMPABLE, 0) != 0) return inactive("namespaces", errno_text("prctl(PR_SET_DUMPABLE)", errno));
  if (!why.empty()) return inactive("namespaces", "unshared (" + which + ") but " + why);
  return active("namespaces", which + " unshared; uid " + std::to_string(inside_uid) + " inside is " + outside +
                                  " outside, setgroups denied");
}

}  // namespace spr::harden::namespaces
