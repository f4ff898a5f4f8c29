// Test-only fault injection, linked into spr-worker-faulty and never into spr-worker: a request whose code
// starts with "#spr-fault: NAME ARG" makes the worker misbehave in the way NAME names, before its runner sees it.
// Some faults stand for what a run with arbitrary read/write of the worker's memory could do (forge a reply,
// write outside the audit hook's view, allocate behind the accounting).
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "common/capture_layout.hpp"  // kProtocolFd
#include "common/frame.hpp"
#include "common/protocol.hpp"
#include "worker/fork_runner.hpp"

namespace {

namespace detail = spr::detail;
using spr::json;

// What a fault gets: the request's id, the text after its name, the fork runner (fork mode, else null).
struct Target {
  std::uint64_t id;
  const std::string& arg;
  spr::embed::ForkRunner* fork_runner;
};

void write_raw(const void* data, std::size_t n) {
  ssize_t ignored = write(detail::kProtocolFd, data, n);
  (void)ignored;
}

[[noreturn]] void stall() {
  for (;;) pause();
}

void forge(std::uint64_t id, json body) {
  body["id"] = id;
  body["type"] = "reply";
  detail::write_frame(detail::kProtocolFd, detail::dump_json(body));
}

void forge_oversize(const Target& t) {  // 200 KB of stdout past a 128 KB cap, then the real reply
  forge(t.id, {{"ok", true}, {"result", "FORGED"}, {"stdout", std::string(200 << 10, 'A')}});
}

void forge_ok(const Target& t) {  // a plausible reply, then the real one: two frames for one request
  forge(t.id, {{"ok", true}, {"result", "FORGED"}, {"error_kind", "none"}, {"exit_code", 0}});
}

void big_header(const Target& t) {  // announces `arg` bytes, sends a few, then stalls
  const auto len = static_cast<std::uint32_t>(std::stoul(t.arg));
  const unsigned char hdr[4] = {static_cast<unsigned char>(len), static_cast<unsigned char>(len >> 8),
                                static_cast<unsigned char>(len >> 16), static_cast<unsigned char>(len >> 24)};
  write_raw(hdr, 4);
  write_raw("{\"id\":", 6);
  stall();
}

void fail_setup(const Target& t) {  // the run's child counts its set-up call `arg` as failed (fork mode)
  if (t.fork_runner) t.fork_runner->fail_setup_for_test(t.arg);
}

void leave_file(const Target& t) {  // a file in the worker's scratch root, where only the OS layers apply
  int fd = open(("spr-leftover-" + t.arg).c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd >= 0) close(fd);
}

void make_fifo(const Target& t) {  // os.mkfifo/os.mknod raise no audit event on 3.11: only the C layers stop them
  if (mkfifo(("spr-fifo-" + t.arg).c_str(), 0600) != 0) mknod(("spr-fifo-" + t.arg).c_str(), S_IFIFO | 0600, 0);
}

void sigio(const Target& t) {  // signal-driven I/O aimed at another process: SIGKILL through F_SETSIG
  int fds[2];
  if (pipe2(fds, O_CLOEXEC | O_NONBLOCK) != 0) return;
  const pid_t target = static_cast<pid_t>(std::stol(t.arg));
  (void)fcntl(fds[0], F_SETOWN, target);
  (void)fcntl(fds[0], F_SETSIG, SIGKILL);
  (void)fcntl(fds[0], F_SETFL, O_ASYNC | O_NONBLOCK);
  ssize_t w = write(fds[1], "x", 1);
  (void)w;
  close(fds[0]);
  close(fds[1]);
}

void alloc(const Target& t) {  // memory behind the allocator accounting: only RLIMIT_AS stops it
  const std::size_t n = std::stoul(t.arg) << 20;
  if (void* p = malloc(n)) {
    memset(p, 1, n);
    free(p);
  }
}

void orphan(const Target&) {  // what a run owning its process can do: outlive its supervisor, stopped
  (void)prctl(PR_SET_PDEATHSIG, 0);  // refused by the filter where it can be; the PID namespace is the backstop
  signal(SIGHUP, SIG_IGN);
  raise(SIGSTOP);
}

void truncated(const Target&) {  // a frame cut short, then the worker exits
  const unsigned char hdr[4] = {100, 0, 0, 0};
  write_raw(hdr, 4);
  write_raw("{\"id\":", 6);
  _exit(0);
}

void garbage(const Target&) {  // a whole frame that is not JSON, then silence
  const char junk[] = "\x05\x00\x00\x00not{json";
  write_raw(junk, sizeof junk - 1);
  stall();
}

void huge(const Target&) {  // a header announcing a frame far over the cap, then silence
  const unsigned char hdr[4] = {0xff, 0xff, 0xff, 0x7f};
  write_raw(hdr, 4);
  stall();
}

void grandchild(const Target&) {  // a process left behind holding the socket: the supervisor must not wait for it
  if (fork() == 0) stall();
  raise(SIGKILL);
}

struct Fault {
  const char* name;
  void (*fn)(const Target&);
};

constexpr Fault kFaults[] = {
    {"forge_oversize", forge_oversize},
    {"forge_ok", forge_ok},
    {"big_header", big_header},
    {"fail_setup", fail_setup},
    {"leave_file", leave_file},
    {"mkfifo", make_fifo},
    {"sigio", sigio},
    {"alloc", alloc},
    {"orphan", orphan},
    {"sigkill", [](const Target&) { raise(SIGKILL); }},
    {"segv", [](const Target&) { raise(SIGSEGV); }},
    {"abort", [](const Target&) { abort(); }},
    {"exit", [](const Target&) { _exit(3); }},
    {"hang", [](const Target&) { stall(); }},  // stops reading and never answers
    {"truncated", truncated},
    {"garbage", garbage},
    {"huge", huge},
    {"grandchild", grandchild},
};

}  // namespace

// Called by spr-worker-faulty with each request frame before its runner handles it (the fork parent too).
void spr_inject_fault(std::string_view frame, spr::embed::ForkRunner* fork_runner) {
  spr::protocol::Request rq;
  try {
    rq = spr::protocol::decode_as<spr::protocol::Request>(frame);
  } catch (const std::exception&) {
    return;
  }
  const std::string tag = "#spr-fault: ";
  if (rq.code.rfind(tag, 0) != 0) return;
  const std::string line = rq.code.substr(tag.size(), rq.code.find('\n') - tag.size());
  const std::size_t space = line.find(' ');
  const std::string name = line.substr(0, space);
  const std::string arg = space == std::string::npos ? std::string() : line.substr(space + 1);
  for (const Fault& f : kFaults)
    if (name == f.name) return f.fn(Target{rq.id, arg, fork_runner});
}
