// Unit tests for embed/harden: every layer is applied in a forked child, which reports through a pipe; the test
// process itself is never hardened, and each test asserts that a forbidden side effect did not happen.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <linux/fanotify.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/xattr.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <thread>

#include "harden.hpp"

extern char** environ;

// ASan and TSan reserve terabytes of address space for shadow memory before main() (SPR_TEST_SHADOW), and TSan
// starts a background thread in every forked child (SPR_TEST_TSAN).
#if defined(__SANITIZE_THREAD__)
#define SPR_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SPR_TEST_TSAN 1
#endif
#endif
#ifndef SPR_TEST_TSAN
#define SPR_TEST_TSAN 0
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SPR_TEST_SHADOW 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SPR_TEST_SHADOW 1
#endif
#endif
#ifndef SPR_TEST_SHADOW
#define SPR_TEST_SHADOW SPR_TEST_TSAN
#endif

namespace fs = std::filesystem;
using spr::harden::WorkerConfig;

namespace {

// What a child reported: "key=value" lines, plus how it ended.
struct ChildResult {
  std::map<std::string, std::string> values;
  std::string raw;
  int status = -1;
  std::string get(const std::string& key) const {
    auto it = values.find(key);
    return it == values.end() ? "<missing>" : it->second;
  }
};

// Child-side reporter: one write() per line, so a grandchild sharing the pipe cannot interleave mid-line.
struct Reporter {
  int fd;
  void put(const std::string& key, const std::string& value) const {
    const std::string line = key + "=" + value + "\n";
    [[maybe_unused]] ssize_t n = ::write(fd, line.data(), line.size());
  }
  void put(const std::string& key, long value) const { put(key, std::to_string(value)); }
    void result(const std::string& key, long rc, int err) const { put(key, rc == -1 ? std::string(strerrorname_np(err)) : "ok"); }
};

// Reports "ok" or the errno name of a call returning -1; errno is read right after the call, in sequence.
#define REPORT(reporter, key, call)              \
  do {                                           \
    errno = 0;                                   \
    const long report_rc_ = static_cast<long>(call); \
    const int report_errno_ = errno;             \
    (reporter).result((key), report_rc_, report_errno_); \
  } while (0)

ChildResult run_in_child(const std::function<void(const Reporter&)>& body) {
  int p[2];
  REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    body(Reporter{p[1]});
    ::_exit(0);
  }
  ::close(p[1]);
  ChildResult result;
  char buf[4096];
  for (;;) {
    pollfd pfd{p[0], POLLIN, 0};
    if (::poll(&pfd, 1, 5000) <= 0) break;  // a hung child fails the test below, it does not hang it
    const ssize_t n = ::read(p[0], buf, sizeof(buf));
    if (n <= 0) break;
    result.raw.append(buf, static_cast<std::size_t>(n));
  }
  ::close(p[0]);
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  result.status = status;
  std::istringstream lines(result.raw);
  for (std::string line; std::getline(lines, line);) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) result.values[line.substr(0, eq)] = line.substr(eq + 1);
  }
  return result;
}

// Three fresh directories: the scratch root, a readable root with one file, and an unrelated directory.
struct Dirs {
  fs::path scratch, readable, outside;
  Dirs() : scratch(make("scratch")), readable(make("readable")), outside(make("outside")) {
    std::ofstream(readable / "data.txt") << "readable-content";
  }
  ~Dirs() {
    std::error_code ec;
    for (const auto& d : {scratch, readable, outside}) fs::remove_all(d, ec);
  }
  static fs::path make(const char* tag) {
    std::string templ = (fs::temp_directory_path() / (std::string("spr-harden-") + tag + "-XXXXXX")).string();
    REQUIRE(::mkdtemp(templ.data()) != nullptr);
    return templ;
  }
  WorkerConfig config(int report_fd) const {
    WorkerConfig cfg;
    cfg.keep_fds = {report_fd};
    cfg.read_paths = {readable.string(), "/nonexistent/spr-harden-path"};
    cfg.scratch_root = scratch.string();
    // These cases look at the scratch and read roots from the host, and the later layers alone: the own root
    // (a tmpfs scratch, nobody's identity) has its own cases below.
    cfg.own_root = false;
    return cfg;
  }
};

void apply_and_report(const Reporter& r, const WorkerConfig& cfg) {
  for (const auto& layer : spr::harden::apply_worker(cfg)) r.put("layer." + layer.name, layer.active ? "on" : "off");
}

std::atomic<int> g_sigusr1_count{0};
extern "C" void on_sigusr1(int) { g_sigusr1_count.fetch_add(1); }

}  // namespace

