// `serve` under attack, judged from outside: a worker that stops itself cannot stall it, a dense line
// cannot blow its memory up, session names cannot multiply its threads, read-ahead stays bounded, a
// forged reply's fields stay capped, and close_session during an open closes that session.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "helpers.hpp"

using nlohmann::json;
using spr_test::ProcResult;

namespace {

double time_scale() {
  const char* s = std::getenv("SPR_TEST_TIME_SCALE");
  return s && std::atof(s) > 1 ? std::atof(s) : 1.0;
}

// Sanitizer builds (make check-sanitize) add their own memory to serve's resident size: ASan keeps freed blocks
// in its quarantine (256 MiB at most by default) and TSan maps shadow memory beside everything the program
// touches (a few bytes per byte). A bound on serve's peak grows by that much there; a normal build keeps it.
long memory_bound_kb(long kb) {
  if (spr_test::kAsan) return kb + (256L << 10);
  if (spr_test::kTsan) return 3 * kb;
  return kb;
}

std::vector<std::string> env() {
  return {std::string("SPR_WORKER=") + SPR_TEST_WORKER, "PATH=/usr/bin:/bin"};
}

std::vector<json> lines_of(const std::string& text) {
  std::vector<json> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// The result line of each request id (lines without "stream", "cancel" or "close_session").
std::map<std::string, json> results(const std::vector<json>& ls) {
  std::map<std::string, json> out;
  for (const auto& j : ls)
    if (!j.contains("stream") && !j.contains("cancel") && !j.contains("close_session")) out[j["id"].dump()] = j;
  return out;
}

// A serve process driven line by line: stdin written by the test, stdout and stderr drained by a thread
// (so serve never blocks on its answers), /proc/PID/status read while it runs.
class ServeProc {
 public:
  explicit ServeProc(std::vector<std::string> args) {
    args.insert(args.begin(), {SPR_TEST_CLI, "serve"});
    int in[2], out[2];
    REQUIRE(::pipe2(in, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<std::string> e = env();
    std::vector<char*> envp;
    for (auto& x : e) envp.push_back(x.data());
    envp.push_back(nullptr);
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(in[0], 0);
      ::dup2(out[1], 1);
      const int null = ::open("/dev/null", O_WRONLY);
      ::dup2(null, 2);
      ::execve(argv[0], argv.data(), envp.data());
      ::_exit(127);
    }
    ::close(in[0]);
    ::close(out[1]);
    in_ = in[1];
    ::signal(SIGPIPE, SIG_IGN);
    drain_ = std::thread([this, fd = out[0]] {
      char buf[65536];
      for (;;) {
        const ssize_t r = ::read(fd, buf, sizeof buf);
        if (r <= 0) break;
        std::lock_guard<std::mutex> lk(mu_);
        out_.append(buf, static_cast<std::size_t>(r));
      }
      ::close(fd);
      eof_ = true;
    });
  }
  ~ServeProc() {
    if (!reaped_) {
      ::kill(pid_, SIGKILL);
      wait_exit(60);
    }
    close_input();
    if (drain_.joinable()) drain_.join();
  }
  pid_t pid() const { return pid_; }

  // Blocking write of all of `text`; false when serve stopped reading for good (closed or died).
  bool write(const std::string& text) {
    for (std::size_t done = 0; done < text.size();) {
      const ssize_t w = ::write(in_, text.data() + done, text.size() - done);
      if (w <= 0) return false;
      done += static_cast<std::size_t>(w);
    }
    return true;
  }
  void close_input() {
    if (in_ >= 0) ::close(in_);
    in_ = -1;
  }
  std::string output() {
    std::lock_guard<std::mutex> lk(mu_);
    return out_;
  }
  std::size_t answers() {  // counted in place: a copy of 4 MB of answers per poll made a TSan run crawl
    std::lock_guard<std::mutex> lk(mu_);
    return static_cast<std::size_t>(std::count(out_.begin(), out_.end(), '\n'));
  }
  // Waits (bounded by `seconds`, scaled) until `n` answer lines are out; false if they are not.
  bool wait_answers(std::size_t n, double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds * time_scale());
    while (answers() < n) {
      if (std::chrono::steady_clock::now() > end || reaped_) return answers() >= n;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return true;
  }
  // A field of /proc/PID/status in its own unit (kB for Vm*), -1 when unreadable.
  long status(const std::string& field) const {
    std::ifstream f("/proc/" + std::to_string(pid_) + "/status");
    for (std::string line; std::getline(f, line);)
      if (line.rfind(field + ":", 0) == 0) return std::atol(line.c_str() + field.size() + 1);
    return -1;
  }
  // Waits for serve to exit (bounded, scaled); its exit status, or -1 if it is still running.
  int wait_exit(double seconds) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds * time_scale());
    for (;;) {
      int st = 0;
      const pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        reaped_ = true;
        if (drain_.joinable()) drain_.join();
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      if (std::chrono::steady_clock::now() > end) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }

 private:
  pid_t pid_ = -1;
  int in_ = -1;
  std::thread drain_;
  std::mutex mu_;
  std::string out_;
  std::atomic<bool> eof_{false};
  bool reaped_ = false;
};

// The run's prefix that reaches posix past the guard (as the escape suite's rows do) and builds a reply
// frame for the request in flight (its id read from the capture buffer's header), sent on every socket.
const std::string kForge =
    "BI = [c for c in object.__subclasses__() if c.__name__ == 'BuiltinImporter'][0]\n"
    "posix = BI.load_module('posix')\n"
    "import json, struct, stat, signal\n"
    "rid = struct.unpack('<Q', posix.pread(4, 64, 0)[8:16])[0]\n"
    "def forge(**extra):\n"
    "    reply = {'type': 'reply', 'id': rid, 'ok': True, 'result': 'FORGED', 'error': None, 'stdout': '',"
    " 'stderr': '', 'exit_code': 0, 'error_kind': 'none', 'timed_out': False, 'resource_exceeded': False}\n"
    "    reply.update(extra)\n"
    "    body = json.dumps(reply).encode()\n"
    "    for fd in range(3, 64):\n"
    "        try:\n"
    "            if stat.S_ISSOCK(posix.fstat(fd).st_mode):\n"
    "                posix.write(fd, struct.pack('<I', len(body)) + body)\n"
    "        except OSError:\n"
    "            pass\n";

std::string request(const json& id, const std::string& code, json extra = json::object()) {
  extra["id"] = id;
  extra["code"] = code;
  return extra.dump() + "\n";
}

// Bigger than any socket buffer: the supervisor's write of it blocks while the worker takes nothing.
std::string big_code(int n) { return "result = " + std::to_string(n) + "  # " + std::string(2u << 20, 'x'); }

}  // namespace

TEST_SUITE("serve limits") {

// Sends the lines one at a time, each after the previous one's answer (the attack needs request 2 to
// reach the worker request 1 stopped); every wait is bounded. The answers by id.
std::map<std::string, json> one_by_one(ServeProc& s, const std::vector<std::string>& lines) {
  for (std::size_t i = 0; i < lines.size(); ++i) {
    REQUIRE(s.write(lines[i]));
    CHECK_MESSAGE(s.wait_answers(i + 1, 60), "no answer to request ", i + 1, "; serve is stalled");
  }
  s.close_input();
  CHECK(s.wait_exit(60) == 0);  // and it exits at the end of its input
  return results(lines_of(s.output()));
}

TEST_CASE("serve: a run that forges its reply and stops its worker cannot stall serve (attack 5), every mode") {
  // The operator's timeout is the request's: a scaled request timeout above a 5 s ceiling would be refused.
  const json tight = {{"timeout_seconds", 5 * time_scale()}};
  const std::string ceiling = std::to_string(5 * time_scale());
  for (const char* mode : {"namespace", "subinterpreter", "fork", "process"}) {
    CAPTURE(mode);
    ServeProc s({"--workers", "1", "--isolation", mode, "--timeout", ceiling});
    auto rs = one_by_one(s, {request(1, kForge + "forge()\nsignal.raise_signal(signal.SIGSTOP)\n", {{"policy", tight}}),
                             request(2, big_code(2), {{"policy", tight}}), request(3, "result = 3")});
    INFO(s.output().substr(0, 3000));
    REQUIRE(rs.count("1"));
    CHECK(rs["1"]["error_kind"] != "bad_input");  // the attack ran
    REQUIRE(rs.count("2"));
    if (rs["2"]["ok"] != true) CHECK(rs["2"]["error_kind"] != "none");
    REQUIRE(rs.count("3"));
    CHECK(rs["3"]["ok"] == true);  // the stalled worker was replaced
    CHECK(rs["3"]["result"] == 3);
  }
}

TEST_CASE("serve: the same attack in a session ends that session and nothing else stalls") {
  const json tight = {{"timeout_seconds", 5 * time_scale()}};
  ServeProc s({"--isolation", "namespace", "--timeout", std::to_string(5 * time_scale())});
  auto rs = one_by_one(
      s, {request(1, kForge + "forge()\nsignal.raise_signal(signal.SIGSTOP)\n", {{"session", "s"}, {"policy", tight}}),
          request(2, big_code(2), {{"session", "s"}, {"policy", tight}}), request(3, "result = 3", {{"session", "other"}}),
          request(4, "result = 4", {{"session", "s"}})});
  INFO(s.output().substr(0, 3000));
  REQUIRE(rs.count("2"));
  CHECK(rs["2"]["ok"] == false);
  CHECK(rs["2"]["error_kind"] == "session_lost");
  REQUIRE(rs.count("3"));
  CHECK(rs["3"]["result"] == 3);
  REQUIRE(rs.count("4"));
  CHECK(rs["4"]["error_kind"] == "session_lost");
}

TEST_CASE("serve: a session run's forged reply cannot carry a repr past max_result_kb") {
  const std::string code = kForge + "forge(repr='A' * 1500000)\nx = 1\nx\n";
  const std::string input =
      request(1, code, {{"session", "r"}, {"repr", true}, {"policy", {{"max_result_kb", 64}}}}) +
      request(2, kForge + "forge(repr='B' * 1500000)\nresult = 2\n");  // a one-off that asked for no repr
  const ProcResult p = spr_test::run_program({SPR_TEST_CLI, "serve", "--isolation", "namespace"}, input,
                                             60 * time_scale(), env());
  CHECK_FALSE(p.timed_out);
  auto rs = results(lines_of(p.out));
  for (const char* id : {"1", "2"}) {
    CAPTURE(id);
    REQUIRE(rs.count(id));
    const json& r = rs[id];
    if (r.contains("repr") && r["repr"].is_string()) CHECK(r["repr"].get<std::string>().size() <= 64u * 1024 + 3);
    CHECK(r["result"] != "FORGED");
  }
  CHECK(p.out.find("AAAAAAAAAAAAAAAAAAAA") == std::string::npos);
  CHECK(p.out.find("BBBBBBBBBBBBBBBBBBBB") == std::string::npos);
}

TEST_CASE("serve: close_session while the session opens closes it; the name's next call opens a fresh one") {
  // The close comes 5 ms after the first call, while that call is still starting the session (a
  // session's process takes far longer to start); fixed serve handles it in any order.
  ServeProc s({"--isolation", "fork"});
  REQUIRE(s.write(request(1, "x = 1", {{"session", "c"}})));
  std::this_thread::sleep_for(std::chrono::milliseconds(5));
  REQUIRE(s.write("{\"id\": 2, \"close_session\": \"c\"}\n"));
  REQUIRE(s.write(request(3, "result = 'x' in globals()", {{"session", "c"}})));
  CHECK(s.wait_answers(3, 60));
  s.close_input();
  CHECK(s.wait_exit(60) == 0);
  INFO(s.output());
  const auto ls = lines_of(s.output());
  bool closed = false;
  for (const auto& j : ls)
    if (j.contains("close_session")) closed = j["ok"] == true;
  CHECK(closed);
  auto rs = results(ls);
  REQUIRE(rs.count("3"));
  CHECK(rs["3"]["ok"] == true);
  CHECK(rs["3"]["result"] == false);  // not the namespace of call 1
}

// Waits (bounded: 60 s, scaled) until `pred` holds of serve's output so far.
template <class Pred>
bool output_until(ServeProc& s, Pred pred) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(60 * time_scale());
  while (!pred(s.output())) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return true;
}
bool output_shows(ServeProc& s, const std::string& text) {
  return output_until(s, [&](const std::string& out) { return out.find(text) != std::string::npos; });
}
// Request `id`'s result line is out (a streamed chunk is not one).
bool has_answered(ServeProc& s, const std::string& id) {
  return output_until(s, [&](const std::string& out) { return results(lines_of(out)).count(json(id).dump()) > 0; });
}

// A short run that finds nothing else in flight is run by the thread that read it, which keeps reading
// stdin itself while the run waits (nothing is handed to another thread on a request's path). Input that
// arrives during the run must still be read at once: a second request runs beside it and a cancel stops it.
// A serve that missed its input here answers neither before the runs' 300 s limit.
TEST_CASE("serve: input that arrives while a run runs is read at once, streamed or not, every mode") {
  for (const char* mode : {"namespace", "subinterpreter", "fork", "process"}) {
    INFO("mode ", mode);
    ServeProc s({"--workers", "2", "--isolation", mode, "--timeout", "300"});
    REQUIRE(s.write(request("warm", "result = 1")));  // the next run then finds a warm worker
    REQUIRE(s.wait_answers(1, 60));
    auto output_has = [&](const std::string& text) { return output_shows(s, text); };
    auto answered = [&](const std::string& id) { return has_answered(s, id); };
    // Streamed: its first chunk says the run is under way.
    REQUIRE(s.write(request("spin", "print('under way', flush=True)\nwhile True: pass", {{"stream", true}})));
    REQUIRE(output_has("under way"));
    REQUIRE(s.write(request("quick", "result = 7")));
    CHECK_MESSAGE(answered("quick"), "a request sent during a run was not read");
    REQUIRE(s.write("{\"id\": \"c1\", \"cancel\": \"spin\"}\n"));
    CHECK_MESSAGE(answered("spin"), "a cancel sent during a streamed run was not read");
    // Not streamed: nothing polls the run's output, only its reply and serve's input are waited on.
    REQUIRE(s.write(request("spin2", "while True: pass")));
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // under way, most likely (either way it must end)
    REQUIRE(s.write("{\"id\": \"c2\", \"cancel\": \"spin2\"}\n"));
    CHECK_MESSAGE(answered("spin2"), "a cancel sent during a run was not read");
    s.close_input();
    CHECK(s.wait_exit(60) == 0);
    auto rs = results(lines_of(s.output()));
    CHECK(rs["\"quick\""]["result"] == 7);
    CHECK(rs["\"spin\""]["error_kind"] == "cancelled");
    CHECK(rs["\"spin2\""]["error_kind"] == "cancelled");
  }
}

// The same, against a run that owns its worker (namespace and subinterpreter mode, where the run is in the
// process serve talks to): whatever the run makes serve wait on, serve's input is still read (red team round
// 18, F1: a frame sent in part, or a request the worker does not take, held the reading for the run's limit).
TEST_CASE("serve: a run that owns its worker cannot keep serve from reading its input") {
  for (const char* mode : {"namespace", "subinterpreter"}) {
    INFO("mode ", mode);
    {
      // One byte of a reply frame's header, then nothing: serve reads the rest of the frame until the deadline.
      ServeProc s({"--workers", "2", "--isolation", mode, "--timeout", "300"});
      REQUIRE(s.write(request("warm", "result = 1")));
      REQUIRE(s.wait_answers(1, 60));
      REQUIRE(s.write(request("part", kForge + "posix.write(3, b'\\x01')\nimport time\ntime.sleep(1000)\n")));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // under way, most likely (either way it must end)
      REQUIRE(s.write("{\"id\": \"c\", \"cancel\": \"part\"}\n" + request("b", "result = 7")));
      CHECK_MESSAGE(has_answered(s, "b"), "a request sent during the run was not read");
      CHECK_MESSAGE(has_answered(s, "part"), "a cancel sent during the run was not read");
      s.close_input();
      CHECK(s.wait_exit(60) == 0);
      auto rs = results(lines_of(s.output()));
      CHECK(rs["\"b\""]["result"] == 7);
      CHECK(rs["\"part\""]["error_kind"] == "cancelled");
    }
    {
      // A forged reply, then the run goes on without reading: the worker looks idle and takes the next request,
      // a short line whose request frame (its file's bytes escaped) is larger than the socket takes unread.
      const double t = 10 * time_scale();
      ServeProc s({"--workers", "2", "--isolation", mode, "--timeout", std::to_string(t), "--scratch-dir"});
      REQUIRE(s.write(request("warm", "result = 1")));
      REQUIRE(s.wait_answers(1, 60));
      REQUIRE(s.write(request("linger", kForge + "forge()\nimport signal, time\n"
                                        "signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals) - {signal.SIGKILL, signal.SIGSTOP})\n"
                                        "time.sleep(1000)\n")));
      REQUIRE(has_answered(s, "linger"));
      std::string b64;
      for (int i = 0; i < 16000; ++i) b64 += "AQEB";  // 48,000 bytes of 0x01: 288,000 characters once escaped
      const std::string big = request("big", "result = 1", {{"files", {{"f.bin", {{"base64", b64}}}}}});
      REQUIRE(big.size() < 64 * 1024);  // short enough to be run by the thread that read it
      REQUIRE(s.write(big));
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      REQUIRE(s.write(request("b", "result = 7")));
      CHECK_MESSAGE(has_answered(s, "b"), "a request sent during the stalled send was not read");
      CHECK_MESSAGE(results(lines_of(s.output())).count("\"big\"") == 0, "the stalled request ended before b was read");
      s.close_input();
      CHECK(s.wait_exit(60 + 2 * t) == 0);
      auto rs = results(lines_of(s.output()));
      CHECK(rs["\"b\""]["result"] == 7);
      CHECK(rs["\"big\""]["ok"] == false);
    }
  }
}

// JSON numbers past 64 bits are read as doubles: two such ids would come back as one (red team round 18, F2).
TEST_CASE("serve: an id that would not come back as sent is refused, and no run starts for it") {
  const std::string input = "{\"id\": 18446744073709551617, \"code\": \"result = 1\"}\n"
                            "{\"id\": 18446744073709551618, \"code\": \"result = 2\"}\n"
                            "{\"id\": 1e300, \"code\": \"result = 3\"}\n"
                            "{\"id\": 9007199254740991, \"code\": \"result = 4\"}\n"
                            "{\"id\": -9223372036854775808, \"code\": \"result = 5\"}\n"
                            "{\"id\": 0.5, \"code\": \"result = 6\"}\n";
  const ProcResult p = spr_test::run_program({SPR_TEST_CLI, "serve", "--isolation", "namespace"}, input,
                                             60 * time_scale(), env());
  INFO(p.out);
  const auto ls = lines_of(p.out);
  REQUIRE(ls.size() == 6);
  int refused = 0;
  std::set<json> results_seen;
  for (const auto& j : ls) {
    if (j["id"].is_null()) {
      ++refused;
      CHECK(j["error_kind"] == "bad_input");
      CHECK(j["error"].get<std::string>().find("send it as a string") != std::string::npos);
    } else {
      CHECK(j["ok"] == true);
      results_seen.insert(j["result"]);
    }
  }
  CHECK(refused == 3);
  CHECK(results_seen == std::set<json>{4, 5, 6});  // the exact ids ran, the others did not
}

TEST_CASE("serve: two requests in flight with one id are both cancelled by a cancel of that id") {
  const std::string spin = "while True: pass";
  const std::string input = request("dup", spin) + request("dup", spin) + "{\"id\": \"c\", \"cancel\": \"dup\"}\n";
  const ProcResult p = spr_test::run_program({SPR_TEST_CLI, "serve", "--workers", "2", "--isolation", "fork"}, input,
                                             60 * time_scale(), env());
  INFO(p.out);
  int cancelled = 0, answered = 0;
  for (const auto& j : lines_of(p.out))
    if (j["id"] == "dup") {
      ++answered;
      cancelled += j["error_kind"] == "cancelled";
    }
  CHECK(answered == 2);
  CHECK(cancelled == 2);
}

TEST_CASE("serve: a line of 10 MiB or 60 MiB of '[],' is refused with bad_input; serve's peak memory stays bounded") {
  for (const std::size_t mib : {10u, 60u}) {
    CAPTURE(mib);
    ServeProc s({"--isolation", "fork"});
    const long before = s.status("VmHWM");
    REQUIRE(before > 0);
    std::string line = "{\"id\": 1, \"code\": \"result = len(input_data)\", \"input_data\": {\"x\": [";
    line.reserve(line.size() + (mib << 20) + 16);
    while (line.size() < (mib << 20)) line += "[],";
    line += "[]]}}\n";
    REQUIRE(s.write(line));
    std::string().swap(line);
    REQUIRE(s.write(request(2, "result = 2")));
    REQUIRE(s.wait_answers(2, 120));  // bounded wait for events, not a speed check
    const long peak = s.status("VmHWM");
    s.close_input();
    CHECK(s.wait_exit(60) == 0);
    auto rs = results(lines_of(s.output()));
    REQUIRE(rs.count("1"));
    CHECK(rs["1"]["error_kind"] == "bad_input");
    REQUIRE(rs.count("2"));
    CHECK(rs["2"]["result"] == 2);
    // The line itself, its buffer's growth, and nothing like the parsed tree (703 MiB for 10 MiB before).
    const long bound_kb = memory_bound_kb(static_cast<long>(3 * (mib << 10) + (64 << 10)));
    CHECK_MESSAGE(peak - before <= bound_kb, "peak grew by ", (peak - before) >> 10, " MiB for a ", mib,
                  " MiB line");
  }
}

TEST_CASE("serve: a forged reply of '{}' values is refused before it is parsed; serve's peak memory stays bounded") {
  // A run that owns its process writes a reply frame inside the frame cap whose parsed tree would be ~40 times
  // its size (566 MB for 14 MiB before): on the socket (namespace), or on its reply pipe, typed with its own id
  // and an unknown member the fork parent passes on (fork, under the parent's smaller cap).
  const std::string code =
      "BI = [c for c in object.__subclasses__() if c.__name__ == 'BuiltinImporter'][0]\n"
      "posix = BI.load_module('posix')\n"
      "import struct, stat, time\n"
      "rid = struct.unpack('<Q', posix.pread(4, 64, 0)[8:16])[0]\n"
      "n = input_data['n']\n"
      "body = b'{\"type\":\"reply\",\"id\":%d,\"zz\":[' % rid + b'{},' * (n - 1) + b'{}]}'\n"
      "frame = struct.pack('<I', len(body)) + body\n"
      "for fd in range(3, 64):\n"
      "    try:\n"
      "        mode = posix.fstat(fd).st_mode\n"
      "        if not (stat.S_ISSOCK(mode) or stat.S_ISFIFO(mode)):\n"
      "            continue\n"
      "        off = 0\n"
      "        while off < len(frame):\n"
      "            off += posix.write(fd, frame[off:off + 65536])\n"
      "        break\n"
      "    except OSError:\n"
      "        pass\n"
      "time.sleep(30)\n";
  for (const auto& [mode, n] : {std::pair<const char*, int>{"namespace", 4400000}, {"fork", 2600000}}) {
    CAPTURE(mode);
    ServeProc s({"--workers", "1", "--isolation", mode, "--memory-mb", "512", "--timeout", "60"});
    const long before = s.status("VmHWM");
    REQUIRE(before > 0);
    REQUIRE(s.write(request(1, code, {{"input_data", {{"n", n}}}})));
    REQUIRE(s.wait_answers(1, 120));  // bounded wait for an event, not a speed check
    const long peak = s.status("VmHWM");
    REQUIRE(s.write(request(2, "result = 2")));
    REQUIRE(s.wait_answers(2, 120));
    s.close_input();
    CHECK(s.wait_exit(60) == 0);
    auto rs = results(lines_of(s.output()));
    REQUIRE(rs.count("1"));
    CHECK(rs["1"]["ok"] == false);
    CHECK(rs["1"]["result"] != "FORGED");
    REQUIRE(rs.count("2"));
    CHECK(rs["2"]["result"] == 2);  // the worker was replaced
    // The frame and its buffer, not its tree.
    CHECK_MESSAGE(peak - before < memory_bound_kb(160 << 10), "serve's peak grew by ", (peak - before) >> 10, " MiB");
  }
}

TEST_CASE("serve: 10,000 session names do not start 10,000 threads") {
  ServeProc s({"--isolation", "fork"});
  constexpr int kNames = 10000;
  std::thread writer([&] {
    std::string batch;
    for (int i = 0; i < kNames; ++i) {
      batch += request(i, "result = 1", {{"session", "name-" + std::to_string(i)}});
      if (batch.size() > (64 << 10)) {
        s.write(batch);
        batch.clear();
      }
    }
    s.write(batch);
  });
  long most = 0;
  // One count per step: the last answer arriving between two counts left a wait for one answer too many,
  // which ran to its hang guard (24 min under TSan).
  for (std::size_t n; (n = s.answers()) < static_cast<std::size_t>(kNames);) {
    most = std::max(most, s.status("Threads"));
    if (!s.wait_answers(n + 1, 120)) break;
  }
  most = std::max(most, s.status("Threads"));  // every answer is out, input still open: nothing joined yet
  writer.join();
  CHECK(s.answers() == static_cast<std::size_t>(kNames));
  CHECK_MESSAGE(most <= 200, most, " threads for ", kNames, " session names");
  s.close_input();
  CHECK(s.wait_exit(120) == 0);
}

TEST_CASE("serve: read-ahead is bounded while runs wait (backpressure on stdin)") {
  // The operator's ceiling allows 60 s: two spins hold the one worker; 1,500 requests of 200 KB each
  // wait behind them.
  ServeProc s({"--workers", "1", "--isolation", "fork", "--timeout", "60"});
  const long before = s.status("VmHWM");
  const std::string spin = request("spin", "while True: pass");
  std::atomic<bool> all_written{false};
  std::atomic<int> written{0};
  std::thread writer([&] {
    bool ok = s.write(spin) && s.write(spin);
    const std::string padded = request("w", "result = 1  # " + std::string(200 << 10, 'p'));
    for (int i = 0; ok && i < 1500; ++i) {
      ok = s.write(padded);
      ++written;
    }
    all_written = ok;
  });
  // Until serve stops taking input (no line taken for 3 s), takes it all, or grows past the bound: with
  // backpressure it stops early; without, it takes all 300 MB while the spins hold the worker.
  const long bound_kb = memory_bound_kb(160L << 10);
  int last = -1;
  auto progress_at = std::chrono::steady_clock::now();
  long peak = 0;
  for (;;) {
    peak = s.status("VmHWM");
    if (all_written || peak - before >= bound_kb) break;
    if (written != last) {
      last = written;
      progress_at = std::chrono::steady_clock::now();
    } else if (std::chrono::steady_clock::now() - progress_at > std::chrono::duration<double>(3 * time_scale())) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  CHECK_FALSE(all_written.load());
  CHECK_MESSAGE(peak - before < bound_kb, "serve's peak grew by ", (peak - before) >> 10, " MiB");
  MESSAGE("serve took ", written.load(), " of 1500 waiting lines; its peak grew by ", (peak - before) >> 10, " MiB");
  ::kill(s.pid(), SIGKILL);  // its worker dies with it (parent-death signal)
  s.wait_exit(60);
  writer.join();  // its blocked write ends with EPIPE now that nothing reads the pipe; then the pipe is closed
  s.close_input();
}

}  // TEST_SUITE
