// The supervisor's scratch wipe under a symlink swap made while it walks: a directory it listed becomes a link
// to a host directory before it reaches it. Judged from the host: the host directory's marker file survives.
// And every wipe of a worker, not only its first, empties the scratch root.
// The swap is made at a fixed point of the walk, not raced: fanotify permission events hold the wipe's open of
// the first directory it enters while the test swaps the other one (fanotify needs CAP_SYS_ADMIN: root only).
#include <fcntl.h>
#include <sys/fanotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include <spr/runner.hpp>

#include "escape_helpers.hpp"

namespace {

namespace fs = std::filesystem;

spr::Isolation test_mode() {
  const char* m = std::getenv("SPR_TEST_ISOLATION");
  return spr::RunnerPolicy::from_json({{"isolation", m ? m : "fork"}}).isolation;
}

// A descendant's working directory (the worker's scratch root, as the kernel resolves it from the host) that is
// the one the run reported for its own working directory (device and inode).
int open_scratch_of_run(dev_t dev, ino_t ino) {
  for (const auto& p : sec::descendants(::getpid(), {})) {
    const std::string cwd = "/proc/" + std::to_string(p.pid) + "/cwd";
    const int fd = ::open(cwd.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) continue;
    struct stat st {};
    if (::fstat(fd, &st) == 0 && st.st_dev == dev && st.st_ino == ino) return fd;
    ::close(fd);
  }
  return -1;
}

// Answers every permission event with "allow"; at the first, swaps the directory the wipe has not entered yet
// (of `a` and `b` in `scratch`) for a link to `host`: moved into the one being entered (so the wipe still
// removes it), and a symlink made in its place.
class Swapper {
 public:
  Swapper(int fan, int scratch, std::string host) : fan_(fan), scratch_(scratch), host_(std::move(host)) {
    thread_ = std::thread([this] { loop(); });
  }
  ~Swapper() {
    stop_ = true;
    thread_.join();
  }
  bool swapped() const { return swapped_; }

 private:
  void loop() {
    alignas(fanotify_event_metadata) char buf[4096];
    while (!stop_) {
      const ssize_t n = ::read(fan_, buf, sizeof buf);
      if (n <= 0) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));  // non-blocking: nothing yet
        continue;
      }
      auto* m = reinterpret_cast<fanotify_event_metadata*>(buf);
      for (ssize_t left = n; FAN_EVENT_OK(m, left); m = FAN_EVENT_NEXT(m, left)) {
        if (m->fd >= 0 && !swapped_) swap(m->fd);
        fanotify_response allow{m->fd, FAN_ALLOW};
        (void)::write(fan_, &allow, sizeof allow);
        if (m->fd >= 0) ::close(m->fd);
      }
    }
  }
  void swap(int entered) {
    struct stat in {}, a {};
    if (::fstat(entered, &in) != 0 || ::fstatat(scratch_, "a", &a, AT_SYMLINK_NOFOLLOW) != 0) return;
    const bool entering_a = in.st_ino == a.st_ino;
    const char* other = entering_a ? "b" : "a";
    const std::string inside = std::string(entering_a ? "a/" : "b/") + other;
    if (::renameat(scratch_, other, scratch_, inside.c_str()) == 0 &&
        ::symlinkat(host_.c_str(), scratch_, other) == 0)
      swapped_ = true;
  }

  int fan_, scratch_;
  std::string host_;
  std::atomic<bool> stop_{false}, swapped_{false};
  std::thread thread_;
};

}  // namespace

TEST_CASE("scratch wipe: a listed directory swapped for a link to a host directory mid-wipe is not followed") {
  const fs::path host = fs::temp_directory_path() / ("spr-wipe-host-" + sec::random_hex(6));
  fs::create_directories(host);
  const fs::path marker = host / "marker";
  std::ofstream(marker) << "host file";
  REQUIRE(fs::exists(marker));

  spr::RunnerOptions o;
  o.workers = 1;
  o.policy.isolation = test_mode();
  o.policy.blocked_imports = {};
  o.policy.timeout_seconds = 20;
  spr::Runner runner(o);
  // The run says which directory is its worker's scratch root (its working directory, without scratch_dir).
  const spr::RunResult first = runner.run("import os\nst = os.stat('.')\nresult = [st.st_dev, st.st_ino]\n");
  INFO(first.error.value_or(""));
  REQUIRE(first.ok);
  const int scratch = open_scratch_of_run(static_cast<dev_t>(first.result[0].get<unsigned long long>()),
                                          static_cast<ino_t>(first.result[1].get<unsigned long long>()));
  REQUIRE(scratch >= 0);

  // Every wipe lists the root from its beginning: the root's descriptor is held across runs, and its offset
  // stayed where the first wipe's listing ended, so later wipes listed nothing and removed nothing.
  const int left = ::openat(scratch, "left-by-a-run", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
  REQUIRE(left >= 0);
  ::close(left);
  REQUIRE(runner.run("result = 5").ok);  // the worker's second wipe
  struct stat st {};
  CHECK(::fstatat(scratch, "left-by-a-run", &st, AT_SYMLINK_NOFOLLOW) != 0);

  // Two directories the wipe will list, each held at its opening by a permission event.
  REQUIRE(::mkdirat(scratch, "a", 0700) == 0);
  REQUIRE(::mkdirat(scratch, "b", 0700) == 0);
  const int fan = ::fanotify_init(FAN_CLASS_CONTENT | FAN_CLOEXEC | FAN_NONBLOCK, O_RDONLY | O_CLOEXEC);
  REQUIRE_MESSAGE(fan >= 0, "fanotify_init: ", std::strerror(errno));
  for (const char* d : {"a", "b"})
    REQUIRE(::fanotify_mark(fan, FAN_MARK_ADD, FAN_OPEN_PERM | FAN_ONDIR, scratch, d) == 0);
  {
    Swapper swapper(fan, scratch, host.string());
    const spr::RunResult r = runner.run("result = 2");  // its wipe enters one of a and b, and the other is swapped
    CHECK(r.ok);
    CHECK(swapper.swapped());  // the swap happened while the wipe walked (else this test proves nothing)
  }
  ::close(fan);
  CHECK(fs::exists(marker));  // the host directory was not emptied through the link
  CHECK(::fstatat(scratch, "a", &st, AT_SYMLINK_NOFOLLOW) != 0);  // nothing the run's worker had is left
  CHECK(::fstatat(scratch, "b", &st, AT_SYMLINK_NOFOLLOW) != 0);
  ::close(scratch);
  // The next run is served (the worker was kept, or replaced if the wipe could not empty its root).
  CHECK(runner.run("result = 3").result == 3);
  std::error_code ec;
  fs::remove_all(host, ec);
}
