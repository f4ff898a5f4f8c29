// The library scan's answer kept between worker starts: a file per set of roots in a directory only this user
// writes, reused while every path the scan looked at still looks the same (one stat each, against a scan that
// opens and reads hundreds of ELF files).
//
// The file is read before the sandbox, with the supervisor's rights, and decides which host files a run may
// read: it is used only when it and its directory belong to this user and nobody else may write them, it is
// opened without following a link, and anything in it that does not parse exactly makes it unused.
#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "common/fd.hpp"
#include "libdeps.hpp"

namespace spr::embed::libdeps {

namespace {

constexpr const char* kMagic = "spr-libdeps 1";
constexpr const char* kEnd = "end";  // the last line: a file cut short is not taken for a shorter answer
constexpr std::size_t kMaxFileBytes = 16u << 20;

std::uint64_t fnv1a(const std::string& s, std::uint64_t h = 1469598103934665603ull) {
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

std::string file_name(const std::vector<std::string>& roots) {
  std::string key = kMagic;
  for (const auto& r : roots) key += '\0' + r;
  char name[40];
  std::snprintf(name, sizeof name, "libdeps-%016llx", static_cast<unsigned long long>(fnv1a(key)));
  return name;
}

// Only this user's, writable by nobody else.
bool owned_and_private(const struct stat& st) { return st.st_uid == ::geteuid() && (st.st_mode & 022) == 0; }

// How many of the cache directory's last steps may be made: `.cache/safe-py-runner` below HOME,
// `safe-py-runner` and XDG_CACHE_HOME itself. Never more: a HOME that does not exist (`nobody`'s
// `/nonexistent`) is not made.
constexpr std::size_t kMadeSteps = 2;

// `dir` opened step by step from the root, each step relative to the last one's descriptor and without following
// a link (a path through a link is not used: nothing is made where another user's link points, red team round
// 17), each of its last kMadeSteps steps made (0700) when missing; an invalid Fd when a step is missing and not
// one of those, or the last step is not a directory this user alone may write.
detail::Fd open_cache_dir(const std::string& dir) {
  if (dir.empty() || dir[0] != '/') return {};
  std::vector<std::string> steps;
  for (std::size_t begin = 1; begin < dir.size();) {
    std::size_t end = dir.find('/', begin);
    if (end == std::string::npos) end = dir.size();
    std::string step = dir.substr(begin, end - begin);
    begin = end + 1;
    if (step.empty() || step == ".") continue;
    if (step == "..") return {};
    steps.push_back(std::move(step));
  }
  detail::Fd at(::open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  for (std::size_t i = 0; at && i < steps.size(); ++i) {
    if (i + kMadeSteps >= steps.size() && ::mkdirat(at.get(), steps[i].c_str(), 0700) != 0 && errno != EEXIST)
      return {};
    at = detail::Fd(::openat(at.get(), steps[i].c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  }
  struct stat st{};
  if (!at || ::fstat(at.get(), &st) != 0 || !S_ISDIR(st.st_mode) || !owned_and_private(st)) return {};
  return at;
}

std::string encode(const Stamp& s) {
  char head[160];
  std::snprintf(head, sizeof head, "%c %llu %llu %llu %lld %lld ", s.present ? (s.follow ? 'F' : 'L') : (s.follow ? 'f' : 'l'),
                static_cast<unsigned long long>(s.dev), static_cast<unsigned long long>(s.ino),
                static_cast<unsigned long long>(s.size), static_cast<long long>(s.mtime_ns),
                static_cast<long long>(s.ctime_ns));
  return head + s.path + '\n';
}

bool decode(const std::string& line, Stamp& s) {
  if (line.size() < 2 || line[1] != ' ') return false;
  const char kind = line[0];
  if (kind != 'F' && kind != 'L' && kind != 'f' && kind != 'l') return false;
  s.present = kind == 'F' || kind == 'L';
  s.follow = kind == 'F' || kind == 'f';
  unsigned long long dev = 0, ino = 0, size = 0;
  long long mtime = 0, ctime = 0;
  int used = 0;
  if (std::sscanf(line.c_str() + 2, "%llu %llu %llu %lld %lld %n", &dev, &ino, &size, &mtime, &ctime, &used) != 5 ||
      used <= 0)
    return false;
  s.dev = dev;
  s.ino = ino;
  s.size = size;
  s.mtime_ns = mtime;
  s.ctime_ns = ctime;
  s.path = line.substr(2 + static_cast<std::size_t>(used));
  return !s.path.empty() && s.path[0] == '/';
}

std::string serialise(const std::vector<std::string>& roots, const StampedScan& scan) {
  std::string out = std::string(kMagic) + '\n';
  for (const auto& r : roots) out += "R " + r + '\n';
  for (const auto& d : scan.system_dirs) out += "S " + d + '\n';
  for (const auto& s : scan.looked_at) out += encode(s);
  for (const auto& [path, real] : scan.resolved) out += "P " + std::to_string(path.size()) + ' ' + path + real + '\n';
  for (const auto& l : scan.libraries) out += "O " + l + '\n';
  return out + kEnd + '\n';
}

// The kept answer when the file is this user's, parses, names these roots and loader directories, and every
// path in it looks as it did; else false.
bool load(int dir_fd, const std::string& name, const std::vector<std::string>& roots, std::vector<std::string>& out) {
  detail::Fd fd(::openat(dir_fd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  struct stat st{};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode) || !owned_and_private(st) ||
      static_cast<std::uint64_t>(st.st_size) > kMaxFileBytes)
    return false;
  std::string text(static_cast<std::size_t>(st.st_size), '\0');
  if (!detail::read_full(fd.get(), text.data(), text.size())) return false;
  std::size_t at = 0;
  auto next_line = [&](std::string& line) {
    const auto nl = text.find('\n', at);
    if (nl == std::string::npos) return false;
    line.assign(text, at, nl - at);
    at = nl + 1;
    return true;
  };
  std::string line;
  if (!next_line(line) || line != kMagic) return false;
  std::vector<std::string> kept_roots, kept_dirs, libs;
  bool ended = false;
  while (!ended && next_line(line)) {
    if (line == kEnd) {
      ended = true;
    } else if (line.rfind("R ", 0) == 0) {
      kept_roots.push_back(line.substr(2));
    } else if (line.rfind("S ", 0) == 0) {
      kept_dirs.push_back(line.substr(2));
    } else if (line.rfind("P ", 0) == 0) {
      // P <length of the path> <the path><its real path, or nothing>: it must resolve the same now.
      unsigned long long len = 0;
      int used = 0;
      if (std::sscanf(line.c_str() + 2, "%llu%n", &len, &used) != 1 || used <= 0) return false;
      const std::size_t from = 2 + static_cast<std::size_t>(used) + 1;
      if (from > line.size() || line[from - 1] != ' ' || len == 0 || len > line.size() - from) return false;
      const std::string path = line.substr(from, static_cast<std::size_t>(len));
      if (path[0] != '/' || real_path_now(path) != line.substr(from + static_cast<std::size_t>(len))) return false;
    } else if (line.rfind("O ", 0) == 0) {
      if (line.size() < 3 || line[2] != '/') return false;
      libs.push_back(line.substr(2));
    } else {
      Stamp was;
      if (!decode(line, was) || !(stamp_of(was.path, was.follow) == was)) return false;
    }
  }
  if (!ended || at != text.size() || kept_roots != roots || kept_dirs != loader_dirs()) return false;
  out = std::move(libs);
  return true;
}

// Written to a file of its own, then renamed over the old one: a reader sees one whole file or the other.
// Workers starting at once each write their own (a random name: each is pid 1 or 2 of its own PID namespace).
void store(int dir_fd, const std::string& name, const std::string& text) {
  std::uint64_t nonce = 0;
  if (::getrandom(&nonce, sizeof nonce, 0) != static_cast<ssize_t>(sizeof nonce)) return;
  char suffix[32];
  std::snprintf(suffix, sizeof suffix, ".tmp.%016llx", static_cast<unsigned long long>(nonce));
  const std::string tmp = name + suffix;
  detail::Fd fd(::openat(dir_fd, tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd) return;
  std::size_t done = 0;
  while (done < text.size()) {
    const ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    done += static_cast<std::size_t>(n);
  }
  const bool whole = done == text.size() && ::close(fd.release()) == 0;
  if (!whole || ::renameat(dir_fd, tmp.c_str(), dir_fd, name.c_str()) != 0) ::unlinkat(dir_fd, tmp.c_str(), 0);
}

std::int64_t now_ns() {
  struct timespec ts{};
  ::clock_gettime(CLOCK_REALTIME, &ts);
  return static_cast<std::int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace

std::vector<std::string> needed_by_extensions_cached(const std::vector<std::string>& roots, const std::string& cache_dir,
                                                     double racy_seconds) {
  const detail::Fd dir = open_cache_dir(cache_dir);
  if (!dir) return needed_by_extensions(roots);
  const std::string name = file_name(roots);
  std::vector<std::string> libs;
  if (load(dir.get(), name, roots, libs)) return libs;
  const std::int64_t racy_before = now_ns() - static_cast<std::int64_t>(racy_seconds * 1e9);
  StampedScan scan = needed_by_extensions_stamped(roots);
  bool keep = true;
  for (const auto& r : roots) keep = keep && r.find('\n') == std::string::npos;
  for (const auto& s : scan.looked_at)
    keep = keep && s.path.find('\n') == std::string::npos && !s.path.empty() && s.path[0] == '/' &&
           s.ctime_ns < racy_before;
  for (const auto& d : scan.system_dirs) keep = keep && d.find('\n') == std::string::npos;
  for (const auto& l : scan.libraries) keep = keep && l.find('\n') == std::string::npos;
  for (const auto& [path, real] : scan.resolved)
    keep = keep && !path.empty() && path[0] == '/' && (path + real).find('\n') == std::string::npos;
  if (keep) store(dir.get(), name, serialise(roots, scan));
  return std::move(scan.libraries);
}

}  // namespace spr::embed::libdeps
