// Environment: emptied so user code finds no secrets, proxies or paths the supervisor's parent exported.
#include <cerrno>
#include <cstdlib>

#include "mechanisms.hpp"

namespace spr::harden::env {

namespace {
// The whole environment a worker has. Numerical libraries read their thread counts once, when they
// load: one thread each, since a forked run child inherits none of a parent's threads and namespace and
// subinterpreter workers may start none.
constexpr const char* kFixed[][2] = {
    {"LANG", "C.UTF-8"},          {"OPENBLAS_NUM_THREADS", "1"}, {"OMP_NUM_THREADS", "1"},
    {"MKL_NUM_THREADS", "1"},     {"NUMEXPR_NUM_THREADS", "1"},  {"VECLIB_MAXIMUM_THREADS", "1"},
    {"GOTO_NUM_THREADS", "1"},
};
}  // namespace

int set_fixed() noexcept {
  if (::clearenv() != 0) return errno;
  for (const auto& kv : kFixed)
    if (::setenv(kv[0], kv[1], 1) != 0) return errno;
  return 0;
}

LayerStatus apply() {
  // Python's os.environ is a snapshot taken at start-up: the worker calls set_fixed() before
  // initialising Python, so the snapshot holds only these names too.
  if (const int err = set_fixed(); err != 0) {
    log_errno("clearenv/setenv", "", err);
    return inactive("env", errno_text("clearenv/setenv", err));
  }
  return active("env", "cleared; LANG=C.UTF-8 and one thread per numerical library");
}

}  // namespace spr::harden::env
