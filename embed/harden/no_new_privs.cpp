// no_new_privs: no exec can ever gain privileges again; also what lets an unprivileged process use Landlock/seccomp.
// And, where asked, not dumpable: another process of the same uid may then not open this one's /proc entries.
#include <sys/prctl.h>

#include <cerrno>

#include "mechanisms.hpp"

namespace spr::harden::no_new_privs {

int apply(bool not_dumpable) noexcept {
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) {
    const int err = errno;
    log_errno("prctl", "(PR_SET_NO_NEW_PRIVS)", err);
    return err;
  }
  if (not_dumpable && ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) {
    const int err = errno;
    log_errno("prctl", "(PR_SET_DUMPABLE)", err);
    return err;
  }
  return 0;
}

}  // namespace spr::harden::no_new_privs
