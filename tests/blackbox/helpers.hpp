// Shared helpers of the black-box tests: the isolation mode under test, one Runner per executable,
// temp files, and running the CLI binary with a deadline.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <doctest/doctest.h>

#if __has_include(<spr/runner.hpp>)
#include <spr/runner.hpp>
#define SPR_TEST_HAVE_RUNNER 1
#endif

namespace spr_test {

namespace fs = std::filesystem;

// The one secret every environment-leak test looks for; set before any worker is started.
inline const char* const kSecret = "s3cr3t-value";

inline void set_secret_env() { ::setenv("SPR_TEST_SECRET", kSecret, 1); }

// Whether this build is an ASan or a TSan one (make check-sanitize): the sanitizer's own time and memory then
// count in what a test measures from outside.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kAsan = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kAsan = true;
#else
inline constexpr bool kAsan = false;
#endif
#else
inline constexpr bool kAsan = false;
#endif
#if defined(__SANITIZE_THREAD__)
inline constexpr bool kTsan = true;
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
inline constexpr bool kTsan = true;
#else
inline constexpr bool kTsan = false;
#endif
#else
inline constexpr bool kTsan = false;
#endif

// How many times longer than on a quiet machine things may take now: SPR_TEST_TIME_SCALE, set by
// tests/CMakeLists.txt from `make test`'s load average (times 4 in sanitizer builds). Default run
// timeouts and hang guards are multiplied by it; nothing asserts that anything is fast.
inline double time_scale() {
  const char* s = std::getenv("SPR_TEST_TIME_SCALE");
  const double v = s ? std::atof(s) : 1.0;
  return v > 1 ? v : 1.0;
}

// The isolation mode this run of the suite covers (env SPR_TEST_ISOLATION, default "fork").
inline std::string mode_name() {
  const char* m = std::getenv("SPR_TEST_ISOLATION");
  return (m && *m) ? std::string(m) : std::string("fork");
}

inline bool contains(const std::string& hay, const std::string& needle) { return hay.find(needle) != std::string::npos; }
inline bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// A path under the temp dir that no other test (or earlier run of this one) uses.
inline fs::path unique_path(const std::string& tag) {
  static int counter = 0;
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return fs::temp_directory_path() /
         ("spr-test-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(++counter) + "-" +
          std::to_string(now % 1000000007));
}

// Removes the file (or tree) when the scope ends.
struct TempPath {
  fs::path path;
  explicit TempPath(const std::string& tag) : path(unique_path(tag)) {}
  ~TempPath() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  std::string str() const { return path.string(); }
  void write(const std::string& text) const { std::ofstream(path, std::ios::binary) << text; }
};

#ifdef SPR_TEST_HAVE_RUNNER

inline spr::Isolation isolation() {
  const std::string m = mode_name();
  if (m == "namespace") return spr::Isolation::namespace_;
  if (m == "process") return spr::Isolation::process;
  if (m == "subinterpreter") return spr::Isolation::subinterpreter;
  return spr::Isolation::fork;
}
inline bool is_namespace() { return isolation() == spr::Isolation::namespace_; }
inline bool is_fork() { return isolation() == spr::Isolation::fork; }
inline bool is_process() { return isolation() == spr::Isolation::process; }

// The default policy with the mode under test; every policy a black-box test builds starts here.
inline spr::RunnerPolicy policy() {
  spr::RunnerPolicy p;
  p.isolation = isolation();
  p.timeout_seconds *= time_scale();  // a loaded machine or a sanitizer build runs code several times slower
  return p;
}

inline spr::RunnerOptions runner_options() {
  set_secret_env();  // whichever Runner a test starts first, the secret is already in our environment
  spr::RunnerOptions o;
  o.workers = 2;
  o.policy = policy();
  // A worker's start is scaled too: an ASan-built pyenv worker at load 8 sent no hello within the default.
  o.start_timeout_seconds *= time_scale();
  return o;
}

// The executable's shared Runner. The secret goes into our environment before any worker exists.
inline spr::Runner& runner() {
  static spr::Runner r([] {
    set_secret_env();
    return runner_options();
  }());
  return r;
}

inline spr::RunResult run(const std::string& code, const spr::json& input = spr::json::object()) {
  return runner().run(code, input, policy());
}
inline spr::RunResult run(const std::string& code, const spr::json& input, const spr::RunnerPolicy& p) {
  return runner().run(code, input, p);
}

// Everything a run handed back, in one string, for "never contains X" checks.
inline std::string all_output(const spr::RunResult& r) {
  return r.stdout_text + "\n" + r.stderr_text + "\n" + r.result.dump() + "\n" + r.error.value_or("");
}

inline std::string describe(const spr::RunResult& r) {
  spr::json j = r.to_json();
  std::string s = j.dump(-1, ' ', false, spr::json::error_handler_t::replace);
  if (s.size() > 2000) {
    s.resize(2000);
    s += "...";
  }
  return s;
}

// A run that must have succeeded; prints the whole result otherwise.
#define SPR_CHECK_OK(r)               \
  do {                                \
    INFO(::spr_test::describe(r));    \
    CHECK((r).ok);                    \
    CHECK((r).error_kind == spr::ErrorKind::none); \
    CHECK_FALSE((r).error.has_value()); \
  } while (0)

#endif  // SPR_TEST_HAVE_RUNNER

// ---- running a program with a deadline ----

struct ProcResult {
  int exit_code = -1;   // exit status, or 128 + signal
  bool timed_out = false;
  std::string out, err;
};

// Runs argv with `input` on stdin; kills it after `timeout_s`. `env` replaces the environment when non-empty.
inline ProcResult run_program(const std::vector<std::string>& argv, const std::string& input = "",
                              double timeout_s = 30, const std::vector<std::string>& env = {}) {
  int in[2], out[2], err[2];
  REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
  REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
  std::vector<char*> args;
  args.reserve(argv.size() + 1);
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::vector<char*> envp;
  envp.reserve(env.size() + 1);
  for (const auto& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::dup2(in[0], 0);
    ::dup2(out[1], 1);
    ::dup2(err[1], 2);
    if (env.empty()) ::execv(args[0], args.data());
    else ::execve(args[0], args.data(), envp.data());
    ::_exit(127);
  }
  ::close(in[0]);
  ::close(out[1]);
  ::close(err[1]);
  ::signal(SIGPIPE, SIG_IGN);
  ProcResult res;
  std::size_t written = 0;
  int in_fd = in[1];
  if (input.empty()) {
    ::close(in_fd);
    in_fd = -1;
  } else {
    ::fcntl(in_fd, F_SETFL, O_NONBLOCK);
  }
  // A hang guard, not a speed check: scaled with the machine's load.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s * time_scale());
  bool out_open = true, err_open = true;
  char buf[65536];
  while (out_open || err_open) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      res.timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    pollfd p[3];
    int n = 0;
    if (out_open) p[n++] = {out[0], POLLIN, 0};
    if (err_open) p[n++] = {err[0], POLLIN, 0};
    if (in_fd >= 0) p[n++] = {in_fd, POLLOUT, 0};
    if (::poll(p, static_cast<nfds_t>(n), static_cast<int>(left.count())) < 0) continue;
    for (int i = 0; i < n; ++i) {
      if (!p[i].revents) continue;
      if (p[i].fd == in_fd) {
        const ssize_t w = ::write(in_fd, input.data() + written, input.size() - written);
        if (w > 0) written += static_cast<std::size_t>(w);
        if (w < 0 || written == input.size()) {
          ::close(in_fd);
          in_fd = -1;
        }
        continue;
      }
      const ssize_t r = ::read(p[i].fd, buf, sizeof buf);
      if (r <= 0) {
        if (p[i].fd == out[0]) out_open = false;
        else err_open = false;
      } else {
        (p[i].fd == out[0] ? res.out : res.err).append(buf, static_cast<std::size_t>(r));
      }
    }
  }
  if (in_fd >= 0) ::close(in_fd);
  ::close(out[0]);
  ::close(err[0]);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) res.exit_code = WEXITSTATUS(status);
  else if (WIFSIGNALED(status)) res.exit_code = 128 + WTERMSIG(status);
  return res;
}

}  // namespace spr_test
