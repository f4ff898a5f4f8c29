// no_new_privs: no exec can ever gain privileges again; also what lets an unprivileged process use Landlock/seccomp.
#include <sys/prctl.h>

#include <cerrno>

#include "mechanisms.hpp"

namespace spr::harden::no_new_privs {

int apply() noexcept {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    const int err = errno;
    log_errno("prctl", "(PR_SET_NO_NEW_PRIVS)", err);
    return err;
  }
  return 0;
}

}  // namespace spr::harden::no_new_privs
