// The worker's own root: a private mount namespace and pivot_root into an empty tmpfs that holds read-only
// binds of what the runtime needs and a size-limited scratch tmpfs; every other host file is absent.
#include <fcntl.h>
#include <linux/openat2.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "mechanisms.hpp"

namespace spr::harden::root {
namespace {

using spr::detail::Fd;

// Where the new root is assembled before pivot_root. Private to this mount namespace (propagation is off), so
// mounting over it hides nothing from anyone else; every source was opened before it is covered.
constexpr const char* kStaging = "/tmp";

// Top-level links of a merged-/usr system: the loader and ld.so.cache name libraries through them.
constexpr const char* kRootLinks[] = {"/lib", "/lib64", "/lib32", "/libx32", "/bin", "/sbin"};

struct Prepared {
  std::string target;  // path inside the new root (the host path it came from)
  Fd tree;             // a detached read-only copy of the source's mounts
  bool directory = true;
};

bool under(const std::string& path, const std::string& dir) {
  if (dir == "/") return true;
  return path.compare(0, dir.size(), dir) == 0 && (path.size() == dir.size() || path[dir.size()] == '/');
}

// Creates every missing directory of `path` (absolute, below the staging root) with mode 0755.
int make_dirs(const std::string& path) {
  for (std::size_t slash = 1; slash != std::string::npos;) {
    slash = path.find('/', slash + 1);
    const std::string part = path.substr(0, slash);
    if (::mkdir(part.c_str(), 0755) != 0 && errno != EEXIST) return errno;
  }
  return 0;
}

// Resolves `path` once, without following a symlink anywhere in it (a path swapped for a link after the
// operator named it leads nowhere), and clones its mount tree from that descriptor, read-only.
int clone_readonly(const std::string& path, bool device, Prepared& out, std::string& why) {
  open_how how{};
  how.flags = O_PATH | O_NOFOLLOW | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  const Fd at(static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how)));
  if (!at) {
    const int err = errno;
    why = errno_text(("openat2(" + path + ")").c_str(), err);
    return err;
  }
  struct stat st {};
  if (::fstat(at.get(), &st) != 0) {
    const int err = errno;
    why = errno_text(("fstat(" + path + ")").c_str(), err);
    return err;
  }
  out.directory = S_ISDIR(st.st_mode);
  out.target = path;
  out.tree = Fd(::open_tree(at.get(), "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_RECURSIVE | AT_EMPTY_PATH));
  if (!out.tree) {
    const int err = errno;
    why = errno_text(("open_tree(" + path + ")").c_str(), err);
    return err;
  }
  mount_attr attr{};
  attr.attr_set = MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | (device ? 0 : MOUNT_ATTR_NODEV);
  if (::mount_setattr(out.tree.get(), "", AT_EMPTY_PATH | AT_RECURSIVE, &attr, sizeof attr) != 0) {
    const int err = errno;
    why = errno_text(("mount_setattr(" + path + ")").c_str(), err);
    return err;
  }
  return 0;
}

// Attaches a prepared tree at its path under the staging root (a directory, or an empty file for a file).
int attach(const Prepared& p, std::string& why) {
  const std::string where = std::string(kStaging) + p.target;
  const std::string parent = where.substr(0, where.rfind('/'));
  if (int err = make_dirs(p.directory ? where : parent); err != 0) {
    why = errno_text(("mkdir(" + where + ")").c_str(), err);
    return err;
  }
  if (!p.directory) {
    const Fd f(::open(where.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0444));
    if (!f && errno != EEXIST) {
      const int err = errno;
      why = errno_text(("creat(" + where + ")").c_str(), err);
      return err;
    }
  }
  if (::move_mount(p.tree.get(), "", AT_FDCWD, where.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    const int err = errno;
    why = errno_text(("move_mount(" + where + ")").c_str(), err);
    return err;
  }
  return 0;
}

// A failure once the host's view has changed: the process can no longer serve.
LayerStatus broken(std::string detail) {
  LayerStatus s = inactive("root", "failed half-way: " + detail);
  s.fatal = true;
  return s;
}

}  // namespace

LayerStatus apply(const Options& o) {
  const char* name = "root";
  // Sources first, each read once and kept as a descriptor: parents before children, and a path under a
  // directory already bound is inside that bind already.
  std::vector<std::string> sources = o.binds;
  std::sort(sources.begin(), sources.end());
  sources.erase(std::unique(sources.begin(), sources.end()), sources.end());
  std::vector<std::string> kept;
  for (const auto& s : sources) {
    if (s.empty() || s[0] != '/' || s == "/") continue;
    if (std::none_of(kept.begin(), kept.end(), [&](const std::string& k) { return under(s, k); })) kept.push_back(s);
  }
  if (::unshare(CLONE_NEWNS) != 0) return inactive(name, errno_text("unshare(CLONE_NEWNS)", errno));
  // Nothing mounted from here on reaches the host's namespace, and nothing the host mounts reaches us.
  if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) != 0)
    return inactive(name, errno_text("mount(/, MS_PRIVATE)", errno));
  std::vector<Prepared> trees;
  std::string skipped;
  for (const auto& s : kept) {
    Prepared p;
    std::string why;
    const bool device = s.compare(0, 5, "/dev/") == 0;
    if (clone_readonly(s, device, p, why) != 0) {
      // A runtime path that vanished, or an allowed path with a link in it: it is simply not in the root.
      skipped += (skipped.empty() ? "" : "; ") + why;
      continue;
    }
    trees.push_back(std::move(p));
  }
  // The new root: an empty tmpfs, made read-only once assembled.
  if (::mount("tmpfs", kStaging, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=0755") != 0)
    return inactive(name, errno_text("mount(tmpfs, new root)", errno));
  for (const char* link : kRootLinks) {
    char target[256];
    const ssize_t n = ::readlink(link, target, sizeof target - 1);
    if (n <= 0) continue;
    target[n] = '\0';
    if (::symlink(target, (std::string(kStaging) + link).c_str()) != 0)
      return broken(errno_text(("symlink(" + std::string(link) + ")").c_str(), errno));
  }
  for (const auto& p : trees) {
    std::string why;
    if (attach(p, why) != 0) return broken(why);
  }
  std::string scratch_note = "no scratch";
  if (!o.scratch.empty()) {
    const std::string where = std::string(kStaging) + o.scratch;
    if (int err = make_dirs(where); err != 0) return broken(errno_text("mkdir(scratch)", err));
    // noexec: a library a run wrote there can never be mapped executable (dlopen, _imp.create_dynamic).
    const std::string opts = "size=" + std::to_string(o.scratch_bytes >> 10) + "k,nr_inodes=" +
                             std::to_string(o.scratch_inodes) + ",mode=0700,uid=" + std::to_string(o.scratch_uid) +
                             ",gid=" + std::to_string(o.scratch_gid);
    if (::mount("tmpfs", where.c_str(), "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts.c_str()) != 0)
      return broken(errno_text("mount(tmpfs, scratch)", errno));
    scratch_note = "scratch " + o.scratch + " a tmpfs of " + std::to_string(o.scratch_bytes >> 20) + " MiB";
  }
  // No /proc: Landlock refuses its files to a run anyway, but not what its magic links lead to. Through
  // /proc/<pid>/fd/<n> of another process of the sandbox (a fork child forked ahead, the fork parent: same uid,
  // and dumpable under an unprivileged supervisor) a run reopened that process's pipes and wrote it a request.
  if (::mount(nullptr, kStaging, nullptr, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, nullptr) != 0)
    return broken(errno_text("mount(new root, MS_RDONLY)", errno));
  // pivot_root(".", "."): the old root ends up stacked under the new one and is detached at once, so no
  // directory of the host stays reachable (the mount is gone, not merely hidden).
  if (::chdir(kStaging) != 0) return broken(errno_text("chdir(new root)", errno));
  if (::syscall(SYS_pivot_root, ".", ".") != 0) return broken(errno_text("pivot_root", errno));
  if (::umount2(".", MNT_DETACH) != 0) return broken(errno_text("umount2(old root)", errno));
  // The working directory must be inside the new root: one left on the host's file system would be a way out.
  const std::string cwd = o.scratch.empty() ? std::string("/") : o.scratch;
  if (::chdir(cwd.c_str()) != 0) return broken(errno_text("chdir(scratch)", errno));
  std::string detail = "pivot_root into a read-only tmpfs; " + std::to_string(trees.size()) +
                       " read-only binds; " + scratch_note + "; no /proc";
  if (!skipped.empty()) detail += "; left out: " + skipped;
  return active(name, detail);
}

}  // namespace spr::harden::root