TEST_CASE("report: every layer is listed in order and active on this machine") {
  Dirs dirs;
  const auto child = run_in_child([&](const Reporter& r) {
    auto cfg = dirs.config(r.fd);
    cfg.own_root = true;
    const auto report = spr::harden::apply_worker(cfg);
    r.put("json", spr::harden::to_json(report).dump());
    r.put("count", static_cast<long>(report.size()));
  });
  CHECK(WIFEXITED(child.status));
  const auto json = nlohmann::json::parse(child.get("json"));
  const char* expected[] = {"root",   "namespaces",   "capabilities", "fds",    "env",
                            "rlimits", "no_new_privs", "landlock",     "seccomp"};
  REQUIRE(json.size() == 9);
  for (std::size_t i = 0; i < 9; ++i) {
    CAPTURE(json[i].dump());
    CHECK(json[i]["name"] == expected[i]);
    // unshare(CLONE_NEWUSER) refuses a multi-threaded caller (EINVAL), and TSan's background thread runs in
    // every forked child: under TSan the namespaces layer cannot come up in these test children.
    if (SPR_TEST_TSAN && (json[i]["name"] == "namespaces" || json[i]["name"] == "root")) continue;
    CHECK(json[i]["active"] == true);
    CHECK(json[i]["detail"].is_string());
    MESSAGE(json[i]["name"].get<std::string>() << ": " << json[i]["detail"].get<std::string>());
  }
}

TEST_CASE("root: only the bound paths exist, read-only; scratch is a tmpfs of the asked size; uid 0 inside") {
  if (SPR_TEST_TSAN) return;  // no user namespace for a threaded child (see the report test)
  Dirs dirs;
  // nobody (the identity under a root supervisor) reads what others may read.
  fs::permissions(dirs.readable, fs::perms::owner_all | fs::perms::others_read | fs::perms::others_exec);
  fs::permissions(dirs.readable / "data.txt", fs::perms::owner_read | fs::perms::others_read);
  const auto child = run_in_child([&](const Reporter& r) {
    auto cfg = dirs.config(r.fd);
    cfg.own_root = true;
    cfg.scratch_bytes = 1 << 20;
    cfg.seccomp = false;  // stat and friends below are the root's to answer
    apply_and_report(r, cfg);
    struct stat st {};
    REPORT(r, "stat_shadow", ::stat("/etc/shadow", &st));
    REPORT(r, "stat_outside", ::stat(dirs.outside.c_str(), &st));
    REPORT(r, "stat_proc", ::stat("/proc/1", &st));
    const int data = ::open((dirs.readable / "data.txt").c_str(), O_RDONLY);
    const int data_errno = errno;
    r.result("read_readable", data, data_errno);
    REPORT(r, "write_readable", ::open((dirs.readable / "new").c_str(), O_WRONLY | O_CREAT, 0644));
    r.put("uid", static_cast<long>(::getuid()));
    char cwd[4096] = {};
    r.put("cwd", ::getcwd(cwd, sizeof cwd) != nullptr ? cwd : "?");
    const int big = ::open("big", O_WRONLY | O_CREAT, 0600);
    static char chunk[64 << 10];
    long written = 0;
    ssize_t n = 0;
    while (big >= 0 && written < (4 << 20) && (n = ::write(big, chunk, sizeof chunk)) > 0) written += n;
    const int write_errno = errno;
    r.put("written", written);
    r.put("write_errno", n < 0 ? strerrorname_np(write_errno) : "none");
  });
  CHECK(child.get("layer.root") == "on");
  CHECK(child.get("stat_shadow") == "ENOENT");
  CHECK(child.get("stat_outside") == "ENOENT");
  CHECK(child.get("stat_proc") == "ENOENT");
  CHECK(child.get("read_readable") == "ok");
  CHECK(child.get("write_readable") == "EROFS");
  CHECK(child.get("uid") == "0");
  CHECK(child.get("cwd") == dirs.scratch.string());
  CHECK(std::stol(child.get("written")) <= (1 << 20));
  CHECK(child.get("write_errno") == "ENOSPC");
  // Nothing reached the host's scratch directory: the run's files lived in the tmpfs only.
  CHECK(fs::is_empty(dirs.scratch));
}

TEST_CASE("root: an allowed path that is a link is left out, not followed") {
  if (SPR_TEST_TSAN) return;
  Dirs dirs;
  fs::permissions(dirs.outside, fs::perms::owner_all | fs::perms::others_read | fs::perms::others_exec);
  std::ofstream(dirs.outside / "secret.txt") << "outside-secret";
  fs::create_directory_symlink(dirs.outside, dirs.readable / "link");
  const auto child = run_in_child([&](const Reporter& r) {
    auto cfg = dirs.config(r.fd);
    cfg.own_root = true;
    cfg.landlock = false;  // the root alone
    cfg.read_paths.push_back((dirs.readable / "link").string());
    apply_and_report(r, cfg);
    REPORT(r, "open_via_link", ::open((dirs.readable / "link" / "secret.txt").c_str(), O_RDONLY));
    REPORT(r, "open_target", ::open((dirs.outside / "secret.txt").c_str(), O_RDONLY));
  });
  CHECK(child.get("layer.root") == "on");
  CHECK(child.get("open_via_link") != "ok");
  CHECK(child.get("open_target") == "ENOENT");
}

