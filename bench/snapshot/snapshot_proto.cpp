// Snapshot-restore prototype (issue 21, item 5): a warm CPython child whose written pages, registers and
// mappings a ptrace restorer outside it puts back after each run, measured against forking an identical
// warm child per run. Linux x86-64, kernel 6.7+ (userfaultfd's UFFD_FEATURE_WP_ASYNC and /proc/PID/pagemap's
// PAGEMAP_SCAN ioctl). A measurement, not part of the product: nothing in src/ or embed/ uses it.
//
// How it works. The restorer (this program) forks a child that initialises the engine as the fork worker does
// (preload imported, gc.freeze(), the default policy's builtins and streams prebuilt), registers every private
// writable mapping with a write-protect-async userfaultfd, hands that descriptor over and stops itself. That
// stop is the snapshot: the restorer attaches with ptrace, saves the registers, copies every private writable
// page and write-protects them all. A run writes pages (the kernel only clears their write-protect bit: no
// fault reaches user space); when its reply is in, the restorer interrupts the child wherever it is
// (PTRACE_INTERRUPT: nothing is asked of the child), undoes added mappings and heap growth by injecting
// munmap/brk, asks PAGEMAP_SCAN for the pages written or dropped since, writes their clean copies back
// (process_vm_writev), write-protects them again, checks the kernel state it can see, and sets the registers
// back. Anything it cannot put back fails the restore: the child would be replaced by a fresh one.
#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <sys/uio.h>
#include <sys/user.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <Python.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "engine/engine.hpp"

// Newer than Debian 12's kernel headers (6.1).
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1ULL << 13)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1ULL << 15)
#endif

namespace {

using u64 = std::uint64_t;
using Clock = std::chrono::steady_clock;

// PAGEMAP_SCAN (Linux 6.7, include/uapi/linux/fs.h).
struct PageRegion {
  u64 start, end, categories;
};
struct PmScanArg {
  u64 size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted, category_mask,
      category_anyof_mask, return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr u64 kPageWritten = 1 << 1, kPagePresent = 1 << 3;
constexpr u64 kScanCheckWpAsync = 1 << 1;

const std::size_t kPage = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));

// ---------------------------------------------------------------------------------------------
// The wire between restorer and child: one fixed-size message each way (SOCK_SEQPACKET).

enum Kind : std::int32_t {
  kTrivial = 0,  // the quick-start snippet
  kTenMb = 1,    // writes 10 MB (a fresh 10 MB bytes object)
  kState = 2,    // a module attribute counter: 1 on every run if the restore works
  kProbe = 3,    // the child reports what a previous run left behind (Residue bits)
  kHostile = 100,  // + HostileAction: what a snippet with arbitrary memory write could do
};

struct Cmd {
  std::int32_t kind;
};
struct Reply {
  std::int64_t value;  // the run's result (an int), or the probe's Residue bits; -1: the run failed
  std::int64_t cpu_us;  // this child's CPU so far, its reaped children's included
  std::int64_t minflt;  // likewise, minor faults
};

// What a probe finds changed against the snapshot (the child saved the reference values before it).
enum Residue : std::int64_t {
  kResCanary = 1 << 0,     // a .bss variable written by an earlier run
  kResBuffer = 1 << 1,     // the 64 KiB pattern buffer (an own mapping) differs
  kResSigint = 1 << 2,     // SIGINT's handler differs
  kResItimer = 1 << 3,     // ITIMER_REAL is armed
  kResFds = 1 << 4,        // the count of open descriptors differs
  kResCwd = 1 << 5,        // cwd differs
  kResUmask = 1 << 6,      // umask differs
  kResSigmask = 1 << 7,    // the blocked-signal mask differs
  kResPdeathsig = 1 << 8,  // a parent-death signal is set
  kResHeap = 1 << 9,       // sbrk(0) differs
  kResCode = 1 << 10,      // the code of never_called() differs
};

// Code nobody calls, alone at the start of a page: what the code-patching action changes.
extern "C" __attribute__((noinline, aligned(4096), section(".text.spr_patch"))) int spr_never_called(int x) {
  return x * 3 + 1;
}
unsigned code_sum() {
  const auto* p = reinterpret_cast<const volatile unsigned char*>(&spr_never_called);
  unsigned sum = 0;
  for (int i = 0; i < 64; ++i) sum = sum * 31 + p[i];
  return sum;
}

enum HostileAction : std::int32_t {
  kWriteCanary, kDontneedBuffer, kRemapBuffer, kMprotectBuffer, kLeakFd, kSigintHandler, kSigusr1Handler,
  kArmItimer, kBlockSignal, kUmask, kChdir, kLowerRlimit, kPdeathsig, kSetName, kSeccompFilter,
  kPendingSignal, kJunkOnChannel, kGrowHeap, kNewMapping, kFreeBuffer, kPatchCode, kHostileCount
};
const char* const kHostileNames[kHostileCount] = {
    "write a clean .bss page", "MADV_DONTNEED a clean page", "munmap + mmap a mapping in place",
    "mprotect a mapping read-only", "leave a descriptor open", "another SIGINT handler (still caught)",
    "a SIGUSR1 handler", "arm ITIMER_REAL", "block SIGTERM", "umask(0)", "chdir(\"/tmp\")",
    "lower RLIMIT_NOFILE", "PR_SET_PDEATHSIG", "PR_SET_NAME", "add a seccomp filter (allow all)",
    "leave a signal pending (blocked)", "junk on the channel after the reply", "grow the heap with sbrk",
    "leave a new anonymous mapping", "MADV_FREE a clean page, then reclaim",
    "patch code (mprotect RWX, write, back to RX)"};

bool send_all(int fd, const void* p, std::size_t n) {
  return send(fd, p, n, MSG_NOSIGNAL) == static_cast<ssize_t>(n);
}

std::int64_t cpu_us_now(std::int64_t* minflt) {
  struct rusage s {
  }, c{};
  getrusage(RUSAGE_SELF, &s);
  getrusage(RUSAGE_CHILDREN, &c);
  auto us = [](const timeval& t) { return static_cast<std::int64_t>(t.tv_sec) * 1000000 + t.tv_usec; };
  *minflt = s.ru_minflt + c.ru_minflt;
  return us(s.ru_utime) + us(s.ru_stime) + us(c.ru_utime) + us(c.ru_stime);
}

// ---------------------------------------------------------------------------------------------
// The warm child.

volatile long g_canary = 0;  // .bss: 0 in the snapshot
unsigned char* g_buffer = nullptr;  // its own 64 KiB mapping, 0x5a throughout in the snapshot
constexpr std::size_t kBufferSize = 64 * 1024;
struct Reference {  // the child's own view of the snapshot, for the probe
  struct sigaction sigint {};
  int fds = 0;
  char cwd[256] = {};
  mode_t umask = 0;
  sigset_t mask{};
  void* brk = nullptr;
  unsigned code = 0;
} g_ref;

