// Landlock: the filesystem shrinks to read-only runtime roots plus one writable scratch dir; TCP and signals stay in.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::landlock {
namespace {

// Our own copies of the UAPI: Debian 12's <linux/landlock.h> stops at ABI 2, the kernel here speaks ABI 7.
struct RulesetAttr {
  std::uint64_t handled_access_fs;
  std::uint64_t handled_access_net;  // ABI >= 4
  std::uint64_t scoped;              // ABI >= 6
};
struct __attribute__((packed)) PathBeneathAttr {
  std::uint64_t allowed_access;
  std::int32_t parent_fd;
};

constexpr unsigned kCreateRulesetVersion = 1U << 0;
constexpr int kRulePathBeneath = 1;

constexpr std::uint64_t kExecute = 1ULL << 0;
constexpr std::uint64_t kWriteFile = 1ULL << 1;
constexpr std::uint64_t kReadFile = 1ULL << 2;
constexpr std::uint64_t kReadDir = 1ULL << 3;
constexpr std::uint64_t kRemoveDir = 1ULL << 4;
constexpr std::uint64_t kRemoveFile = 1ULL << 5;
constexpr std::uint64_t kMakeChar = 1ULL << 6;
constexpr std::uint64_t kMakeDir = 1ULL << 7;
constexpr std::uint64_t kMakeReg = 1ULL << 8;
constexpr std::uint64_t kMakeSock = 1ULL << 9;
constexpr std::uint64_t kMakeFifo = 1ULL << 10;
constexpr std::uint64_t kMakeBlock = 1ULL << 11;
constexpr std::uint64_t kMakeSym = 1ULL << 12;
constexpr std::uint64_t kRefer = 1ULL << 13;     // ABI 2
constexpr std::uint64_t kTruncate = 1ULL << 14;  // ABI 3
constexpr std::uint64_t kIoctlDev = 1ULL << 15;  // ABI 5

constexpr std::uint64_t kNetBindTcp = 1ULL << 0;     // ABI 4
constexpr std::uint64_t kNetConnectTcp = 1ULL << 1;  // ABI 4

constexpr std::uint64_t kScopeAbstractUnixSocket = 1ULL << 0;  // ABI 6
constexpr std::uint64_t kScopeSignal = 1ULL << 1;              // ABI 6

// Rights that make sense on a non-directory; the kernel rejects directory rights on a file rule.
constexpr std::uint64_t kFileRights = kExecute | kWriteFile | kReadFile | kTruncate | kIoctlDev;

std::uint64_t handled_fs_for(int abi) {
  std::uint64_t rights = kExecute | kWriteFile | kReadFile | kReadDir | kRemoveDir | kRemoveFile | kMakeChar |
                         kMakeDir | kMakeReg | kMakeSock | kMakeFifo | kMakeBlock | kMakeSym;
  if (abi >= 2) rights |= kRefer;
  if (abi >= 3) rights |= kTruncate;
  if (abi >= 5) rights |= kIoctlDev;
  return rights;
}

// Returns "" when added or skipped silently (missing path), else a note for the report.
std::string add_path_rule(int ruleset, const std::string& path, std::uint64_t rights) {
  const int fd = ::open(path.c_str(), O_PATH | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT || err == ENOTDIR) return "";
    log_errno("open(O_PATH)", path.c_str(), err);
    return "; skipped " + path + ": " + errno_text("open", err);
  }
  struct stat st {};
  if (::fstat(fd, &st) == 0 && !S_ISDIR(st.st_mode)) rights &= kFileRights;
  PathBeneathAttr attr{rights, fd};
  const long rc = ::syscall(SYS_landlock_add_rule, ruleset, kRulePathBeneath, &attr, 0);
  const int err = errno;
  ::close(fd);
  if (rc != 0) {
    log_errno("landlock_add_rule", path.c_str(), err);
    return "; skipped " + path + ": " + errno_text("landlock_add_rule", err);
  }
  return "";
}

}  // namespace

int abi_version() noexcept {
  const long abi = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  return abi < 0 ? 0 : static_cast<int>(abi);
}

