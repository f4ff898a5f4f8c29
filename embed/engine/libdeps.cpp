// Resolves the DT_NEEDED closure of extension modules by reading ELF dynamic sections (no loading).
#include "libdeps.hpp"

#include <dirent.h>
#include <elf.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "common/dir_entries.hpp"
#include "trust.hpp"

namespace spr::embed::libdeps {

namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxExtensions = 20000;  // a bound on the walk, far above a large environment
constexpr int kMaxDepth = 12;

// What the scan on this thread looked at (needed_by_extensions_stamped), or null: not recorded.
thread_local std::map<std::string, Stamp>* t_looked_at = nullptr;
// The real paths it resolved (path -> realpath, "" when it did not resolve): a link on the way (a directory link
// switched to another release) changes the answer without changing any file the scan stat'ed (red team round 17).
thread_local std::map<std::string, std::string>* t_resolved = nullptr;

Stamp stamp_from(const std::string& path, const struct stat& st, bool follow) {
  Stamp s;
  s.path = path;
  s.present = true;
  s.follow = follow;
  s.dev = static_cast<std::uint64_t>(st.st_dev);
  s.ino = static_cast<std::uint64_t>(st.st_ino);
  s.size = static_cast<std::uint64_t>(st.st_size);
  s.mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  s.ctime_ns = static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1000000000 + st.st_ctim.tv_nsec;
  return s;
}

Stamp stamp_from_absent(const std::string& path, bool follow) {
  Stamp s;
  s.path = path;
  s.follow = follow;
  return s;
}

}  // namespace

Stamp stamp_of(const std::string& path, bool follow) {
  struct stat st{};
  if ((follow ? ::stat(path.c_str(), &st) : ::lstat(path.c_str(), &st)) != 0) return stamp_from_absent(path, follow);
  return stamp_from(path, st, follow);
}