int count_fds() {
  DIR* d = opendir("/proc/self/fd");
  if (!d) return -1;
  int n = 0;
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.') ++n;
  closedir(d);
  return n - 1;  // opendir's own
}

void save_reference() {
  sigaction(SIGINT, nullptr, &g_ref.sigint);
  g_ref.fds = count_fds();
  if (!getcwd(g_ref.cwd, sizeof g_ref.cwd)) g_ref.cwd[0] = 0;
  g_ref.umask = umask(022);
  umask(g_ref.umask);
  sigprocmask(SIG_BLOCK, nullptr, &g_ref.mask);
  g_ref.brk = sbrk(0);
  g_ref.code = code_sum();
}

std::int64_t probe() {
  std::int64_t r = 0;
  if (g_canary != 0) r |= kResCanary;
  for (std::size_t i = 0; i < kBufferSize; ++i)
    if (g_buffer[i] != 0x5a) {
      r |= kResBuffer;
      break;
    }
  struct sigaction now {};
  sigaction(SIGINT, nullptr, &now);
  if (now.sa_handler != g_ref.sigint.sa_handler || now.sa_flags != g_ref.sigint.sa_flags) r |= kResSigint;
  itimerval it{};
  getitimer(ITIMER_REAL, &it);
  if (it.it_value.tv_sec || it.it_value.tv_usec) r |= kResItimer;
  if (count_fds() != g_ref.fds) r |= kResFds;
  char cwd[256];
  if (!getcwd(cwd, sizeof cwd) || std::strcmp(cwd, g_ref.cwd) != 0) r |= kResCwd;
  const mode_t m = umask(022);
  umask(m);
  if (m != g_ref.umask) r |= kResUmask;
  sigset_t mask;
  sigprocmask(SIG_BLOCK, nullptr, &mask);
  for (int s = 1; s < 32; ++s)
    if (sigismember(&mask, s) != sigismember(&g_ref.mask, s)) r |= kResSigmask;
  int pd = 0;
  prctl(PR_GET_PDEATHSIG, &pd);
  if (pd != 0) r |= kResPdeathsig;
  if (sbrk(0) != g_ref.brk) r |= kResHeap;
  if (code_sum() != g_ref.code) r |= kResCode;
  return r;
}

void on_signal(int) {}

// What a snippet that owns its process's memory could do with the calls the fork worker's filter allows
// (and a few it refuses, to see what the restorer alone would catch).
bool hostile(int action) {
  switch (action) {
    case kWriteCanary: g_canary = 42; return true;
    case kDontneedBuffer: return madvise(g_buffer, kPage, MADV_DONTNEED) == 0;
    case kRemapBuffer: {
      if (munmap(g_buffer, kBufferSize) != 0) return false;
      void* p = mmap(g_buffer, kBufferSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
      if (p == MAP_FAILED) return false;
      std::memset(g_buffer, 0x77, kBufferSize);
      return true;
    }
    case kMprotectBuffer: return mprotect(g_buffer, kPage, PROT_READ) == 0;
    case kLeakFd: return open("/dev/null", O_RDONLY) >= 0;
    case kSigintHandler: {
      struct sigaction sa {};
      sa.sa_handler = on_signal;
      return sigaction(SIGINT, &sa, nullptr) == 0;
    }
    case kSigusr1Handler: {
      struct sigaction sa {};
      sa.sa_handler = on_signal;
      return sigaction(SIGUSR1, &sa, nullptr) == 0;
    }
    case kArmItimer: {
      itimerval it{};
      it.it_value.tv_sec = 3600;
      return setitimer(ITIMER_REAL, &it, nullptr) == 0;
    }
    case kBlockSignal: {
      sigset_t s;
      sigemptyset(&s);
      sigaddset(&s, SIGTERM);
      return sigprocmask(SIG_BLOCK, &s, nullptr) == 0;
    }
    case kUmask: umask(0); return true;
    case kChdir: return chdir("/tmp") == 0;
    case kLowerRlimit: {
      rlimit r{};
      getrlimit(RLIMIT_NOFILE, &r);
      r.rlim_cur = std::min<rlim_t>(r.rlim_cur, 100);
      return setrlimit(RLIMIT_NOFILE, &r) == 0;
    }
    case kPdeathsig: return prctl(PR_SET_PDEATHSIG, SIGKILL) == 0;
    case kSetName: return prctl(PR_SET_NAME, "changed") == 0;
    case kSeccompFilter: {
      // A filter of one instruction: SECCOMP_RET_ALLOW. It can never be removed.
      struct {
        unsigned short code;
        unsigned char jt, jf;
        unsigned int k;
      } insn{0x06, 0, 0, 0x7fff0000U};
      struct {
        unsigned short len;
        void* filter;
      } prog{1, &insn};
      if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return false;
      return prctl(PR_SET_SECCOMP, 2 /* SECCOMP_MODE_FILTER */, &prog, 0, 0) == 0;
    }
    case kPendingSignal: {
      sigset_t s;
      sigemptyset(&s);
      sigaddset(&s, SIGUSR2);
      return sigprocmask(SIG_BLOCK, &s, nullptr) == 0 && kill(getpid(), SIGUSR2) == 0;
    }
    case kJunkOnChannel: return true;  // handled by the caller: a second message after the reply
    case kGrowHeap: {
      void* p = sbrk(1 << 20);
      if (p == reinterpret_cast<void*>(-1)) return false;
      std::memset(p, 1, 1 << 20);
      return true;
    }
    case kNewMapping: {
      void* p = mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (p == MAP_FAILED) return false;
      std::memset(p, 1, 1 << 20);
      return true;
    }
    case kFreeBuffer: return madvise(g_buffer, kPage, MADV_FREE) == 0;
    case kPatchCode: {
      auto* page = reinterpret_cast<unsigned char*>(reinterpret_cast<std::uintptr_t>(&spr_never_called));
      if (mprotect(page, kPage, PROT_READ | PROT_WRITE | PROT_EXEC) != 0) return false;
      page[0] ^= 0xff;
      return mprotect(page, kPage, PROT_READ | PROT_EXEC) == 0;
    }
    default: return false;
  }
}

const char* const kSnippets[] = {
    "import math\nresult = math.sqrt(input_data['x'])",
    "b = b'\\x01' * 10_000_000\nresult = len(b) // 1_000_000",
    "import json\njson.spr_probe = getattr(json, 'spr_probe', 0) + 1\nresult = json.spr_probe",
};

std::int64_t run_snippet(int kind) {
  spr::protocol::Request req;
  req.id = 1;
  req.code = kSnippets[kind];
  req.input_json = "{\"x\": 81}";
  req.policy.isolation = spr::Isolation::fork;
  spr::RunResult r = spr::embed::run(req);
  if (!r.ok || !r.result.is_number()) return -1;
  return static_cast<std::int64_t>(std::llround(r.result.get<double>()));
}

// A forked run as the fork worker makes it: the answer comes back once the child is reaped.
std::int64_t fork_run(int kind) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return -1;
  PyOS_BeforeFork();
  const pid_t pid = fork();
  if (pid == 0) {
    PyOS_AfterFork_Child();
    const std::int64_t v = run_snippet(kind);
    ssize_t w = write(p[1], &v, sizeof v);
    (void)w;
    _exit(0);
  }
  PyOS_AfterFork_Parent();
  close(p[1]);
  std::int64_t v = -1;
  if (pid < 0 || read(p[0], &v, sizeof v) != static_cast<ssize_t>(sizeof v)) v = -1;
  close(p[0]);
  if (pid > 0)
    while (waitpid(pid, nullptr, 0) < 0 && errno == EINTR) {
    }
  return v;
}

