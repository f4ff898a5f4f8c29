// The run directory's files: written from the request before the code starts, collected after it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "spr/result.hpp"

namespace spr::embed::file_transfer {

// Writes each file under `dir_fd` (the run directory, fresh and empty), making the directories its name
// needs. Every component is opened relative to the one before with O_NOFOLLOW: nothing is resolved
// through a link. "" or why a file could not be written.
std::string write(int dir_fd, const Files& files);

// Fills r.files with the regular files under `dir_fd` whose names match `patterns`, in name order, while
// they fit in `cap_bytes` in all; the matching ones that do not fit go to r.files_left_out. Links,
// FIFOs, devices and sockets are never opened as files, and no directory is entered through a link.
// r.files_truncated says that some match is in neither list (more than either list holds, a name that is
// not UTF-8 or too long, a directory the walk could not read, more entries than the walk looks at).
void collect(int dir_fd, const std::vector<std::string>& patterns, std::uint64_t cap_bytes, RunResult& r);

}  // namespace spr::embed::file_transfer
