#include "escape_helpers.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

namespace sec {

double time_scale() {
  const char* s = std::getenv("SPR_TEST_TIME_SCALE");
  return s && std::atof(s) > 1 ? std::atof(s) : 1.0;
}


std::string random_hex(std::size_t bytes) {
  std::vector<unsigned char> b(bytes);
  if (getrandom(b.data(), b.size(), 0) != static_cast<ssize_t>(b.size()))
    for (auto& c : b) c = static_cast<unsigned char>(random());
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned char c : b) {
    s += hex[c >> 4];
    s += hex[c & 15];
  }
  return s;
}

Listener::Listener() {
  fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  if (fd_ < 0 || ::bind(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd_, 64) != 0) {
    std::perror("listener");
    std::abort();
  }
  socklen_t len = sizeof a;
  ::getsockname(fd_, reinterpret_cast<sockaddr*>(&a), &len);
  port_ = ntohs(a.sin_port);
}

Listener::~Listener() {
  if (fd_ >= 0) ::close(fd_);
}

int Listener::connections(int timeout_ms) {
  int n = 0;
  pollfd p{fd_, POLLIN, 0};
  while (::poll(&p, 1, n == 0 ? timeout_ms : 0) > 0) {
    int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) break;
    ::close(c);
    ++n;
  }
  return n;
}

namespace {
bool read_file(const std::string& path, std::string& out) {
  std::ifstream in(path);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  out = ss.str();
  return true;
}
}  // namespace

std::vector<ProcInfo> descendants(pid_t root, const std::vector<pid_t>& exclude) {
  std::map<pid_t, std::vector<pid_t>> children;
  std::map<pid_t, ProcInfo> info;
  DIR* d = ::opendir("/proc");
  if (!d) return {};
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end) continue;
    std::string stat;
    if (!read_file("/proc/" + std::string(e->d_name) + "/stat", stat)) continue;
    auto lp = stat.find('('), rp = stat.rfind(')');
    if (lp == std::string::npos || rp == std::string::npos) continue;
    std::string comm = stat.substr(lp + 1, rp - lp - 1);
    std::istringstream rest(stat.substr(rp + 2));
    char state;
    long ppid;
    rest >> state >> ppid;
    if (state == 'Z') continue;  // a zombie no longer runs anything
    std::string status;
    int threads = 1;
    if (read_file("/proc/" + std::string(e->d_name) + "/status", status)) {
      auto t = status.find("Threads:");
      if (t != std::string::npos) threads = std::atoi(status.c_str() + t + 8);
    }
    children[static_cast<pid_t>(ppid)].push_back(static_cast<pid_t>(pid));
    info[static_cast<pid_t>(pid)] = ProcInfo{static_cast<pid_t>(pid), comm, threads};
  }
  ::closedir(d);
  std::vector<ProcInfo> out;
  std::vector<pid_t> stack{root};
  while (!stack.empty()) {
    pid_t p = stack.back();
    stack.pop_back();
    for (pid_t c : children[p]) {
      bool skip = false;
      for (pid_t x : exclude) skip = skip || x == c;
      if (skip) continue;
      out.push_back(info[c]);
      stack.push_back(c);
    }
  }
  return out;
}

int total_threads(const std::vector<ProcInfo>& procs) {
  int n = 0;
  for (const auto& p : procs) n += p.threads;
  return n;
}

Decoy::Decoy() { respawn(); }

Decoy::~Decoy() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void Decoy::respawn() {
  if (pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  pid_ = ::fork();
  if (pid_ == 0) {
    ::setpgid(0, 0);
    for (;;) ::pause();
  }
}

bool Decoy::alive() {
  int status = 0;
  return ::waitpid(pid_, &status, WNOHANG) == 0;
}

bool Decoy::untouched() {
  if (!alive()) return false;
  std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
  bool read = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("SigPnd:", 0) != 0 && line.rfind("ShdPnd:", 0) != 0) continue;
    read = true;
    if (std::strtoull(line.c_str() + 7, nullptr, 16) != 0) return false;
  }
  return read;
}

