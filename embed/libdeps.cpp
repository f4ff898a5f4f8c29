// Resolves the DT_NEEDED closure of extension modules by reading ELF dynamic sections (no loading).
#include "libdeps.hpp"

#include <elf.h>
#include <fcntl.h>
#include <glob.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "audit.hpp"

namespace spr::embed::libdeps {

namespace {

namespace fs = std::filesystem;

constexpr std::size_t kMaxExtensions = 20000;  // a bound on the walk, far above a large environment
constexpr int kMaxDepth = 12;

struct Dynamic {
  std::vector<std::string> needed;
  std::vector<std::string> search;  // RPATH or RUNPATH entries, $ORIGIN expanded
};

std::string real(const std::string& p) {
  char buf[PATH_MAX];
  return realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

// A read-only mapping of a whole file, unmapped at scope end.
class Mapped {
 public:
  explicit Mapped(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    struct stat st{};
    if (::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= static_cast<off_t>(sizeof(Elf64_Ehdr))) {
      void* m = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
      if (m != MAP_FAILED) {
        data_ = static_cast<const unsigned char*>(m);
        size_ = static_cast<std::size_t>(st.st_size);
      }
    }
    ::close(fd);
  }
  ~Mapped() {
    if (data_) ::munmap(const_cast<unsigned char*>(data_), size_);
  }
  Mapped(const Mapped&) = delete;
  Mapped& operator=(const Mapped&) = delete;
  const unsigned char* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  const unsigned char* data_ = nullptr;
  std::size_t size_ = 0;
};

// Every offset read from the file is bounds-checked: an extension module is not trusted to be well formed.
bool read_dynamic(const std::string& path, Dynamic& out) {
  Mapped m(path);
  const unsigned char* d = m.data();
  if (!d || std::memcmp(d, ELFMAG, SELFMAG) != 0 || d[EI_CLASS] != ELFCLASS64) return false;
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(d);
  if (eh->e_phentsize != sizeof(Elf64_Phdr) || eh->e_phoff > m.size() ||
      eh->e_phnum > (m.size() - eh->e_phoff) / sizeof(Elf64_Phdr))
    return false;
  const auto* ph = reinterpret_cast<const Elf64_Phdr*>(d + eh->e_phoff);
  const Elf64_Phdr* dyn = nullptr;
  for (int i = 0; i < eh->e_phnum; ++i)
    if (ph[i].p_type == PT_DYNAMIC) dyn = &ph[i];
  if (!dyn || dyn->p_offset > m.size() || dyn->p_filesz > m.size() - dyn->p_offset) return false;
  // The string table is named by its address; the loadable segments map it back to a file offset.
  auto file_offset = [&](Elf64_Addr addr, Elf64_Off& off) {
    for (int i = 0; i < eh->e_phnum; ++i) {
      if (ph[i].p_type != PT_LOAD || addr < ph[i].p_vaddr || addr - ph[i].p_vaddr >= ph[i].p_filesz) continue;
      off = ph[i].p_offset + (addr - ph[i].p_vaddr);
      return off < m.size();
    }
    return false;
  };
  const auto* entries = reinterpret_cast<const Elf64_Dyn*>(d + dyn->p_offset);
  const std::size_t n = dyn->p_filesz / sizeof(Elf64_Dyn);
  Elf64_Addr strtab = 0;
  std::vector<Elf64_Xword> needed, rpath, runpath;
  for (std::size_t i = 0; i < n && entries[i].d_tag != DT_NULL; ++i) {
    switch (entries[i].d_tag) {
      case DT_STRTAB: strtab = entries[i].d_un.d_ptr; break;
      case DT_NEEDED: needed.push_back(entries[i].d_un.d_val); break;
      case DT_RPATH: rpath.push_back(entries[i].d_un.d_val); break;
      case DT_RUNPATH: runpath.push_back(entries[i].d_un.d_val); break;
      default: break;
    }
  }
  Elf64_Off str_off = 0;
  if (!strtab || !file_offset(strtab, str_off)) return false;
  auto str = [&](Elf64_Xword at) -> std::string {
    if (at >= m.size() - str_off) return {};
    const char* s = reinterpret_cast<const char*>(d + str_off + at);
    return std::string(s, strnlen(s, m.size() - str_off - at));
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

std::string resolve(const std::string& name, const std::vector<std::string>& search) {
  if (name.find('/') != std::string::npos) return real(name);
  for (const auto* list : {&search, &system_dirs()}) {
    for (const auto& dir : *list) {
      const std::string p = dir + "/" + name;
      if (::access(p.c_str(), F_OK) != 0) continue;
      Mapped m(p);  // a library of another class (32-bit) is skipped, as the loader does
      if (m.data() && std::memcmp(m.data(), ELFMAG, SELFMAG) == 0 && m.data()[EI_CLASS] == ELFCLASS64) return real(p);
    }
  }
  return {};
}

bool is_extension(const fs::path& p) {
  const std::string name = p.filename().string();
  return name.size() > 3 && (name.compare(name.size() - 3, 3, ".so") == 0 || name.find(".so.") != std::string::npos);
}

}  // namespace

std::vector<std::string> needed_by_extensions(const std::vector<std::string>& roots) {
  std::vector<std::string> queue;
  std::set<std::string> seen;
  std::size_t count = 0;
  for (const auto& root : roots) {
    std::error_code ec;
    fs::recursive_directory_iterator it(root, fs::directory_options::skip_permission_denied, ec), end;
    for (; !ec && it != end && count < kMaxExtensions; it.increment(ec)) {
      if (it.depth() > kMaxDepth || it->path().filename() == "__pycache__") {
        it.disable_recursion_pending();
        continue;
      }
      std::error_code fec;
      if (!it->is_regular_file(fec) || !is_extension(it->path())) continue;
      const std::string r = real(it->path().string());
      if (!r.empty() && seen.insert(r).second) {
        queue.push_back(r);
        ++count;
      }
    }
  }
  std::vector<std::string> out;
  while (!queue.empty()) {
    const std::string file = queue.back();
    queue.pop_back();
    Dynamic dyn;
    if (!read_dynamic(file, dyn)) continue;
    for (const auto& name : dyn.needed) {
      const std::string lib = resolve(name, dyn.search);
      if (lib.empty() || !seen.insert(lib).second) continue;
      queue.push_back(lib);
      if (!audit::path_under(lib, roots)) out.push_back(lib);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace spr::embed::libdeps