// Registers every private writable mapping with a write-protect-async userfaultfd. Returns it or -1.
int register_wp() {
  const int uffd = static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK | UFFD_USER_MODE_ONLY));
  if (uffd < 0) {
    std::perror("userfaultfd");
    return -1;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED;
  if (ioctl(uffd, UFFDIO_API, &api) != 0) {
    std::perror("UFFDIO_API (WP_ASYNC | WP_UNPOPULATED)");
    return -1;
  }
  FILE* f = std::fopen("/proc/self/maps", "r");
  if (!f) return -1;
  char line[512];
  std::vector<std::pair<u64, u64>> ranges;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long a = 0, b = 0;
    char perms[5] = {};
    if (std::sscanf(line, "%lx-%lx %4s", &a, &b, perms) == 3 && std::strcmp(perms, "rw-p") == 0)
      ranges.emplace_back(a, b);
  }
  std::fclose(f);
  for (auto [a, b] : ranges) {
    uffdio_register reg{};
    reg.range.start = a;
    reg.range.len = b - a;
    reg.mode = UFFDIO_REGISTER_MODE_WP;
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) != 0) {
      std::fprintf(stderr, "UFFDIO_REGISTER %lx-%lx: %s\n", static_cast<unsigned long>(a),
                   static_cast<unsigned long>(b), std::strerror(errno));
      return -1;
    }
  }
  return uffd;
}

bool send_fd(int sock, int fd) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  return sendmsg(sock, &msg, MSG_NOSIGNAL) == 1;
}

int recv_fd(int sock) {
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctl;
  msg.msg_controllen = sizeof ctl;
  if (recvmsg(sock, &msg, MSG_CMSG_CLOEXEC) != 1) return -1;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd = -1;
  std::memcpy(&fd, CMSG_DATA(c), sizeof fd);
  return fd;
}

[[noreturn]] void warm_child(int sock, bool snapshot) {
  // Nothing of the restorer's (another child's userfaultfd, its /proc descriptors) stays in reach.
  if (sock > 3) close_range(3, static_cast<unsigned>(sock) - 1, 0);
  close_range(static_cast<unsigned>(sock) + 1, ~0U, 0);
  std::string err = spr::embed::initialize(spr::embed::EngineOptions{});
  if (!err.empty()) {
    std::fprintf(stderr, "initialize: %s\n", err.c_str());
    _exit(2);
  }
  if (!spr::embed::prebuild_run_objects(spr::RunnerPolicy{}, true)) _exit(2);
  void* b = mmap(nullptr, kBufferSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (b == MAP_FAILED) _exit(2);
  g_buffer = static_cast<unsigned char*>(b);
  std::memset(g_buffer, 0x5a, kBufferSize);
  if (snapshot) {
    const int uffd = register_wp();
    if (uffd < 0 || !send_fd(sock, uffd)) _exit(3);
    close(uffd);
    char go = 0;
    if (recv(sock, &go, 1, 0) != 1) _exit(3);
    save_reference();
    kill(getpid(), SIGSTOP);  // the snapshot: every restore sets the registers back to just after this call
  }
  for (;;) {
    Cmd c{};
    if (recv(sock, &c, sizeof c, 0) != static_cast<ssize_t>(sizeof c)) _exit(0);
    Reply r{};
    if (c.kind >= kHostile) {
      r.value = hostile(c.kind - kHostile) ? 0 : -1;
      if (r.value == 0 && c.kind == kHostile + kFreeBuffer) r.value = static_cast<std::int64_t>(reinterpret_cast<std::uintptr_t>(g_buffer));
    } else if (c.kind == kProbe) {
      r.value = probe();
    } else {
      r.value = snapshot ? run_snippet(c.kind) : fork_run(c.kind);
    }
    r.cpu_us = cpu_us_now(&r.minflt);
    if (!send_all(sock, &r, sizeof r)) _exit(0);
    if (c.kind == kHostile + kJunkOnChannel) send_all(sock, &r, sizeof r);
  }
}

// ---------------------------------------------------------------------------------------------
// The restorer.

struct Vma {
  u64 start = 0, end = 0;
  std::string perms, rest;
};

std::vector<Vma> parse_maps(const std::string& text) {
  std::vector<Vma> out;
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t nl = text.find('\n', pos);
    if (nl == std::string::npos) nl = text.size();
    const std::string line = text.substr(pos, nl - pos);
    pos = nl + 1;
    unsigned long a = 0, b = 0;
    char perms[5] = {};
    int consumed = 0;
    if (std::sscanf(line.c_str(), "%lx-%lx %4s %n", &a, &b, perms, &consumed) < 3) continue;
    out.push_back(Vma{a, b, perms, line.substr(static_cast<std::size_t>(consumed))});
  }
  return out;
}

bool read_at0(int fd, std::string& out) {
  out.clear();
  char buf[65536];
  off_t off = 0;
  for (;;) {
    const ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (n == 0) return true;
    out.append(buf, static_cast<std::size_t>(n));
    off += n;
  }
}

// The lines of /proc/PID/status the restorer compares (the rest move on their own: sizes, switches,
// SigQ which counts the whole user's queued signals).
std::string status_subset(const std::string& status) {
  static const char* const keys[] = {"Name:", "Umask:", "Threads:", "SigPnd:", "ShdPnd:", "SigBlk:",
                                     "SigIgn:", "SigCgt:", "CapInh:", "CapPrm:", "CapEff:", "CapBnd:", "CapAmb:",
                                     "NoNewPrivs:", "Seccomp:", "Seccomp_filters:", "VmLck:", "Cpus_allowed:"};
  std::string out;
  std::size_t pos = 0;
  while (pos < status.size()) {
    std::size_t nl = status.find('\n', pos);
    if (nl == std::string::npos) nl = status.size();
    for (const char* k : keys)
      if (status.compare(pos, std::strlen(k), k) == 0) {
        out.append(status, pos, nl - pos + 1);
        break;
      }
    pos = nl + 1;
  }
  return out;
}