TEST_CASE("report: a layer switched off says so and the others still apply") {
  Dirs dirs;
  const auto child = run_in_child([&](const Reporter& r) {
    auto cfg = dirs.config(r.fd);
    cfg.namespaces = cfg.landlock = cfg.seccomp = false;
    for (const auto& layer : spr::harden::apply_worker(cfg)) r.put(layer.name, layer.active ? "on" : layer.detail);
  });
  CHECK(child.get("namespaces") == "disabled by policy");
  CHECK(child.get("landlock") == "disabled by policy");
  CHECK(child.get("seccomp") == "disabled by policy");
  CHECK(child.get("fds") == "on");
  CHECK(child.get("no_new_privs") == "on");
}

TEST_CASE("landlock: writes only in scratch, reads only under read_paths") {
  Dirs dirs;
  const auto child = run_in_child([&](const Reporter& r) {
    apply_and_report(r, dirs.config(r.fd));
    const int out = ::open((dirs.outside / "escaped").c_str(), O_WRONLY | O_CREAT, 0644);
    const int out_errno = errno;
    r.result("write_outside", out, out_errno);
    const int in = ::open((dirs.scratch / "inside").c_str(), O_WRONLY | O_CREAT, 0644);
    const int in_errno = errno;
    r.result("write_scratch", in, in_errno);
    if (in >= 0) REPORT(r, "write_scratch_data", ::write(in, "x", 1) == 1 ? 0 : -1);
    const int host = ::open("/etc/hostname", O_RDONLY);
    const int host_errno = errno;
    r.result("read_etc", host, host_errno);
    const int tmp = ::open((dirs.readable / "data.txt").c_str(), O_WRONLY);
    const int tmp_errno = errno;
    r.result("write_readable", tmp, tmp_errno);
    const int data = ::open((dirs.readable / "data.txt").c_str(), O_RDONLY);
    const int data_errno = errno;
    char buf[64] = {};
    if (data >= 0 && ::read(data, buf, sizeof(buf) - 1) > 0) r.put("read_data", buf);
    r.result("read_readable", data, data_errno);
    REPORT(r, "mkdir_outside", ::mkdir((dirs.outside / "d").c_str(), 0755));
  });
  CHECK(child.get("layer.landlock") == "on");
  CHECK(child.get("write_outside") == "EACCES");
  CHECK(child.get("write_readable") == "EACCES");
  CHECK(child.get("read_etc") == "EACCES");
  CHECK(child.get("mkdir_outside") == "EACCES");
  CHECK(child.get("write_scratch") == "ok");
  CHECK(child.get("write_scratch_data") == "ok");
  CHECK(child.get("read_readable") == "ok");
  CHECK(child.get("read_data") == "readable-content");
  CHECK_FALSE(fs::exists(dirs.outside / "escaped"));
  CHECK_FALSE(fs::exists(dirs.outside / "d"));
  CHECK(fs::file_size(dirs.scratch / "inside") == 1);
  CHECK(std::ifstream(dirs.readable / "data.txt").get() == 'r');
}

TEST_CASE("seccomp: fork is denied and no process appears") {
  Dirs dirs;
  const auto child = run_in_child([&](const Reporter& r) {
    apply_and_report(r, dirs.config(r.fd));
    const pid_t pid = ::fork();
    const int pid_errno = errno;
    if (pid == 0) {
      r.put("grandchild", "alive");
      ::_exit(0);
    }
    r.result("fork", pid, pid_errno);
    REPORT(r, "wait_any", ::waitpid(-1, nullptr, WNOHANG));
    // Threads must keep working: clone3 answers ENOSYS and glibc falls back to clone(CLONE_THREAD).
    std::atomic<bool> ran{false};
    std::thread([&] { ran = true; }).join();
    r.put("thread", ran ? "ran" : "no");
  });
  CHECK(child.get("thread") == "ran");
  CHECK(child.get("layer.seccomp") == "on");
  CHECK(child.get("fork") == "EPERM");
  CHECK(child.get("wait_any") == "ECHILD");
  CHECK(child.get("grandchild") == "<missing>");
}

