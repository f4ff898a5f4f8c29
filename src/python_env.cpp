// Asks a python3 for its version and sys.path (the "custom Python environment" of the original).
#include "detail/python_env.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>

#include <nlohmann/json.hpp>

extern char** environ;

namespace spr::detail {

namespace {

constexpr const char* kProbe =
    "import json, sys; print(json.dumps({'version': '%d.%d' % sys.version_info[:2], 'path': sys.path}))";
constexpr int kProbeTimeoutMs = 20000;
constexpr std::size_t kMaxProbeOutput = 1 << 20;

PythonEnv run_probe(const std::string& exe) {
  PythonEnv env;
  env.executable = exe;
  if (::access(exe.c_str(), X_OK) != 0) {
    env.error = "python_executable " + exe + " is not an executable file: " + std::strerror(errno);
    return env;
  }
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    env.error = std::string("pipe2 failed: ") + std::strerror(errno);
    return env;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  const char* argv[] = {exe.c_str(), "-c", kProbe, nullptr};
  pid_t pid = -1;
  // The caller's environment, as when the original runs its interpreter: PYTHONPATH and a venv count.
  const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, const_cast<char**>(argv), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  if (rc != 0) {
    ::close(out[0]);
    env.error = "cannot run " + exe + ": " + std::strerror(rc);
    return env;
  }
  std::string text;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kProbeTimeoutMs);
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{out[0], POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR) break;
    const ssize_t n = ::read(out[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0 || text.size() > kMaxProbeOutput) break;
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  ::kill(pid, SIGKILL);  // gone already when it answered; a hung interpreter goes now
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  try {
    const auto j = nlohmann::json::parse(text);
    env.version = j.at("version").get<std::string>();
    env.path = j.at("path").get<std::vector<std::string>>();
  } catch (const std::exception&) {
    env.version.clear();
    env.error = exe + " did not report its sys.path (is it a Python interpreter?)";
  }
  return env;
}

}  // namespace

std::string default_python() { return SPR_DEFAULT_PYTHON; }
std::string worker_python_version() { return SPR_WORKER_PYTHON_VERSION; }

const PythonEnv& probe_python(const std::string& executable) {
  // Never destroyed: a Runner held in a static may still be spawning workers (and reading entries it
  // got from here) while the program's statics are destroyed at exit (ThreadSanitizer found the race).
  static std::mutex& mu = *new std::mutex;
  static auto& cache = *new std::map<std::string, std::unique_ptr<PythonEnv>>;
  std::lock_guard<std::mutex> lk(mu);
  auto& slot = cache[executable];
  if (!slot) slot = std::make_unique<PythonEnv>(run_probe(executable));
  return *slot;
}

std::filesystem::path worker_for(const std::filesystem::path& worker, const PythonEnv& env, std::string& error) {
  if (env.version.empty() || env.version == worker_python_version()) return worker;
  const std::filesystem::path other = worker.parent_path() / ("spr-worker-python" + env.version);
  if (::access(other.c_str(), X_OK) == 0) return other;
  error = "python_executable " + env.executable + " is Python " + env.version + ", but " + worker.string() +
          " embeds Python " + worker_python_version() + " and no " + other.filename().string() +
          " was built (configure with -DSPR_EXTRA_PYTHONS=" + env.executable + ")";
  return {};
}

}  // namespace spr::detail