LayerStatus apply(const Options& options) {
  const long abi_raw = ::syscall(SYS_landlock_create_ruleset, nullptr, 0, kCreateRulesetVersion);
  if (abi_raw < 0) {
    const int err = errno;  // ENOSYS: not built in; EOPNOTSUPP: built in but not enabled at boot
    return inactive("landlock", "kernel lacks Landlock: " + errno_text("landlock_create_ruleset", err));
  }
  const int abi = static_cast<int>(abi_raw);
  const std::uint64_t handled = handled_fs_for(abi);

  RulesetAttr ruleset_attr{handled, 0, 0};
  std::string detail = "abi " + std::to_string(abi);
  if (options.restrict_network) {
    if (abi >= 4) {
      // Handled with no rule at all: every TCP bind/connect is refused, a second wall behind the net namespace.
      ruleset_attr.handled_access_net = kNetBindTcp | kNetConnectTcp;
      detail += ", tcp bind/connect denied";
    } else {
      detail += ", no tcp rules (abi < 4)";
    }
  }
  if (abi >= 6) {
    // Scoping keeps signals and abstract unix sockets inside this domain: the worker and its forked children
    // can still signal each other, nothing outside (the supervisor, other workers, the host) can be reached.
    ruleset_attr.scoped = kScopeAbstractUnixSocket | kScopeSignal;
    detail += ", signals and abstract unix sockets scoped";
  } else {
    detail += ", signals not scoped (abi < 6)";
  }
  // Sizes up to the kernel's struct are accepted; unknown trailing fields must be zero, which they are.
  const std::size_t attr_size = abi >= 6 ? sizeof(RulesetAttr) : abi >= 4 ? 2 * sizeof(std::uint64_t)
                                                                          : sizeof(std::uint64_t);
  const long ruleset = ::syscall(SYS_landlock_create_ruleset, &ruleset_attr, attr_size, 0U);
  if (ruleset < 0) {
    const int err = errno;
    log_errno("landlock_create_ruleset", "", err);
    return inactive("landlock", errno_text("landlock_create_ruleset", err));
  }
  const int ruleset_fd = static_cast<int>(ruleset);

  // No EXECUTE on the read roots: Landlock checks it only for execve/uselib opens, not for mmap(PROT_EXEC), so
  // dlopen of lib-dynload extensions and libpython work without it (verified on this kernel), and leaving it
  // out makes execve fail here too, should the seccomp layer be off.
  const std::uint64_t read_rights = kReadFile | kReadDir;
  std::string notes;
  std::size_t roots = 0;
  if (options.read_paths != nullptr) {
    for (const std::string& path : *options.read_paths) {
      if (path.empty()) continue;
      notes += add_path_rule(ruleset_fd, path, read_rights & handled);
      ++roots;
    }
  }
  // Scratch: create, rename (REFER, within it), truncate and delete, but no EXECUTE (a dropped binary stays
  // inert), no device nodes, no FIFOs (a rendezvous a later run could open), no sockets to bind, no device
  // ioctls. Seccomp refuses mknod/mknodat as well, for kernels without Landlock.
  const std::uint64_t write_rights = kReadFile | kReadDir | kWriteFile | kRemoveDir | kRemoveFile | kMakeDir |
                                     kMakeReg | kMakeSym | kRefer | kTruncate;
  if (!options.scratch_root.empty()) {
    notes += add_path_rule(ruleset_fd, options.scratch_root, write_rights & handled);
    detail += ", scratch " + options.scratch_root + " read-write";
  } else {
    detail += ", nothing writable";
  }
  detail += ", " + std::to_string(roots) + " read-only roots";

  if (::syscall(SYS_landlock_restrict_self, ruleset_fd, 0U) != 0) {
    const int err = errno;
    log_errno("landlock_restrict_self", "", err);
    ::close(ruleset_fd);
    return inactive("landlock", errno_text("landlock_restrict_self", err));
  }
  ::close(ruleset_fd);
  return active("landlock", detail + notes);
}

}  // namespace spr::harden::landlock
