// Capabilities: empty every set and lock the securebits, so in-namespace root (or real root) has no power.
#include <linux/capability.h>
#include <linux/securebits.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "mechanisms.hpp"

namespace spr::harden::capabilities {

LayerStatus apply() {
  std::string notes;
  // Securebits first: changing them needs CAP_SETPCAP, which the empty set below takes away. NOROOT stops a
  // later setuid/exec to uid 0 from regaining capabilities; KEEP_CAPS stays off and is locked off.
  const unsigned long bits = SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_NO_SETUID_FIXUP |
                             SECBIT_NO_SETUID_FIXUP_LOCKED | SECBIT_KEEP_CAPS_LOCKED |
                             SECBIT_NO_CAP_AMBIENT_RAISE | SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
  if (::prctl(PR_SET_SECUREBITS, bits, 0, 0, 0) != 0) {
    const int err = errno;
    log_errno("prctl", "(PR_SET_SECUREBITS)", err);  // expected without CAP_SETPCAP: nothing to protect then
    notes += "; securebits not locked: " + errno_text("prctl(PR_SET_SECUREBITS)", err);
  }
  // The bounding set also needs CAP_SETPCAP; walk until the kernel says the capability number is past its last.
  int dropped = 0;
  for (int cap = 0; cap < 64; ++cap) {
    if (::prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) == 0) {
      ++dropped;
      continue;
    }
    const int err = errno;
    if (err == EINVAL) break;
    log_errno("prctl", "(PR_CAPBSET_DROP)", err);
    notes += "; bounding set kept: " + errno_text("prctl(PR_CAPBSET_DROP)", err);
    break;
  }
  if (::prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0) {
    const int err = errno;
    log_errno("prctl", "(PR_CAP_AMBIENT_CLEAR_ALL)", err);
    notes += "; " + errno_text("prctl(PR_CAP_AMBIENT_CLEAR_ALL)", err);
  }
  // Raw capset: libcap is not worth a dependency for one call.
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3] = {};
  if (::syscall(SYS_capset, &header, data) != 0) {
    const int err = errno;
    log_errno("capset", "(empty)", err);
    return inactive("capabilities", errno_text("capset", err) + notes);
  }
  return active("capabilities", "effective, permitted, inheritable and ambient sets empty; " +
                                    std::to_string(dropped) + " dropped from the bounding set" + notes);
}

}  // namespace spr::harden::capabilities