TEST_CASE("seccomp: a fork-mode worker forks, and apply_child stops its child from forking or signalling out") {
  Dirs dirs;
  const auto child = run_in_child([&](const Reporter& r) {
    r.put("prepare_child", spr::harden::prepare_child());
    auto cfg = dirs.config(r.fd);
    cfg.allow_fork = true;
    apply_and_report(r, cfg);
    const pid_t run = ::fork();
    const int run_errno = errno;
    if (run == 0) {
      spr::harden::RunLimits limits;
      limits.cpu_seconds = 5;
      limits.file_size_bytes = 1 << 20;
      r.put("apply_child", spr::harden::apply_child(limits));
      const pid_t again = ::fork();
      const int again_errno = errno;
      if (again == 0) {
        r.put("great_grandchild", "alive");
        ::_exit(0);
      }
      r.result("child_fork", again, again_errno);
      REPORT(r, "child_kill_worker", ::kill(::getppid(), 0));
      REPORT(r, "child_kill_self", ::kill(::getpid(), 0));
      const rlimit raise{RLIM_INFINITY, RLIM_INFINITY};
      REPORT(r, "child_setrlimit", ::setrlimit(RLIMIT_FSIZE, &raise));
      rlimit now{};
      REPORT(r, "child_getrlimit", ::getrlimit(RLIMIT_CPU, &now));
      r.put("child_cpu", std::to_string(now.rlim_cur) + "/" + std::to_string(now.rlim_max));
      ::_exit(7);
    }
    r.result("worker_fork", run, run_errno);
    if (run > 0) {
      int status = 0;
      ::waitpid(run, &status, 0);
      r.put("run_exit", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
  });
  CHECK(child.get("prepare_child") == "0");
  CHECK(child.get("layer.seccomp") == "on");
  CHECK(child.get("worker_fork") == "ok");
  CHECK(child.get("run_exit") == "7");
  CHECK(child.get("apply_child") == "0");
  CHECK(child.get("child_fork") == "EPERM");
  CHECK(child.get("great_grandchild") == "<missing>");
  CHECK(child.get("child_kill_worker") == "EPERM");
  CHECK(child.get("child_kill_self") == "ok");
  CHECK(child.get("child_setrlimit") == "EPERM");
  CHECK(child.get("child_getrlimit") == "ok");
  CHECK(child.get("child_cpu") == "5/6");
}

TEST_CASE("exec is denied by seccomp, and by Landlock when seccomp is off") {
  Dirs dirs;
  for (const bool seccomp_on : {true, false}) {
    CAPTURE(seccomp_on);
    const fs::path marker = dirs.scratch / (seccomp_on ? "marker-seccomp" : "marker-landlock");
    const auto child = run_in_child([&](const Reporter& r) {
      auto cfg = dirs.config(r.fd);
      cfg.seccomp = seccomp_on;
      cfg.read_paths.push_back("/bin");
      cfg.read_paths.push_back("/usr");
      cfg.read_paths.push_back("/lib");
      cfg.read_paths.push_back("/lib64");
      apply_and_report(r, cfg);
      const std::string cmd = "touch " + marker.string();
      char* const argv[] = {const_cast<char*>("sh"), const_cast<char*>("-c"), const_cast<char*>(cmd.c_str()), nullptr};
      REPORT(r, "execve", ::execve("/bin/sh", argv, environ));
    });
    CHECK(child.get("execve") == (seccomp_on ? "EPERM" : "EACCES"));
    CHECK_FALSE(fs::exists(marker));
  }
}

TEST_CASE("network: no socket, and each of netns and Landlock alone keeps 127.0.0.1 unreachable") {
  Dirs dirs;
  const int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(listener, 8) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(::getsockname(listener, reinterpret_cast<sockaddr*>(&addr), &len) == 0);

  struct Variant { const char* name; bool namespaces, landlock, seccomp; const char* socket, *connect; };
  const Variant variants[] = {
      {"all layers", true, true, true, "EPERM", "<missing>"},
      {"netns only", true, false, false, "ok", "ENETUNREACH"},
      {"landlock only", false, true, false, "ok", "EACCES"},
  };
  for (const auto& v : variants) {
    if (SPR_TEST_TSAN && v.namespaces && !v.landlock) continue;  // no netns under TSan (see the report test)
    CAPTURE(v.name);
    const auto child = run_in_child([&](const Reporter& r) {
      auto cfg = dirs.config(r.fd);
      cfg.namespaces = v.namespaces;
      cfg.landlock = v.landlock;
      cfg.seccomp = v.seccomp;
      apply_and_report(r, cfg);
      const int s = ::socket(AF_INET, SOCK_STREAM, 0);
      const int s_errno = errno;
      r.result("socket", s, s_errno);
      if (s >= 0) REPORT(r, "connect", ::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)));
      REPORT(r, "socket_unix", ::socket(AF_UNIX, SOCK_STREAM, 0));
      int pair[2];
      REPORT(r, "socketpair", ::socketpair(AF_UNIX, SOCK_STREAM, 0, pair));
    });
    CHECK(child.get("socket") == v.socket);
    CHECK(child.get("connect") == v.connect);
    CHECK(child.get("socketpair") == "ok");
    if (v.seccomp) CHECK(child.get("socket_unix") == "EPERM");
    pollfd pfd{listener, POLLIN, 0};
    CHECK(::poll(&pfd, 1, 50) == 0);  // nothing ever reached the listener
  }
  ::close(listener);
}