std::string fd_table(pid_t pid) {
  const std::string dir = "/proc/" + std::to_string(pid) + "/fd";
  std::vector<std::string> rows;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      if (e->d_name[0] == '.') continue;
      char target[256];
      const ssize_t n = readlink((dir + "/" + e->d_name).c_str(), target, sizeof target - 1);
      rows.push_back(std::string(e->d_name) + ">" + (n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?"));
    }
    closedir(d);
  }
  std::sort(rows.begin(), rows.end());
  std::string out;
  for (auto& r : rows) out += r + "\n";
  return out;
}

std::string cwd_of(pid_t pid) {
  char target[512];
  const ssize_t n = readlink(("/proc/" + std::to_string(pid) + "/cwd").c_str(), target, sizeof target - 1);
  return n > 0 ? std::string(target, static_cast<std::size_t>(n)) : "?";
}

struct Timing {  // one restore, in microseconds
  double interrupt = 0, maps = 0, scan = 0, write = 0, protect = 0, kernel = 0, regs = 0, total = 0;
  double resets = 0, resets_last = 0;
  std::size_t pages = 0, regions = 0, injected = 0, discarded = 0;
};

double us(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::micro>(b - a).count(); }

class Restorer {
 public:
  ~Restorer() { stop(); }

  bool start() {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return false;
    pid_ = fork();
    if (pid_ == 0) {
      close(sv[0]);
      warm_child(sv[1], true);
    }
    close(sv[1]);
    sock_ = sv[0];
    if (pid_ < 0) return false;
    uffd_ = recv_fd(sock_);
    if (uffd_ < 0) return fail("no userfaultfd from the child");
    if (ptrace(PTRACE_SEIZE, pid_, nullptr, reinterpret_cast<void*>(static_cast<std::uintptr_t>(PTRACE_O_EXITKILL))) != 0)
      return fail("PTRACE_SEIZE");
    const char go = 1;
    if (!send_all(sock_, &go, 1)) return fail("go");
    int st = 0;
    if (waitpid(pid_, &st, 0) != pid_ || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGSTOP || (st >> 16) != 0)
      return fail("the child did not stop at the snapshot");
    // Registers and extended state at the return from kill(): the point every restore goes back to.
    if (ptrace(PTRACE_GETREGS, pid_, nullptr, &regs_) != 0) return fail("PTRACE_GETREGS");
    regs_.orig_rax = static_cast<unsigned long long>(-1);  // not in a system call: no restart on resume
    xstate_.resize(16384);
    iovec xi{xstate_.data(), xstate_.size()};
    if (ptrace(PTRACE_GETREGSET, pid_, reinterpret_cast<void*>(static_cast<std::uintptr_t>(NT_X86_XSTATE)), &xi) != 0)
      return fail("PTRACE_GETREGSET xstate");
    xstate_.resize(xi.iov_len);
    syscall_ip_ = regs_.rip - 2;  // kill()'s `syscall` instruction, reused to inject calls
    unsigned char insn[2] = {};
    iovec li{insn, 2}, ri{reinterpret_cast<void*>(syscall_ip_), 2};
    if (process_vm_readv(pid_, &li, 1, &ri, 1, 0) != 2 || insn[0] != 0x0f || insn[1] != 0x05)
      return fail("no syscall instruction before the snapshot point");

    if (!snapshot_invisible()) return false;
    const std::string proc = "/proc/" + std::to_string(pid_);
    maps_fd_ = open((proc + "/maps").c_str(), O_RDONLY | O_CLOEXEC);
    status_fd_ = open((proc + "/status").c_str(), O_RDONLY | O_CLOEXEC);
    limits_fd_ = open((proc + "/limits").c_str(), O_RDONLY | O_CLOEXEC);
    pagemap_fd_ = open((proc + "/pagemap").c_str(), O_RDONLY | O_CLOEXEC);
    if (maps_fd_ < 0 || status_fd_ < 0 || limits_fd_ < 0 || pagemap_fd_ < 0) return fail("open /proc/PID files");
    if (!read_at0(maps_fd_, maps_)) return fail("read maps");
    vmas_ = parse_maps(maps_);
    std::string s;
    if (!read_at0(status_fd_, s) || !read_at0(limits_fd_, limits_)) return fail("read status/limits");
    status_ = status_subset(s);
    snap_caught_ = status_mask(s, "SigCgt:");
    snap_ignored_ = status_mask(s, "SigIgn:");
    snap_blocked_ = status_mask(s, "SigBlk:");
    fds_ = fd_table(pid_);
    cwd_ = cwd_of(pid_);

    // The clean copy: every private writable page (reading maps the zero page where none was yet, so
    // after this every such page is present, and a page found absent later was dropped by the run).
    std::size_t total = 0;
    for (const Vma& v : vmas_)
      if (v.perms == "rw-p") total += v.end - v.start;
    clean_.assign(total, 0);
    std::size_t off = 0;
    for (const Vma& v : vmas_) {
      if (v.perms != "rw-p") continue;
      rw_.push_back({v.start, v.end, off});
      iovec l{clean_.data() + off, v.end - v.start}, r{reinterpret_cast<void*>(v.start), v.end - v.start};
      if (process_vm_readv(pid_, &l, 1, &r, 1, 0) != static_cast<ssize_t>(v.end - v.start))
        return fail("copying " + v.rest);
      off += v.end - v.start;
    }
    for (const Rw& r : rw_)
      if (!protect(r.start, r.end)) return fail("UFFDIO_WRITEPROTECT");
    clean_bytes_ = total;
    if (ptrace(PTRACE_CONT, pid_, nullptr, nullptr) != 0) return fail("PTRACE_CONT");
    return true;
  }

