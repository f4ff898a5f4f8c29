// Allocation accounting on CPython's raw domain (large objects) and its arena allocator
// (every small object lives in an arena), so a run's growth is counted wherever it allocates.
#include "memory.hpp"

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <malloc.h>

#include <atomic>

namespace spr::embed::memory {

namespace {

PyMemAllocatorEx g_raw{};
PyObjectArenaAllocator g_arena{};
// Counted per thread: the hooks are process-wide, but each run thread's interpreter allocates on its
// own thread (own-GIL interpreters, own obmalloc), so a thread's growth is its run's. Memory one thread
// frees that another allocated moves both counts (rare: the raw domain across threads); the RLIMIT_AS
// backstop bounds the process whatever the counts say.
thread_local std::int64_t g_used = 0;
thread_local std::int64_t g_base = 0;
thread_local std::int64_t g_limit = -1;  // -1: no run in progress
thread_local bool g_refused = false;
constexpr std::int64_t kErrorReserve = 4 << 20;

bool over(std::size_t more) {
  const std::int64_t limit = g_limit;
  if (limit < 0) return false;
  const std::int64_t grown = g_used - g_base;
  if (grown + static_cast<std::int64_t>(more) <= limit) return false;
  if (!g_refused) {
    // The first refusal raises MemoryError; raising and unwinding it allocates too (the exception, traceback
    // entries), and a refusal there is CPython's fatal "Cannot recover from MemoryErrors" (the worker aborts).
    // So the error path gets a little room, once per run; past it everything is refused again.
    g_refused = true;
    g_limit = limit + kErrorReserve;
  }
  return true;
}

void count(void* p, bool add) {
  if (!p) return;
  const auto n = static_cast<std::int64_t>(malloc_usable_size(p));
  g_used += add ? n : -n;
}

void* raw_malloc(void* ctx, size_t n) {
  if (over(n)) return nullptr;
  void* p = g_raw.malloc(ctx, n);
  count(p, true);
  return p;
}
void* raw_calloc(void* ctx, size_t nelem, size_t elsize) {
  if (elsize && nelem > SIZE_MAX / elsize) return nullptr;
  if (over(nelem * elsize)) return nullptr;
  void* p = g_raw.calloc(ctx, nelem, elsize);
  count(p, true);
  return p;
}
void* raw_realloc(void* ctx, void* ptr, size_t n) {
  const std::size_t old = ptr ? malloc_usable_size(ptr) : 0;
  if (n > old && over(n - old)) return nullptr;
  void* p = g_raw.realloc(ctx, ptr, n);
  if (!p) return nullptr;
  g_used += static_cast<std::int64_t>(malloc_usable_size(p)) - static_cast<std::int64_t>(old);
  return p;
}
void raw_free(void* ctx, void* ptr) {
  count(ptr, false);
  g_raw.free(ctx, ptr);
}

void* arena_alloc(void* ctx, size_t n) {
  if (over(n)) return nullptr;
  void* p = g_arena.alloc(ctx, n);
  if (p) g_used += static_cast<std::int64_t>(n);
  return p;
}
void arena_free(void* ctx, void* ptr, size_t n) {
  if (ptr) g_used -= static_cast<std::int64_t>(n);
  g_arena.free(ctx, ptr, n);
}

}  // namespace

void install() {
  PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &g_raw);
  PyMemAllocatorEx raw{g_raw.ctx, raw_malloc, raw_calloc, raw_realloc, raw_free};
  PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &raw);
  PyObject_GetArenaAllocator(&g_arena);
  PyObjectArenaAllocator arena{g_arena.ctx, arena_alloc, arena_free};
  PyObject_SetArenaAllocator(&arena);
}

void begin_run(std::uint64_t limit_bytes) {
  g_refused = false;
  g_base = g_used;
  g_limit = static_cast<std::int64_t>(limit_bytes);
}

void end_run() { g_limit = -1; }
bool refused() { return g_refused; }
std::int64_t in_use() { return g_used; }

}  // namespace spr::embed::memory