TEST_CASE("signals: the parent is unreachable through seccomp and through Landlock scoping alone") {
  Dirs dirs;
  struct sigaction sa {}, old {};
  sa.sa_handler = on_sigusr1;
  REQUIRE(::sigaction(SIGUSR1, &sa, &old) == 0);
  g_sigusr1_count = 0;
  for (const bool seccomp_on : {true, false}) {
    CAPTURE(seccomp_on);
    const auto child = run_in_child([&](const Reporter& r) {
      auto cfg = dirs.config(r.fd);
      cfg.seccomp = seccomp_on;
      apply_and_report(r, cfg);
      REPORT(r, "kill_parent_probe", ::kill(::getppid(), 0));
      REPORT(r, "kill_parent", ::kill(::getppid(), SIGUSR1));
      REPORT(r, "kill_group", ::kill(-::getpgrp(), SIGUSR1));
      REPORT(r, "kill_self", ::kill(::getpid(), 0));
    });
    CHECK(child.get("kill_parent_probe") == "EPERM");
    CHECK(child.get("kill_parent") == "EPERM");
    CHECK(child.get("kill_self") == "ok");
    if (seccomp_on) CHECK(child.get("kill_group") == "EPERM");
  }
  ::usleep(20000);
  CHECK(g_sigusr1_count.load() == 0);
  ::sigaction(SIGUSR1, &old, nullptr);
}

// The worker kinds whose filters differ (see seccomp.cpp's When column).
struct Kind { const char* name; bool allow_threads, allow_fork, allow_network, allow_unix_sockets; };
constexpr Kind kKinds[] = {
    {"namespace/subinterpreter/session", false, false, false, false},
    {"process", true, false, false, false},
    {"fork parent", true, true, false, false},
    {"allow_network", true, false, true, false},
    {"allow_unix_sockets", false, false, false, true},
};

WorkerConfig kind_config(const Dirs& dirs, int report_fd, const Kind& kind) {
  WorkerConfig cfg = dirs.config(report_fd);
  cfg.allow_threads = kind.allow_threads;
  cfg.allow_fork = kind.allow_fork;
  cfg.allow_network = kind.allow_network;
  cfg.allow_unix_sockets = kind.allow_unix_sockets;
  return cfg;
}

