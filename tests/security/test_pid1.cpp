// A supervisor that is PID 1 of its PID namespace (a container started without an init), judged from outside that
// namespace: every worker it kills leaves no process behind, zombie or not, and the host's own child keeps its exit
// status for the host. Without a /proc of its own namespace, the error says what is missing and how to mount it.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "../blackbox/helpers.hpp"
#include "../proc_stats.hpp"

namespace {

// The host program, started by unshare(1) as PID 1 of a new PID namespace; as root as it is, else in a user
// namespace of its own that maps its user to itself (it stays an unprivileged supervisor there).
class Pid1Host {
 public:
  Pid1Host(const std::string& arg, bool own_proc) {
    std::vector<std::string> argv = {SPR_TEST_UNSHARE};
    if (::geteuid() != 0) argv.push_back("--map-current-user");
    argv.insert(argv.end(), {"--pid", "--fork", "--kill-child"});
    if (own_proc) argv.push_back("--mount-proc");
    argv.push_back(SPR_TEST_PID1_HOST);
    argv.push_back(arg);
    int in[2], out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(a.data());
    args.push_back(nullptr);
    unshare_ = ::fork();
    REQUIRE(unshare_ >= 0);
    if (unshare_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    to_ = in[1];
    from_ = out[0];
    ::signal(SIGPIPE, SIG_IGN);
  }
  ~Pid1Host() {
    ::close(to_);
    ::close(from_);
    if (unshare_ > 0) {
      ::kill(unshare_, SIGKILL);  // --kill-child: PID 1 dies with it, and its namespace with PID 1
      ::waitpid(unshare_, nullptr, 0);
    }
  }
  Pid1Host(const Pid1Host&) = delete;
  Pid1Host& operator=(const Pid1Host&) = delete;

  // The next line the host prints; empty at its end or past the hang guard.
  std::string line() {
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(120 * spr_test::time_scale());
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        MESSAGE("host: " << l);
        return l;
      }
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      pollfd p{from_, POLLIN, 0};
      if (left.count() <= 0 || ::poll(&p, 1, static_cast<int>(left.count())) <= 0) return {};
      char chunk[4096];
      const ssize_t n = ::read(from_, chunk, sizeof chunk);
      if (n <= 0) return {};
      buf_.append(chunk, static_cast<std::size_t>(n));
    }
  }
  void go() { REQUIRE(::write(to_, "go\n", 3) == 3); }

  // The host as this namespace sees it: unshare's one child.
  pid_t pid1() const {
    for (const auto& p : spr_test::processes())
      if (p.ppid == unshare_) return p.pid;
    return -1;
  }
  int exit_status() {
    int status = 0;
    REQUIRE(::waitpid(unshare_, &status, 0) == unshare_);
    unshare_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  }

 private:
  pid_t unshare_ = -1;
  int to_ = -1, from_ = -1;
  std::string buf_;
};

// The PID a process has in the innermost of its PID namespaces (the last field of NSpid).
pid_t inner_pid(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("NSpid:", 0) != 0) continue;
    std::istringstream fields(line.substr(6));
    pid_t last = -1, v = 0;
    while (fields >> v) last = v;
    return last;
  }
  return -1;
}

// Every process below `root` (its descendants), but the host's own child, as "pid state" for the message.
std::vector<std::string> below(pid_t root, pid_t host_child_inner) {
  const auto all = spr_test::processes();
  std::set<int> tree = {root};
  for (bool grew = true; grew;) {
    grew = false;
    for (const auto& p : all)
      if (tree.count(p.ppid) && tree.insert(p.pid).second) grew = true;
  }
  std::vector<std::string> out;
  for (const auto& p : all)
    if (p.pid != root && tree.count(p.pid) && !(p.ppid == root && inner_pid(p.pid) == host_child_inner))
      out.push_back(std::to_string(p.pid) + " " + p.state + " (parent " + std::to_string(p.ppid) + ")");
  return out;
}

// The zombies among `root`'s own children, the host's child aside: nobody but `root` would ever wait for them.
std::vector<std::string> zombie_children(pid_t root, pid_t host_child_inner) {
  std::vector<std::string> out;
  for (const auto& p : spr_test::processes())
    if (p.ppid == root && p.state == 'Z' && inner_pid(p.pid) != host_child_inner) out.push_back(std::to_string(p.pid));
  return out;
}

std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ", ") + x;
  return s;
}

}  // namespace

TEST_CASE("a supervisor that is PID 1: killed workers leave no zombie, and the host's child keeps its status") {
  Pid1Host host(spr_test::mode_name(), true);
  const std::string first = host.line();
  REQUIRE(spr_test::starts_with(first, "host-child "));
  const pid_t child = std::atoi(first.c_str() + 11);
  // Timeout, memory, crash and cancel runs, then one that succeeds: the workers of the first four are gone.
  REQUIRE(host.line() == "ready");
  const pid_t pid1 = host.pid1();
  REQUIRE(pid1 > 0);
  {
    const auto zombies = zombie_children(pid1, child);
    INFO("zombies left to PID 1: " << joined(zombies));
    CHECK(zombies.empty());
  }
  host.go();
  // The runner stopped with a run in flight: nothing of it is left in the namespace.
  REQUIRE(host.line() == "stopped");
  {
    const auto left = below(pid1, child);
    INFO("processes left in the namespace: " << joined(left));
    CHECK(left.empty());
  }
  host.go();
  CHECK(host.line() == "host-child-status 7");
  CHECK(host.exit_status() == 0);
}

TEST_CASE("a supervisor that is PID 1 without a /proc of its namespace: the error names /proc and --mount-proc") {
  Pid1Host host("noproc", false);
  const std::string answer = host.line();
  CHECK(spr_test::contains(answer, "/proc"));
  CHECK(spr_test::contains(answer, "--mount-proc"));
  CHECK(host.exit_status() == 0);
}
