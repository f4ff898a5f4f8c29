// The entries of a directory, read through its descriptor with getdents64: no DIR stream, no path walked from
// the root. Used by both programs (the worker's library scan, the supervisor's scratch wipe).
#pragma once

#include <dirent.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

namespace spr::detail {

// Calls `f(const dirent64&)` for each entry of the directory open as `dir_fd` but "." and "..", from the
// descriptor's current offset to the end. `f` may list other directories (each call has its own buffer).
// False when a read fails or returns a malformed record.
template <class F>
bool for_each_dir_entry(int dir_fd, F&& f) {
  std::vector<char> buf(16384);
  for (;;) {
    const long n = ::syscall(SYS_getdents64, dir_fd, buf.data(), buf.size());
    if (n < 0) return false;
    if (n == 0) return true;
    for (long at = 0; at < n;) {
      const auto* d = reinterpret_cast<const struct dirent64*>(buf.data() + at);
      if (d->d_reclen == 0) return false;
      at += d->d_reclen;
      const char* name = d->d_name;
      if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
      f(*d);
    }
  }
}

}  // namespace spr::detail