  void stop() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    for (int* fd : {&sock_, &uffd_, &maps_fd_, &status_fd_, &limits_fd_, &pagemap_fd_})
      if (*fd >= 0) {
        close(*fd);
        *fd = -1;
      }
  }

  // One request: false if the child did not answer.
  bool ask(Cmd c, Reply& r) {
    if (!send_all(sock_, &c, sizeof c)) return false;
    return recv(sock_, &r, sizeof r, 0) == static_cast<ssize_t>(sizeof r);
  }

  // Puts the child back to the snapshot. Returns "" or why it cannot (the child must then be replaced).
  std::string restore(Timing& t, bool verify) {
    const auto t0 = Clock::now();
    if (ptrace(PTRACE_INTERRUPT, pid_, nullptr, nullptr) != 0) return errno_text("PTRACE_INTERRUPT");
    int st = 0;
    if (waitpid(pid_, &st, 0) != pid_ || !WIFSTOPPED(st)) return "the child did not stop";
    if ((st >> 16) != PTRACE_EVENT_STOP) {
      // A signal-delivery stop came first (a signal the run raised): suppress it, take the interrupt.
      if (ptrace(PTRACE_CONT, pid_, nullptr, nullptr) != 0) return errno_text("PTRACE_CONT");
      if (waitpid(pid_, &st, 0) != pid_ || !WIFSTOPPED(st) || (st >> 16) != PTRACE_EVENT_STOP)
        return "stopped for signal " + std::to_string(WSTOPSIG(st)) + " instead of the interrupt";
    }
    // Anything the run left on the channel is discarded before the next request is written.
    std::string problems;
    Reply junk{};
    while (recv(sock_, &junk, sizeof junk, MSG_DONTWAIT) > 0) ++t.discarded;
    // Kernel state no /proc file shows, set back unconditionally (each a call injected into the child).
    if (std::string why = reset_invisible(t); !why.empty()) return why;
    const auto t1 = Clock::now();

    // Mappings: added ones are unmapped, a grown heap is shrunk, anything else is beyond repair.
    std::string maps;
    if (!read_at0(maps_fd_, maps)) return errno_text("read maps");
    if (maps != maps_)
      if (std::string why = reconcile_maps(maps, t); !why.empty()) return problems + why;
    const auto t2 = Clock::now();

    // Pages written, or dropped (no longer present), since the snapshot. CHECK_WPASYNC fails the scan
    // if a mapping is no longer registered (replaced in place: its writes would go unseen).
    dirty_.clear();
    for (const Rw& r : rw_) {
      u64 from = r.start;
      while (from < r.end) {
        PmScanArg a{};
        a.size = sizeof a;
        a.flags = kScanCheckWpAsync;
        a.start = from;
        a.end = r.end;
        a.vec = reinterpret_cast<u64>(vec_);
        a.vec_len = kVec;
        a.category_inverted = kPagePresent;
        a.category_anyof_mask = kPageWritten | kPagePresent;
        a.return_mask = kPageWritten | kPagePresent;
        const long n = ioctl(pagemap_fd_, kPagemapScan, &a);
        if (n < 0) return problems + errno_text("PAGEMAP_SCAN (a mapping lost its write-protect registration?)");
        for (long i = 0; i < n; ++i) dirty_.push_back({vec_[i].start, vec_[i].end, r.start, r.offset});
        if (a.walk_end <= from) return problems + "PAGEMAP_SCAN made no progress";
        from = a.walk_end;
      }
    }
    const auto t3 = Clock::now();

    // The clean copies back, in batches of IOV_MAX.
    std::vector<iovec> local, remote;
    std::size_t bytes = 0;
    for (const Dirty& d : dirty_) {
      local.push_back({clean_.data() + d.offset + (d.start - d.base), d.end - d.start});
      remote.push_back({reinterpret_cast<void*>(d.start), d.end - d.start});
      bytes += d.end - d.start;
    }
    for (std::size_t i = 0; i < local.size(); i += 1024) {
      const std::size_t n = std::min<std::size_t>(1024, local.size() - i);
      std::size_t want = 0;
      for (std::size_t k = 0; k < n; ++k) want += local[i + k].iov_len;
      if (process_vm_writev(pid_, &local[i], n, &remote[i], n, 0) != static_cast<ssize_t>(want))
        return problems + errno_text("process_vm_writev");
    }
    t.pages += bytes / kPage;
    t.regions += dirty_.size();
    const auto t4 = Clock::now();
    for (const Dirty& d : dirty_)
      if (!protect(d.start, d.end)) return problems + errno_text("UFFDIO_WRITEPROTECT");
    const auto t5 = Clock::now();

    // The kernel state /proc shows.
    std::string s, limits;
    if (!read_at0(status_fd_, s) || !read_at0(limits_fd_, limits)) return problems + errno_text("read status");
    if (status_subset(s) != status_) problems += "status differs: " + diff_lines(status_, status_subset(s)) + "; ";
    if (limits != limits_) problems += "rlimits differ; ";
    if (fd_table(pid_) != fds_) problems += "descriptors differ; ";
    if (cwd_of(pid_) != cwd_) problems += "cwd differs; ";
    const auto t6 = Clock::now();

    if (verify && problems.empty()) problems += verify_memory();

    if (ptrace(PTRACE_SETREGS, pid_, nullptr, &regs_) != 0) return problems + errno_text("PTRACE_SETREGS");
    iovec xi{xstate_.data(), xstate_.size()};
    if (ptrace(PTRACE_SETREGSET, pid_, reinterpret_cast<void*>(static_cast<std::uintptr_t>(NT_X86_XSTATE)), &xi) != 0)
      return problems + errno_text("PTRACE_SETREGSET");
    if (!problems.empty()) return problems;
    if (ptrace(PTRACE_CONT, pid_, nullptr, nullptr) != 0) return errno_text("PTRACE_CONT");
    const auto t7 = Clock::now();
    t.interrupt += us(t0, t1) - t.resets_last;
    t.resets += t.resets_last;
    t.maps += us(t1, t2);
    t.scan += us(t2, t3);
    t.write += us(t3, t4);
    t.protect += us(t4, t5);
    t.kernel += us(t5, t6);
    t.regs += us(t6, t7);
    t.total += us(t0, t7);
    return "";
  }

  pid_t pid() const { return pid_; }
  std::size_t clean_bytes() const { return clean_bytes_; }
  std::size_t rw_mappings() const { return rw_.size(); }
  const std::string& error() const { return error_; }

 private:
  struct Rw {
    u64 start, end;
    std::size_t offset;
  };
  struct Dirty {
    u64 start, end, base;
    std::size_t offset;
  };
  static constexpr std::size_t kVec = 512;

  bool fail(const std::string& what) {
    error_ = what + (errno ? std::string(": ") + std::strerror(errno) : "");
    return false;
  }
  static std::string errno_text(const char* what) { return std::string(what) + ": " + std::strerror(errno); }

  static std::string diff_lines(const std::string& a, const std::string& b) {
    std::string out;
    std::size_t pa = 0, pb = 0;
    while (pa < a.size() && pb < b.size()) {
      const std::size_t na = a.find('\n', pa), nb = b.find('\n', pb);
      const std::string la = a.substr(pa, na - pa), lb = b.substr(pb, nb - pb);
      if (la != lb) out += "[" + lb + "]";
      pa = na + 1;
      pb = nb + 1;
    }
    return out;
  }

  static u64 status_mask(const std::string& status, const char* key) {
    const std::size_t at = status.find(key);
    return at == std::string::npos ? 0 : std::strtoull(status.c_str() + at + std::strlen(key), nullptr, 16);
  }

  // A scratch area for injected calls' arguments: the lowest page of the stack mapping, far below the
  // live stack (every restore writes it back). The snapshot's signal actions, read by injected calls.
  bool snapshot_invisible() {
    std::string maps;
    const int fd = open(("/proc/" + std::to_string(pid_) + "/maps").c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0 || !read_at0(fd, maps)) return fail("read maps");
    close(fd);
    for (const Vma& v : parse_maps(maps))
      if (v.rest.find("[stack]") != std::string::npos) scratch_ = v.start;
    if (!scratch_ || regs_.rsp < scratch_ + 16384) return fail("no scratch page below the stack");
    for (int sig = 1; sig <= 64; ++sig) {
      if (sig == SIGKILL || sig == SIGSTOP) continue;
      if (inject(SYS_rt_sigaction, static_cast<u64>(sig), 0, scratch_ + 32 * static_cast<u64>(sig), 8) != 0)
        return fail("reading signal action " + std::to_string(sig));
    }
    iovec l{actions_, sizeof actions_}, r{reinterpret_cast<void*>(scratch_), sizeof actions_};
    if (process_vm_readv(pid_, &l, 1, &r, 1, 0) != static_cast<ssize_t>(sizeof actions_))
      return fail("reading signal actions");
    return true;
  }

  // Signal actions (a handler's address is not in /proc), the blocked mask, the three interval timers
  // and the parent-death signal, put back by injected calls. Their arguments go in the scratch page,
  // which the page restore then writes back too.
  std::string reset_invisible(Timing& t) {
    const auto t0 = Clock::now();
    std::string status;
    if (!read_at0(status_fd_, status)) return errno_text("read status");
    const u64 caught = status_mask(status, "SigCgt:"), ignored = status_mask(status, "SigIgn:");
    const u64 touch = snap_caught_ | caught | (snap_ignored_ ^ ignored);
    struct {
      u64 mask;
      itimerval zero;
    } extra{snap_blocked_, {}};
    iovec l[2] = {{actions_, sizeof actions_}, {&extra, sizeof extra}};
    iovec r{reinterpret_cast<void*>(scratch_), sizeof actions_ + sizeof extra};
    if (process_vm_writev(pid_, l, 2, &r, 1, 0) != static_cast<ssize_t>(r.iov_len)) return errno_text("scratch");
    const u64 mask_at = scratch_ + sizeof actions_, zero_at = mask_at + sizeof(u64);
    long bad = 0;
    for (int sig = 1; sig <= 64; ++sig)
      if (touch & (1ULL << (sig - 1))) {
        bad |= inject(SYS_rt_sigaction, static_cast<u64>(sig), scratch_ + 32 * static_cast<u64>(sig), 0, 8);
        ++t.injected;
      }
    if (status_mask(status, "SigBlk:") != snap_blocked_) {
      bad |= inject(SYS_rt_sigprocmask, SIG_SETMASK, mask_at, 0, 8);
      ++t.injected;
    }
    for (u64 which : {ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF}) bad |= inject(SYS_setitimer, which, zero_at, 0);
    bad |= inject(SYS_prctl, PR_SET_PDEATHSIG, 0);
    t.injected += 4;
    t.resets_last = us(t0, Clock::now());
    return bad ? "an injected reset failed" : "";
  }

  bool protect(u64 start, u64 end) {
    uffdio_writeprotect wp{};
    wp.range.start = start;
    wp.range.len = end - start;
    wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
    return ioctl(uffd_, UFFDIO_WRITEPROTECT, &wp) == 0;
  }

  // Runs one system call in the stopped child at kill()'s syscall instruction (it passes through the
  // child's seccomp filter like any other). Returns the kernel's result.
  long inject(long nr, u64 a1, u64 a2 = 0, u64 a3 = 0, u64 a4 = 0, u64 a5 = 0, u64 a6 = 0) {
    user_regs_struct r = regs_;
    r.rip = syscall_ip_;
    r.rax = static_cast<u64>(nr);
    r.rdi = a1;
    r.rsi = a2;
    r.rdx = a3;
    r.r10 = a4;
    r.r8 = a5;
    r.r9 = a6;
    if (ptrace(PTRACE_SETREGS, pid_, nullptr, &r) != 0) return -errno;
    if (ptrace(PTRACE_SINGLESTEP, pid_, nullptr, nullptr) != 0) return -errno;
    int st = 0;
    if (waitpid(pid_, &st, 0) != pid_ || !WIFSTOPPED(st) || WSTOPSIG(st) != SIGTRAP) return -EIO;
    if (ptrace(PTRACE_GETREGS, pid_, nullptr, &r) != 0) return -errno;
    return static_cast<long>(r.rax);
  }

  // Adjacent anonymous mappings with the same protection are one range (the kernel may or may not
  // have merged them): the normal form two maps are compared in.
  static std::vector<Vma> normal(std::vector<Vma> v) {
    std::vector<Vma> out;
    for (Vma& x : v) {
      if (!out.empty() && out.back().end == x.start && out.back().perms == x.perms && out.back().rest == x.rest &&
          anonymous(x))
        out.back().end = x.end;
      else
        out.push_back(std::move(x));
    }
    return out;
  }
  static bool anonymous(const Vma& v) { return v.rest.find_first_not_of("0: ") == std::string::npos; }

  // Parts of `a` that no range of `b` covers.
  static std::vector<std::pair<u64, u64>> uncovered(const std::vector<Vma>& a, const std::vector<Vma>& b) {
    std::vector<std::pair<u64, u64>> out;
    for (const Vma& x : a) {
      u64 from = x.start;
      for (const Vma& y : b) {
        if (y.end <= from || y.start >= x.end) continue;
        if (y.start > from) out.emplace_back(from, y.start);
        from = std::max(from, y.end);
      }
      if (from < x.end) out.emplace_back(from, x.end);
    }
    return out;
  }

  const Vma* heap(const std::vector<Vma>& v) const {
    for (const Vma& x : v)
      if (x.rest.find("[heap]") != std::string::npos) return &x;
    return nullptr;
  }

  // Puts the mappings back: the heap's end by brk, added ranges unmapped, removed anonymous writable
  // ranges mapped again (and registered for write-protect; the page scan then finds them absent and
  // writes them whole). Anything else (protection changed, file mappings replaced) is refused.
  std::string reconcile_maps(std::string maps, Timing& t) {
    const Vma* h0 = heap(vmas_);
    if (const Vma* h = heap(parse_maps(maps)); h0 && h && h->end != h0->end) {
      const long rc = inject(SYS_brk, h0->end);
      ++t.injected;
      if (static_cast<u64>(rc) != h0->end) return "brk back to the snapshot's failed";
      if (!read_at0(maps_fd_, maps)) return errno_text("read maps");
    }
    const std::vector<Vma> now = normal(parse_maps(maps)), then = normal(vmas_);
    static const bool debug = std::getenv("SPR_SNAPSHOT_DEBUG") != nullptr;
    for (auto [a, b] : uncovered(now, then)) {
      if (debug) std::fprintf(stderr, "added %lx-%lx (%lu KiB)\n", static_cast<unsigned long>(a), static_cast<unsigned long>(b), static_cast<unsigned long>((b - a) / 1024));
      const long rc = inject(SYS_munmap, a, b - a);
      ++t.injected;
      if (rc != 0) return "munmap of an added mapping failed (" + std::to_string(rc) + ")";
    }
    for (auto [a, b] : uncovered(then, now)) {
      const Vma* owner = nullptr;
      for (const Vma& x : then)
        if (x.start <= a && b <= x.end) owner = &x;
      if (debug) std::fprintf(stderr, "removed %lx-%lx (%lu KiB)\n", static_cast<unsigned long>(a), static_cast<unsigned long>(b), static_cast<unsigned long>((b - a) / 1024));
      if (!owner || owner->perms != "rw-p" || !anonymous(*owner))
        return "a mapping of the snapshot was removed: " + (owner ? owner->perms + " " + owner->rest : "?");
      const long rc = inject(SYS_mmap, a, b - a, PROT_READ | PROT_WRITE,
                             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, static_cast<u64>(-1), 0);
      ++t.injected;
      if (static_cast<u64>(rc) != a) return "mapping a removed range again failed (" + std::to_string(rc) + ")";
      uffdio_register reg{};
      reg.range.start = a;
      reg.range.len = b - a;
      reg.mode = UFFDIO_REGISTER_MODE_WP;
      if (ioctl(uffd_, UFFDIO_REGISTER, &reg) != 0) return errno_text("UFFDIO_REGISTER of a range mapped again");
    }
    if (!read_at0(maps_fd_, maps)) return errno_text("read maps");
    const std::vector<Vma> after = normal(parse_maps(maps));
    if (after.size() != then.size()) return "mappings still differ after munmap/mmap/brk";
    for (std::size_t i = 0; i < after.size(); ++i)
      if (after[i].start != then[i].start || after[i].end != then[i].end || after[i].perms != then[i].perms ||
          after[i].rest != then[i].rest)
        return "a mapping's protection or backing changed: " + then[i].perms + " -> " + after[i].perms + " " +
               after[i].rest;
    return "";
  }

  // Debug: every private writable page equal to its clean copy.
  std::string verify_memory() {
    std::vector<unsigned char> now(clean_.size());
    for (const Rw& r : rw_) {
      iovec l{now.data() + r.offset, r.end - r.start}, rr{reinterpret_cast<void*>(r.start), r.end - r.start};
      if (process_vm_readv(pid_, &l, 1, &rr, 1, 0) != static_cast<ssize_t>(r.end - r.start))
        return errno_text("verify: process_vm_readv");
    }
    std::size_t differing = 0;
    for (std::size_t p = 0; p < now.size(); p += kPage)
      if (std::memcmp(now.data() + p, clean_.data() + p, std::min(kPage, now.size() - p)) != 0) ++differing;
    return differing ? "verify: " + std::to_string(differing) + " pages differ from the snapshot; " : "";
  }

  pid_t pid_ = -1;
  int sock_ = -1, uffd_ = -1, maps_fd_ = -1, status_fd_ = -1, limits_fd_ = -1, pagemap_fd_ = -1;
  user_regs_struct regs_{};
  std::vector<unsigned char> xstate_;
  u64 syscall_ip_ = 0, scratch_ = 0, snap_caught_ = 0, snap_ignored_ = 0, snap_blocked_ = 0;
  unsigned char actions_[65 * 32] = {};  // the kernel's struct sigaction for signals 1..64, at 32 * signal
  std::string maps_, status_, limits_, fds_, cwd_, error_;
  std::vector<Vma> vmas_;
  std::vector<Rw> rw_;
  std::vector<unsigned char> clean_;
  std::size_t clean_bytes_ = 0;
  std::vector<Dirty> dirty_;
  PageRegion vec_[kVec]{};
};

