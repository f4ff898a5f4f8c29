// Checked set-up calls of a run's process: the first failure is kept with its errno, so that the run
// fails closed (no user code) and its reply names the call.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>

namespace spr::embed {

class SetupCheck {
 public:
  // Test builds only (spr-worker-faulty): a call whose name starts with this counts as failed (EIO)
  // after it ran. Empty in spr-worker. It can only make a run fail closed, never let one start.
  explicit SetupCheck(const char* fail_for_test = nullptr) : fail_for_test_(fail_for_test) {}

  // A system call's result: -1 (errno set) is a failure. Returns whether the call succeeded.
  bool sys(const char* call, long rc) noexcept { return note(call, rc == -1 ? errno : 0); }
  // A result that is 0 or an errno value.
  bool err(const char* call, int e) noexcept { return note(call, e); }

  bool ok() const noexcept { return call_ == nullptr; }
  // "dup2(/dev/null, 2) failed: Bad file descriptor"
  std::string message() const {
    return ok() ? std::string() : std::string(call_) + " failed: " + std::strerror(errno_);
  }

 private:
  bool note(const char* call, int e) noexcept {
    if (e == 0 && fail_for_test_ && *fail_for_test_ &&
        std::strncmp(call, fail_for_test_, std::strlen(fail_for_test_)) == 0)
      e = EIO;
    if (e != 0 && !call_) {
      call_ = call;
      errno_ = e;
    }
    return e == 0;
  }
  const char* fail_for_test_;
  const char* call_ = nullptr;
  int errno_ = 0;
};

}  // namespace spr::embed
