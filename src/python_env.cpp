// Resolves a python_executable to one of the CPython builds this library has a worker for, reading files
// only: the supervisor never runs a binary a request named (issue 17), and a run never mixes two builds.
#include "detail/python_env.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "common/fd.hpp"
#include "detail/spawn.hpp"

extern const char kSprPythons[];  // spr-pythons.json, written by cmake/pythons.cmake

namespace spr::detail {

namespace {

namespace fs = std::filesystem;

// One CPython build, as cmake/python_info.py described it when this library was built.
struct Build {
  std::string version, xy, build, executable, worker;
  std::vector<std::string> stdlib, site, venv_site, bindirs;
};

const std::vector<Build>& builds() {
  // Never destroyed: a Runner in a static may still resolve while statics are destroyed at exit.
  static const auto& all = *[] {
    auto* out = new std::vector<Build>;
    for (const auto& j : nlohmann::json::parse(kSprPythons)) {
      Build b;
      b.version = j.at("version");
      b.xy = j.at("xy");
      b.build = j.at("build");
      b.executable = j.at("executable");
      b.worker = j.at("worker");
      b.stdlib = j.at("stdlib").get<std::vector<std::string>>();
      b.site = j.at("site").get<std::vector<std::string>>();
      b.venv_site = j.at("venv_site").get<std::vector<std::string>>();
      b.bindirs = j.at("bindirs").get<std::vector<std::string>>();
      out->push_back(std::move(b));
    }
    return out;
  }();
  return all;
}

std::string real(const std::string& p) {
  std::error_code ec;
  fs::path r = fs::canonical(p, ec);
  return ec ? std::string() : r.string();
}

// A small text file (pyvenv.cfg, a .pth), read through one descriptor; false when absent, not a file or large.
bool read_small(const fs::path& p, std::string& out) {
  constexpr std::size_t kMax = 1 << 20;
  Fd fd(::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  struct stat st{};
  if (!fd || ::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  out.clear();
  char buf[8192];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
    if (out.size() > kMax) return false;
  }
  return true;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(start, end - start);
    while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
    out.push_back(std::move(line));
    start = end + 1;
  }
  return out;
}

std::string trim(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

// pyvenv.cfg's "key = value" lines, keys lower-cased as CPython's getpath reads them.
std::map<std::string, std::string> parse_cfg(const std::string& text) {
  std::map<std::string, std::string> out;
  for (const auto& line : lines_of(text)) {
    const auto eq = line.find('=');
    if (eq == std::string::npos) continue;
    std::string key = trim(line.substr(0, eq));
    std::transform(key.begin(), key.end(), key.begin(), [](unsigned char c) { return std::tolower(c); });
    out.emplace(key, trim(line.substr(eq + 1)));
  }
  return out;
}

void add_unique(std::vector<std::string>& path, const std::string& entry) {
  if (!entry.empty() && std::find(path.begin(), path.end(), entry) == path.end()) path.push_back(entry);
}

// What site.addsitedir adds: the directory, then the existing directories its .pth files name, in file
// name order. A .pth line starting with "import" is code: it is never run (documented in README).
void add_site_dir(std::vector<std::string>& path, const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return;
  add_unique(path, dir);
  std::vector<fs::path> pth;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name.size() > 4 && name[0] != '.' && name.compare(name.size() - 4, 4, ".pth") == 0) pth.push_back(it->path());
  }
  std::sort(pth.begin(), pth.end());
  for (const auto& file : pth) {
    std::string text;
    if (!read_small(file, text)) continue;
    for (const auto& line : lines_of(text)) {
      if (line.empty() || line[0] == '#' || line.rfind("import ", 0) == 0 || line.rfind("import\t", 0) == 0) continue;
      const std::string entry = (fs::path(dir) / line).lexically_normal().string();
      if (fs::exists(entry, ec)) add_unique(path, entry.size() > 1 && entry.back() == '/' ? entry.substr(0, entry.size() - 1) : entry);
    }
  }
}

std::string served_list() {
  std::string out;
  for (const auto& s : served_pythons()) out += (out.empty() ? "" : ", ") + s;
  return out;
}

PythonEnv env_of(const Build& b, const std::string& executable, const std::vector<std::string>& site_dirs) {
  PythonEnv env;
  env.executable = executable;
  env.version = b.version;
  env.build = b.build;
  env.worker = b.worker;
  // The caller's PYTHONPATH comes first, as python3 puts it (the original runs its interpreter with it).
  if (const char* pp = std::getenv("PYTHONPATH"); pp && *pp) {
    for (const auto& e : lines_of(std::string(pp) + "\n")) {
      std::size_t start = 0;
      while (start <= e.size()) {
        std::size_t end = e.find(':', start);
        if (end == std::string::npos) end = e.size();
        const std::string part = e.substr(start, end - start);
        if (!part.empty() && part[0] == '/') add_unique(env.path, fs::path(part).lexically_normal().string());
        start = end + 1;
      }
    }
  }
  for (const auto& s : b.stdlib) add_unique(env.path, s);
  for (const auto& s : site_dirs) add_site_dir(env.path, s);
  return env;
}

PythonEnv refuse(const std::string& why) {
  PythonEnv env;
  env.error = why;
  return env;
}

}  // namespace