TEST_CASE("seccomp: a file's mode, owner, times and extended attributes stay as they were, in every worker kind") {
  Dirs dirs;
  for (const Kind& kind : kKinds) {
    CAPTURE(kind.name);
    // Made by the host before the sandbox closes, in the one place Landlock lets a run write.
    const fs::path victim = dirs.scratch / "victim";
    { std::ofstream(victim) << "x"; }
    REQUIRE(::chmod(victim.c_str(), 0600) == 0);
    struct stat before {};
    REQUIRE(::stat(victim.c_str(), &before) == 0);
    const auto child = run_in_child([&](const Reporter& r) {
      const int fd = ::open(victim.c_str(), O_RDONLY | O_CLOEXEC);
      auto cfg = kind_config(dirs, r.fd, kind);
      cfg.keep_fds.push_back(fd);
      apply_and_report(r, cfg);
      const timespec forged[2] = {{1234567890, 0}, {1234567890, 0}};
      const timeval forged_tv[2] = {{1234567890, 0}, {1234567890, 0}};
      REPORT(r, "chmod", ::syscall(SYS_chmod, victim.c_str(), 04777));
      REPORT(r, "fchmod", ::syscall(SYS_fchmod, fd, 04777));
      REPORT(r, "fchmodat", ::syscall(SYS_fchmodat, AT_FDCWD, victim.c_str(), 04777, 0));
      REPORT(r, "chown", ::syscall(SYS_chown, victim.c_str(), 4242, 4242));
      REPORT(r, "fchown", ::syscall(SYS_fchown, fd, 4242, 4242));
      REPORT(r, "fchownat", ::syscall(SYS_fchownat, AT_FDCWD, victim.c_str(), 4242, 4242, 0));
      REPORT(r, "utimensat", ::syscall(SYS_utimensat, AT_FDCWD, victim.c_str(), forged, 0));
      REPORT(r, "futimens", ::syscall(SYS_utimensat, fd, nullptr, forged, 0));
      REPORT(r, "utimes", ::syscall(SYS_utimes, victim.c_str(), forged_tv));
      REPORT(r, "futimesat", ::syscall(SYS_futimesat, AT_FDCWD, victim.c_str(), forged_tv));
      REPORT(r, "setxattr", ::syscall(SYS_setxattr, victim.c_str(), "user.spr", "1", 1, 0));
      REPORT(r, "fsetxattr", ::syscall(SYS_fsetxattr, fd, "user.spr", "1", 1, 0));
      REPORT(r, "lsetxattr", ::syscall(SYS_lsetxattr, victim.c_str(), "user.spr", "1", 1, 0));
      // A set-user-ID file made at creation, without any chmod.
      REPORT(r, "create_setuid", ::syscall(SYS_openat, AT_FDCWD, (dirs.scratch / "suid").c_str(),
                                           O_CREAT | O_WRONLY | O_CLOEXEC, 04755));
      REPORT(r, "create_plain", ::syscall(SYS_openat, AT_FDCWD, (dirs.scratch / "plain").c_str(),
                                          O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    });
    CHECK(child.get("layer.seccomp") == "on");
    CHECK(child.get("create_plain") == "ok");  // creating files still works
    for (const char* call : {"chmod", "fchmod", "fchmodat", "chown", "fchown", "fchownat", "utimensat", "futimens",
                             "utimes", "futimesat", "setxattr", "fsetxattr", "lsetxattr", "create_setuid"}) {
      CAPTURE(call);
      CHECK(child.get(call) == "EPERM");
    }
    // Judged on the host: nothing about the file changed, and no set-user-ID file exists.
    struct stat after {};
    REQUIRE(::stat(victim.c_str(), &after) == 0);
    CHECK((after.st_mode & 07777) == 0600);
    CHECK(after.st_uid == before.st_uid);
    CHECK(after.st_gid == before.st_gid);
    CHECK(after.st_mtim.tv_sec == before.st_mtim.tv_sec);
    CHECK(after.st_atim.tv_sec != 1234567890);
    char names[256] = {};
    CHECK(::listxattr(victim.c_str(), names, sizeof(names)) == 0);
    CHECK_FALSE(fs::exists(dirs.scratch / "suid"));
    std::error_code ec;
    fs::remove(victim, ec);
    fs::remove(dirs.scratch / "plain", ec);
  }
}

TEST_CASE("seccomp: no file watch (inotify, fanotify, F_NOTIFY) and no unix socket without allow_unix_sockets") {
  Dirs dirs;
  // A host unix socket listener, as docker.sock would be.
  const fs::path sock_path = dirs.outside / "host.sock";
  const int listener = ::socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  REQUIRE(listener >= 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, sock_path.c_str(), sizeof(addr.sun_path) - 1);
  REQUIRE(::bind(listener, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(listener, 8) == 0);
  for (const Kind& kind : kKinds) {
    CAPTURE(kind.name);
    const auto child = run_in_child([&](const Reporter& r) {
      apply_and_report(r, kind_config(dirs, r.fd, kind));
      REPORT(r, "inotify_init1", ::syscall(SYS_inotify_init1, IN_CLOEXEC));
      REPORT(r, "inotify_init", ::syscall(SYS_inotify_init));
      REPORT(r, "fanotify_init", ::syscall(SYS_fanotify_init, 0, O_RDONLY));
      REPORT(r, "dnotify", ::fcntl(r.fd, F_NOTIFY, DN_CREATE));
      const int s = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
      const int s_errno = errno;
      r.result("socket_unix", s, s_errno);
      if (s >= 0) REPORT(r, "connect_unix", ::connect(s, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)));
      REPORT(r, "netlink", ::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, 0));
      REPORT(r, "packet", ::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0));
      REPORT(r, "raw_inet", ::socket(AF_INET, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_ICMP));
      int pair[2];
      REPORT(r, "socketpair", ::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair));
    });
    CHECK(child.get("layer.seccomp") == "on");
    for (const char* call : {"inotify_init1", "inotify_init", "fanotify_init", "dnotify", "netlink", "packet", "raw_inet"}) {
      CAPTURE(call);
      CHECK(child.get(call) == "EPERM");
    }
    CHECK(child.get("socketpair") == "ok");
    pollfd pfd{listener, POLLIN, 0};
    if (kind.allow_unix_sockets) {
      // The control: with the knob, the same code reaches the host's socket (Landlock does not mediate it).
      CHECK(child.get("socket_unix") == "ok");
      CHECK(child.get("connect_unix") == "ok");
      REQUIRE(::poll(&pfd, 1, 5000) == 1);
      const int accepted = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
      CHECK(accepted >= 0);
      if (accepted >= 0) ::close(accepted);
    } else {
      CHECK(child.get("socket_unix") == "EPERM");
      CHECK(::poll(&pfd, 1, 0) == 0);  // the child has exited: a connection would be queued by now
    }
  }
  ::close(listener);
}

