// `batch` and `batch-merge`: files, signals, progress and summary around the batch engine (src/batch.cpp).
#include "cli/batch_cli.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <thread>

#include "cli/exit_status.hpp"
#include "common/fd.hpp"
#include "detail/batch.hpp"

namespace spr::cli {

namespace {

using detail::Fd;

// Set by the handler, read by the progress thread: a lock-free atomic (a volatile sig_atomic_t is for the
// thread the signal interrupts only; TSan reported the other thread's read as a race).
std::atomic<int> g_interrupted{0};
static_assert(std::atomic<int>::is_always_lock_free);

void on_interrupt(int) {
  const int saved = errno;
  g_interrupted.store(1, std::memory_order_relaxed);
  errno = saved;
}

struct Failure {
  int status;
  std::string message;
};

// "I/N" with 0 <= I < N.
std::pair<std::size_t, std::size_t> parse_shard(const std::string& spec) {
  const auto slash = spec.find('/');
  try {
    if (slash != std::string::npos && spec.find_first_not_of("0123456789/") == std::string::npos) {
      const std::size_t i = std::stoul(spec.substr(0, slash)), n = std::stoul(spec.substr(slash + 1));
      if (n >= 1 && i < n) return {i, n};
    }
  } catch (const std::exception&) {
  }
  throw Failure{kExitData, "--shard must be I/N with 0 <= I < N (got '" + spec + "')"};
}

// Standard input copied to an unlinked temporary file: the cases are read twice (ids first).
std::ifstream spool_stdin() {
  const char* dir = std::getenv("TMPDIR");
  std::string path = std::string(dir && *dir ? dir : "/tmp") + "/spr-batch-XXXXXX";
  Fd fd(::mkstemp(path.data()));
  if (!fd)
    throw Failure{kExitData, std::string("cannot create a temporary file for standard input: ") + std::strerror(errno)};
  std::ifstream in(path, std::ios::binary);
  ::unlink(path.c_str());
  char buf[1 << 16];
  for (;;) {
    const ssize_t n = ::read(STDIN_FILENO, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw Failure{kExitData, std::string("cannot read standard input: ") + std::strerror(errno)};
    for (ssize_t off = 0; off < n;) {
      const ssize_t w = ::write(fd.get(), buf + off, static_cast<std::size_t>(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) throw Failure{kExitData, std::string("cannot spool standard input: ") + std::strerror(errno)};
      off += w;
    }
  }
  if (!in) throw Failure{kExitData, "cannot reopen the spooled standard input"};
  return in;
}

// One write(2) per line, so a batch killed at any moment leaves only whole lines (a short write,
// possible on a pipe, is continued).
bool write_whole(int fd, std::string_view line) {
  std::size_t off = 0;
  while (off < line.size()) {
    const ssize_t w = ::write(fd, line.data() + off, line.size() - off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return false;
    off += static_cast<std::size_t>(w);
  }
  return true;
}

// The output file's last byte, to end a line a crash cut before appending to it.
bool ends_mid_line(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0 || st.st_size == 0) return false;
  char last = '\n';
  return ::pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n';
}

// This process's peak resident set (VmHWM), its workers not included. Not getrusage's ru_maxrss:
// Linux carries that over execve from the process that forked us (a test runner's size).
std::optional<long long> peak_rss_kb() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6));
  return std::nullopt;
}

// Restores SIGINT, SIGTERM and SIGPIPE as they were when it ends.
class SignalScope {
 public:
  SignalScope() {
    struct sigaction sa {};
    sa.sa_handler = on_interrupt;
    sigemptyset(&sa.sa_mask);
    ::sigaction(SIGINT, &sa, &old_int_);
    ::sigaction(SIGTERM, &sa, &old_term_);
    struct sigaction ign {};
    ign.sa_handler = SIG_IGN;  // a closed reader is a write error (EPIPE), not a silent death
    sigemptyset(&ign.sa_mask);
    ::sigaction(SIGPIPE, &ign, &old_pipe_);
  }
  ~SignalScope() {
    ::sigaction(SIGINT, &old_int_, nullptr);
    ::sigaction(SIGTERM, &old_term_, nullptr);
    ::sigaction(SIGPIPE, &old_pipe_, nullptr);
  }
  SignalScope(const SignalScope&) = delete;
  SignalScope& operator=(const SignalScope&) = delete;

