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
#include "common/run_files.hpp"

namespace spr::embed::file_transfer {

namespace {

using detail::Fd;
using detail::retry_eintr;

// Entries one collect looks at, whatever the run left: the walk's cost stays bounded.
constexpr std::size_t kMaxEntriesSeen = 10000;

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

struct Walk {
  Walk(const std::vector<std::string>& p, std::size_t depth) : patterns(p), max_depth(depth) {}
  Walk(const Walk&) = delete;
  Walk& operator=(const Walk&) = delete;
  const std::vector<std::string>& patterns;
  std::size_t max_depth;
  std::size_t seen = 0;
  std::vector<std::pair<std::string, int>> found;  // matching regular files: name, descriptor (owned)

  ~Walk() {
    for (auto& f : found) ::close(f.second);
  }

  // `dir` is owned by this call. Directories are entered through descriptors opened with O_NOFOLLOW:
  // a link the run planted (to "/", to a host file) is neither entered nor read.
  void visit(int dir, const std::string& prefix, std::size_t depth) {
    DIR* d = ::fdopendir(dir);
    if (!d) {
      ::close(dir);
      return;
    }
    std::vector<std::string> names;
    while (dirent* e = ::readdir(d)) {
      if (++seen > kMaxEntriesSeen) break;
      if (std::strcmp(e->d_name, ".") == 0 || std::strcmp(e->d_name, "..") == 0) continue;
      names.emplace_back(e->d_name);
    }
    for (const auto& n : names) {
      const std::string name = prefix.empty() ? n : prefix + "/" + n;
      if (name.size() > detail::run_files::kMaxNameBytes) continue;
      const int fd = ::openat(::dirfd(d), n.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
      if (fd < 0) continue;  // a link (ELOOP) or something the run may not read
      struct stat st;
      if (::fstat(fd, &st) != 0) {
        ::close(fd);
      } else if (S_ISDIR(st.st_mode) && depth + 1 < max_depth) {
        visit(fd, name, depth + 1);
      } else if (S_ISREG(st.st_mode) && detail::run_files::matches(patterns, name)) {
        found.emplace_back(name, fd);
      } else {
        ::close(fd);
      }
    }
    ::closedir(d);
  }
};

}  // namespace

std::string write(int dir_fd, const Files& files) {
  return detail::run_files::write_files(dir_fd, files, false, "the run directory");
}

void collect(int dir_fd, const std::vector<std::string>& patterns, std::uint64_t cap_bytes, RunResult& r) {
  r.files.clear();
  r.files_left_out.clear();
  if (patterns.empty() || dir_fd < 0) return;
  const int top = ::openat(dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (top < 0) return;
  Walk w(patterns, detail::run_files::depth(patterns));
  w.visit(top, "", 0);
  std::uint64_t left = cap_bytes;
  std::sort(w.found.begin(), w.found.end());
  for (auto& [name, fd] : w.found) {
    struct stat st;
    const bool listed_full = r.files.size() >= detail::run_files::kMaxFiles;
    std::string bytes;
    if (!listed_full && ::fstat(fd, &st) == 0 && static_cast<std::uint64_t>(st.st_size) <= left &&
        read_all(fd, static_cast<std::size_t>(st.st_size), bytes)) {
      left -= bytes.size();
      r.files.emplace(name, std::move(bytes));
    } else if (r.files_left_out.size() < detail::run_files::kMaxFiles) {
      r.files_left_out.push_back(name);
    }
  }
}

}  // namespace spr::embed::file_transfer
