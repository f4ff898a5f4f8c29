// Session worker: one namespace kept across requests, in a process that serves one session only.
#pragma once

#include <cstdint>

namespace spr::embed {

// Before hardening (seccomp then refuses setrlimit): caps the address space at what the warm
// process maps now plus `memory_mb` and slack. Returns 0 or an errno.
int limit_session_memory(int statm_fd, std::int64_t memory_mb);

// Answers run and "variables" requests on the protocol fd until the supervisor closes it; a session
// call's memory limit counts everything the session allocated since its first call. Never returns.
[[noreturn]] void serve_session(bool allow_network);

}  // namespace spr::embed