// The comparison: an identical warm child that forks per run.
class Forker {
 public:
  ~Forker() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    if (sock_ >= 0) close(sock_);
  }
  bool start() {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) != 0) return false;
    pid_ = fork();
    if (pid_ == 0) {
      close(sv[0]);
      warm_child(sv[1], false);
    }
    close(sv[1]);
    sock_ = sv[0];
    return pid_ > 0;
  }
  bool ask(Cmd c, Reply& r) {
    if (!send_all(sock_, &c, sizeof c)) return false;
    return recv(sock_, &r, sizeof r, 0) == static_cast<ssize_t>(sizeof r);
  }

 private:
  pid_t pid_ = -1;
  int sock_ = -1;
};

double thread_cpu_us() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) * 1e6 + static_cast<double>(ts.tv_nsec) / 1e3;
}

double p50(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[(v.size() - 1) / 2];
}

double loadavg() {
  double l = -1;
  if (FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf", &l) != 1) l = -1;
    std::fclose(f);
  }
  return l;
}

struct Side {  // one mode, one snippet
  std::vector<double> cycle;  // request sent -> the next request could be sent (restore included)
  std::vector<double> reply;  // request sent -> reply in
  double cpu_us = 0, faults = 0, parent_cpu_us = 0;  // parent: the restorer (or the requester, for fork)
  int runs = 0, wrong = 0;
  Timing restore;
};

