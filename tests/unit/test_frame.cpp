// Unit tests of the frame protocol (length-prefixed JSON over pipes) and the depth-limited JSON helpers.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <string>
#include <thread>

#include "common/frame.hpp"

using spr::detail::Clock;
using spr::detail::IoStatus;
using spr::detail::read_frame;
using spr::detail::write_frame;

namespace {

// A pipe whose ends close themselves.
struct Pipe {
  int r = -1, w = -1;
  Pipe() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    r = fds[0];
    w = fds[1];
  }
  ~Pipe() {
    close_read();
    close_write();
  }
  void close_read() {
    if (r >= 0) ::close(r);
    r = -1;
  }
  void close_write() {
    if (w >= 0) ::close(w);
    w = -1;
  }
  void raw(const std::string& bytes) const { REQUIRE(::write(w, bytes.data(), bytes.size()) == static_cast<ssize_t>(bytes.size())); }
};

std::string header(std::uint32_t len) {
  std::string h(4, '\0');
  for (int i = 0; i < 4; ++i) h[static_cast<std::size_t>(i)] = static_cast<char>((len >> (8 * i)) & 0xff);
  return h;
}

Clock::time_point soon(int ms = 2000) { return Clock::now() + std::chrono::milliseconds(ms); }

}  // namespace

TEST_CASE("frame: a frame round-trips through a pipe") {
  Pipe p;
  const std::string payload = R"J({"id":1,"code":"print('hi')"})J";
  REQUIRE(write_frame(p.w, payload) == IoStatus::ok);
  std::string got;
  CHECK(read_frame(p.r, got, soon()) == IoStatus::ok);
  CHECK(got == payload);
}

TEST_CASE("frame: the header is a 4-byte little-endian length") {
  Pipe p;
  REQUIRE(write_frame(p.w, "abc") == IoStatus::ok);
  char buf[16] = {};
  REQUIRE(::read(p.r, buf, sizeof buf) == 7);
  CHECK(std::string(buf, 7) == header(3) + "abc");
}

TEST_CASE("frame: several frames, an empty one and a large one, arrive in order") {
  Pipe p;
  const std::string big(3u << 20, 'x');  // larger than a pipe buffer: the writer must retry short writes
  std::thread writer([&] {
    CHECK(write_frame(p.w, "first") == IoStatus::ok);
    CHECK(write_frame(p.w, "") == IoStatus::ok);
    CHECK(write_frame(p.w, big) == IoStatus::ok);
  });
  std::string a, b, c;
  CHECK(read_frame(p.r, a, soon(10000)) == IoStatus::ok);
  CHECK(read_frame(p.r, b, soon(10000)) == IoStatus::ok);
  CHECK(read_frame(p.r, c, soon(10000)) == IoStatus::ok);
  writer.join();
  CHECK(a == "first");
  CHECK(b.empty());
  CHECK(c.size() == big.size());
  CHECK(c == big);
}

TEST_CASE("frame: end of stream before a frame, mid-header and mid-body") {
  Pipe p;
  std::string got;
  SUBCASE("nothing at all") {
    p.close_write();
    CHECK(read_frame(p.r, got, soon()) == IoStatus::eof);
  }
  SUBCASE("mid-header") {
    p.raw(std::string("\x05\x00", 2));
    p.close_write();
    CHECK(read_frame(p.r, got, soon()) == IoStatus::eof);
  }
  SUBCASE("mid-body") {
    p.raw(header(10) + "abc");
    p.close_write();
    CHECK(read_frame(p.r, got, soon()) == IoStatus::eof);
  }
}