namespace {

// A file looked at (stat, following links: `follow`) brings its directory too (lstat): a link replaced there, or
// a library added beside it, changes the directory's times, not the file's. A walked directory is its fstat
// (opened without following a link: the same as its lstat).
void note(const std::string& path, const struct stat* st, bool follow) {
  if (!t_looked_at) return;
  if (follow) {
    const auto slash = path.rfind('/');
    const std::string parent = slash == 0 ? std::string("/") : path.substr(0, slash);
    if (slash != std::string::npos && !t_looked_at->count(parent)) t_looked_at->emplace(parent, stamp_of(parent, false));
  }
  t_looked_at->emplace(path, st ? stamp_from(path, *st, follow) : stamp_from_absent(path, follow));
}

struct Dynamic {
  std::vector<std::string> needed;
  std::vector<std::string> search;  // RPATH or RUNPATH entries, $ORIGIN expanded
};

// real_path_now(p), noted when the scan on this thread records what it resolved.
std::string real(const std::string& p) {
  std::string r = real_path_now(p);
  if (t_resolved) t_resolved->emplace(p, r);
  return r;
}

// A file read piece by piece with pread. Not mmap: mapping each of the hundreds of extension modules a
// site-packages holds and unmapping it again cost a quarter of a worker's start (TLB shootdowns on
// every CPU for each munmap); the few pieces read here are a few kilobytes a file.
class ElfFile {
 public:
  // Only a regular file is opened and read: the scan runs before the worker's sandbox, with the supervisor's
  // rights, and a path an extension module names could be a FIFO (an open would wait for a writer) or a device.
  explicit ElfFile(const std::string& path) {
    struct stat st{};
    const bool found = ::stat(path.c_str(), &st) == 0;
    note(path, found ? &st : nullptr, true);
    if (!found || !S_ISREG(st.st_mode)) return;
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);  // swapped since: never waits
    if (fd_ >= 0 && ::fstat(fd_, &st) == 0 && S_ISREG(st.st_mode)) size_ = static_cast<std::uint64_t>(st.st_size);
  }
  ~ElfFile() {
    if (fd_ >= 0) ::close(fd_);
  }
  ElfFile(const ElfFile&) = delete;
  ElfFile& operator=(const ElfFile&) = delete;
  std::uint64_t size() const { return size_; }
  // Exactly `len` bytes at `off`, or false (out of the file, or a short read).
  bool read(std::uint64_t off, std::size_t len, void* dst) const {
    if (off > size_ || len > size_ - off) return false;
    auto* p = static_cast<unsigned char*>(dst);
    while (len > 0) {
      const ssize_t n = ::pread(fd_, p, len, static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return false;
      p += n;
      off += static_cast<std::uint64_t>(n);
      len -= static_cast<std::size_t>(n);
    }
    return true;
  }
  // The NUL-terminated string at `off` (at most 4 KiB: longer names are not library names).
  std::string string_at(std::uint64_t off) const {
    if (off >= size_) return {};
    char buf[4096];
    const std::size_t len = static_cast<std::size_t>(std::min<std::uint64_t>(sizeof buf, size_ - off));
    if (!read(off, len, buf)) return {};
    return std::string(buf, strnlen(buf, len));
  }

 private:
  int fd_ = -1;
  std::uint64_t size_ = 0;
};

// Every offset read from the file is bounds-checked: an extension module is not trusted to be well formed.
bool read_dynamic(const std::string& path, Dynamic& out) {
  constexpr int kMaxPhdrs = 256;
  constexpr std::size_t kMaxDynamic = 4096;  // entries: far more than any library has
  ElfFile f(path);
  Elf64_Ehdr eh{};
  if (!f.read(0, sizeof eh, &eh) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64)
    return false;
  if (eh.e_phentsize != sizeof(Elf64_Phdr) || eh.e_phnum > kMaxPhdrs) return false;
  std::vector<Elf64_Phdr> ph(eh.e_phnum);
  if (!f.read(eh.e_phoff, ph.size() * sizeof(Elf64_Phdr), ph.data())) return false;
  const Elf64_Phdr* dyn = nullptr;
  for (const auto& p : ph)
    if (p.p_type == PT_DYNAMIC) dyn = &p;
  if (!dyn) return false;
  // The string table is named by its address; the loadable segments map it back to a file offset.
  auto file_offset = [&](Elf64_Addr addr, Elf64_Off& off) {
    for (const auto& p : ph) {
      if (p.p_type != PT_LOAD || addr < p.p_vaddr || addr - p.p_vaddr >= p.p_filesz) continue;
      off = p.p_offset + (addr - p.p_vaddr);
      return off < f.size();
    }
    return false;
  };
  std::vector<Elf64_Dyn> entries(std::min<std::size_t>(dyn->p_filesz / sizeof(Elf64_Dyn), kMaxDynamic));
  if (!f.read(dyn->p_offset, entries.size() * sizeof(Elf64_Dyn), entries.data())) return false;
  Elf64_Addr strtab = 0;
  std::vector<Elf64_Xword> needed, rpath, runpath;
  for (const auto& e : entries) {
    if (e.d_tag == DT_NULL) break;
    switch (e.d_tag) {
      case DT_STRTAB: strtab = e.d_un.d_ptr; break;
      case DT_NEEDED: needed.push_back(e.d_un.d_val); break;
      case DT_RPATH: rpath.push_back(e.d_un.d_val); break;
      case DT_RUNPATH: runpath.push_back(e.d_un.d_val); break;
      default: break;
    }
  }
  Elf64_Off str_off = 0;
  if (!strtab || !file_offset(strtab, str_off)) return false;
  auto str = [&](Elf64_Xword at) -> std::string {
    if (at >= f.size() - str_off) return {};
    return f.string_at(str_off + at);
  };
  for (auto v : needed) out.needed.push_back(str(v));
  const std::string origin = fs::path(path).parent_path().string();
  // RUNPATH, when present, replaces RPATH (the loader's rule).
  for (auto v : runpath.empty() ? rpath : runpath) {
    std::stringstream ss(str(v));
    std::string dir;
    while (std::getline(ss, dir, ':')) {
      for (const char* tok : {"$ORIGIN", "${ORIGIN}"})
        for (auto pos = dir.find(tok); pos != std::string::npos; pos = dir.find(tok))
          dir.replace(pos, std::strlen(tok), origin);
      if (!dir.empty()) out.search.push_back(dir);
    }
  }
  return true;
}

void read_conf(const std::string& file, std::vector<std::string>& dirs, int depth) {
  if (depth > 4) return;
  std::ifstream in(file);
  std::string line;
  while (std::getline(in, line)) {
    line = line.substr(0, line.find('#'));
    line.erase(0, line.find_first_not_of(" \t"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (line.empty()) continue;
    if (line.rfind("include", 0) == 0) {
      std::string pattern = line.substr(7);
      pattern.erase(0, pattern.find_first_not_of(" \t"));
      if (!pattern.empty() && pattern[0] != '/') pattern = fs::path(file).parent_path().string() + "/" + pattern;
      glob_t g{};
      if (::glob(pattern.c_str(), 0, nullptr, &g) == 0)
        for (std::size_t i = 0; i < g.gl_pathc; ++i) read_conf(g.gl_pathv[i], dirs, depth + 1);
      ::globfree(&g);
    } else if (line[0] == '/') {
      dirs.push_back(line);
    }
  }
}

// The directories the loader searches after RPATH/RUNPATH: what ld.so.cache was built from, then the defaults.
const std::vector<std::string>& system_dirs() {
  static const std::vector<std::string> dirs = [] {
    std::vector<std::string> d;
    read_conf("/etc/ld.so.conf", d, 0);
    for (const char* def : {"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
                            "/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"})
      d.emplace_back(def);
    return d;
  }();
  return dirs;
}

// A 64-bit ELF file: what the loader would take for a library at `path` (a library of another class, 32-bit, is
// skipped, as the loader does). A name an extension module gives is not trusted to be a library: a FIFO, a device
// or a text file is none (ElfFile opens without blocking and reads regular files only).
bool is_library_file(const std::string& path) {
  ElfFile f(path);
  unsigned char ident[EI_NIDENT];
  return f.read(0, sizeof ident, ident) && std::memcmp(ident, ELFMAG, SELFMAG) == 0 && ident[EI_CLASS] == ELFCLASS64;
}

std::string resolve(const std::string& name, const std::vector<std::string>& search) {
  if (name.find('/') != std::string::npos) {
    const std::string r = real(name);
    return !r.empty() && is_library_file(r) ? r : std::string();
  }
  for (const auto* list : {&search, &system_dirs()}) {
    for (const auto& dir : *list) {
      const std::string p = dir + "/" + name;
      if (is_library_file(p)) return real(p);  // its stat() is the existence check
    }
  }
  return {};
}

bool is_extension(const char* name) {
  const std::size_t len = std::strlen(name);
  return len > 3 && (std::strcmp(name + len - 3, ".so") == 0 || std::strstr(name, ".so.") != nullptr);
}

struct Walk {
  std::set<std::string>& seen;
  std::vector<std::string>& queue;
};

// The extension modules under the directory `dir` (open as `dir_fd`), recursively, as the loader would find
// them: relative to each directory's descriptor, with the entry types getdents reports, so no entry is
// stat'ed but links and the rare file system that reports no type, and no open walks the path from the root
// (half the calls and a third of the time of a std::filesystem walk: it runs at every worker's start).
// Directory links are not followed; file links are taken at their real path.
void walk(int dir_fd, const std::string& dir, int depth, Walk& w) {
  if (t_looked_at) {
    struct stat st{};
    if (::fstat(dir_fd, &st) == 0) note(dir, &st, false);
  }
  detail::for_each_dir_entry(dir_fd, [&](const struct dirent64& d) {
    const char* name = d.d_name;
    unsigned char type = d.d_type;
    if (type == DT_UNKNOWN) {
      struct stat st{};
      if (::fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) != 0) return;
      type = S_ISDIR(st.st_mode) ? DT_DIR : S_ISREG(st.st_mode) ? DT_REG : S_ISLNK(st.st_mode) ? DT_LNK : DT_UNKNOWN;
    }
    if (type == DT_DIR) {
      if (depth >= kMaxDepth || std::strcmp(name, "__pycache__") == 0) return;
      const int sub = ::openat(dir_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) return;  // unreadable (as skip_permission_denied), or swapped for a link
      walk(sub, dir + "/" + name, depth + 1, w);
      ::close(sub);
      return;
    }
    if ((type != DT_REG && type != DT_LNK) || !is_extension(name) || w.queue.size() >= kMaxExtensions) return;
    std::string path = dir + "/" + name;
    if (type == DT_LNK) {
      struct stat st{};
      if (::fstatat(dir_fd, name, &st, 0) != 0 || !S_ISREG(st.st_mode)) return;  // a link to a file only
      path = real(path);
    }
    if (!path.empty() && w.seen.insert(path).second) w.queue.push_back(std::move(path));
  });
}

}  // namespace

const std::vector<std::string>& loader_dirs() { return system_dirs(); }

std::string real_path_now(const std::string& path) {
  char buf[PATH_MAX];
  return realpath(path.c_str(), buf) ? std::string(buf) : std::string();
}

StampedScan needed_by_extensions_stamped(const std::vector<std::string>& roots) {
  std::map<std::string, Stamp> looked_at;
  std::map<std::string, std::string> resolved;
  t_looked_at = &looked_at;
  t_resolved = &resolved;
  StampedScan out;
  try {
    out.libraries = needed_by_extensions(roots);
  } catch (...) {
    t_looked_at = nullptr;
    t_resolved = nullptr;
    throw;
  }
  t_looked_at = nullptr;
  t_resolved = nullptr;
  out.resolved.assign(resolved.begin(), resolved.end());
  out.system_dirs = system_dirs();
  out.looked_at.reserve(looked_at.size());
  for (auto& [path, s] : looked_at) out.looked_at.push_back(std::move(s));
  return out;
}

std::vector<std::string> needed_by_extensions(const std::vector<std::string>& roots) {
  std::vector<std::string> queue;
  std::set<std::string> seen;
  // Hundreds of extension modules name the same few libraries (libc.so.6, libm.so.6): each name is
  // looked up once per search list, not once per module that needs it.
  std::map<std::string, std::string> resolved;
  Walk w{seen, queue};
  for (const auto& root : roots) {
    const int fd = ::open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) continue;
    walk(fd, root, 0, w);
    ::close(fd);
  }
  std::vector<std::string> out;
  while (!queue.empty()) {
    const std::string file = queue.back();
    queue.pop_back();
    Dynamic dyn;
    if (!read_dynamic(file, dyn)) continue;
    std::string key_tail;
    for (const auto& dir : dyn.search) key_tail += '\0' + dir;
    for (const auto& name : dyn.needed) {
      auto [at, fresh] = resolved.try_emplace(name + key_tail);
      if (fresh) at->second = resolve(name, dyn.search);
      const std::string& lib = at->second;
      if (lib.empty() || !seen.insert(lib).second) continue;
      queue.push_back(lib);
      if (!trust::path_under(lib, roots)) out.push_back(lib);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace spr::embed::libdeps
