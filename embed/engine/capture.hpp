// Output capture: sys.stdout/sys.stderr replacements that write, byte-capped, into the shared memfd.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "py.hpp"

namespace spr::embed::capture {

// Maps the memfd at `fd` (or an anonymous buffer when fd < 0, for the in-process engine).
bool attach(int fd);
// Resets both streams for a run, growing the buffer to hold `cap` bytes per stream.
bool begin(std::uint64_t run_id, std::uint64_t cap);
// A fork child, after its begin() and before its run: keeps the mapping and closes the file, so a run that owns
// its process cannot cut the buffer its worker maps (the worker would fault on it) or grow it. Returns 0 or errno.
int keep_mapping_only();
void append(int stream, const char* data, std::size_t len);  // stream 0 = stdout, 1 = stderr
// Takes the lengths a forked child left in the shared header (clamped to the run's cap): the
// parent reads a killed child's partial output this way.
void adopt_shared();
std::string text(int stream);
std::string_view view(int stream);  // the same bytes, in place (the fork parent copies nothing)
// Zeroes both streams' bytes and lengths (the fork parent, after each run's reply went out).
void wipe();
bool truncated(int stream);

// Registers the `Stream` type into module `m`; `make_stream(i)` builds sys.stdout (0) or sys.stderr (1).
int add_type(PyObject* m);
PyObject* make_stream(int stream);

}  // namespace spr::embed::capture