TEST_CASE("frame: a length over the limit is too_large, before any body is read") {
  Pipe p;
  std::string got;
  SUBCASE("over the caller's limit") {
    p.raw(header(17) + std::string(17, 'x'));
    CHECK(read_frame(p.r, got, soon(), 16) == IoStatus::too_large);
    CHECK(got.empty());
  }
  SUBCASE("over the protocol's limit, with no body sent at all") {
    p.raw(header(0xffffffffu));
    CHECK(read_frame(p.r, got, soon()) == IoStatus::too_large);
  }
  SUBCASE("exactly at the limit is fine") {
    p.raw(header(16) + std::string(16, 'y'));
    CHECK(read_frame(p.r, got, soon(), 16) == IoStatus::ok);
    CHECK(got == std::string(16, 'y'));
  }
}

TEST_CASE("frame: a silent pipe times out at the deadline") {
  Pipe p;  // write end stays open: no EOF, no data
  std::string got;
  const auto start = Clock::now();
  CHECK(read_frame(p.r, got, Clock::now() + std::chrono::milliseconds(100)) == IoStatus::timeout);
  CHECK(Clock::now() - start >= std::chrono::milliseconds(100));
  CHECK(Clock::now() - start < std::chrono::seconds(5));
  SUBCASE("also after half a header") {
    p.raw(std::string("\x01\x00", 2));
    CHECK(read_frame(p.r, got, Clock::now() + std::chrono::milliseconds(50), spr::detail::kMaxFrameBytes, 100) ==
          IoStatus::timeout);
  }
  SUBCASE("a deadline already past") {
    CHECK(read_frame(p.r, got, Clock::now() - std::chrono::seconds(1)) == IoStatus::timeout);
  }
}

TEST_CASE("frame: writing to a pipe whose reader is gone is an error") {
  Pipe p;
  p.close_read();
  ::signal(SIGPIPE, SIG_IGN);
  CHECK(write_frame(p.w, "nobody listens") == IoStatus::error);
}

TEST_CASE("frame: every IoStatus has a name") {
  for (auto s : {IoStatus::ok, IoStatus::eof, IoStatus::timeout, IoStatus::error, IoStatus::too_large}) {
    CHECK(std::string(spr::detail::to_string(s)) != "?");
    CHECK_FALSE(std::string(spr::detail::to_string(s)).empty());
  }
}

TEST_CASE("json: parse_json refuses deep nesting and accepts ordinary nesting") {
  SUBCASE("200,000 levels throw, without crashing") {
    const std::string deep = std::string(200000, '[') + std::string(200000, ']');
    CHECK_THROWS_AS(spr::detail::parse_json(deep), nlohmann::json::exception);
    const std::string deep_obj = [] {
      std::string s;
      for (int i = 0; i < 200000; ++i) s += "{\"a\":";
      s += "1";
      s += std::string(200000, '}');
      return s;
    }();
    CHECK_THROWS_AS(spr::detail::parse_json(deep_obj), nlohmann::json::exception);
  }
  SUBCASE("100 levels parse") {
    const std::string ok = std::string(100, '[') + "7" + std::string(100, ']');
    nlohmann::json j;
    CHECK_NOTHROW(j = spr::detail::parse_json(ok));
    const nlohmann::json* cur = &j;
    int depth = 0;
    while (cur->is_array()) {
      cur = &(*cur)[0];
      ++depth;
    }
    CHECK(depth == 100);
    CHECK(*cur == 7);
  }
  SUBCASE("the limit is a parameter") {
    CHECK_THROWS_AS(spr::detail::parse_json("[[[1]]]", 2), nlohmann::json::exception);
    CHECK_NOTHROW(spr::detail::parse_json("[[[1]]]", 4));
  }
  SUBCASE("malformed text throws") {
    CHECK_THROWS_AS(spr::detail::parse_json("{\"a\":"), nlohmann::json::exception);
    CHECK_THROWS_AS(spr::detail::parse_json(""), nlohmann::json::exception);
  }
}

