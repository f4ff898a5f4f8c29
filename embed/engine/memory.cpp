// Allocation accounting on CPython's raw domain (large objects) and its arena allocator
// (every small object lives in an arena), so a run's growth is counted wherever it allocates.
#include "memory.hpp"

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <malloc.h>

#include <atomic>

#include "run_local.hpp"

namespace spr::embed::memory {

namespace {

PyMemAllocatorEx g_raw{};
PyObjectArenaAllocator g_arena{};
// The hooks are process-wide. A run's threads share its counts (the main interpreter's threads of a fork
// or process run: the raw domain is called without the interpreter's lock, so the counts are atomic);
// each own-GIL run thread counts its own run (its interpreter allocates on its thread, own obmalloc).
// Memory one count's thread frees that another's allocated moves both (rare: the raw domain across run
// threads); the RLIMIT_AS backstop bounds the process whatever the counts say.
struct Counts {
  std::atomic<std::int64_t> used{0};
  std::atomic<std::int64_t> base{0};
  std::atomic<std::int64_t> limit{-1};  // -1: no run in progress
  std::atomic<bool> refused{false};
};
RunLocal<Counts> g_counts;
constexpr std::int64_t kErrorReserve = 4 << 20;

bool over(std::size_t more) {
  Counts& c = g_counts();
  const std::int64_t limit = c.limit.load(std::memory_order_relaxed);
  if (limit < 0) return false;
  const std::int64_t grown = c.used.load(std::memory_order_relaxed) - c.base.load(std::memory_order_relaxed);
  if (grown + static_cast<std::int64_t>(more) <= limit) return false;
  // The first refusal raises MemoryError; raising and unwinding it allocates too (the exception, traceback
  // entries), and a refusal there is CPython's fatal "Cannot recover from MemoryErrors" (the worker aborts).
  // So the error path gets a little room, once per run; past it everything is refused again.
  if (!c.refused.exchange(true, std::memory_order_relaxed)) c.limit.fetch_add(kErrorReserve, std::memory_order_relaxed);
  return true;
}

void count(void* p, bool add) {
  if (!p) return;
  const auto n = static_cast<std::int64_t>(malloc_usable_size(p));
  g_counts().used.fetch_add(add ? n : -n, std::memory_order_relaxed);
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
  g_counts().used.fetch_add(static_cast<std::int64_t>(malloc_usable_size(p)) - static_cast<std::int64_t>(old),
                            std::memory_order_relaxed);
  return p;
}
void raw_free(void* ctx, void* ptr) {
  count(ptr, false);
  g_raw.free(ctx, ptr);
}

void* arena_alloc(void* ctx, size_t n) {
  if (over(n)) return nullptr;
  void* p = g_arena.alloc(ctx, n);
  if (p) g_counts().used.fetch_add(static_cast<std::int64_t>(n), std::memory_order_relaxed);
  return p;
}
void arena_free(void* ctx, void* ptr, size_t n) {
  if (ptr) g_counts().used.fetch_sub(static_cast<std::int64_t>(n), std::memory_order_relaxed);
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
  Counts& c = g_counts();
  c.refused.store(false);
  c.base.store(c.used.load());
  c.limit.store(static_cast<std::int64_t>(limit_bytes));
}

void end_run() { g_counts().limit.store(-1); }
bool refused() { return g_counts().refused.load(); }
std::int64_t in_use() { return g_counts().used.load(); }

}  // namespace spr::embed::memory