// Both modes, `runs` pairs in alternating order, for one snippet.
bool measure(Restorer& snap, Forker& fork, int kind, int runs, std::int64_t expect, Side& s, Side& f) {
  Reply r{};
  // Warm-up, and the children's cumulative CPU before the sample.
  if (!snap.ask({kind}, r)) return false;
  Timing warm;
  if (std::string why = snap.restore(warm, false); !why.empty()) {
    std::printf("restore failed: %s\n", why.c_str());
    return false;
  }
  std::int64_t snap_cpu = r.cpu_us, snap_flt = r.minflt;
  if (!fork.ask({kind}, r)) return false;
  std::int64_t fork_cpu = r.cpu_us, fork_flt = r.minflt;
  for (int i = 0; i < runs; ++i) {
    for (int side = 0; side < 2; ++side) {
      const bool do_snap = (side == 0) == (i % 2 == 0);
      const double c0 = thread_cpu_us();
      const auto t0 = Clock::now();
      if (do_snap) {
        if (!snap.ask({kind}, r)) return false;
        const auto t1 = Clock::now();
        if (std::string why = snap.restore(s.restore, false); !why.empty()) {
          std::printf("restore failed: %s\n", why.c_str());
          return false;
        }
        s.reply.push_back(us(t0, t1));
        s.cycle.push_back(us(t0, Clock::now()));
        s.parent_cpu_us += thread_cpu_us() - c0;
        s.cpu_us += thread_cpu_us() - c0 + static_cast<double>(r.cpu_us - snap_cpu);
        s.faults += static_cast<double>(r.minflt - snap_flt);
        snap_cpu = r.cpu_us;
        snap_flt = r.minflt;
        ++s.runs;
        if (r.value != expect) ++s.wrong;
      } else {
        if (!fork.ask({kind}, r)) return false;
        f.reply.push_back(us(t0, Clock::now()));
        f.cycle.push_back(f.reply.back());
        f.parent_cpu_us += thread_cpu_us() - c0;
        f.cpu_us += thread_cpu_us() - c0 + static_cast<double>(r.cpu_us - fork_cpu);
        f.faults += static_cast<double>(r.minflt - fork_flt);
        fork_cpu = r.cpu_us;
        fork_flt = r.minflt;
        ++f.runs;
        if (r.value != expect) ++f.wrong;
      }
    }
  }
  // The snapshot child's CPU after its last reply (until it blocked) lands in the next reply: one more ask.
  if (!snap.ask({kind}, r)) return false;
  return snap.restore(warm, false).empty();
}