std::string default_python() { return SPR_DEFAULT_PYTHON; }

namespace {

// "3.9.18" as {3, 9, 18}: versions compare as numbers (3.9 before 3.13).
std::vector<int> version_numbers(const std::string& version) {
  std::vector<int> out;
  for (std::size_t i = 0; i < version.size();) {
    std::size_t end = i;
    while (end < version.size() && std::isdigit(static_cast<unsigned char>(version[end]))) ++end;
    out.push_back(end > i ? std::atoi(version.substr(i, end - i).c_str()) : 0);
    i = end + 1;
  }
  return out;
}

}  // namespace

std::vector<std::string> served_pythons(const std::filesystem::path& default_worker) {
  // The default first (what an unset python_executable gets), then the others by version.
  std::vector<const Build*> others;
  for (std::size_t i = 1; i < builds().size(); ++i) others.push_back(&builds()[i]);
  std::stable_sort(others.begin(), others.end(), [](const Build* a, const Build* b) {
    return version_numbers(a->version) < version_numbers(b->version);
  });
  std::vector<std::string> out;
  if (!builds().empty()) out.push_back(builds().front().version + " " + builds().front().executable);
  for (const Build* b : others) {
    const bool built =
        default_worker.empty() || executable_file((default_worker.parent_path() / b->worker).c_str());
    out.push_back(b->version + " " + b->executable + (built ? "" : " (its worker is not built)"));
  }
  return out;
}

PythonEnv resolve_python(const std::string& executable) {
  const auto& all = builds();
  if (executable.empty()) return env_of(all.front(), default_python(), all.front().site);
  const std::string named = "python_executable " + executable;
  struct stat st{};
  if (::stat(executable.c_str(), &st) != 0) return refuse(named + " cannot be used: " + std::strerror(errno));
  if (!S_ISREG(st.st_mode)) return refuse(named + " is not a file");
  const std::string tail = " (this build serves " + served_list() +
                           "; configure with -DSPR_PYTHONS=/path/to/python3 for another CPython 3.9 to 3.13 "
                           "with a shared libpython)";
  // A venv, as CPython's getpath finds one: pyvenv.cfg next to the executable or one directory up.
  const fs::path bin = fs::path(executable).parent_path();
  for (const fs::path& root : {bin, bin.parent_path()}) {
    std::string text;
    if (!read_small(root / "pyvenv.cfg", text)) continue;
    auto cfg = parse_cfg(text);
    const std::string home = real(cfg["home"]);
    // `version` (venv) or `version_info` (virtualenv: "3.11.7.final.0").
    std::string version = cfg.count("version") ? cfg["version"] : cfg["version_info"];
    if (home.empty()) return refuse(named + " is in a venv whose pyvenv.cfg names no existing home");
    const Build* found = nullptr;
    for (const auto& b : all) {
      if (std::find(b.bindirs.begin(), b.bindirs.end(), home) == b.bindirs.end()) continue;
      if (!version.empty() && version != b.version && version.rfind(b.version + ".", 0) != 0) continue;
      if (found) return refuse(named + " is in a venv of " + home + ", which holds several Pythons: its "
                                   "pyvenv.cfg must say which (version = X.Y.Z)");
      found = &b;
    }
    if (!found)
      return refuse(named + " is in a venv made from " + home + (version.empty() ? "" : " (Python " + version + ")") +
                    ", which is not a Python this build has a worker for" + tail);
    std::vector<std::string> site;
    for (const auto& rel : found->venv_site) site.push_back((root / rel).lexically_normal().string());
    std::string system = cfg["include-system-site-packages"];
    std::transform(system.begin(), system.end(), system.begin(), [](unsigned char c) { return std::tolower(c); });
    if (system == "true") site.insert(site.end(), found->site.begin(), found->site.end());
    PythonEnv env = env_of(*found, executable, site);
    // site.py's rule: the directory above the one holding the executable, whichever of the two has pyvenv.cfg.
    env.prefix = bin.parent_path().lexically_normal().string();
    return env;
  }
  const std::string resolved = real(executable);
  for (const auto& b : all)
    if (resolved == b.executable || resolved == real(b.executable)) return env_of(b, executable, b.site);
  return refuse(named + " is not a Python this build has a worker for" + tail);
}

}  // namespace spr::detail
