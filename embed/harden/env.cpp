// Environment: emptied so user code finds no secrets, proxies or paths the supervisor's parent exported.
#include <cerrno>
#include <cstdlib>

#include "mechanisms.hpp"

namespace spr::harden::env {

LayerStatus apply() {
  if (::clearenv() != 0) {
    const int err = errno;
    log_errno("clearenv", "", err);
    return inactive("env", errno_text("clearenv", err));
  }
  // Only a locale, so any late setlocale()/nl_langinfo() in C extensions agrees with Python's UTF-8 mode.
  // Python's os.environ is a snapshot taken at start-up: the embedder must clear it separately.
  if (::setenv("LANG", "C.UTF-8", 1) != 0) {
    const int err = errno;
    log_errno("setenv", "LANG", err);
    return inactive("env", "cleared but " + errno_text("setenv(LANG)", err));
  }
  return active("env", "cleared; LANG=C.UTF-8");
}

}  // namespace spr::harden::env