TEST_CASE("seccomp: the parent-death signal cannot be cleared, in every worker kind") {
  Dirs dirs;
  // This process adopts orphans, so it can wait for the grandchild whose parent dies.
  REQUIRE(::prctl(PR_SET_CHILD_SUBREAPER, 1) == 0);
  for (const Kind& kind : kKinds) {
    CAPTURE(kind.name);
    int p[2], q[2];  // p: the worker's report to this test; q: "reported" from the worker to its parent
    REQUIRE(::pipe2(p, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(q, O_CLOEXEC) == 0);
    const pid_t middle = ::fork();
    REQUIRE(middle >= 0);
    if (middle == 0) {
      const pid_t worker = ::fork();
      if (worker == 0) {
        ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // as the supervisor's spawn does
        const Reporter r{p[1]};
        auto cfg = kind_config(dirs, p[1], kind);
        cfg.keep_fds.push_back(q[1]);
        apply_and_report(r, cfg);
        REPORT(r, "clear", ::prctl(PR_SET_PDEATHSIG, 0));
        REPORT(r, "other_signal", ::prctl(PR_SET_PDEATHSIG, SIGCHLD));
        REPORT(r, "sigkill_again", ::prctl(PR_SET_PDEATHSIG, SIGKILL));
        r.put("worker", static_cast<long>(::getpid()));
        r.put("done", "1");
        [[maybe_unused]] ssize_t w = ::write(q[1], "x", 1);
        for (;;) ::pause();  // stays here until the parent-death signal ends it
      }
      // Dies once the worker has reported: the worker must die with it.
      ::close(q[1]);
      char c;
      [[maybe_unused]] ssize_t n = ::read(q[0], &c, 1);
      ::_exit(0);
    }
    ::close(q[0]);
    ::close(q[1]);
    ::close(p[1]);
    std::string raw;
    char buf[512];
    for (;;) {
      pollfd pfd{p[0], POLLIN, 0};
      if (::poll(&pfd, 1, 30000) <= 0) break;
      const ssize_t n = ::read(p[0], buf, sizeof(buf));
      if (n <= 0) break;
      raw.append(buf, static_cast<std::size_t>(n));
      if (raw.find("done=1\n") != std::string::npos) break;
    }
    ::close(p[0]);
    CAPTURE(raw);
    CHECK(raw.find("clear=EPERM") != std::string::npos);
    CHECK(raw.find("other_signal=EPERM") != std::string::npos);
    CHECK(raw.find("sigkill_again=ok") != std::string::npos);
    int status = 0;
    ::waitpid(middle, &status, 0);
    // Judged from outside: the worker, orphaned, is adopted by this process and dies of SIGKILL.
    const auto at = raw.find("worker=");
    REQUIRE(at != std::string::npos);
    const pid_t worker = static_cast<pid_t>(std::stol(raw.substr(at + 7)));
    pollfd none{};
    bool ended = false;
    for (int i = 0; i < 3000 && !ended; ++i) {  // waits for the event (up to 30 s), never judges its speed
      const pid_t w = ::waitpid(worker, &status, WNOHANG);
      ended = w == worker;
      if (!ended) ::poll(&none, 0, 10);
    }
    if (!ended) {
      ::kill(worker, SIGKILL);
      ::waitpid(worker, &status, 0);
    }
    CHECK(ended);
    CHECK((WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL));
  }
  ::prctl(PR_SET_CHILD_SUBREAPER, 0);
}

TEST_CASE("seccomp: clone never makes a namespace, and calls only attacks make kill the process") {
  Dirs dirs;
  for (const Kind& kind : kKinds) {
    CAPTURE(kind.name);
    const auto child = run_in_child([&](const Reporter& r) {
      apply_and_report(r, kind_config(dirs, r.fd, kind));
      const long pid = ::syscall(SYS_clone, CLONE_NEWUSER | CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0);
      const int err = errno;
      if (pid == 0) {
        r.put("in_new_namespace", "1");
        ::_exit(0);
      }
      r.result("clone_newuser", pid, err);
      REPORT(r, "unshare", ::syscall(SYS_unshare, CLONE_NEWUSER));
      REPORT(r, "setns", ::syscall(SYS_setns, r.fd, 0));
      r.put("before_ptrace", "1");
      ::syscall(SYS_ptrace, PTRACE_TRACEME, 0, 0, 0);
      r.put("after_ptrace", "1");
    });
    CHECK(child.get("layer.seccomp") == "on");
    CHECK(child.get("clone_newuser") == "EPERM");
    CHECK(child.get("in_new_namespace") == "<missing>");
    CHECK(child.get("unshare") == "EPERM");
    CHECK(child.get("setns") == "EPERM");
    CHECK(child.get("before_ptrace") == "1");
    CHECK(child.get("after_ptrace") == "<missing>");
    CHECK((WIFSIGNALED(child.status) && WTERMSIG(child.status) == SIGSYS));
  }
}

TEST_CASE("env: nothing the parent exported survives") {
  Dirs dirs;
  ::setenv("SPR_SECRET", "hunter2", 1);
  const auto child = run_in_child([&](const Reporter& r) {
    apply_and_report(r, dirs.config(r.fd));
    std::string names;
    for (char** e = environ; e != nullptr && *e != nullptr; ++e) names += std::string(*e) + ";";
    r.put("environ", names);
  });
  ::unsetenv("SPR_SECRET");
  // Only the worker's fixed names: a locale and one thread per numerical library.
  CHECK(child.get("environ") ==
        "LANG=C.UTF-8;OPENBLAS_NUM_THREADS=1;OMP_NUM_THREADS=1;MKL_NUM_THREADS=1;NUMEXPR_NUM_THREADS=1;"
        "VECLIB_MAXIMUM_THREADS=1;GOTO_NUM_THREADS=1;");
}

TEST_CASE("fds: unlisted fds are closed, kept ones stay, 0 and 1 are reopened") {
  Dirs dirs;
  const int stray = ::open("/dev/null", O_RDONLY);
  const int kept = ::open("/dev/null", O_RDONLY);
  REQUIRE(stray >= 3);
  REQUIRE(kept >= 3);
  const auto child = run_in_child([&](const Reporter& r) {
    ::close(0);  // the worker may have been started with stdin closed
    auto cfg = dirs.config(r.fd);
    cfg.keep_fds.push_back(kept);
    apply_and_report(r, cfg);
    REPORT(r, "stray", ::fcntl(stray, F_GETFD));
    REPORT(r, "kept", ::fcntl(kept, F_GETFD));
    REPORT(r, "fd0", ::fcntl(0, F_GETFD));
    REPORT(r, "fd1", ::fcntl(1, F_GETFD));
    rlimit nofile{};
    ::getrlimit(RLIMIT_NOFILE, &nofile);
    r.put("nofile", static_cast<long>(nofile.rlim_cur));
    r.put("max_kept", std::max(kept, r.fd));
  });
  ::close(stray);
  ::close(kept);
  CHECK(child.get("stray") == "EBADF");
  CHECK(child.get("kept") == "ok");
  CHECK(child.get("fd0") == "ok");
  CHECK(child.get("fd1") == "ok");
  CHECK(std::stol(child.get("nofile")) == std::stol(child.get("max_kept")) + 64);
}

TEST_CASE("apply_rlimits: RLIMIT_AS refuses a large mapping, small allocations still work") {
  const auto child = run_in_child([&](const Reporter& r) {
    spr::harden::RunLimits limits;
    limits.address_space_bytes = 512ULL << 20;
    // Sanitizer shadow memory already reserves terabytes of address space: there the limit is 512 MiB above
    // what is mapped now (as fork mode's prlimit does), so the same two mappings are tested.
    if (SPR_TEST_SHADOW) {
      std::ifstream statm("/proc/self/statm");
      std::uint64_t pages = 0;
      statm >> pages;
      limits.address_space_bytes += pages * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
    }
    r.put("want", std::to_string(limits.address_space_bytes));
    r.put("rc", spr::harden::apply_rlimits(limits));
    REPORT(r, "big",
           ::mmap(nullptr, 1ULL << 30, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0) == MAP_FAILED ? -1 : 0);
    void* small = std::malloc(1 << 20);
    r.put("small", small != nullptr ? "ok" : "null");
    std::free(small);
    rlimit as{};
    ::getrlimit(RLIMIT_AS, &as);
    r.put("as", std::to_string(as.rlim_cur) + "/" + std::to_string(as.rlim_max));
  });
  CHECK(child.get("rc") == "0");
  CHECK(child.get("big") == "ENOMEM");
  CHECK(child.get("small") == "ok");
  const std::string want = SPR_TEST_SHADOW ? child.get("want") : std::to_string(512ULL << 20);
  CHECK(child.get("want") == want);
  CHECK(child.get("as") == want + "/" + want);
}

TEST_CASE("to_json renders name, active and detail") {
  const spr::harden::Report report = {{"seccomp", true, "x"}, {"landlock", false, "kernel lacks Landlock"}};
  const auto json = spr::harden::to_json(report);
  CHECK(json.dump() ==
        R"([{"active":true,"detail":"x","name":"seccomp"},{"active":false,"detail":"kernel lacks Landlock","name":"landlock"}])");
}