std::vector<std::string> files_with_prefix(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string n = e->d_name;
    if (n.rfind(prefix, 0) != 0) continue;
    out.push_back(dir + "/");
    out.back() += n;
  }
  ::closedir(d);
  return out;
}

void remove_with_prefix(const std::string& dir, const std::string& prefix) {
  for (const auto& f : files_with_prefix(dir, prefix)) ::unlink(f.c_str());
}

StderrTap::StderrTap() {
  char tmpl[] = "/tmp/spr-sec-stderr-XXXXXX";
  int fd = ::mkstemp(tmpl);
  if (fd < 0) return;
  path_ = tmpl;
  saved_ = ::dup(2);
  ::dup2(fd, 2);
  ::close(fd);
}

StderrTap::~StderrTap() {
  if (saved_ >= 0) {
    ::dup2(saved_, 2);
    ::close(saved_);
  }
  if (!path_.empty()) ::unlink(path_.c_str());
}

std::size_t StderrTap::size() const {
  struct stat st{};
  return ::stat(path_.c_str(), &st) == 0 ? static_cast<std::size_t>(st.st_size) : 0;
}

std::string StderrTap::since(std::size_t offset) const {
  std::string all;
  read_file(path_, all);
  return offset < all.size() ? all.substr(offset) : std::string();
}

long peak_rss_kb() {
  std::string s;
  if (!read_file("/proc/self/status", s)) return 0;
  auto p = s.find("VmHWM:");
  return p == std::string::npos ? 0 : std::atol(s.c_str() + p + 6);
}

bool reset_peak_rss() {
  int fd = ::open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::write(fd, "5", 1) == 1;
  ::close(fd);
  return ok;
}

bool contains(const std::string& hay, const std::string& needle) {
  return !needle.empty() && hay.find(needle) != std::string::npos;
}

StdoutWatch::StdoutWatch() {
  options_.on_output = [state = state_](spr::OutputStream stream, const std::string& data) {
    if (stream != spr::OutputStream::out) return;
    std::lock_guard<std::mutex> lock(state->m);
    state->seen += data;
    state->cv.notify_all();
  };
}

bool StdoutWatch::wait_for(const std::string& text, spr::RunHandle& run) {
  std::unique_lock<std::mutex> lock(state_->m);
  while (state_->seen.find(text) == std::string::npos && run.wait_for(std::chrono::seconds(0)) != std::future_status::ready)
    state_->cv.wait_for(lock, std::chrono::milliseconds(20));
  return state_->seen.find(text) != std::string::npos;
}

std::string StdoutWatch::seen() const {
  std::lock_guard<std::mutex> lock(state_->m);
  return state_->seen;
}

std::string all_output(const spr::RunResult& r) {
  return r.stdout_text + "\n" + r.stderr_text + "\n" + r.result.dump() + "\n" + r.error.value_or("");
}

std::string layer_of(const spr::RunResult& r) {
  using spr::ErrorKind;
  const std::string e = r.error.value_or("");
  if (r.error_kind == ErrorKind::blocked_import || contains(e, "NameError") ||
      (contains(e, "ImportError") && contains(e, "blocked by policy")) ||
      (contains(e, "AttributeError") && contains(e, "module 'sys'")))
    return "python guard";
  if (contains(e, "blocked by policy: audit event")) return "audit hook";
  if (r.error_kind == ErrorKind::timeout || r.error_kind == ErrorKind::memory || r.error_kind == ErrorKind::cpu_time ||
      r.timed_out || r.resource_exceeded || contains(e, "RecursionError") || contains(e, "can't start new thread"))
    return "limits";
  if (r.error_kind == ErrorKind::worker_crashed) return "crash contained";
  if (contains(e, "PermissionError") || contains(e, "Operation not permitted") || contains(e, "Permission denied") ||
      contains(e, "[Errno 1]") || contains(e, "[Errno 13]") || contains(e, "[Errno 38]") ||
      contains(e, "Function not implemented"))
    return "os (seccomp/landlock)";
  if (r.error_kind == ErrorKind::protocol_error) return "supervisor (protocol check)";
  if (r.ok) return "no effect";
  return "exception (other)";
}

}  // namespace sec
