// Shared libraries that Python extension modules need: the exact files Landlock must let the loader read.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace spr::embed::libdeps {

// Every shared library (resolved real path) that the extension modules (*.so) found under `roots`
// load, directly or through other libraries: DT_NEEDED entries resolved the way the dynamic loader
// does (RPATH/RUNPATH with $ORIGIN, the ld.so.conf directories, the default directories).
// Files already under `roots` are left out. `roots` are real paths (realpath). Reads ELF headers only;
// loads nothing; calls no Python, so it may run on a thread of its own while Python starts.
std::vector<std::string> needed_by_extensions(const std::vector<std::string>& roots);

// A path the scan looked at, as stat(2) (files it opens) or lstat(2) (directories) saw it then: its answer holds
// while every such path still looks the same (a directory's times change when an entry is added, removed,
// renamed or replaced in it).
struct Stamp {
  std::string path;
  bool present = false;  // false: no such file (a library name looked for in a directory that lacks it)
  bool follow = true;    // stat (true) or lstat (false)
  std::uint64_t dev = 0, ino = 0, size = 0;
  std::int64_t mtime_ns = 0, ctime_ns = 0;
  friend bool operator==(const Stamp& a, const Stamp& b) {
    return a.path == b.path && a.present == b.present && a.follow == b.follow && a.dev == b.dev && a.ino == b.ino &&
           a.size == b.size && a.mtime_ns == b.mtime_ns && a.ctime_ns == b.ctime_ns;
  }
};
// `path` as it is now, through stat (`follow`) or lstat.
Stamp stamp_of(const std::string& path, bool follow);

struct StampedScan {
  std::vector<std::string> libraries;  // needed_by_extensions(roots)
  std::vector<std::string> system_dirs;  // the loader's directories (ld.so.conf, then the defaults) it used
  std::vector<Stamp> looked_at;          // every directory walked and every file opened or looked for, once each
  std::vector<std::pair<std::string, std::string>> resolved;  // every path it took the realpath of, and that
};
// `path`'s realpath now, "" when it does not resolve.
std::string real_path_now(const std::string& path);
// needed_by_extensions(roots), with what its answer depends on (one more fstat per directory).
StampedScan needed_by_extensions_stamped(const std::vector<std::string>& roots);
// The loader's directories as they are configured now.
const std::vector<std::string>& loader_dirs();

// needed_by_extensions(roots) through a cache file in `cache_dir` (libdeps_cache.cpp): its answer is reused
// while every path it depends on looks the same, else the scan runs and the file is written anew. The
// directory and file must be this user's and writable by nobody else, or they are not used. "" = no cache.
// A scan that looked at a path changed less than `racy_seconds` before it is not kept: a change within the same
// tick of the file system's clock would leave the times as they were ("racily clean", as git calls it).
std::vector<std::string> needed_by_extensions_cached(const std::vector<std::string>& roots, const std::string& cache_dir,
                                                     double racy_seconds = 2.0);

}  // namespace spr::embed::libdeps