void print_side(const char* name, const Side& x) {
  const double n = x.runs ? x.runs : 1;
  std::printf("  %-22s cycle p50 %8.0f us  reply p50 %8.0f us  CPU %8.0f us/run (%.0f in this process)  "
              "%5.0f faults/run  wrong %d/%d\n",
              name, p50(x.cycle), p50(x.reply), x.cpu_us / n, x.parent_cpu_us / n, x.faults / n, x.wrong, x.runs);
}

void print_restore(const Side& x) {
  const double n = x.runs ? x.runs : 1;
  const Timing& t = x.restore;
  std::printf("  %-22s restore %6.0f us/run: interrupt %.0f, maps %.0f, scan %.0f, write %.0f, protect %.0f, "
              "kernel checks %.0f, registers+resume %.0f, invisible-state resets %.0f; %.0f pages in %.0f regions, "
              "%.1f injected calls\n",
              "", t.total / n, t.interrupt / n, t.maps / n, t.scan / n, t.write / n, t.protect / n, t.kernel / n,
              t.regs / n, t.resets / n, static_cast<double>(t.pages) / n, static_cast<double>(t.regions) / n,
              static_cast<double>(t.injected) / n);
}

// Each hostile action on a fresh snapshot child: what the restorer made of it, then what a probe run
// in the restored child finds left over.
int hostile_table() {
  std::printf("\nWhat a run with arbitrary memory write could leave behind (one fresh child each):\n");
  std::printf("  %-46s %-58s %s\n", "action", "restorer", "next run finds");
  int misses = 0;
  for (int a = 0; a < kHostileCount; ++a) {
    Restorer snap;
    if (!snap.start()) {
      std::printf("  start failed: %s\n", snap.error().c_str());
      return -1;
    }
    Reply r{};
    if (!snap.ask({kHostile + a}, r)) {
      std::printf("  %-40s the child did not answer\n", kHostileNames[a]);
      continue;
    }
    Timing t;
    std::string why = snap.restore(t, true);
    if (a == kFreeBuffer && r.value > 0 && why.empty()) {
      // Memory pressure after the restore, played by the restorer: reclaim that page now.
      const int pidfd = static_cast<int>(syscall(SYS_pidfd_open, snap.pid(), 0));
      iovec page{reinterpret_cast<void*>(static_cast<std::uintptr_t>(r.value)), kPage};
      if (pidfd < 0 || syscall(SYS_process_madvise, pidfd, &page, 1, MADV_PAGEOUT, 0) < 0)
        why = std::string("(process_madvise failed: ") + std::strerror(errno) + ")";
      if (pidfd >= 0) close(pidfd);
    } else if (r.value != 0) {
      why = "(the action itself failed) " + why;
    }
    std::string found = "-";
    if (why.empty()) {
      if (!snap.ask({kProbe}, r)) {
        found = "the child did not answer";
      } else {
        static const char* const names[] = {"canary", "buffer", "SIGINT handler", "ITIMER_REAL armed", "descriptors",
                                            "cwd", "umask", "signal mask", "pdeathsig", "heap end", "patched code"};
        found.clear();
        for (int b = 0; b < 11; ++b)
          if (r.value & (1LL << b)) found += std::string(found.empty() ? "" : ", ") + names[b];
        if (found.empty()) found = "nothing";
        Timing t2;
        snap.restore(t2, false);
      }
    }
    const bool caught = !why.empty();
    const bool clean = found == "nothing";
    if (!caught && !clean) ++misses;
    std::string verdict = caught ? "refused: " + why : (t.injected ? "restored (" + std::to_string(t.injected) +
                                                                        " injected calls)"
                                                                  : "restored");
    if (verdict.size() > 58) verdict = verdict.substr(0, 55) + "...";
    std::printf("  %-46s %-58s %s%s\n", kHostileNames[a], verdict.c_str(), found.c_str(),
                !caught && !clean ? "   <-- MISSED" : "");
  }
  return misses;
}

}  // namespace

int main(int argc, char** argv) {
  int runs = 200;
  bool table = true;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = std::max(1, std::atoi(argv[++i]));
    } else if (!std::strcmp(argv[i], "--no-hostile")) {
      table = false;
    } else {
      std::fprintf(stderr, "usage: %s [--runs N] [--no-hostile]\n", argv[0]);
      return 2;
    }
  }
  std::printf("snapshot-restore prototype: load average %.2f at start, %d runs per mode and snippet\n", loadavg(),
              runs);
  Restorer snap;
  if (!snap.start()) {
    std::printf("the snapshot child failed to start: %s\n", snap.error().c_str());
    return 1;
  }
  Forker fork;
  if (!fork.start()) return 1;
  std::printf("snapshot: %zu private writable mappings, %.1f MB copied\n", snap.rw_mappings(),
              static_cast<double>(snap.clean_bytes()) / 1e6);

  // The restore must hold: a verified restore, and a module-level counter that never counts past 1.
  {
    Reply r{};
    Timing t;
    for (int i = 0; i < 3; ++i) {
      if (!snap.ask({kState}, r)) return 1;
      std::string why = snap.restore(t, true);
      std::printf("state check %d: json.spr_probe = %lld, restore %s\n", i, static_cast<long long>(r.value),
                  why.empty() ? "verified" : why.c_str());
      if (!why.empty() || r.value != 1) return 1;
    }
  }

  struct Case {
    const char* name;
    int kind;
    std::int64_t expect;
  } cases[] = {{"trivial snippet", kTrivial, 9}, {"10 MB-writing snippet", kTenMb, 10}};
  for (const Case& c : cases) {
    Side s, f;
    std::printf("\n%s (load %.2f):\n", c.name, loadavg());
    if (!measure(snap, fork, c.kind, runs, c.expect, s, f)) {
      std::printf("  measurement failed\n");
      return 1;
    }
    print_side("snapshot-restore", s);
    print_restore(s);
    print_side("fork (same warm child)", f);
    std::printf("  ratio snapshot/fork: cycle p50 %.2f, CPU %.2f\n", p50(s.cycle) / p50(f.cycle),
                s.cpu_us / f.cpu_us * f.runs / s.runs);
  }
  int misses = 0;
  if (table) {
    misses = hostile_table();
    if (misses > 0) std::printf("%d action(s) left something the next run finds\n", misses);
  }
  std::printf("\nload average %.2f at end\n", loadavg());
  return misses < 0 ? 1 : 0;
}
