// The run directory's files: written from the request before the code starts, collected after it.
#include "file_transfer.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "common/fd.hpp"
#include "common/outcome.hpp"
#include "common/run_files.hpp"

namespace spr::embed::file_transfer {

namespace {

using detail::Fd;
using detail::retry_eintr;

// Entries one collect looks at, whatever the run left: the walk's cost stays bounded. Four times the
// inodes a run directory of its own holds (mechanisms.hpp's scratch_inodes), so there it sees everything.
constexpr std::size_t kMaxEntriesSeen = 65536;

bool read_all(int fd, std::size_t size, std::string& out) {
  out.resize(size);
  std::size_t done = 0;
  while (done < size) {
    const ssize_t n = retry_eintr([&] { return ::read(fd, out.data() + done, size - done); });
    if (n < 0) return false;
    if (n == 0) break;  // shrank since fstat: what is there
    done += static_cast<std::size_t>(n);
  }
  out.resize(done);
  return true;
}

// The walk keeps names only, never a descriptor per match: a run's process has few descriptors
// (RLIMIT_NOFILE), and a match it could not open would be lost.
struct Walk {
  Walk(const std::vector<std::string>& p, std::size_t depth) : patterns(p), max_depth(depth) {}
  Walk(const Walk&) = delete;
  Walk& operator=(const Walk&) = delete;
  const std::vector<std::string>& patterns;
  std::size_t max_depth;
  std::size_t seen = 0;
  std::vector<std::string> found;  // matching regular files, by name
  bool unnamed = false;            // a match (or a directory that may hold one) this result cannot name

  // `dir` is owned by this call. Directories are entered through descriptors opened with O_NOFOLLOW:
  // a link the run planted (to "/", to a host file) is neither entered nor read.
  void visit(int dir, const std::string& prefix, std::size_t depth) {
    DIR* d = ::fdopendir(dir);
    if (!d) {
      ::close(dir);
      unnamed = true;
      return;
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      if (++seen > kMaxEntriesSeen) {
        unnamed = true;
        break;
      }
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      names.emplace_back(e->d_name);
    }
    for (const auto& n : names) {
      const std::string name = prefix.empty() ? n : prefix + "/" + n;
      const bool enter = depth + 1 < max_depth;
      // Only a look at the entry, not through a link: a match is opened again, with O_NOFOLLOW, when it is read.
      struct stat st;
      if (::fstatat(::dirfd(d), n.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {  // gone since readdir
        unnamed = unnamed || enter || detail::run_files::matches(patterns, name);
      } else if (S_ISDIR(st.st_mode) && enter) {
        const int sub = ::openat(::dirfd(d), n.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (sub < 0) {
          unnamed = true;  // a directory the walk cannot read may hold matches
        } else {
          visit(sub, name, depth + 1);
        }
      } else if (S_ISREG(st.st_mode) && detail::run_files::matches(patterns, name)) {
        // A name the result cannot carry as it is (too long, not UTF-8) is not renamed: it is counted.
        if (name.size() > detail::run_files::kMaxNameBytes || !detail::valid_utf8(name)) {
          unnamed = true;
        } else {
          found.push_back(name);
        }
      }
    }
    ::closedir(d);
  }
};

// Opens a name the walk found, one component at a time from `top` with O_NOFOLLOW: a component the run
// swapped for a link since the walk is not followed. Empty when it is gone or cannot be opened.
Fd open_found(int top, const std::string& name) {
  Fd parent;
  std::size_t start = 0;
  for (;;) {
    const std::size_t slash = name.find('/', start);
    const std::string part = name.substr(start, slash == std::string::npos ? std::string::npos : slash - start);
    const int at = parent ? parent.get() : top;
    if (slash == std::string::npos)
      return Fd(retry_eintr([&] { return ::openat(at, part.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY); }));
    Fd sub(::openat(at, part.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    if (!sub) return sub;
    parent = std::move(sub);
    start = slash + 1;
  }
}

}  // namespace

std::string write(int dir_fd, const Files& files) {
  return detail::run_files::write_files(dir_fd, files, false, "the run directory");
}

void collect(int dir_fd, const std::vector<std::string>& patterns, std::uint64_t cap_bytes, RunResult& r) {
  r.files.clear();
  r.files_left_out.clear();
  r.files_truncated = false;
  if (patterns.empty() || dir_fd < 0) return;
  const int top = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (top < 0) {
    r.files_truncated = true;
    return;
  }
  Walk w(patterns, detail::run_files::depth(patterns));
  w.visit(top, "", 0);
  r.files_truncated = w.unnamed;
  std::uint64_t left = cap_bytes;
  std::sort(w.found.begin(), w.found.end());
  for (const auto& name : w.found) {
    std::string bytes;
    bool taken = false;
    if (r.files.size() < detail::run_files::kMaxFiles) {
      const Fd fd = open_found(dir_fd, name);
      struct stat st;
      taken = fd && ::fstat(fd.get(), &st) == 0 && S_ISREG(st.st_mode) &&
              static_cast<std::uint64_t>(st.st_size) <= left &&
              read_all(fd.get(), static_cast<std::size_t>(st.st_size), bytes);
    }
    if (taken) {
      left -= bytes.size();
      r.files.emplace(name, std::move(bytes));
    } else if (r.files_left_out.size() < detail::run_files::kMaxFiles) {
      r.files_left_out.push_back(name);
    } else {
      r.files_truncated = true;
    }
  }
}

}  // namespace spr::embed::file_transfer
