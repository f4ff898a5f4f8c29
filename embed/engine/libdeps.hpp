// Shared libraries that Python extension modules need: the exact files Landlock must let the loader read.
#pragma once

#include <string>
#include <vector>

namespace spr::embed::libdeps {

// Every shared library (resolved real path) that the extension modules (*.so) found under `roots`
// load, directly or through other libraries: DT_NEEDED entries resolved the way the dynamic loader
// does (RPATH/RUNPATH with $ORIGIN, the ld.so.conf directories, the default directories).
// Files already under `roots` are left out. `roots` are real paths (realpath). Reads ELF headers only;
// loads nothing; calls no Python, so it may run on a thread of its own while Python starts.
std::vector<std::string> needed_by_extensions(const std::vector<std::string>& roots);

}  // namespace spr::embed::libdeps