TEST_CASE("json: dump_json on invalid UTF-8 does not throw and replaces the bad bytes") {
  nlohmann::json j = {{"text", std::string("ok\xff\xfe-end")}, {"lone", std::string("\xc3")}};
  std::string out;
  CHECK_NOTHROW(out = spr::detail::dump_json(j));
  CHECK(out.find("ok") != std::string::npos);
  CHECK(out.find("-end") != std::string::npos);
  CHECK(out.find("\xef\xbf\xbd") != std::string::npos);  // U+FFFD
  CHECK(out.find('\xff') == std::string::npos);
  // The output is valid JSON again.
  nlohmann::json back;
  CHECK_NOTHROW(back = nlohmann::json::parse(out));
  CHECK(back["text"].get<std::string>().find("-end") != std::string::npos);
}

TEST_CASE("json: dump_json keeps valid UTF-8 text as it is") {
  const nlohmann::json j = {{"s", "h\xc3\xa9llo \xe2\x82\xac"}};
  CHECK(nlohmann::json::parse(spr::detail::dump_json(j)) == j);
}

TEST_CASE("frame: send_frame to a peer that reads nothing ends at its deadline, and a whole frame when it reads") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const std::string big(8u << 20, 'z');  // more than any socket buffer holds
  CHECK(spr::detail::send_frame(sv[0], big, Clock::now() + std::chrono::milliseconds(200)) == IoStatus::timeout);
  SUBCASE("a deadline already past with a full buffer") {
    CHECK(spr::detail::send_frame(sv[0], big, Clock::now() - std::chrono::seconds(1)) == IoStatus::timeout);
  }
  SUBCASE("a peer process that exits: eof through its exit descriptor, even while another holds the socket") {
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      ::usleep(100000);
      ::_exit(0);
    }
    const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, child, 0));
    REQUIRE(pidfd >= 0);
    CHECK(spr::detail::send_frame(sv[0], big, Clock::now() + std::chrono::seconds(60), pidfd) == IoStatus::eof);
    ::close(pidfd);
    int st = 0;
    ::waitpid(child, &st, 0);
  }
  ::close(sv[0]);
  ::close(sv[1]);
  // A reader: the frame goes through whole.
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  std::string got;
  std::thread reader([&] { CHECK(read_frame(sv[1], got, soon(60000)) == IoStatus::ok); });
  CHECK(spr::detail::send_frame(sv[0], big, soon(60000)) == IoStatus::ok);
  reader.join();
  CHECK(got == big);
  ::close(sv[0]);
  ::close(sv[1]);
}

// before_wait (serve's reading role, passed on before the worker can make us wait): called once, and only
// when the call would otherwise block on the peer.
TEST_CASE("frame: before_wait is called only when a read or a send has to wait for the peer") {
  int calls = 0;
  std::function<void()> hook = [&] { ++calls; };
  SUBCASE("a whole frame already there: not called") {
    Pipe p;
    REQUIRE(write_frame(p.w, "{}") == IoStatus::ok);
    std::string got;
    CHECK(read_frame(p.r, got, soon(), spr::detail::kMaxFrameBytes, 0, -1, false, &hook) == IoStatus::ok);
    CHECK(calls == 0);
    CHECK(static_cast<bool>(hook));
  }
  SUBCASE("a frame sent in part: called once, before the wait, which then runs to its deadline") {
    Pipe p;
    p.raw(header(2) + "{");
    std::string got;
    CHECK(read_frame(p.r, got, soon(100), spr::detail::kMaxFrameBytes, 0, -1, false, &hook) == IoStatus::timeout);
    CHECK(calls == 1);
    CHECK(!hook);  // emptied: the next wait calls nothing
  }
  SUBCASE("a send the peer does not take: called once") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    const std::string big(4u << 20, 'x');
    CHECK(spr::detail::send_frame(sv[0], big, soon(100), -1, true, &hook) == IoStatus::timeout);
    CHECK(calls == 1);
    ::close(sv[0]);
    ::close(sv[1]);
  }
  SUBCASE("a small send: not called") {
    int sv[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
    CHECK(spr::detail::send_frame(sv[0], "{}", soon(), -1, true, &hook) == IoStatus::ok);
    CHECK(calls == 0);
    ::close(sv[0]);
    ::close(sv[1]);
  }
}