 private:
  struct sigaction old_int_ {
  }, old_term_{}, old_pipe_{};
};

int run_batch(const BatchArgs& a, const RunnerPolicy& policy) {
  if (a.workers == 0 || a.workers > 256) throw Failure{kExitData, "--workers must be between 1 and 256"};
  if (a.repeat < 1 || a.repeat > 1000) throw Failure{kExitData, "--repeat must be between 1 and 1000"};
  if (a.resume && a.output == "-") throw Failure{kExitData, "--resume needs an output file (-o FILE)"};
  detail::BatchOptions options;
  options.ceiling = policy;
  options.workers = a.workers;
  options.repeat = a.repeat;
  if (!a.shard.empty()) std::tie(options.shard_index, options.shard_count) = parse_shard(a.shard);

  std::ifstream in;
  if (a.cases == "-")
    in = spool_stdin();
  else
    in.open(a.cases, std::ios::binary);
  if (!in) throw Failure{kExitData, "cannot read the cases file '" + a.cases + "'"};
  const detail::CaseIndex index = [&] {
    try {
      return detail::CaseIndex::scan(in);
    } catch (const detail::BatchInputError& e) {
      throw Failure{kExitData, std::string("refused before running: ") + e.what()};
    }
  }();

  // A worker first: a batch that cannot run leaves an earlier output file as it was (no truncation).
  RunnerOptions ro;
  ro.policy = policy;
  ro.workers = a.workers;
  ro.policy_is_ceiling = true;
  ro.preload = a.preload;
  ro.start_timeout_seconds = a.start_timeout_seconds;
  std::optional<Runner> runner;
  try {
    runner.emplace(ro);
    (void)runner->python_version();  // waits for a worker's hello: no worker, no batch
  } catch (const WorkerError& e) {
    throw Failure{kExitUnavailable, e.what()};
  }

  std::vector<bool> done;
  Fd out_fd;
  int out = STDOUT_FILENO;
  if (a.output != "-") {
    if (a.resume) {
      std::ifstream previous(a.output, std::ios::binary);
      if (previous) done = detail::answered_positions(index, previous);
    }
    // Resume reads the last byte back (ends_mid_line), hence O_RDWR.
    out_fd =
        Fd(::open(a.output.c_str(), O_CREAT | O_CLOEXEC | (a.resume ? O_RDWR | O_APPEND : O_WRONLY | O_TRUNC), 0644));
    if (!out_fd) throw Failure{kExitData, "cannot open the output '" + a.output + "': " + std::strerror(errno)};
    out = out_fd.get();
    if (a.resume && ends_mid_line(out) && !write_whole(out, "\n"))
      throw Failure{kExitIo, "cannot write the output '" + a.output + "'"};
  }

  SignalScope signals;
  g_interrupted.store(0);
  detail::Batch batch(*runner, options);
  std::atomic<bool> finished{false};
  const bool live = ::isatty(STDERR_FILENO) == 1;
  // Watches for SIGINT/SIGTERM (the handler only sets a flag) and draws the progress line.
  std::thread watcher([&] {
    using namespace std::chrono;
    const auto period = live ? milliseconds(200) : seconds(5);
    auto next = steady_clock::now() + period;
    bool stopped = false;
    while (!finished.load()) {
      std::this_thread::sleep_for(milliseconds(50));
      if (g_interrupted.load(std::memory_order_relaxed) && !stopped) {
        stopped = true;
        batch.stop();
      }
      if (a.quiet || steady_clock::now() < next) continue;
      next += period;
      const std::string line = batch.progress().progress_line();
      (void)write_whole(STDERR_FILENO, live ? "\r" + line + "\x1b[K" : line + "\n");
    }
  });
  int write_errno = 0;
  const detail::BatchSummary summary = batch.run(in, index, done, [&](std::string_view line) {
    if (write_whole(out, line)) return true;
    write_errno = errno;
    return false;
  });
  finished = true;
  watcher.join();
  if (live && !a.quiet) (void)write_whole(STDERR_FILENO, "\r\x1b[K");

  if (a.resume) {
    out_fd = Fd();
    try {
      // Appended lines follow the earlier ones: the whole file is put back in input order.
      for (const std::string& d : detail::write_in_order({a.output}, &index, a.output, false))
        std::cerr << "safe-py-runner: " << d << "\n";
    } catch (const detail::BatchInputError& e) {
      throw Failure{kExitIo, std::string("cannot re-order the output: ") + e.what()};
    }
  }
  if (!a.quiet) std::cerr << summary.to_text() << std::flush;
  if (!a.summary_json.empty()) {
    json j = summary.to_json();
    if (auto kb = peak_rss_kb()) j["peak_rss_kb"] = *kb;
    std::ofstream s(a.summary_json, std::ios::binary | std::ios::trunc);
    s << j.dump(2) << "\n";
    if (!s) throw Failure{kExitIo, "cannot write the summary '" + a.summary_json + "'"};
  }
  if (write_errno != 0) throw Failure{kExitIo, "cannot write the output: " + std::string(std::strerror(write_errno))};
  return summary.interrupted ? kExitInterrupted : 0;
}

}  // namespace

int batch(const BatchArgs& args, const RunnerPolicy& policy) {
  try {
    return run_batch(args, policy);
  } catch (const Failure& f) {
    std::cerr << "safe-py-runner: " << f.message << std::endl;
    return f.status;
  }
}

int batch_merge(const std::string& out, const std::vector<std::string>& shards, const std::string& cases) {
  try {
    std::optional<detail::CaseIndex> index;
    if (!cases.empty()) {
      std::ifstream in(cases, std::ios::binary);
      if (!in) throw detail::BatchInputError("cannot read the cases file '" + cases + "'");
      index = detail::CaseIndex::scan(in);
    }
    detail::write_in_order(shards, index ? &*index : nullptr, out, true);
    return 0;
  } catch (const detail::BatchInputError& e) {
    std::cerr << "safe-py-runner: batch-merge: " << e.what() << std::endl;
    return kExitData;
  }
}

}  // namespace spr::cli
