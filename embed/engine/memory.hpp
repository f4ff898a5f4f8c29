// Per-run memory accounting: wraps CPython's raw and arena allocators and refuses past the limit.
#pragma once

#include <cstdint>

namespace spr::embed::memory {

// Wraps the current allocators (call once, after Py_Initialize; the wrappers call the originals).
void install();
// Starts counting from now; allocations that would take the run past `limit_bytes` fail (MemoryError).
void begin_run(std::uint64_t limit_bytes);
void end_run();
// Whether an allocation was refused since begin_run.
bool refused();
// Bytes the interpreter holds now, as counted (sessions measure their growth across calls with it).
std::int64_t in_use();

}  // namespace spr::embed::memory
